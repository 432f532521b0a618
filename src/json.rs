//! Hits as JSON and GeoJSON: the one shape `graftdb query` prints and `graftdb serve` answers.

use serde_json::{json, Value};

use crate::Hit;

fn time_str(t: Option<i64>) -> Value {
    t.and_then(|us| jiff::Timestamp::from_microsecond(us).ok()).map_or(Value::Null, |ts| Value::from(ts.to_string()))
}

/// One hit as a JSON object.
pub fn hit_json(h: &Hit) -> Value {
    let mut o = json!({
        "id": h.id.to_json(),
        "kind": h.kind.as_str(),
        "score": h.score,
        "lon": h.lon,
        "lat": h.lat,
        "geohash": h.geohash,
        "time": time_str(h.time),
    });
    if let Some(d) = h.distance_km {
        o["distance_km"] = json!(d);
    }
    if let Some(p) = &h.patch {
        o["patch"] = json!({"row": p.row, "col": p.col, "footprint": p.footprint});
    }
    o
}

/// Hits as a JSON array.
pub fn hits_json(hits: &[Hit]) -> Value {
    Value::Array(hits.iter().map(hit_json).collect())
}

/// A hit's GeoJSON geometry: the patch footprint, else the tile footprint, else the point.
pub fn geometry(h: &Hit) -> Value {
    let ring = h.patch.as_ref().map(|p| &p.footprint).or(h.footprint.as_ref());
    match ring {
        Some(r) if r.len() >= 4 => json!({"type": "Polygon", "coordinates": [r]}),
        _ => json!({"type": "Point", "coordinates": [h.lon, h.lat]}),
    }
}

/// Hits as an RFC 7946 FeatureCollection; each feature's properties are [`hit_json`] plus
/// its 1-based `rank`.
pub fn feature_collection(hits: &[Hit]) -> Value {
    let feats: Vec<Value> = hits
        .iter()
        .enumerate()
        .map(|(rank, h)| {
            let mut props = hit_json(h);
            props["rank"] = json!(rank + 1);
            json!({"type": "Feature", "geometry": geometry(h), "properties": props})
        })
        .collect();
    json!({"type": "FeatureCollection", "features": feats})
}
