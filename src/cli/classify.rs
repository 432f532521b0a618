//! `classify`: zero-shot labels for tiles, CLIP style. Each label's prompt is embedded by
//! the text encoder; a tile's label is the argmax of `softmax(temperature × cosine)` over
//! the labels, and its score that probability. The summary adds up tile footprint areas
//! (geodesic, on the WGS84 ellipsoid) per label; overlapping tiles (a time series of one
//! place) each count in full.

use std::io::Write;

use anyhow::{bail, Result};
use geo::orient::{Direction, Orient};
use geo::GeodesicArea;
use graftdb::geo::region::ring_polygon;
use graftdb::{Db, Level, Record, RecordId};
use serde_json::{json, Value};

use super::args::{ClassifyArgs, Format};
use super::{build_filter, embed};

/// One classified tile.
struct Row {
    id: RecordId,
    label: usize,
    score: f32,
    area_km2: f64,
    lon: f64,
    lat: f64,
    time: Option<i64>,
    footprint: Vec<[f64; 2]>,
}

fn labels(s: &str) -> Result<Vec<String>> {
    let mut v: Vec<String> = Vec::new();
    for l in s.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        if v.iter().any(|x| x == l) {
            bail!("--labels: '{l}' is given twice");
        }
        v.push(l.to_string());
    }
    if v.len() < 2 {
        bail!("--labels '{s}': give at least two comma-separated labels");
    }
    Ok(v)
}

/// Softmax of `t × scores`: the index of the largest and its probability.
fn argmax_softmax(scores: &[f32], t: f32) -> (usize, f32) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
    let exps: Vec<f32> = scores.iter().map(|s| (t * (s - max)).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let (best, e) = exps.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, be), (i, e)| if *e > be { (i, *e) } else { (bi, be) });
    (best, e / sum)
}

fn time_str(t: Option<i64>) -> Value {
    t.and_then(|us| jiff::Timestamp::from_microsecond(us).ok()).map_or(Value::Null, |ts| Value::from(ts.to_string()))
}

/// `graftdb classify`.
pub fn run(a: &ClassifyArgs, out: &mut dyn Write) -> Result<()> {
    let labels = labels(&a.labels)?;
    if !a.template.contains("{}") {
        bail!("--template '{}': put {{}} where the label goes, e.g. \"a satellite photo of {{}}.\"", a.template);
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!("--temperature {}: a positive number", a.temperature);
    }
    let filter = build_filter(&a.filter, Some(graftdb::Kind::Tile))?;
    let db = Db::open_read_only(&a.db)?;
    let def = db.space(&a.space)?;
    if !matches!(def.level, Level::Image) {
        bail!("--space '{}' is patch-level; classify tiles with the image-level space", a.space);
    }
    let prompts: Vec<String> = labels.iter().map(|l| a.template.replace("{}", l)).collect();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let label_vecs = embed::text_vectors(&a.model, &def, &texts)?;

    let mut rows = Vec::new();
    let mut unembedded = 0usize;
    db.for_each_record(|key, rec| {
        let (lon, lat) = rec.point();
        let Record::Tile(t) = rec else { return Ok(()) };
        if !filter.time_ok(t.time) || !filter.regions.iter().all(|r| r.intersects_ring(&t.footprint)) {
            return Ok(());
        }
        let Some(v) = db.vector(&a.space, key)? else {
            unembedded += 1;
            return Ok(());
        };
        let sims: Vec<f32> = label_vecs.iter().map(|l| l.iter().zip(&v).map(|(x, y)| x * y).sum()).collect();
        let (label, score) = argmax_softmax(&sims, a.temperature);
        // Footprints run clockwise (UL, UR, LR, LL); the geodesic area of a clockwise ring
        // is the rest of the globe, so orient it counter-clockwise first.
        let area_km2 = ring_polygon(&t.footprint).orient(Direction::Default).geodesic_area_unsigned() / 1e6;
        rows.push(Row { id: t.id, label, score, area_km2, lon, lat, time: t.time, footprint: t.footprint });
        Ok(())
    })?;
    if unembedded > 0 {
        eprintln!("{unembedded} tiles in the region have no vector in space '{}' and were left out; run graftdb embed", a.space);
    }

    // Summary: tiles and km² per label, labels in the order given.
    let mut per: Vec<(usize, f64)> = vec![(0, 0.0); labels.len()];
    for r in &rows {
        if let Some(p) = per.get_mut(r.label) {
            p.0 += 1;
            p.1 += r.area_km2;
        }
    }
    let total_area: f64 = rows.iter().map(|r| r.area_km2).sum();
    let summary = json!({
        "labels": labels.iter().zip(&per).map(|(l, (n, km2))| json!({"label": l, "tiles": n, "area_km2": km2})).collect::<Vec<_>>(),
        "tiles": rows.len(),
        "total_area_km2": total_area,
    });
    let label_of = |r: &Row| labels.get(r.label).map_or("", String::as_str);
    let row_json = |r: &Row| {
        json!({"id": r.id.to_json(), "label": label_of(r), "score": r.score, "area_km2": r.area_km2, "lon": r.lon, "lat": r.lat, "time": time_str(r.time)})
    };
    let summary_lines = || -> Vec<String> {
        let mut v = vec![format!("{:<24} {:>7} {:>14}", "label", "tiles", "area_km2")];
        for (l, (n, km2)) in labels.iter().zip(&per) {
            v.push(format!("{l:<24} {n:>7} {km2:>14.3}"));
        }
        v.push(format!("{:<24} {:>7} {total_area:>14.3}", "total", rows.len()));
        v
    };
    match a.format {
        Format::Table => {
            writeln!(out, "{:<28} {:<20} {:>7} {:>10} {:>11} {:>10}", "id", "label", "score", "area_km2", "lon", "lat")?;
            for r in &rows {
                writeln!(out, "{:<28} {:<20} {:>7.4} {:>10.4} {:>11.5} {:>10.5}", r.id.to_string(), label_of(r), r.score, r.area_km2, r.lon, r.lat)?;
            }
            writeln!(out)?;
            for l in summary_lines() {
                writeln!(out, "{l}")?;
            }
        }
        Format::Json => {
            let tiles: Vec<Value> = rows.iter().map(row_json).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&json!({"tiles": tiles, "summary": summary}))?)?;
        }
        Format::Geojson => {
            let feats: Vec<Value> = rows
                .iter()
                .map(|r| json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [r.footprint]}, "properties": row_json(r)}))
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&json!({"type": "FeatureCollection", "features": feats}))?)?;
            summary_lines().iter().for_each(|l| eprintln!("{l}"));
        }
        Format::Csv => {
            writeln!(out, "id,label,score,area_km2,lon,lat")?;
            for r in &rows {
                writeln!(out, "{},{},{},{},{},{}", csv_field(&r.id.to_string()), csv_field(label_of(r)), r.score, r.area_km2, r.lon, r.lat)?;
            }
            summary_lines().iter().for_each(|l| eprintln!("{l}"));
        }
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::argmax_softmax;

    #[test]
    fn softmax_picks_the_largest_and_sums_to_one() {
        let (i, p) = argmax_softmax(&[0.20, 0.25, 0.21], 100.0);
        assert_eq!(i, 1);
        let e = |x: f32| (100.0 * x).exp();
        let want = e(0.25) / (e(0.20) + e(0.25) + e(0.21));
        assert!((p - want).abs() < 1e-5, "{p} vs {want}");
    }
}
