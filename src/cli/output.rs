//! Printing hits as a table, JSON, GeoJSON or CSV.

use std::io::Write;

use anyhow::Result;
use graftdb::{Explain, Hit};
use serde_json::{json, Value};

use super::args::Format;

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

fn geometry(h: &Hit) -> Value {
    let ring = h.patch.as_ref().map(|p| &p.footprint).or(h.footprint.as_ref());
    match ring {
        Some(r) if r.len() >= 4 => json!({"type": "Polygon", "coordinates": [r]}),
        _ => json!({"type": "Point", "coordinates": [h.lon, h.lat]}),
    }
}

/// Print hits in a format.
pub fn print(out: &mut dyn Write, f: Format, hits: &[Hit]) -> Result<()> {
    match f {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&hits_json(hits))?)?,
        Format::Geojson => {
            let feats: Vec<Value> = hits
                .iter()
                .enumerate()
                .map(|(rank, h)| {
                    let mut props = hit_json(h);
                    props["rank"] = json!(rank + 1);
                    json!({"type": "Feature", "geometry": geometry(h), "properties": props})
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&json!({"type": "FeatureCollection", "features": feats}))?)?;
        }
        Format::Csv => {
            writeln!(out, "rank,id,kind,score,lon,lat,geohash,distance_km,patch_row,patch_col")?;
            for (i, h) in hits.iter().enumerate() {
                let id = h.id.to_string();
                let id = if id.contains([',', '"', '\n']) { format!("\"{}\"", id.replace('"', "\"\"")) } else { id };
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    i + 1,
                    id,
                    h.kind.as_str(),
                    h.score,
                    h.lon,
                    h.lat,
                    h.geohash,
                    h.distance_km.map_or(String::new(), |d| format!("{d:.4}")),
                    h.patch.as_ref().map_or(String::new(), |p| p.row.to_string()),
                    h.patch.as_ref().map_or(String::new(), |p| p.col.to_string()),
                )?;
            }
        }
        Format::Table => {
            writeln!(out, "{:>4}  {:<20} {:<5} {:>9} {:>11} {:>10}  {:<12} {}", "rank", "id", "kind", "score", "lon", "lat", "geohash", "extra")?;
            for (i, h) in hits.iter().enumerate() {
                let mut extra = String::new();
                if let Some(d) = h.distance_km {
                    extra.push_str(&format!("{d:.3} km "));
                }
                if let Some(p) = &h.patch {
                    extra.push_str(&format!("patch r{} c{}", p.row, p.col));
                }
                writeln!(out, "{:>4}  {:<20} {:<5} {:>9.5} {:>11.5} {:>10.5}  {:<12} {}", i + 1, h.id.to_string(), h.kind.as_str(), h.score, h.lon, h.lat, h.geohash, extra.trim_end())?;
            }
        }
    }
    Ok(())
}

/// The plan in one line.
pub fn explain_line(e: &Explain) -> String {
    format!(
        "plan: path={} rows={} estimate={} ranges={} tested={} matched={} exact_threshold={} unindexed={} time={}us",
        e.path.as_str(),
        e.rows,
        e.estimate,
        e.ranges,
        e.tested,
        e.matched,
        e.exact_threshold,
        e.unindexed,
        e.micros
    )
}
