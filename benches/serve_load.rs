//! Load test of `graftdb serve`: 32 concurrent clients for 30 s against a 100k-record
//! database, reporting p50/p99 latency and throughput, and failing on any error.
//!
//! Run: `cargo bench --bench serve_load` (CI only compiles it). Scale with
//! `GRAFTDB_LOAD_N` (records, default 100000), `GRAFTDB_LOAD_CLIENTS` (32),
//! `GRAFTDB_LOAD_SECS` (30). The database is built once under `target/serve-load-N/`
//! (seeded, reused by later runs) and needs `tools/setup.sh`'s tiny bundle.
//!
//! **Data** (seeded): 80 % photos, 20 % tiles (0.01° squares), at 30 gaussian clusters
//! (σ 0.5°) over lon [-160, 160], lat [-50, 65]; 64-d vectors (the tiny bundle's
//! dimension) that are one of 50 unit centroids plus σ 0.05 noise; one cosine space with
//! its HNSW graph checkpointed.
//!
//! **Requests**, each on a new loopback connection, as the map page sends them: a text
//! query (one of 12 phrases, embedded by the server through ONNX Runtime with the tiny
//! bundle) inside a random bbox of 1°–20° a side around a cluster, k = 20, GeoJSON out.
//! `GRAFTDB_LOAD_MODE=vector` sends a random 64-d vector instead of text.

#[path = "../tests/support/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graftdb::{Db, Level, Metric, Photo, PixelRef, Record, RecordId, Tile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::json;

const DIM: usize = 64;
const CLUSTERS: usize = 30;
const SEED: u64 = 0x5E7E_10AD;
const PHRASES: [&str; 12] = [
    "wind turbines", "a solar farm", "a lake", "a harbour with boats", "farmland", "a forest", "an airport runway", "a highway interchange",
    "a glacier", "a city centre", "a river delta", "a golf course",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn clusters() -> Vec<(f64, f64)> {
    let mut rng = StdRng::seed_from_u64(SEED);
    (0..CLUSTERS).map(|_| (rng.random_range(-160.0..160.0), rng.random_range(-50.0..65.0))).collect()
}

fn build(dir: &Path, n: usize) {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let gauss = Normal::new(0.0f64, 1.0).unwrap();
    let centroids: Vec<Vec<f32>> = (0..50)
        .map(|_| {
            let mut v: Vec<f32> = (0..DIM).map(|_| gauss.sample(&mut rng) as f32).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect();
    let cl = clusters();
    let db = Db::create(dir).expect("create the load database");
    db.create_space("tiny", DIM as u32, Metric::Cos, Level::Image).unwrap();
    let mut w = db.begin_write().unwrap();
    let mut rows = Vec::with_capacity(10_000);
    for i in 0..n {
        let (clon, clat) = cl[rng.random_range(0..CLUSTERS)];
        let lon = (clon + 0.5 * gauss.sample(&mut rng)).clamp(-179.9, 179.9);
        let lat = (clat + 0.5 * gauss.sample(&mut rng)).clamp(-89.9, 89.9);
        let c = &centroids[rng.random_range(0..centroids.len())];
        let v: Vec<f32> = c.iter().map(|x| x + 0.05 * gauss.sample(&mut rng) as f32).collect();
        let rec = if i % 5 == 0 {
            let h = 0.005;
            Record::Tile(Tile {
                id: RecordId::Int(i as i64),
                footprint: vec![[lon - h, lat - h], [lon + h, lat - h], [lon + h, lat + h], [lon - h, lat + h], [lon - h, lat - h]],
                source: "load".into(),
                gsd_m: 10.0,
                time: None,
                cloud_cover: None,
                pixels: PixelRef::None,
            })
        } else {
            Record::Photo(Photo { id: RecordId::Int(i as i64), lon, lat, accuracy: Some(16), time: None, source: "load".into(), license: None, url: None, user: None })
        };
        rows.push((rec, v));
        if rows.len() == 10_000 || i + 1 == n {
            w.insert_batch("load", (i + 1 - rows.len()) as u64 + 1, "tiny", &rows).unwrap();
            rows.clear();
        }
    }
    w.commit().unwrap();
    db.checkpoint().unwrap();
    eprintln!("built {n} records in {:.1}s", t0.elapsed().as_secs_f64());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n = env_usize("GRAFTDB_LOAD_N", 100_000);
    let clients = env_usize("GRAFTDB_LOAD_CLIENTS", 32);
    let secs = env_usize("GRAFTDB_LOAD_SECS", 30);
    let vector_mode = std::env::var("GRAFTDB_LOAD_MODE").is_ok_and(|m| m == "vector");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tiny = root.join("data/bundles/tiny");
    assert!(tiny.join("bundle.json").is_file(), "{} is missing: run tools/setup.sh", tiny.display());
    let dir = root.join(format!("target/serve-load-{n}"));
    let ok_marker = dir.join("built.ok");
    if !ok_marker.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        build(&dir, n);
        std::fs::write(&ok_marker, "").unwrap();
    }
    let srv = http::Server::start(env!("CARGO_BIN_EXE_graftdb"), &dir, &["--model", tiny.to_str().unwrap()]);
    let addr = srv.addr;
    let st = http::get(addr, "/stats").json();
    let records = st["tiles"].as_u64().unwrap() + st["photos"].as_u64().unwrap();
    assert_eq!(records as usize, n, "{st}");

    let stop = Arc::new(AtomicBool::new(false));
    let cl = clusters();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let stop = stop.clone();
            let cl = cl.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(SEED + 100 + c as u64);
                let (mut lat_ms, mut errors, mut hits) = (Vec::new(), Vec::new(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let (clon, clat) = cl[rng.random_range(0..CLUSTERS)];
                    let side: f64 = rng.random_range(1.0..20.0);
                    let bbox = [(clon - side / 2.0).max(-180.0), (clat - side / 2.0).max(-90.0), (clon + side / 2.0).min(180.0), (clat + side / 2.0).min(90.0)];
                    let mut body = json!({"bbox": bbox, "k": 20, "format": "geojson"});
                    if vector_mode {
                        body["vector"] = json!((0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>());
                    } else {
                        body["text"] = json!(PHRASES[rng.random_range(0..PHRASES.len())]);
                    }
                    let t = Instant::now();
                    match http::request(addr, "POST", "/query", body.to_string().as_bytes()) {
                        Ok(r) if r.status == 200 => {
                            lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
                            hits += r.json()["features"].as_array().map_or(0, Vec::len);
                        }
                        Ok(r) => errors.push(format!("{}: {}", r.status, r.text())),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (lat_ms, errors, hits)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs as u64));
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors, mut hits) = (Vec::new(), Vec::new(), 0usize);
    for w in workers {
        let (l, e, h) = w.join().unwrap();
        lat.extend(l);
        errors.extend(e);
        hits += h;
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    println!("## graftdb serve load test");
    println!("machine: {} cores, {cpu}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("database: {n} records ({} tiles, {} photos), 64-d cosine space, graph {}", st["tiles"], st["photos"], st["spaces"][0]["graph"]);
    println!("requests: POST /query, {}, bbox 1-20 deg, k=20, GeoJSON; {clients} clients, {wall:.1} s", if vector_mode { "random vector" } else { "text, tiny bundle on CPU" });
    println!("completed: {} ok, {} errors, {:.1} req/s, mean {:.1} hits/answer", lat.len(), errors.len(), lat.len() as f64 / wall, hits as f64 / lat.len().max(1) as f64);
    println!("latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}", percentile(&lat, 0.5), percentile(&lat, 0.9), percentile(&lat, 0.99), lat.last().copied().unwrap_or(f64::NAN));
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
    assert!(errors.is_empty(), "{} requests failed", errors.len());
    assert!(!lat.is_empty(), "no request completed");
    drop(srv);
}
