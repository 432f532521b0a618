//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`. `schema/http.md`
//! is its prose twin; `tests/serve_api.rs` checks that every route answers as listed.

use serde_json::{json, Value};

fn error_response(what: &str) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn document() -> Value {
    let d = super::Limits::default();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "graftdb serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Search satellite tiles and geotagged photos by text, vector or example, inside space and time filters. \
                            Every refusal is a 4xx JSON error naming the field. Limits are listed in GET /stats under server.limits."
        },
        "paths": {
            "/query": {"post": {
                "summary": "k nearest records (or tile patches) to a text, a vector or a stored record, inside filters",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QueryRequest"}}}},
                "responses": {
                    "200": {"description": "hits, best first: {hits, explain} for format json; a FeatureCollection (with explain) for geojson",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": error_response("bad input; error.field names the field"),
                    "413": error_response("body larger than the limit"),
                    "503": error_response("the query ran past the time limit")
                }
            }},
            "/tiles": {"get": {
                "summary": "footprints of tiles meeting a bbox (the map's basemap), at most `limit`",
                "parameters": [
                    {"name": "bbox", "in": "query", "schema": {"type": "string"}, "description": "W,S,E,N degrees"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": d.tile_list}}
                ],
                "responses": {"200": {"description": "a FeatureCollection with `truncated`"}, "400": error_response("bad bbox or limit")}
            }},
            "/tiles/{id}.png": {"get": {
                "summary": "a tile's pixels as PNG: stored bytes, or its window of the source raster read through GDAL",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "tile id, percent-encoded"}],
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}, "404": error_response("no such tile, or no readable pixels")}
            }},
            "/stats": {"get": {"summary": "counts, sizes, extent, spaces and the server's limits", "responses": {"200": {"description": "statistics"}}}},
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "{\"status\": \"ok\"}"}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/": {"get": {"summary": "the map page", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
                "field": {"type": ["string", "null"]}, "message": {"type": "string"}, "status": {"type": "integer"}}}}},
            "QueryRequest": {"type": "object", "additionalProperties": false, "properties": {
                "space": {"type": "string", "description": "embedding space; optional when the database has one space of the level"},
                "text": {"type": "string", "maxLength": d.text_chars, "description": "embedded with the server's --model"},
                "vector": {"type": "array", "items": {"type": "number"}},
                "like": {"type": ["string", "integer"], "description": "id of a stored record whose vector is the query; it is left out"},
                "bbox": {"oneOf": [{"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}, {"type": "string"}],
                         "description": "[W,S,E,N]; W > E crosses the antimeridian"},
                "near": {"oneOf": [{"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}, {"type": "string"}],
                         "description": "[LAT, LON], with radius_km"},
                "radius_km": {"type": "number", "minimum": 0},
                "polygon": {"oneOf": [{"type": "object"}, {"type": "string"}],
                            "description": "GeoJSON (Multi)Polygon/Feature/FeatureCollection, or WKT; at most polygon_vertices vertices"},
                "geohash": {"type": "string", "maxLength": 12},
                "from": {"type": "string", "description": "RFC 3339 or YYYY-MM-DD, inclusive"},
                "to": {"type": "string", "description": "RFC 3339 or YYYY-MM-DD (the whole day), inclusive"},
                "kind": {"enum": ["tile", "photo"]},
                "level": {"enum": ["image", "patch"], "default": "image"},
                "k": {"type": "integer", "minimum": 1, "maximum": d.max_k, "default": 10},
                "exact": {"type": "boolean", "default": false},
                "max_tiles": {"type": "integer", "minimum": 1,
                              "description": "patch level: answer from at most this many tiles, best mean patch first (approximate)"},
                "max_partitions": {"type": "integer", "minimum": 1,
                                   "description": "image level: answer from at most this many content partitions, those whose bound (centroid angle less the cluster's spread) is best (approximate)"},
                "format": {"enum": ["json", "geojson"], "default": "json"}
            }}
        }}
    })
}
