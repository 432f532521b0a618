//! The `graftdb` binary end to end on real redb files: ingest Parquet, query with every
//! filter and format, join, check, export, and one clear error (naming the file, row or
//! argument) for each kind of bad input, with nothing already committed lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_graftdb"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run graftdb")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "graftdb {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "graftdb {args:?} should fail");
    let e = String::from_utf8(o.stderr).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one clear line, got: {e}");
    e
}

struct Rows {
    ids: Vec<i64>,
    lon: Vec<f64>,
    lat: Vec<f64>,
    emb: Vec<Vec<f32>>,
    geometry: Option<Vec<Vec<u8>>>,
    str_ids: Option<Vec<String>>,
}

fn write_parquet(path: &Path, r: &Rows) {
    let dim = r.emb.first().map_or(0, Vec::len) as i32;
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), dim);
    for v in &r.emb {
        b.values().append_slice(v);
        b.append(true);
    }
    let id: ArrayRef = match &r.str_ids {
        Some(s) => Arc::new(StringArray::from(s.clone())),
        None => Arc::new(Int64Array::from(r.ids.clone())),
    };
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        ("id", id),
        ("lon", Arc::new(Float64Array::from(r.lon.clone()))),
        ("lat", Arc::new(Float64Array::from(r.lat.clone()))),
        ("embedding", Arc::new(b.finish())),
    ];
    if let Some(g) = &r.geometry {
        cols.push(("geometry", Arc::new(BinaryArray::from_iter_values(g.iter()))));
    }
    let schema = Arc::new(Schema::new(cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|(_, a)| a).collect()).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn polygon_wkb(ring: &[[f64; 2]]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(ring.len() as u32).to_le_bytes());
    for [x, y] in ring {
        out.extend_from_slice(&x.to_le_bytes());
        out.extend_from_slice(&y.to_le_bytes());
    }
    out
}

/// A grid of photos around (10, 50): id i at lon 10 + (i % 10) * 0.01, lat 50 + (i / 10) * 0.01,
/// vector pointing along axis i % 4.
fn photos(n: i64) -> Rows {
    let ids: Vec<i64> = (0..n).collect();
    Rows {
        lon: ids.iter().map(|i| 10.0 + (i % 10) as f64 * 0.01).collect(),
        lat: ids.iter().map(|i| 50.0 + (i / 10) as f64 * 0.01).collect(),
        emb: ids.iter().map(|i| (0..4).map(|d| if d == (i % 4) as usize { 1.0 } else { 0.1 }).collect()).collect(),
        ids,
        geometry: None,
        str_ids: None,
    }
}

fn setup(dir: &Path) -> PathBuf {
    let db = dir.join("db");
    ok(&["create", db.to_str().unwrap()]);
    let p = dir.join("photos.parquet");
    write_parquet(&p, &photos(100));
    ok(&["ingest", "vectors", db.to_str().unwrap(), p.to_str().unwrap(), "--space", "s"]);
    db
}

#[test]
fn query_filters_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let d = db.to_str().unwrap();
    let q = dir.path().join("q.json");
    std::fs::write(&q, "[1, 0, 0, 0]").unwrap();
    let qs = q.to_str().unwrap();
    // bbox around the first two rows of the grid: ids 0..20; best are multiples of 4.
    let out = ok(&["query", d, "--space", "s", "--vector", qs, "--bbox", "9.999,49.999,10.095,50.011", "-k", "3", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<i64> = v.as_array().unwrap().iter().map(|h| h["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| i % 4 == 0 && *i < 20), "{ids:?}");
    for h in v.as_array().unwrap() {
        assert!(h["score"].as_f64().unwrap() > 0.9);
        assert_eq!(h["geohash"].as_str().unwrap().len(), 12);
    }
    // Radius: distance is returned and within the radius.
    let out = ok(&["query", d, "--space", "s", "--vector", qs, "--near", "50.0,10.0", "--radius-km", "1.5", "-k", "100", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hits = v.as_array().unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h["distance_km"].as_f64().unwrap() <= 1.5));
    // Brute-force count of grid points within 1.5 km, using the haversine formula here.
    let expect = (0..100)
        .filter(|i| {
            let (lon, lat) = (10.0 + (i % 10) as f64 * 0.01, 50.0 + (i / 10) as f64 * 0.01);
            let (p1, p2) = (50f64.to_radians(), lat.to_radians());
            let a = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * ((lon - 10.0f64).to_radians() / 2.0).sin().powi(2);
            2.0 * 6371.0088 * a.sqrt().asin() <= 1.5
        })
        .count();
    assert_eq!(hits.len(), expect);
    // Polygon (boundary included), geohash, GeoJSON and CSV output.
    let out = ok(&["query", d, "--space", "s", "--vector", qs, "--polygon", "POLYGON((10 50,10.02 50,10.02 50.02,10 50.02,10 50))", "-k", "50", "--format", "geojson"]);
    let fc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fc["type"], "FeatureCollection");
    assert_eq!(fc["features"].as_array().unwrap().len(), 9, "3×3 grid points on or inside the square");
    let out = ok(&["query", d, "--space", "s", "--vector", qs, "--geohash", "u0", "-k", "5", "--format", "csv"]);
    assert!(out.starts_with("rank,id,kind,score"));
    assert_eq!(out.lines().count(), 6);
    // A patch-level knob on an image-level query is refused, naming it.
    let err = fails(&["query", d, "--space", "s", "--vector", qs, "--max-tiles", "4"]);
    assert!(err.contains("--max-tiles"), "{err}");
    // The image level's cap is taken (a base this small keeps no partitions: the exact answer)
    // and a cap of 0 is refused, naming it.
    let capped = ok(&["query", d, "--space", "s", "--vector", qs, "-k", "5", "--max-partitions", "2", "--format", "json"]);
    assert_eq!(capped, ok(&["query", d, "--space", "s", "--vector", qs, "-k", "5", "--exact", "--format", "json"]));
    let o = run(&["query", d, "--space", "s", "--vector", qs, "--max-partitions", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.lines().next().is_some_and(|l| l.contains("--max-partitions")), "{err}");
    // Batch queries: one JSON line per query, in order.
    let qq = dir.path().join("qq.json");
    std::fs::write(&qq, "[[1,0,0,0],[0,1,0,0]]").unwrap();
    let out = ok(&["query", d, "--space", "s", "--vectors", qq.to_str().unwrap(), "-k", "2"]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1][0]["id"].as_i64().unwrap() % 4, 1);
    // --explain names the path on stderr.
    let o = run(&["query", d, "--space", "s", "--vector", qs, "-k", "1", "--explain"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("path=exact"));
    assert!(ok(&["check", d]).contains("ok"));
}

#[test]
fn tiles_join_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let d = db.to_str().unwrap();
    let ring = [[9.995, 50.025], [10.045, 50.025], [10.045, 49.995], [9.995, 49.995], [9.995, 50.025]];
    let tiles = Rows {
        ids: vec![0],
        lon: vec![10.02],
        lat: vec![50.01],
        emb: vec![vec![1.0, 1.0, 0.0, 0.0]],
        geometry: Some(vec![polygon_wkb(&ring)]),
        str_ids: Some(vec!["T1".into()]),
    };
    let p = dir.path().join("tiles.parquet");
    write_parquet(&p, &tiles);
    ok(&["ingest", "vectors", d, p.to_str().unwrap(), "--space", "s", "--kind", "tile"]);
    let out_path = dir.path().join("pairs.jsonl");
    ok(&["join", d, "--out", out_path.to_str().unwrap()]);
    let pairs = std::fs::read_to_string(&out_path).unwrap();
    // Photos with lon in 10.00..=10.04 (5 columns) and lat 50.00..=50.02 (3 rows).
    assert_eq!(pairs.lines().count(), 15, "{pairs}");
    assert!(pairs.lines().all(|l| l.contains("\"tile_id\":\"T1\"")));
    // A bbox that only touches the tile's footprint still matches the tile.
    let q = dir.path().join("q.json");
    std::fs::write(&q, "[1, 1, 0, 0]").unwrap();
    let out = ok(&["query", d, "--space", "s", "--vector", q.to_str().unwrap(), "--bbox", "10.045,50.025,11,51", "--kind", "tile", "--format", "json"]);
    assert!(out.contains("\"T1\""), "{out}");
    let pq = dir.path().join("out.parquet");
    assert!(ok(&["export", d, pq.to_str().unwrap()]).contains("exported 101"));
}

#[test]
fn bad_input_gets_one_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let d = db.to_str().unwrap();
    let q = dir.path().join("q.json");
    std::fs::write(&q, "[1, 0, 0, 0]").unwrap();
    let qs = q.to_str().unwrap();
    let count = || {
        let out = ok(&["query", d, "--space", "s", "--vector", qs, "-k", "1000", "--format", "json", "--exact"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().len()
    };
    assert_eq!(count(), 100);

    // Latitude out of range at row 3: named, and the whole file is refused.
    let mut r = photos(5);
    r.ids = (1000..1005).collect();
    r.lat[2] = 91.0;
    let p = dir.path().join("badlat.parquet");
    write_parquet(&p, &r);
    let e = fails(&["ingest", "vectors", d, p.to_str().unwrap(), "--space", "s"]);
    assert!(e.contains("badlat.parquet") && e.contains("row 3") && e.contains("91"), "{e}");
    // NaN embedding.
    let mut r = photos(5);
    r.ids = (1000..1005).collect();
    r.emb[1][2] = f32::NAN;
    let p = dir.path().join("nan.parquet");
    write_parquet(&p, &r);
    let e = fails(&["ingest", "vectors", d, p.to_str().unwrap(), "--space", "s"]);
    assert!(e.contains("nan.parquet") && e.contains("row 2"), "{e}");
    // Wrong length for the space.
    let mut r = photos(2);
    r.ids = vec![2000, 2001];
    r.emb = vec![vec![1.0; 5], vec![1.0; 5]];
    let p = dir.path().join("dim5.parquet");
    write_parquet(&p, &r);
    let e = fails(&["ingest", "vectors", d, p.to_str().unwrap(), "--space", "s"]);
    assert!(e.contains("dim") || e.contains("dimension"), "{e}");
    // Duplicate id against committed data.
    let p = dir.path().join("dup.parquet");
    write_parquet(&p, &photos(3));
    let e = fails(&["ingest", "vectors", d, p.to_str().unwrap(), "--space", "s"]);
    assert!(e.contains("dup.parquet") && e.contains("row 1") && e.contains("duplicate id 0"), "{e}");
    assert_eq!(count(), 100, "nothing committed was lost and nothing partial landed");

    // Unknown space, open polygon, bad bbox, bad time, bad geohash, wrong query length.
    assert!(fails(&["query", d, "--space", "nope", "--vector", qs]).contains("unknown embedding space 'nope'"));
    assert!(fails(&["query", d, "--space", "s", "--vector", qs, "--polygon", "POLYGON((0 0,1 0,1 1,0 1))"]).contains("does not close"));
    assert!(fails(&["query", d, "--space", "s", "--vector", qs, "--bbox", "0,0,200,1"]).contains("--bbox"));
    assert!(fails(&["query", d, "--space", "s", "--vector", qs, "--from", "yesterday"]).contains("--from"));
    assert!(fails(&["query", d, "--space", "s", "--vector", qs, "--geohash", "u0a"]).contains("--geohash"));
    std::fs::write(&q, "[1, 0, 0]").unwrap();
    assert!(fails(&["query", d, "--space", "s", "--vector", qs]).contains("3 dimensions"));
    assert_eq!(count_after_fix(&q, d), 100);
}

fn count_after_fix(q: &Path, d: &str) -> usize {
    std::fs::write(q, "[1, 0, 0, 0]").unwrap();
    let out = ok(&["query", d, "--space", "s", "--vector", q.to_str().unwrap(), "-k", "1000", "--format", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().len()
}

#[test]
fn damaged_and_newer_databases_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let d = db.to_str().unwrap();
    // A truncated redb file.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let bytes = std::fs::read(db.join("graftdb.redb")).unwrap();
    std::fs::write(copy.join("graftdb.redb"), &bytes[..bytes.len() / 3]).unwrap();
    let e = fails(&["stats", copy.to_str().unwrap()]);
    assert!(e.contains("graftdb.redb"), "{e}");
    // Garbage where the redb file should be.
    std::fs::write(copy.join("graftdb.redb"), b"this is not a database at all, just text").unwrap();
    let e = fails(&["stats", copy.to_str().unwrap()]);
    assert!(e.contains("graftdb.redb"), "{e}");
    // Not a database directory.
    let e = fails(&["stats", dir.path().to_str().unwrap()]);
    assert!(e.contains("not a graftdb database"), "{e}");
    // A damaged derived snapshot is rebuilt from redb: queries still answer, check passes.
    for f in std::fs::read_dir(db.join("index")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|x| x == "arena") {
            std::fs::write(&p, b"garbage").unwrap();
        }
    }
    assert!(ok(&["check", d]).contains("ok"));
    // A newer format version is named.
    graftdb_test_support_bump_version(&db);
    let e = fails(&["stats", d]);
    assert!(e.contains("format version 99"), "{e}");
}

/// Rewrites the format version through redb itself, as a newer graftdb would have.
fn graftdb_test_support_bump_version(db: &Path) {
    let r = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(db.join("graftdb.redb")).unwrap();
    let w = r.begin_write().unwrap();
    {
        let mut t = w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta")).unwrap();
        t.insert("format_version", 99u32.to_le_bytes().as_slice()).unwrap();
    }
    w.commit().unwrap();
}

/// A second process reads while this one holds an open write transaction, and sees only
/// committed data; a second writer in another process gets a clear "locked" error.
#[test]
fn readers_in_other_processes_proceed_during_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path());
    let d = db.to_str().unwrap();
    let q = dir.path().join("q.json");
    std::fs::write(&q, "[1, 0, 0, 0]").unwrap();
    let qs = q.to_str().unwrap();
    let handle = graftdb::Db::open(&db).unwrap();
    let mut w = handle.begin_write().unwrap();
    let p = graftdb::Photo { id: graftdb::RecordId::Int(5000), lon: 10.0, lat: 50.0, accuracy: None, time: None, source: "t".into(), license: None, url: None, user: None };
    let key = w.insert(graftdb::Record::Photo(p)).unwrap();
    w.put_vector("s", key, &[1.0, 0.0, 0.0, 0.0]).unwrap();
    // Reader in another process, during the write: sees the 100 committed records only.
    let count = |extra: &[&str]| {
        let mut args = vec!["query", d, "--space", "s", "--vector", qs, "-k", "1000", "--format", "json"];
        args.extend_from_slice(extra);
        let out = ok(&args);
        serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().len()
    };
    assert_eq!(count(&[]), 100);
    assert!(ok(&["stats", d]).contains("\"photos\": 100"));
    // A writer in another process is refused while this transaction is open.
    let p2 = dir.path().join("more.parquet");
    let mut r = photos(2);
    r.ids = vec![7000, 7001];
    write_parquet(&p2, &r);
    let e = fails(&["ingest", "vectors", d, p2.to_str().unwrap(), "--space", "s"]);
    assert!(e.contains("locked"), "{e}");
    w.commit().unwrap();
    assert_eq!(count(&[]), 101, "the commit is visible to a new reader");
    drop(handle);
}
