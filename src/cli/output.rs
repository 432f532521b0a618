//! Printing hits as a table, JSON, GeoJSON or CSV.

use std::io::Write;

use anyhow::Result;
use graftdb::{Explain, Hit};

use super::args::Format;

pub use graftdb::json::hits_json;

/// Print hits in a format.
pub fn print(out: &mut dyn Write, f: Format, hits: &[Hit]) -> Result<()> {
    match f {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&hits_json(hits))?)?,
        Format::Geojson => writeln!(out, "{}", serde_json::to_string_pretty(&graftdb::json::feature_collection(hits))?)?,
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
            writeln!(out, "{:>4}  {:<20} {:<5} {:>9} {:>11} {:>10}  {:<12} extra", "rank", "id", "kind", "score", "lon", "lat", "geohash")?;
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
        "plan: path={} rows={} estimate={} ranges={} tested={} matched={} exact_threshold={} unindexed={} f32_reads={} sketch_skips={} partitions={} time={}us",
        e.path.as_str(),
        e.rows,
        e.estimate,
        e.ranges,
        e.tested,
        e.matched,
        e.exact_threshold,
        e.unindexed,
        e.rescored,
        e.sketched,
        e.partitions,
        e.micros
    )
}
