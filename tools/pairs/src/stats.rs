//! `graft-pairs stats`: counts, photos-per-tile histogram and a GeoJSON coverage map.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Returns `(report, coverage FeatureCollection)` for the dataset in `out`.
pub fn stats(out: &Path) -> Result<(Value, Value)> {
    let mpath = out.join("manifest.json");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?)
            .with_context(|| format!("{} is not JSON", mpath.display()))?;
    anyhow::ensure!(
        manifest.get("format").and_then(Value::as_str) == Some(crate::build::FORMAT),
        "{}: not a {} manifest",
        mpath.display(),
        crate::build::FORMAT
    );
    let mut features = Vec::new();
    let mut hist: BTreeMap<usize, u64> = BTreeMap::new();
    let mut per_split: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for split in ["train", "test"] {
        let shards = manifest["shards"][split].as_array().cloned().unwrap_or_default();
        for shard in shards {
            let name = shard.as_str().context("a shard name is not a string")?;
            let path = out.join(name);
            let mut ar = tar::Archive::new(File::open(&path).with_context(|| format!("opening {}", path.display()))?);
            for e in ar.entries()? {
                let mut e = e?;
                let p = e.path()?.to_string_lossy().into_owned();
                if !p.ends_with(".json") {
                    continue;
                }
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)?;
                let m: Value = serde_json::from_slice(&buf).with_context(|| format!("{}:{p}", path.display()))?;
                let n = m["photos"].as_array().map_or(0, Vec::len);
                *hist.entry(n).or_default() += 1;
                let s = per_split.entry(split.to_owned()).or_default();
                s.0 += 1;
                s.1 += n as u64;
                let b: Vec<f64> =
                    m["bbox"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
                if b.len() == 4 {
                    features.push(json!({
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [[
                            [b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]
                        ]]},
                        "properties": {"tile_id": m["tile_id"], "split": split, "photos": n, "date": m["date"]},
                    }));
                }
            }
        }
    }
    let tiles: u64 = per_split.values().map(|v| v.0).sum();
    let photos: u64 = per_split.values().map(|v| v.1).sum();
    let report = json!({
        "tiles": tiles,
        "photos": photos,
        "splits": per_split.iter().map(|(k, v)| (k.clone(), json!({"tiles": v.0, "photos": v.1}))).collect::<serde_json::Map<_, _>>(),
        "photos_per_tile": hist.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "mean_photos_per_tile": if tiles > 0 { photos as f64 / tiles as f64 } else { 0.0 },
        "dropped": manifest["dropped"],
        "embedding_dim": manifest["embedding_dim"],
    });
    Ok((report, json!({"type": "FeatureCollection", "features": features})))
}
