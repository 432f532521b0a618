//! `graft-pairs build` end to end on the real Landsat scene from `tools/fetch-data.sh`:
//! a database with raster tiles, photos and a photo space is built twice with one seed and
//! must give byte-identical manifests and shards. Skips (with a message) when the data is absent.

use graft_pairs::build::{build, BuildOptions};
use graftdb::ingest::raster::{tile_raster, RasterOptions};
use graftdb::{Db, Level, Metric, Photo, Record, RecordId};
use std::path::{Path, PathBuf};

const LANDSAT: &str = "../../data/landsat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF";

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("graft-pairs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn make_db(dir: &Path, raster: &Path) -> f64 {
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
        w.insert(Record::Tile(t.clone())).unwrap();
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

#[test]
fn build_twice_is_identical_and_readable() {
    let raster = Path::new(env!("CARGO_MANIFEST_DIR")).join(LANDSAT);
    if !raster.is_file() {
        eprintln!("skipped: {} is missing (run tools/fetch-data.sh)", raster.display());
        return;
    }
    let dbdir = tmp("db");
    let gsd = make_db(&dbdir, &raster);
    let opts = BuildOptions {
        gsd,
        tile_px: 224,
        max_photos: 25,
        test_fraction: 0.25,
        block: 4,
        seed: 11,
        space: Some("clip".into()),
        shard_size: 5,
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
