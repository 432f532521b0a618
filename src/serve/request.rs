//! The body of `POST /query`: parsed with the failing field named, then turned into a
//! checked query through [`crate::spec`] (the same checks as `graftdb query`).

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::Limits;
use crate::spec::{self, FilterSpec};
use crate::{Db, Kind, Level, Query, SpaceDef};

/// Numbers as a JSON array, or as the CLI's comma-separated text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Numbers {
    /// `[1.5, 2.0]`
    List(Vec<f64>),
    /// `"1.5,2.0"`
    Text(String),
}

/// A record id: a JSON string, or an integer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdValue {
    /// An integer id.
    Int(i64),
    /// A string id (digits try an integer id first, as on the command line).
    Str(String),
}

/// `POST /query`, field for field the flags of `graftdb query` (see `schema/http.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Embedding space; may be left out when the database has one space of the level asked.
    pub space: Option<String>,
    /// Query text, embedded with the server's `--model`.
    pub text: Option<String>,
    /// Query vector.
    pub vector: Option<Vec<f64>>,
    /// Query by the stored vector of this record (left out of the results).
    pub like: Option<IdValue>,
    /// `[W, S, E, N]` or `"W,S,E,N"`.
    pub bbox: Option<Numbers>,
    /// `[LAT, LON]` or `"LAT,LON"`, with `radius_km`.
    pub near: Option<Numbers>,
    /// Great-circle radius around `near`, km.
    pub radius_km: Option<f64>,
    /// A GeoJSON Polygon/MultiPolygon/Feature/FeatureCollection object, or WKT or GeoJSON text.
    pub polygon: Option<Value>,
    /// Geohash prefix.
    pub geohash: Option<String>,
    /// Earliest time, inclusive.
    pub from: Option<String>,
    /// Latest time, inclusive (a date means the whole day).
    pub to: Option<String>,
    /// `tile` or `photo`.
    pub kind: Option<String>,
    /// `image` (default) or `patch`.
    pub level: Option<String>,
    /// Results wanted (default 10).
    pub k: Option<u64>,
    /// Scan exactly, never the graph.
    pub exact: Option<bool>,
    /// Patch level: answer from at most this many tiles, best mean patch first.
    pub max_tiles: Option<u64>,
    /// Image level: answer from at most this many content partitions, best bound first.
    pub max_partitions: Option<u64>,
    /// `json` (default: hits and the plan) or `geojson` (a FeatureCollection).
    pub format: Option<String>,
}

/// How the answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"hits": [...], "explain": {...}}`
    Json,
    /// A FeatureCollection with `explain` beside `features`.
    Geojson,
}

/// Parse a request body, naming the field that fails (`bbox`, `k`, ...).
pub fn parse(body: &[u8]) -> Result<QueryRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: QueryRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let field = path.split(['.', '[']).find(|s| !s.is_empty() && *s != "?").map(str::to_string).or_else(|| unknown_field(&msg));
        let message = if e.inner().is_syntax() || e.inner().is_eof() { format!("the body is not valid JSON: {msg}") } else { msg };
        ApiError { status: axum::http::StatusCode::BAD_REQUEST, field, message }
    })?;
    Ok(req)
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn numbers<const N: usize>(field: &str, v: &Numbers) -> Result<[f64; N], ApiError> {
    let list = match v {
        Numbers::List(l) => l.clone(),
        Numbers::Text(t) => {
            t.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>().map_err(|e| ApiError::bad(field, format!("'{t}': {e}")))?
        }
    };
    list.try_into().map_err(|l: Vec<f64>| ApiError::bad(field, format!("expected {N} numbers, got {}", l.len())))
}

/// Positions in a GeoJSON value (arrays of numbers counted once each).
fn count_positions(v: &Value) -> usize {
    match v {
        Value::Array(a) if a.first().is_some_and(Value::is_number) => 1,
        Value::Array(a) => a.iter().map(count_positions).sum(),
        Value::Object(o) => o.values().map(count_positions).sum(),
        _ => 0,
    }
}

/// The polygon as text for [`crate::Region::parse_polygon`], refused above the vertex limit
/// before any geometry is built.
fn polygon_text(v: &Value, limits: &Limits) -> Result<String, ApiError> {
    let (text, parsed) = match v {
        Value::String(s) if s.trim_start().starts_with('{') => {
            (s.clone(), Some(serde_json::from_str::<Value>(s).map_err(|e| ApiError::bad("polygon", format!("not valid GeoJSON: {e}")))?))
        }
        Value::String(s) => (s.clone(), None),
        Value::Object(_) => (v.to_string(), Some(v.clone())),
        _ => return Err(ApiError::bad("polygon", "expected a GeoJSON object, or WKT or GeoJSON text")),
    };
    let n = match &parsed {
        Some(g) => count_positions(g),
        None => text.matches(',').count() + 1,
    };
    if n > limits.polygon_vertices {
        return Err(ApiError::bad("polygon", format!("{n} vertices; this server takes at most {}", limits.polygon_vertices)));
    }
    Ok(text)
}

/// A checked query, ready to run.
#[derive(Debug)]
pub struct Planned {
    /// The query.
    pub query: Query,
    /// Record to leave out (`like`).
    pub leave_out: Option<u64>,
    /// Answer format.
    pub format: Format,
}

/// What [`plan`] needs besides the request: the database and the text encoder.
pub struct Context<'a> {
    /// The open database.
    pub db: &'a Db,
    /// Text encoder and its output dimension, when the server has a model.
    pub text: Option<(&'a crate::embed::TextEncoder, usize)>,
    /// Limits in force.
    pub limits: &'a Limits,
}

fn pick_space(db: &Db, name: Option<&str>, patch: bool) -> Result<SpaceDef, ApiError> {
    if let Some(n) = name {
        return Ok(db.space(n)?);
    }
    let fits: Vec<SpaceDef> = db.spaces()?.into_iter().filter(|d| matches!(d.level, Level::Patch { .. }) == patch).collect();
    match fits.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::bad("space", format!("the database has no {}-level space", if patch { "patch" } else { "image" }))),
        many => Err(ApiError::bad("space", format!("name one of: {}", many.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")))),
    }
}

/// Check a request against the database and the limits; embed its text. Every refusal
/// names its field.
pub fn plan(req: &QueryRequest, cx: &Context<'_>) -> Result<Planned, ApiError> {
    let limits = cx.limits;
    let format = match req.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("geojson") => Format::Geojson,
        Some(f) => return Err(ApiError::bad("format", format!("'{f}': expected json or geojson"))),
    };
    let patch = match req.level.as_deref() {
        None | Some("image") => false,
        Some("patch") => true,
        Some(l) => return Err(ApiError::bad("level", format!("'{l}': expected image or patch"))),
    };
    let kind = req.kind.as_deref().map(|k| k.parse::<Kind>().map_err(|e| ApiError::bad("kind", e))).transpose()?;
    let k = req.k.unwrap_or(10);
    if k == 0 || k > limits.max_k as u64 {
        return Err(ApiError::bad("k", format!("{k} is outside 1..={}", limits.max_k)));
    }
    if req.max_tiles == Some(0) {
        return Err(ApiError::bad("max_tiles", "must be at least 1"));
    }
    if req.max_tiles.is_some() && !patch {
        return Err(ApiError::bad("max_tiles", "applies to level patch only"));
    }
    let max_tiles = req.max_tiles.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if req.max_partitions == Some(0) {
        return Err(ApiError::bad("max_partitions", "must be at least 1"));
    }
    if req.max_partitions.is_some() && patch {
        return Err(ApiError::bad("max_partitions", "applies to level image only (patch level: max_tiles)"));
    }
    let max_partitions = req.max_partitions.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut f = FilterSpec { kind, radius_km: req.radius_km, geohash: req.geohash.clone(), from: req.from.clone(), to: req.to.clone(), ..Default::default() };
    f.bbox = req.bbox.as_ref().map(|b| numbers::<4>("bbox", b)).transpose()?;
    f.near = req.near.as_ref().map(|n| numbers::<2>("near", n)).transpose()?;
    f.polygon = req.polygon.as_ref().map(|p| polygon_text(p, limits).map(|t| ("polygon".to_string(), t))).transpose()?;
    let filter = f.build()?;

    let def = pick_space(cx.db, req.space.as_deref(), patch)?;
    spec::check_level(&def, patch)?;
    let given = [req.text.is_some(), req.vector.is_some(), req.like.is_some()].iter().filter(|x| **x).count();
    if given != 1 {
        return Err(ApiError::bad("text", "give exactly one of text, vector or like"));
    }
    let (vector, leave_out) = if let Some(text) = &req.text {
        let Some((enc, dim)) = cx.text else {
            return Err(ApiError::bad("text", "this server has no text encoder: start it with --model BUNDLE"));
        };
        if text.trim().is_empty() || text.chars().count() > limits.text_chars {
            return Err(ApiError::bad("text", format!("give 1 to {} characters", limits.text_chars)));
        }
        if dim != def.dim as usize {
            return Err(ApiError::bad("text", format!("the server's model makes {dim}-d vectors but space '{}' holds {}-d vectors", def.name, def.dim)));
        }
        let v = enc.embed(&[text.as_str()])?.pop().ok_or_else(|| ApiError::bad("text", "the text encoder returned nothing"))?;
        (v, None)
    } else if let Some(v) = &req.vector {
        if let Some(i) = v.iter().position(|x| !x.is_finite() || x.abs() > f64::from(f32::MAX)) {
            return Err(ApiError::bad("vector", format!("value {i} is not a finite 32-bit number")));
        }
        (v.iter().map(|x| *x as f32).collect(), None)
    } else {
        let id = match req.like.as_ref() {
            Some(IdValue::Int(i)) => i.to_string(),
            Some(IdValue::Str(s)) => s.clone(),
            None => return Err(ApiError::bad("like", "missing")),
        };
        let (v, key) = spec::like_vector(cx.db, &def, &id)?;
        (v, Some(key))
    };
    let query = Query::new(&def.name, vector, k as usize).filter(filter).exact(req.exact.unwrap_or(false)).max_tiles(max_tiles).max_partitions(max_partitions);
    Ok(Planned { query, leave_out, format })
}
