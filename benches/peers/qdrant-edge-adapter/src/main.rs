//! Qdrant Edge adapter for the peer benchmark, in Rust, in-process through the `qdrant-edge`
//! crate (crates.io, 0.9; needs nightly Rust): what `adapter_qdrant.py` does through the
//! `qdrant-edge-py` wheel, without Python around the calls. Reads the dataset written by
//! `gen.py`, builds one shard (cosine, HNSW m 16 / PEERS_QDRANT_M, ef_construct 128,
//! full_scan_threshold 10k, one search thread), upserts the points with a geo payload `loc`
//! and a Geo payload index, optimizes and flushes, then times every query (`EdgeShard::query`
//! with a geo_bounding_box / geo_radius / geo_polygon filter, hnsw_ef PEERS_QDRANT_EF, default
//! 128) after 20 untimed warm-up queries, and writes the common adapter JSON (../README.md).
//!
//! Usage: qdrant-edge-peer-adapter DATA_DIR WORK_DIR OUT.json
//!
//! Env, as adapter_qdrant.py: PEERS_QDRANT_M (HNSW m; 0 builds no graph, so every query is
//! Qdrant's exact filtered scan), PEERS_QDRANT_EF, PEERS_QDRANT_EFS (comma list of extra beams,
//! each written as OUT-ef<X>.json), PEERS_QDRANT_EXACT=1 (adds a run with `exact: true`, written
//! as OUT-exact.json), PEERS_QDRANT_REUSE=PRIOR.json (load the shard an earlier run left at
//! WORK_DIR/qdrant-rs, with that run's ingest, build and disk figures). The shard lives at
//! WORK_DIR/qdrant-rs (not WORK_DIR/qdrant, the wheel's, so both can run into one WORK_DIR).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, GeoBoundingBox,
    GeoLineString, GeoPoint, GeoPolygon, GeoRadius, HnswIndexConfig, JsonPath, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, QueryRequest, ScoringQuery, SearchParams, UpdateOperation,
};
use serde_json::{json, Value};

#[path = "../../adapter_common.rs"]
mod common;
use common::{dir_bytes, npy, proc_status};

/// The crate version and the toolchain that built this binary (build.rs), for the mode line.
const CRATE: &str = env!("QEDGE_CRATE_VERSION");
const RUSTC: &str = env!("QEDGE_RUSTC_VERSION");
/// Points per upsert, as adapter_qdrant.py.
const BATCH: usize = 2_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn m() -> usize {
    env_usize("PEERS_QDRANT_M", 16)
}

fn gp(lon: f64, lat: f64) -> GeoPoint {
    GeoPoint { lon: OrderedFloat(lon), lat: OrderedFloat(lat) }
}

/// The query's filter as adapter_qdrant.py builds it (None = no filter, the 100 % queries).
fn qfilter(q: &Value) -> Result<Option<Filter>> {
    let key = key("loc")?;
    let f = |k: &str| q[k].as_f64().with_context(|| format!("query field {k}"));
    let c = match q["kind"].as_str().unwrap_or("") {
        "bbox" => {
            let b: Vec<f64> = q["bbox"].as_array().context("bbox")?.iter().filter_map(Value::as_f64).collect();
            anyhow::ensure!(b.len() == 4, "bbox {b:?}");
            let (w, s, e, n) = (b[0], b[1], b[2], b[3]);
            FieldCondition::new_geo_bounding_box(key, GeoBoundingBox { top_left: gp(w, n), bottom_right: gp(e, s) })
        }
        "radius" => FieldCondition::new_geo_radius(key, GeoRadius { center: gp(f("lon")?, f("lat")?), radius: OrderedFloat(f("km")? * 1000.0) }),
        "polygon" => {
            // gen.py writes closed rings (first point repeated last), as Qdrant wants them.
            let points = q["ring"]
                .as_array()
                .context("ring")?
                .iter()
                .map(|p| Ok(gp(p[0].as_f64().context("lon")?, p[1].as_f64().context("lat")?)))
                .collect::<Result<Vec<_>>>()?;
            FieldCondition::new_geo_polygon(key, GeoPolygon { exterior: GeoLineString { points }, interiors: None })
        }
        _ => return Ok(None),
    };
    Ok(Some(Filter::new_must(Condition::Field(c))))
}

/// An empty shard at `path` (anything there is removed): cosine, HNSW m (PEERS_QDRANT_M),
/// ef_construct 128, full-scan threshold 10k, one search thread — the wheel adapter's settings
/// (its `HnswIndexConfig(m, ef_construct, full_scan_threshold)` leaves max_indexing_threads 0 =
/// auto and on_disk unset, as here).
#[allow(deprecated)]
fn new_shard(path: &Path, dim: usize) -> Result<EdgeShard> {
    let _ = std::fs::remove_dir_all(path);
    let hnsw = HnswIndexConfig { m: m(), ef_construct: 128, full_scan_threshold: 10_000, max_indexing_threads: 0, on_disk: None, ..Default::default() };
    let cfg = EdgeConfig::builder().vector("", EdgeVectorParams::builder(dim, Distance::Cosine).build()).hnsw_config(hnsw).max_search_threads(1).build();
    Ok(EdgeShard::new(path, cfg)?)
}

fn info(shard: &EdgeShard) -> String {
    match shard.info() {
        Ok(i) => format!("segments {}, points {}, indexed vectors {}, payload schema {:?}", i.segments_count, i.points_count, i.indexed_vectors_count, i.payload_schema.keys().collect::<Vec<_>>()),
        Err(e) => format!("info failed: {e}"),
    }
}

/// Time every query with each run's params (the default beam, PEERS_QDRANT_EFS, exact) and
/// write one JSON per run.
#[allow(clippy::too_many_arguments)]
fn timed_runs(
    shard: &EdgeShard,
    qvecs: &[f32],
    dim: usize,
    meta: &Value,
    out: &str,
    what: &str,
    extra_mode: &str,
    qfilter: &dyn Fn(&Value) -> Result<Option<Filter>>,
    ingest_s: f64,
    build_s: f64,
    disk: u64,
) -> Result<()> {
    let k = meta["k"].as_u64().unwrap_or(10) as usize;
    let qs = meta["queries"].as_array().context("queries")?;
    let ef = env_usize("PEERS_QDRANT_EF", 128);
    let mut runs: Vec<(Option<String>, SearchParams)> = vec![(None, SearchParams { hnsw_ef: Some(ef), ..Default::default() })];
    for x in std::env::var("PEERS_QDRANT_EFS").unwrap_or_default().split(',').filter_map(|v| v.trim().parse::<usize>().ok()) {
        runs.push((Some(format!("ef{x}")), SearchParams { hnsw_ef: Some(x), ..Default::default() }));
    }
    if std::env::var("PEERS_QDRANT_EXACT").is_ok_and(|v| v != "0") {
        runs.push((Some("exact".into()), SearchParams { exact: true, ..Default::default() }));
    }
    let filters = qs.iter().map(qfilter).collect::<Result<Vec<_>>>()?;
    let mut docs = Vec::new();
    for (tag, params) in runs {
        // Requests are built before timing (as the wheel adapter and graftdb's do); the timed
        // part is the `query` call and reading the ids. `query` takes the request by value, so
        // each call gets a clone made outside the timer.
        let reqs: Vec<QueryRequest> = (0..qs.len())
            .map(|i| {
                let mut r = QueryRequest::new(k);
                r.query = Some(ScoringQuery::Vector(QueryEnum::from(qvecs[i * dim..(i + 1) * dim].to_vec())));
                r.filter = filters[i].clone();
                r.params = Some(params.clone());
                r
            })
            .collect();
        let run = |i: usize| -> Result<(f64, Vec<i64>)> {
            let req = reqs[i].clone();
            let t = Instant::now();
            let hits = shard.query(req)?;
            let ids: Vec<i64> = hits.iter().map(|p| if let PointId::NumId(n) = p.id { n as i64 } else { -1 }).collect();
            Ok((t.elapsed().as_secs_f64() * 1e3, ids))
        };
        for i in 0..qs.len().min(20) {
            run(i)?;
        }
        let mut results = Vec::with_capacity(qs.len());
        for i in 0..qs.len() {
            let (ms, ids) = run(i)?;
            results.push(json!({"ms": ms, "ids": ids}));
        }
        let search = if params.exact { "exact=true (full scan of the filtered points)".to_string() } else { format!("hnsw_ef {}", params.hnsw_ef.unwrap_or(0)) };
        let engine = match &tag {
            Some(t) => format!("qdrant-edge-rs-{t}"),
            None => "qdrant-edge-rs".to_string(),
        };
        eprintln!("{engine}: {} queries done", qs.len());
        let doc = json!({
            "engine": engine,
            "mode": format!("qdrant-edge {CRATE} crate (Rust, {RUSTC}), in-process; {what}HNSW m {}, ef_construct 128, {search}, full_scan_threshold 10k, one search thread{extra_mode}", m()),
            "ingest_s": ingest_s,
            "build_s": build_s,
            "disk_bytes": disk,
            "peak_rss_kb": proc_status("VmHWM:"),
            "results": results,
        });
        docs.push((tag, doc));
    }
    for (tag, doc) in docs {
        let path = match tag {
            Some(t) => out.replace(".json", &format!("-{t}.json")),
            None => out.to_string(),
        };
        std::fs::write(&path, serde_json::to_string(&doc)?)?;
        eprintln!("{}: wrote {path}", doc["engine"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// The payload key `name` as a JSON path.
fn key(name: &str) -> Result<JsonPath> {
    name.parse().map_err(|_| anyhow::anyhow!("json path {name}"))
}

/// A payload index of `schema` on `field`.
fn create_index(shard: &EdgeShard, field: &str, schema: PayloadSchemaType) -> Result<()> {
    shard.update(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
        field_name: key(field)?,
        field_schema: Some(PayloadFieldSchema::FieldType(schema)),
    })))?;
    Ok(())
}

fn upsert(shard: &EdgeShard, pts: Vec<qdrant_edge::PointStructPersisted>) -> Result<()> {
    shard.update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(PointInsertOperations::PointsList(pts))))?;
    Ok(())
}

/// Optimize (HNSW build unless m = 0) and flush; the seconds it took.
fn optimize(shard: &EdgeShard) -> Result<f64> {
    let t = Instant::now();
    shard.optimize()?;
    shard.flush()?;
    let build_s = t.elapsed().as_secs_f64();
    eprintln!("qdrant-rs: optimize (HNSW build) {build_s:.1} s; {}", info(shard));
    Ok(build_s)
}

/// PEERS_PATCH=1: the patch-level set (gen.py), as adapter_qdrant.py's `patch_main`: a point per
/// patch (id tile · 196 + row · 14 + col) with payload tile, row, col and the patch's own box
/// w, s, e, n (gen.py's `patch_boxes`: the same f64 arithmetic, so bit-identical boxes), Float
/// payload indexes on the four, and per bbox query four range conditions w <= E, e >= W,
/// s <= N, n >= S (no filter for the 100 % queries). The shard is WORK_DIR/qdrant-rs-patch.
fn patch_main(data: &Path, work: &Path, out: &str) -> Result<()> {
    use std::io::Read;
    let (tshape, tiles) = npy::<f64>(&data.join("tiles.npy"))?;
    let nt = tshape[0] as usize;
    let (_, qvecs) = npy::<f32>(&data.join("qvecs.npy"))?;
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(data.join("queries.json"))?)?;
    let g = meta["grid"].as_u64().unwrap_or(14) as usize;
    let per = g * g;
    // The patch vectors are read a batch at a time (1.96M × 512 f32 is 4 GB), outside the timer.
    let pp = data.join("patches.npy");
    let npy = npyz::NpyFile::new(std::io::BufReader::with_capacity(1 << 22, std::fs::File::open(&pp).with_context(|| pp.display().to_string())?))?;
    let pshape = npy.shape().to_vec();
    anyhow::ensure!(npy.dtype().descr() == "'<f4'" && npy.order() == npyz::Order::C, "patches.npy: want C-order <f4, got {}", npy.dtype().descr());
    anyhow::ensure!(pshape.len() == 2 && pshape[0] as usize == nt * per, "patches.npy: shape {pshape:?} for {nt} tiles × {per}");
    let (n, dim) = (nt * per, pshape[1] as usize);
    let mut src = npy.into_inner();

    std::fs::create_dir_all(work)?;
    let path = work.join("qdrant-rs-patch");
    let shard = new_shard(&path, dim)?;
    let mut ingest_s = 0.0;
    let t = Instant::now();
    for f in ["w", "s", "e", "n"] {
        create_index(&shard, f, PayloadSchemaType::Float)?;
    }
    ingest_s += t.elapsed().as_secs_f64();
    let mut bytes = vec![0u8; BATCH * dim * 4];
    for s in (0..n).step_by(BATCH) {
        let e = (s + BATCH).min(n);
        src.read_exact(&mut bytes[..(e - s) * dim * 4])?;
        let t = Instant::now();
        let pts = (s..e)
            .map(|i| {
                let (tile, p) = (i / per, i % per);
                let (row, col) = (p / g, p % g);
                let [w, so, ea, no] = [tiles[tile * 4], tiles[tile * 4 + 1], tiles[tile * 4 + 2], tiles[tile * 4 + 3]];
                // gen.py's patch_edges: w + (e − w)·(col / 14), n + (s − n)·(row / 14).
                let x = |c: usize| w + (ea - w) * (c as f64 / g as f64);
                let y = |r: usize| no + (so - no) * (r as f64 / g as f64);
                let o = (i - s) * dim * 4;
                let v: Vec<f32> = bytes[o..o + dim * 4].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                PointStruct::new(i as u64, v, json!({"tile": tile, "row": row, "col": col, "w": x(col), "s": y(row + 1), "e": x(col + 1), "n": y(row)})).into()
            })
            .collect();
        upsert(&shard, pts)?;
        ingest_s += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    shard.flush()?;
    ingest_s += t.elapsed().as_secs_f64();
    eprintln!("qdrant-rs: patch ingest {nt} tiles × {per} {ingest_s:.1} s");
    let build_s = optimize(&shard)?;
    let disk = dir_bytes(&path);
    let range = |k: &str, r: qdrant_edge::Range<OrderedFloat<f64>>| -> Result<Condition> { Ok(Condition::Field(FieldCondition::new_range(key(k)?, r))) };
    let none = qdrant_edge::Range { lt: None, gt: None, gte: None, lte: None };
    let pfilter = |q: &Value| -> Result<Option<Filter>> {
        if q["kind"].as_str() != Some("bbox") {
            return Ok(None);
        }
        let b: Vec<f64> = q["bbox"].as_array().context("bbox")?.iter().filter_map(Value::as_f64).collect();
        anyhow::ensure!(b.len() == 4, "bbox {b:?}");
        let (bw, bs, be, bn) = (OrderedFloat(b[0]), OrderedFloat(b[1]), OrderedFloat(b[2]), OrderedFloat(b[3]));
        Ok(Some(Filter {
            must: Some(vec![
                range("w", qdrant_edge::Range { lte: Some(be), ..none })?,
                range("e", qdrant_edge::Range { gte: Some(bw), ..none })?,
                range("s", qdrant_edge::Range { lte: Some(bn), ..none })?,
                range("n", qdrant_edge::Range { gte: Some(bs), ..none })?,
            ]),
            ..Default::default()
        }))
    };
    timed_runs(&shard, &qvecs, dim, &meta, out, "a point per patch; ", "; Float indexes on w, s, e, n, four range conditions", &pfilter, ingest_s, build_s, disk)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: qdrant-edge-peer-adapter DATA_DIR WORK_DIR OUT.json");
    let (data, work, out) = (Path::new(&args[1]), Path::new(&args[2]), &args[3]);
    if std::env::var("PEERS_PATCH").is_ok_and(|v| v != "0") {
        return patch_main(data, work, out);
    }
    let (_, qvecs) = npy::<f32>(&data.join("qvecs.npy"))?;
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(data.join("queries.json"))?)?;
    let path = work.join("qdrant-rs");
    std::fs::create_dir_all(work)?;

    if let Ok(prior) = std::env::var("PEERS_QDRANT_REUSE") {
        // Reuse the built shard (its config is on disk); ingest, build and disk are the prior run's.
        let p: Value = serde_json::from_str(&std::fs::read_to_string(&prior).with_context(|| prior.clone())?)?;
        let (ingest_s, build_s, disk) = (p["ingest_s"].as_f64().unwrap_or(0.0), p["build_s"].as_f64().unwrap_or(0.0), p["disk_bytes"].as_u64().unwrap_or(0));
        let shard = EdgeShard::load(&path, None)?;
        eprintln!("qdrant-rs: reusing {} (times from {prior}); {}", path.display(), info(&shard));
        let dim = qvecs.len() / meta["queries"].as_array().map_or(1, |q| q.len().max(1));
        return timed_runs(&shard, &qvecs, dim, &meta, out, "", "; reused shard", &qfilter, ingest_s, build_s, disk);
    }

    let (shape, vecs) = npy::<f32>(&data.join("vecs.npy"))?;
    let (n, dim) = (shape[0] as usize, shape[1] as usize);
    let (_, lon) = npy::<f64>(&data.join("lon.npy"))?;
    let (_, lat) = npy::<f64>(&data.join("lat.npy"))?;
    anyhow::ensure!(lon.len() == n && lat.len() == n && qvecs.len() % dim == 0, "dataset shapes disagree");

    let shard = new_shard(&path, dim)?;
    let t = Instant::now();
    create_index(&shard, "loc", PayloadSchemaType::Geo)?;
    for s in (0..n).step_by(BATCH) {
        let pts = (s..(s + BATCH).min(n))
            .map(|i| PointStruct::new(i as u64, vecs[i * dim..(i + 1) * dim].to_vec(), json!({"loc": {"lon": lon[i], "lat": lat[i]}})).into())
            .collect();
        upsert(&shard, pts)?;
    }
    shard.flush()?;
    let ingest_s = t.elapsed().as_secs_f64();
    eprintln!("qdrant-rs: ingest {n} points {ingest_s:.1} s");
    drop(vecs);
    let build_s = optimize(&shard)?;
    let disk = dir_bytes(&path);
    timed_runs(&shard, &qvecs, dim, &meta, out, "", "", &qfilter, ingest_s, build_s, disk)
}
