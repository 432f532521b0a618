//! `graftdb serve` over loopback, on a real database: rasters ingested through GDAL (the
//! RMNP GeoTIFF by file reference, the Haiti scene with stored PNG pixels), embedded with
//! the tiny bundle through ONNX Runtime, served by the real binary. Every endpoint answers
//! as `schema/http.md` says; bad input of every kind the issue names (malformed JSON, huge
//! bodies, k = 0, k = 10⁶, 10⁵-vertex polygons, NaN coordinates) gets one 4xx JSON error
//! naming the field, and the server still answers afterwards. A write by another process
//! during serving (new rows, a new space) is visible to the next query without a restart.

#[path = "support/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::process::Command;

use graftdb::{Db, Level, Metric, Photo, Record, RecordId};
use http::{get, post_json, request, Server};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_graftdb");

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel);
    assert!(p.exists(), "{} is missing: run tools/setup.sh (it fetches the test imagery and exports the bundles)", p.display());
    p
}

fn graftdb(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).output().expect("run graftdb");
    assert!(o.status.success(), "graftdb {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 12 RMNP tiles (file windows) + the Haiti tiles (stored PNG), embedded with `tiny`.
fn make_db(dir: &Path) -> PathBuf {
    let db = dir.join("db");
    let d = db.to_str().unwrap();
    graftdb(&["create", d]);
    graftdb(&["ingest", "raster", d, data("rmnp/rmnp-rgb.tif").to_str().unwrap(), "--tile-px", "112"]);
    graftdb(&["ingest", "raster", d, data("haiti/rgbn.tif").to_str().unwrap(), "--store-pixels"]);
    graftdb(&["embed", d, "--model", data("bundles/tiny").to_str().unwrap(), "--space", "tiny", "--what", "tiles,patches", "--device", "cpu"]);
    db
}

fn tiny() -> String {
    data("bundles/tiny").display().to_string()
}

/// The error of a refused request: its status is 4xx and it names `field` (`""`: no field).
#[track_caller]
fn refused(r: &http::Response, status: u16, field: &str) -> String {
    assert_eq!(r.status, status, "expected {status} naming {field}: {}", r.text());
    let e = r.json();
    let want = if field.is_empty() { Value::Null } else { json!(field) };
    assert_eq!(e["error"]["field"], want, "{e}");
    let msg = e["error"]["message"].as_str().expect("a message").to_string();
    assert!(!msg.is_empty());
    msg
}

const RMNP_BBOX: [f64; 4] = [-106.0, 40.0, -105.0, 41.0];

#[test]
fn api_answers_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path());
    let mut srv = Server::start(BIN, &db, &["--model", &tiny()]);
    let a = srv.addr;

    // healthz, stats, openapi.
    assert_eq!(get(a, "/healthz").json()["status"], "ok");
    let st = get(a, "/stats").json();
    let tiles = st["tiles"].as_u64().unwrap();
    assert!(tiles >= 13, "{st}");
    assert_eq!(st["server"]["text_queries"], true);
    assert_eq!(st["server"]["limits"]["max_k"], 1000);
    assert!(st["extent"].as_array().is_some_and(|e| e.len() == 4), "{st}");
    let api = get(a, "/openapi.json").json();
    assert_eq!(api["openapi"], "3.1.0");
    for p in ["/query", "/tiles", "/tiles/{id}.png", "/stats", "/healthz"] {
        assert!(api["paths"][p].is_object(), "openapi lists {p}");
    }

    // Text at image level inside a bbox: k hits, all inside, best first.
    let r = post_json(a, "/query", &json!({"text": "a lake", "bbox": RMNP_BBOX, "k": 5}));
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let hits = j["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5, "{j}");
    assert!(hits.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    assert!(hits.iter().all(|h| h["lon"].as_f64().unwrap() > -106.0 && h["lon"].as_f64().unwrap() < -105.0), "{j}");
    assert_eq!(j["explain"]["path"], "exact");
    // A handful of rows: no sketch pass (it starts at 4,096 rows in the cover).
    assert_eq!(j["explain"]["sketch_skips"], 0, "{j}");
    // The same query as the CLI gives the same ids in the same order.
    let cli: Value = serde_json::from_str(&graftdb(&[
        "query", db.to_str().unwrap(), "--space", "tiny", "--text", "a lake", "--model", &tiny(), "--bbox", "-106,40,-105,41", "-k", "5", "--format", "json",
    ]))
    .unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|h| h["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&j["hits"]), ids(&cli));

    // GeoJSON at patch level, with a polygon (GeoJSON object), the bbox as text too.
    let poly = json!({"type": "Polygon", "coordinates": [[[-106.0, 40.0], [-105.0, 40.0], [-105.0, 41.0], [-106.0, 41.0], [-106.0, 40.0]]]});
    let r = post_json(a, "/query", &json!({"text": "a glacier", "level": "patch", "polygon": poly, "bbox": "-106,40,-105,41", "k": 7, "format": "geojson"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let fc = r.json();
    assert_eq!(fc["type"], "FeatureCollection");
    assert_eq!(fc["features"].as_array().unwrap().len(), 7);
    assert_eq!(fc["features"][0]["geometry"]["type"], "Polygon");
    assert!(fc["features"][0]["properties"]["patch"]["row"].is_u64(), "{fc}");
    assert_eq!(fc["explain"]["path"], "patch-exact");
    // A cap on the tiles visited is taken (its semantics: tests/engine_patch.rs).
    let r = post_json(a, "/query", &json!({"text": "a glacier", "level": "patch", "k": 7, "max_tiles": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["hits"].as_array().unwrap().len(), 7);
    assert!(["patch-exact", "patch-probe"].contains(&r.json()["explain"]["path"].as_str().unwrap()), "{}", r.text());

    // A cap on the partitions is taken at the image level (its semantics: tests/engine_parts.rs);
    // this base is too small to keep partitions, so the answer is the exact one.
    let r = post_json(a, "/query", &json!({"text": "a glacier", "k": 5, "max_partitions": 3}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&r.json()["hits"]), ids(&post_json(a, "/query", &json!({"text": "a glacier", "k": 5, "exact": true})).json()["hits"]));

    // like (an id typed as text) leaves the record out; vector; near/radius; geohash; time.
    let first = hits[0]["id"].as_str().unwrap().to_string();
    let r = post_json(a, "/query", &json!({"like": first, "k": 3}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["hits"].as_array().unwrap().iter().all(|h| h["id"] != first.as_str()));
    let v: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
    let r = post_json(a, "/query", &json!({"vector": v, "near": [40.4, -105.6], "radius_km": 30, "k": 2, "space": "tiny"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["hits"].as_array().unwrap().iter().all(|h| h["distance_km"].as_f64().unwrap() <= 30.0 + 10.0));
    let r = post_json(a, "/query", &json!({"text": "rock", "geohash": "9xh", "from": "2000-01-01", "to": "2100-01-01", "kind": "tile"}));
    assert_eq!(r.status, 200, "{}", r.text());

    // Tile pixels: by file reference (GDAL) and stored PNG; ids with '/' percent-encoded.
    let list = get(a, "/tiles?bbox=-180,-90,180,90&limit=50").json();
    let feats = list["features"].as_array().unwrap();
    assert_eq!(feats.len() as u64, tiles, "{list}");
    assert_eq!(list["truncated"], false);
    let mut seen_sources = std::collections::HashSet::new();
    for f in feats {
        let id = f["properties"]["id"].as_str().unwrap();
        let src = f["properties"]["source"].as_str().unwrap().to_string();
        if !seen_sources.insert(src) {
            continue;
        }
        let r = get(a, &format!("/tiles/{}.png", id.replace('/', "%2F")));
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("image/png"));
        let img = image::load_from_memory(&r.body).expect("a PNG");
        assert!(img.width() > 0);
    }
    assert_eq!(seen_sources.len(), 2, "both pixel kinds checked");
    assert!(get(a, "/tiles?limit=3").json()["truncated"] == true);
    refused(&get(a, "/tiles/no-such-tile.png"), 404, "id");
    refused(&get(a, "/tiles?bbox=1,2,3"), 400, "bbox");
    refused(&get(a, "/nowhere"), 404, "");

    // Bad input: one clear 4xx naming the field.
    let bad = |body: &[u8]| request(a, "POST", "/query", body).expect("an answer");
    let m = refused(&bad(b"{\"text\": \"a lake\", "), 400, "");
    assert!(m.contains("not valid JSON"), "{m}");
    assert_eq!(bad(b"not json").json()["error"]["field"], Value::Null);
    refused(&bad(br#"{"text": "x", "bbox": [NaN, 40, -105, 41]}"#), 400, "bbox");
    refused(&post_json(a, "/query", &json!({"text": "x", "bbox": "NaN,40,-105,41"})), 400, "bbox");
    refused(&post_json(a, "/query", &json!({"text": "x", "near": "nan,1", "radius_km": 3})), 400, "near");
    refused(&post_json(a, "/query", &json!({"text": "x", "bbox": [-106, 40, -105]})), 400, "bbox");
    refused(&post_json(a, "/query", &json!({"text": "x", "bbox": [-106, 95, -105, 41]})), 400, "bbox");
    refused(&bad(br#"{"text": "x", "bbox": [1e999, 40, -105, 41]}"#), 400, "bbox");
    refused(&post_json(a, "/query", &json!({"text": "x", "k": 0})), 400, "k");
    refused(&post_json(a, "/query", &json!({"text": "x", "k": 1_000_000})), 400, "k");
    refused(&post_json(a, "/query", &json!({"text": "x", "k": -1})), 400, "k");
    refused(&post_json(a, "/query", &json!({"text": "x", "k": "ten"})), 400, "k");
    refused(&post_json(a, "/query", &json!({"text": "x", "level": "patch", "max_tiles": 0})), 400, "max_tiles");
    refused(&post_json(a, "/query", &json!({"text": "x", "level": "patch", "max_tiles": -3})), 400, "max_tiles");
    refused(&post_json(a, "/query", &json!({"text": "x", "max_tiles": 5})), 400, "max_tiles");
    refused(&post_json(a, "/query", &json!({"text": "x", "max_partitions": 0})), 400, "max_partitions");
    refused(&post_json(a, "/query", &json!({"text": "x", "level": "patch", "max_partitions": 4})), 400, "max_partitions");
    refused(&post_json(a, "/query", &json!({"text": "x", "radius_km": 5})), 400, "radius_km");
    refused(&post_json(a, "/query", &json!({"text": "x", "from": "2021-02-01", "to": "2021-01-01"})), 400, "from");
    refused(&post_json(a, "/query", &json!({"text": "x", "to": "someday"})), 400, "to");
    refused(&post_json(a, "/query", &json!({"text": "x", "geohash": "u0a"})), 400, "geohash");
    refused(&post_json(a, "/query", &json!({"text": "x", "space": "nope"})), 400, "space");
    refused(&post_json(a, "/query", &json!({"text": "x", "level": "pixel"})), 400, "level");
    refused(&post_json(a, "/query", &json!({"text": "x", "kind": "boat"})), 400, "kind");
    refused(&post_json(a, "/query", &json!({"text": "x", "format": "xml"})), 400, "format");
    refused(&post_json(a, "/query", &json!({"text": "x", "colour": "red"})), 400, "colour");
    refused(&post_json(a, "/query", &json!({"k": 3})), 400, "text");
    refused(&post_json(a, "/query", &json!({"text": "x", "like": 5})), 400, "text");
    refused(&post_json(a, "/query", &json!({"text": ""})), 400, "text");
    refused(&post_json(a, "/query", &json!({"text": "x".repeat(5000)})), 400, "text");
    refused(&post_json(a, "/query", &json!({"like": "no-such-id"})), 400, "like");
    refused(&post_json(a, "/query", &json!({"vector": [1.0, 2.0]})), 400, "vector");
    refused(&post_json(a, "/query", &json!({"vector": vec![0.0; 64]})), 400, "vector");
    refused(&bad(br#"{"vector": [1e300]}"#), 400, "vector");
    refused(&post_json(a, "/query", &json!({"text": "x", "level": "patch", "space": "tiny"})), 400, "level");
    refused(&post_json(a, "/query", &json!({"text": "x", "polygon": "POLYGON((0 0, 1 0, 1 1, 0 0)"})), 400, "polygon");
    refused(&post_json(a, "/query", &json!({"text": "x", "polygon": {"type": "Point", "coordinates": [0, 0]}})), 400, "polygon");
    refused(&post_json(a, "/query", &json!({"text": "x", "polygon": 7})), 400, "polygon");
    let nan_ring = json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}).to_string().replace("[1,1]", "[NaN,1]");
    refused(&bad(format!(r#"{{"text": "x", "polygon": {nan_ring}}}"#).as_bytes()), 400, "polygon");

    // Polygons of 10⁵ vertices: with full coordinates the body is over the size limit (413);
    // written compactly (GeoJSON or WKT) it passes that and meets the vertex limit (400).
    let ring: Vec<[f64; 2]> = (0..100_000)
        .map(|i| {
            let t = i as f64 / 100_000.0 * std::f64::consts::TAU;
            [-105.5 + 0.3 * t.cos(), 40.4 + 0.3 * t.sin()]
        })
        .chain(std::iter::once([-105.2, 40.4]))
        .collect();
    refused(&post_json(a, "/query", &json!({"text": "x", "polygon": {"type": "Polygon", "coordinates": [ring]}})), 413, "body");
    let ring: Vec<[i64; 2]> = (0..100_000).map(|i| [i % 90, (i / 90) % 80]).chain(std::iter::once([0, 0])).collect();
    let m = refused(&post_json(a, "/query", &json!({"text": "x", "polygon": {"type": "Polygon", "coordinates": [ring]}})), 400, "polygon");
    assert!(m.contains("100001 vertices"), "{m}");
    let wkt = format!("POLYGON(({}))", (0..100_001).map(|i| format!("{} 1", i % 90)).collect::<Vec<_>>().join(","));
    let m = refused(&post_json(a, "/query", &json!({"text": "x", "polygon": wkt})), 400, "polygon");
    assert!(m.contains("100001 vertices"), "{m}");

    // A body over the limit (2 MiB), and a 64 MiB one: 413, quickly, naming the body.
    let huge = format!(r#"{{"text": "{}"}}"#, "a".repeat(2 << 20));
    let m = refused(&bad(huge.as_bytes()), 413, "body");
    assert!(m.contains("larger than"), "{m}");
    let t0 = std::time::Instant::now();
    refused(&bad(&vec![b' '; 64 << 20]), 413, "body");
    assert!(t0.elapsed().as_secs() < 30);

    // Still alive and answering, with correct results.
    assert!(srv.alive(), "the server died");
    assert_eq!(get(a, "/healthz").status, 200);
    let r = post_json(a, "/query", &json!({"text": "a lake", "bbox": RMNP_BBOX, "k": 5}));
    assert_eq!(ids(&r.json()["hits"]), ids(&cli));

    // Concurrent readers share the one open database: 8 threads × 10 queries, all 200.
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                (0..10).all(|i| post_json(a, "/query", &json!({"text": format!("query {t} {i}"), "k": 3})).status == 200)
            })
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap()), "every concurrent query answered 200");

    // The map page and its vendored libraries, no CDN anywhere.
    let page = get(a, "/").text();
    assert!(page.contains("/assets/leaflet.js"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "no outside URLs in the page");
    for f in ["leaflet.js", "leaflet.css", "leaflet.draw.js", "leaflet-heat.js", "app.js", "images/spritesheet.png"] {
        let r = get(a, &format!("/assets/{f}"));
        assert_eq!(r.status, 200, "/assets/{f} (run tools/setup.sh to vendor Leaflet)");
        assert!(!r.body.is_empty());
    }
    assert!(!get(a, "/assets/app.js").text().contains("://"), "app.js fetches only from its own server");
}

#[test]
fn text_needs_a_model_and_writes_become_visible() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path());
    let srv = Server::start(BIN, &db, &["--read-only"]);
    let a = srv.addr;
    let index_files = |db: &Path| std::fs::read_dir(db.join("index")).unwrap().count();
    let before = index_files(&db);

    let m = refused(&post_json(a, "/query", &json!({"text": "a lake"})), 400, "text");
    assert!(m.contains("--model"), "{m}");

    // Another process writes while the server runs: this test process opens the database
    // read-write (the server holds no lock), adds photos with vectors to `tiny` and a new space.
    let v = |i: usize| -> Vec<f32> { (0..64).map(|j| if j == i % 64 { 1.0 } else { 0.01 }).collect() };
    let photo = |id: i64, lon: f64, lat: f64| Record::Photo(Photo { id: RecordId::Int(id), lon, lat, accuracy: Some(16), time: None, source: "test".into(), license: None, url: None, user: None });
    let q = json!({"vector": v(5), "space": "tiny", "kind": "photo", "k": 10});
    assert!(post_json(a, "/query", &q).json()["hits"].as_array().unwrap().is_empty(), "no photos yet");
    {
        let w = Db::open(&db).expect("a writer beside the server");
        let mut t = w.begin_write().unwrap();
        for i in 0..3 {
            let key = t.insert(photo(9000 + i, -105.6 + 0.01 * i as f64, 40.4)).unwrap();
            t.put_vector("tiny", key, &v(i as usize + 4)).unwrap();
        }
        t.commit().unwrap();
    }
    let r = post_json(a, "/query", &q).json();
    let ids: Vec<i64> = r["hits"].as_array().unwrap().iter().map(|h| h["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{r}");
    assert_eq!(ids[0], 9001, "the nearest photo first: {r}");

    // A new space created after the server opened.
    refused(&post_json(a, "/query", &json!({"vector": [1.0, 0.0, 0.0], "space": "late"})), 400, "space");
    {
        let w = Db::open(&db).expect("writer");
        w.create_space("late", 3, Metric::Cos, Level::Image).unwrap();
        let mut t = w.begin_write().unwrap();
        let key = t.insert(photo(9100, 2.35, 48.85)).unwrap();
        t.put_vector("late", key, &[0.0, 1.0, 0.0]).unwrap();
        t.commit().unwrap();
    }
    let r = post_json(a, "/query", &json!({"vector": [0.0, 1.0, 0.1], "space": "late", "k": 5}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["hits"][0]["id"], 9100);
    let st = get(a, "/stats").json();
    assert_eq!(st["photos"], 4, "{st}");
    assert!(st["spaces"].as_array().unwrap().iter().any(|s| s["name"] == "late"));
    // More than one image-level space now: a query must name one.
    refused(&post_json(a, "/query", &json!({"vector": [0.0, 1.0, 0.1]})), 400, "space");
    assert_eq!(index_files(&db), before, "--read-only wrote nothing into the index folder");
}

#[test]
fn serve_refuses_a_missing_database_or_model_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let run = |args: &[&str]| Command::new(BIN).arg("serve").args(args).args(["--addr", "127.0.0.1:0"]).output().expect("run graftdb serve");
    let o = run(&[missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not a graftdb database") && e.trim_end().lines().count() == 1, "{e}");
    let db = dir.path().join("db");
    graftdb(&["create", db.to_str().unwrap()]);
    let o = run(&[db.to_str().unwrap(), "--model", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("nope") && e.trim_end().lines().count() == 1, "{e}");
}
