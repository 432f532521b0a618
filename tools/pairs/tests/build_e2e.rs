//! `graft-pairs build` end to end on the real Landsat scene from `tools/fetch-data.sh`:
//! a database with raster tiles, photos and a photo space is built twice with one seed and
//! must give byte-identical manifests and shards. Skips (with a message) when the data is absent.

use graft_pairs::build::{build, BuildOptions};
use graftdb::ingest::raster::{tile_raster, RasterOptions};
use graftdb::{Db, Level, Metric, Photo, Record, RecordId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LANDSAT: &str = "../../data/landsat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF";

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("graft-pairs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn make_db(dir: &Path, raster: &Path, with_tiles: bool) -> f64 {
    let report = tile_raster(raster, &RasterOptions::default()).unwrap();
    let gsd = report.gsd_m;
    let db = Db::create(dir).unwrap();
    db.create_space("clip", 8, Metric::Cos, Level::Image).unwrap();
    let mut w = db.begin_write().unwrap();
    let mut centres = Vec::new();
    for (i, t) in report.tiles.iter().enumerate() {
        if i % 7 == 3 && centres.len() < 40 {
            let n = (t.footprint.len() - 1) as f64;
            let cx = t.footprint[..4].iter().map(|c| c[0]).sum::<f64>() / n;
            let cy = t.footprint[..4].iter().map(|c| c[1]).sum::<f64>() / n;
            centres.push((cx, cy));
        }
        if with_tiles {
            w.insert(Record::Tile(t.clone())).unwrap();
        }
    }
    let day = 1_589_760_000_000_000i64;
    let mut id = 1000i64;
    for (ci, (cx, cy)) in centres.iter().enumerate() {
        for j in 0..(3 + ci % 5) {
            id += 1;
            let d = gsd * 20.0 / 111_320.0 * j as f64;
            let rec = Record::Photo(Photo {
                id: RecordId::Int(id),
                lon: cx + d,
                lat: cy - d,
                accuracy: Some(16),
                time: Some(day + j as i64 * 86_400_000_000),
                source: "test".into(),
                license: Some("CC-BY".into()),
                url: None,
                user: None,
            });
            let key = w.insert(rec).unwrap();
            if j != 1 {
                let v: Vec<f32> = (0..8).map(|k| (id as f32 * 0.01 + k as f32).sin()).collect();
                w.put_vector("clip", key, &v).unwrap();
            }
        }
    }
    // Photos far from the raster (no coverage), one of them without a time.
    for (j, (lon, lat)) in [(10.0, 45.0), (10.0001, 45.0), (-120.0, 40.0)].into_iter().enumerate() {
        id += 1;
        let rec = Record::Photo(Photo {
            id: RecordId::Int(id),
            lon,
            lat,
            accuracy: None,
            time: if j == 2 { None } else { Some(day) },
            source: "test".into(),
            license: None,
            url: None,
            user: None,
        });
        let key = w.insert(rec).unwrap();
        w.put_vector("clip", key, &[1.0; 8]).unwrap();
    }
    w.commit().unwrap();
    gsd
}

/// The Landsat scene, or `None` (with a message) when tools/fetch-data.sh has not run.
fn landsat() -> Option<PathBuf> {
    let raster = Path::new(env!("CARGO_MANIFEST_DIR")).join(LANDSAT);
    if raster.is_file() {
        Some(raster)
    } else {
        eprintln!("skipped: {} is missing (run tools/fetch-data.sh)", raster.display());
        None
    }
}

#[test]
fn build_twice_is_identical_and_readable() {
    let Some(raster) = landsat() else { return };
    let dbdir = tmp("db");
    let gsd = make_db(&dbdir, &raster, true);
    let opts = BuildOptions {
        gsd,
        tile_px: 224,
        max_photos: 25,
        test_fraction: 0.25,
        block: 4,
        seed: 11,
        space: Some("clip".into()),
        shard_size: 5,
        rasters: vec![],
    };
    let (o1, o2) = (tmp("out1"), tmp("out2"));
    let m1 = build(&dbdir, &o1, &opts).unwrap();
    let m2 = build(&dbdir, &o2, &opts).unwrap();
    assert_eq!(m1, m2);
    assert_eq!(m1["format"], "graft-pairs/1");
    assert_eq!(m1["embedding_dim"], 8);
    let train = m1["counts"]["train"]["tiles"].as_u64().unwrap();
    let test = m1["counts"]["test"]["tiles"].as_u64().unwrap();
    assert!(train > 0 && test > 0, "manifest: {m1:#}");
    // One photo in each tile has no vector.
    assert!(m1["dropped"]["photos"]["no vector"].as_u64().unwrap() > 0);
    // The far-away photos form 2 tiles (one per bin) with no raster under them.
    assert_eq!(m1["dropped"]["tiles"]["no raster coverage"], 2, "manifest: {m1:#}");
    assert_eq!(m1["dropped"]["photos"]["tile dropped"], 3);
    assert_eq!(m1["counts"]["photos_without_time"], 1);
    assert_eq!(std::fs::read(o1.join("manifest.json")).unwrap(), std::fs::read(o2.join("manifest.json")).unwrap());
    let mut n_samples = 0;
    for split in ["train", "test"] {
        for s in m1["shards"][split].as_array().unwrap() {
            let s = s.as_str().unwrap();
            assert!(s.starts_with(split) && s.ends_with(".tar"));
            let a = std::fs::read(o1.join(s)).unwrap();
            assert_eq!(a, std::fs::read(o2.join(s)).unwrap(), "shard {s} differs between builds");
            let mut ar = tar::Archive::new(a.as_slice());
            let mut names = Vec::new();
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
                if name.ends_with(".png") {
                    assert_eq!(&buf[..8], b"\x89PNG\r\n\x1a\n");
                    n_samples += 1;
                }
                if name.ends_with(".json") {
                    let m: serde_json::Value = serde_json::from_slice(&buf).unwrap();
                    assert_eq!(m["split"], split);
                    for p in m["photos"].as_array().unwrap() {
                        let off = p["offset"].as_array().unwrap();
                        assert!(off.iter().all(|v| v.as_u64().unwrap() < 224));
                    }
                }
                names.push(name);
            }
            assert_eq!(names.len() % 3, 0);
        }
    }
    assert_eq!(n_samples as u64, train + test);
    let (report, cov) = graft_pairs::stats::stats(&o1).unwrap();
    assert_eq!(report["tiles"].as_u64().unwrap(), train + test);
    assert_eq!(cov["features"].as_array().unwrap().len() as u64, train + test);
    if std::env::var_os("GRAFT_PAIRS_KEEP").is_some() {
        eprintln!("kept: {} {}", dbdir.display(), o1.display());
        return;
    }
    for d in [dbdir, o1, o2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Every member of every shard of a built dataset, by name.
fn members(out: &Path, manifest: &serde_json::Value) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for split in ["train", "test"] {
        for s in manifest["shards"][split].as_array().unwrap() {
            let bytes = std::fs::read(out.join(s.as_str().unwrap())).unwrap();
            let mut ar = tar::Archive::new(bytes.as_slice());
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
                all.insert(name, buf);
            }
        }
    }
    all
}

#[test]
fn raster_given_on_the_command_line_cuts_the_same_tiles_as_one_in_the_database() {
    let Some(raster) = landsat() else { return };
    let (with, without) = (tmp("db-with-tiles"), tmp("db-without-tiles"));
    let gsd = make_db(&with, &raster, true);
    make_db(&without, &raster, false);
    let opts = BuildOptions { gsd, tile_px: 224, max_photos: 25, test_fraction: 0.25, block: 4, seed: 11, space: Some("clip".into()), shard_size: 5, rasters: vec![] };
    let (oa, ob, oc) = (tmp("out-db"), tmp("out-raster"), tmp("out-none"));
    let ma = build(&with, &oa, &opts).unwrap();
    let mb = build(&without, &ob, &BuildOptions { rasters: vec![raster.clone()], ..opts.clone() }).unwrap();
    // Without the flag, the tile-less database has no coverage at all.
    let mc = build(&without, &oc, &opts).unwrap();
    assert_eq!(mc["counts"]["train"]["tiles"].as_u64().unwrap() + mc["counts"]["test"]["tiles"].as_u64().unwrap(), 0, "{mc:#}");
    assert_eq!(ma["counts"], mb["counts"]);
    assert_eq!(ma["dropped"], mb["dropped"]);
    let (a, b) = (members(&oa, &ma), members(&ob, &mb));
    assert!(!a.is_empty());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        if name.ends_with(".json") {
            let mut ja: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let jb: serde_json::Value = serde_json::from_slice(&b[name]).unwrap();
            assert!(ja["source"]["tile_key"].is_u64() && jb["source"]["tile_key"].is_null(), "{name}");
            ja["source"]["tile_key"] = serde_json::Value::Null;
            assert_eq!(ja, jb, "{name}");
        } else {
            assert!(bytes == &b[name], "{name} differs");
        }
    }
    for d in [with, without, oa, ob, oc] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Overlapping scenes: each tile is cut from the scene closest in time to its photos' median
/// date, and among scenes equally close, from the one with the least cloud.
#[test]
fn overlapping_scenes_pick_the_closest_date_then_the_least_cloud() {
    let Some(raster) = landsat() else { return };
    let dbdir = tmp("db-scenes");
    let gsd = make_db(&dbdir, &raster, false);
    let report = tile_raster(&raster, &RasterOptions::default()).unwrap();
    let day = 86_400_000_000i64;
    // The photos of make_db are dated 2020-05-18 plus 0-4 days; medians fall on those days.
    let base = 1_589_760_000_000_000i64;
    // (time, cloud): far in time but clear; near and cloudy; near and nearly clear (the pick).
    let scenes = [(base - 60 * day, 0.0f32), (base + day, 40.0), (base + day, 0.5)];
    let mut keys = Vec::new();
    {
        let db = Db::open(&dbdir).unwrap();
        let mut w = db.begin_write().unwrap();
        for (s, (time, cloud)) in scenes.iter().enumerate() {
            let mut ks = std::collections::HashSet::new();
            for (i, t) in report.tiles.iter().enumerate() {
                let mut t = t.clone();
                t.id = RecordId::Str(format!("scene{s}-{i}"));
                t.time = Some(*time);
                t.cloud_cover = Some(*cloud);
                ks.insert(w.insert(Record::Tile(t)).unwrap());
            }
            keys.push(ks);
        }
        w.commit().unwrap();
    }
    let out = tmp("out-scenes");
    let opts = BuildOptions { gsd, tile_px: 224, max_photos: 25, test_fraction: 0.0, block: 1000, seed: 0, space: Some("clip".into()), shard_size: 1000, rasters: vec![] };
    let m = build(&dbdir, &out, &opts).unwrap();
    let all = members(&out, &m);
    let mut n = 0;
    for (name, bytes) in &all {
        if name.ends_with(".json") {
            let j: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let k = j["source"]["tile_key"].as_u64().unwrap();
            assert!(keys[2].contains(&k), "{name}: cut from {k}, not from the near, nearly clear scene");
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} tiles");
    let _ = std::fs::remove_dir_all(dbdir);
    let _ = std::fs::remove_dir_all(out);
}
