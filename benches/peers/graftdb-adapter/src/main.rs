//! graftdb adapter for the peer benchmark: reads the dataset written by `gen.py`, ingests it
//! through the library (`insert_batch`, `commit`, `checkpoint`), reopens, runs every query
//! single-threaded with `Db::search` and writes the common adapter JSON (see ../README.md).
//!
//! Usage: graftdb-peer-adapter DATA_DIR WORK_DIR OUT.json
//! With PEERS_JOIN_ONLY=1 it runs the photo→tile join alone (no vectors; see `join_only`);
//! with PEERS_PATCH=1 the patch-level set (see `patch_mode`).

use std::time::Instant;

use anyhow::{Context, Result};
use graftdb::{Db, Filter, Level, Metric, Photo, Query, Record, RecordId, Region, Tile};
use serde_json::{json, Value};

#[path = "../../adapter_common.rs"]
mod common;
use common::{dir_bytes, npy, proc_status};

/// The query's region as graftdb sees it (None = no spatial filter).
fn region(q: &Value) -> Result<Option<Region>> {
    let f = |k: &str| q[k].as_f64().unwrap_or(f64::NAN);
    Ok(match q["kind"].as_str().unwrap_or("") {
        "bbox" => {
            let b: Vec<f64> = q["bbox"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            Some(Region::bbox(b[0], b[1], b[2], b[3])?)
        }
        "radius" => Some(Region::circle(f("lon"), f("lat"), f("km"))?),
        "polygon" => {
            let ring = q["ring"].as_array().unwrap().iter().map(|p| format!("{} {}", p[0], p[1])).collect::<Vec<_>>().join(",");
            Some(Region::parse_polygon("query", &format!("POLYGON(({ring}))"))?)
        }
        _ => None,
    })
}

/// One photo at (lon, lat) with integer id `i`, as every run ingests it.
fn photo(i: usize, lon: f64, lat: f64) -> Record {
    Record::Photo(Photo {
        id: RecordId::Int(i as i64),
        lon,
        lat,
        accuracy: Some(16),
        time: None,
        source: "peers".into(),
        license: None,
        url: None,
        user: None,
    })
}

/// The tile boxes (`[w, s, e, n]` per tile, flattened) as Tile records with ids 0.., one commit.
fn insert_tiles(db: &Db, boxes: &[f64]) -> Result<()> {
    let mut w = db.begin_write()?;
    for (i, b) in boxes.chunks_exact(4).enumerate() {
        w.insert(Record::Tile(Tile {
            id: RecordId::Int(i as i64),
            footprint: vec![[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]],
            source: "peers".into(),
            gsd_m: 10.0,
            time: None,
            cloud_cover: None,
            pixels: Default::default(),
        }))?;
    }
    w.commit()?;
    Ok(())
}

/// PEERS_JOIN_ONLY: photos (lon.npy, lat.npy) and tiles (tiles.npy) as records without
/// vectors (`WriteTxn::insert`, 10k-row commits), reopen, then `Db::join` timed. graftdb keeps
/// no stored index for the join: `join` bulk-loads an R-tree over the tile boxes and probes it
/// with every photo, so that build is inside the join time.
fn join_only(data: &std::path::Path, work: &std::path::Path, out: &str) -> Result<()> {
    let (_, lon) = npy::<f64>(&data.join("lon.npy"))?;
    let (_, lat) = npy::<f64>(&data.join("lat.npy"))?;
    let (tshape, boxes) = npy::<f64>(&data.join("tiles.npy"))?;
    let (n, nt) = (lon.len(), tshape[0] as usize);
    let path = work.join("graftdb-join");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(work)?;
    let db = Db::create(&path)?;
    let t = Instant::now();
    for start in (0..n).step_by(10_000) {
        let mut w = db.begin_write()?;
        for i in start..(start + 10_000).min(n) {
            w.insert(photo(i, lon[i], lat[i]))?;
        }
        w.commit()?;
    }
    let ingest_s = t.elapsed().as_secs_f64();
    eprintln!("graftdb: ingest {n} photos (no vectors) {ingest_s:.1} s");
    let t = Instant::now();
    insert_tiles(&db, &boxes[..nt * 4])?;
    let tile_ingest_s = t.elapsed().as_secs_f64();
    eprintln!("graftdb: ingest {nt} tiles {tile_ingest_s:.1} s");
    drop(db);
    let disk = dir_bytes(&path);
    let rss_ingest = proc_status("VmHWM:");
    let db = Db::open(&path)?;
    let t = Instant::now();
    let st = db.join(|_| Ok(()))?;
    let join_s = t.elapsed().as_secs_f64();
    eprintln!("graftdb: join {} photos × {} tiles -> {} pairs in {join_s:.2} s", st.photos, st.tiles, st.pairs);
    anyhow::ensure!(st.photos as usize == n && st.tiles as usize == nt, "join saw {} photos, {} tiles", st.photos, st.tiles);
    let t = Instant::now();
    let again = db.join(|_| Ok(()))?;
    let join_again_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(again.pairs == st.pairs, "second join: {} pairs, first {}", again.pairs, st.pairs);
    eprintln!("graftdb: join again {join_again_s:.2} s");
    let doc = json!({
        "engine": "graftdb",
        "mode": "library: WriteTxn::insert (records, no vectors) in 10k-row commits; Db::join (R-tree over tile boxes built in the call, every photo probed, footprint test)",
        "ingest_s": ingest_s,
        "tile_ingest_s": tile_ingest_s,
        "build_s": 0.0,
        "build": "none stored; the tile R-tree is bulk-loaded inside Db::join (in join_s)",
        "disk_bytes": disk,
        "peak_rss_kb_ingest": rss_ingest,
        "peak_rss_kb": proc_status("VmHWM:"),
        "join": {"tiles": st.tiles, "photos": st.photos, "pairs": st.pairs, "unmatched_photos": st.unmatched_photos, "join_s": join_s, "join_again_s": join_again_s},
    });
    std::fs::write(out, serde_json::to_string(&doc)?)?;
    Ok(())
}

/// PEERS_PATCH: the patch-level set (`gen.py`, PEERS_PATCH=1). A patch space (14×14, cos);
/// every tile a Tile record (footprint ring UL, UR, LR, LL as `patch_footprint` reads it) and
/// its grid through `put_patches`, 100 tiles per commit, `checkpoint`, reopen, then one
/// `Db::search` per query with a `Region::bbox` filter (none at 100 %). Hit ids are written as
/// tile · 196 + row · 14 + col.
fn patch_mode(data: &std::path::Path, work: &std::path::Path, out: &str) -> Result<()> {
    use std::io::Read;
    let (tshape, boxes) = npy::<f64>(&data.join("tiles.npy"))?;
    let nt = tshape[0] as usize;
    let queries: Value = serde_json::from_str(&std::fs::read_to_string(data.join("queries.json"))?)?;
    let k = queries["k"].as_u64().unwrap_or(10) as usize;
    let g = queries["grid"].as_u64().unwrap_or(14) as u16;
    let per = usize::from(g) * usize::from(g);
    let qs = queries["queries"].as_array().context("queries")?;
    let (_, qvecs) = npy::<f32>(&data.join("qvecs.npy"))?;
    // The patch vectors are read a commit's worth at a time (1.96M × 512 f32 is 4 GB), outside
    // the ingest timer.
    let pp = data.join("patches.npy");
    let npy = npyz::NpyFile::new(std::io::BufReader::with_capacity(1 << 22, std::fs::File::open(&pp).with_context(|| pp.display().to_string())?))?;
    let pshape = npy.shape().to_vec();
    anyhow::ensure!(npy.dtype().descr() == "'<f4'" && npy.order() == npyz::Order::C, "patches.npy: want C-order <f4, got {}", npy.dtype().descr());
    anyhow::ensure!(pshape.len() == 2 && pshape[0] as usize == nt * per, "patches.npy: shape {pshape:?} for {nt} tiles × {per}");
    let dim = pshape[1] as usize;
    let mut src = npy.into_inner();

    let path = work.join("graftdb-patch");
    // PEERS_GRAFT_REUSE=PRIOR.json: query the database an earlier patch run left in WORK_DIR
    // again (its ingest and build times come from PRIOR.json).
    if let Ok(prior) = std::env::var("PEERS_GRAFT_REUSE") {
        anyhow::ensure!(path.exists(), "PEERS_GRAFT_REUSE: no database at {}", path.display());
        let p: Value = serde_json::from_str(&std::fs::read_to_string(&prior).with_context(|| prior.clone())?)?;
        let (ingest_s, build_s) = (p["ingest_s"].as_f64().unwrap_or(0.0), p["build_s"].as_f64().unwrap_or(0.0));
        return time_patch_queries(&path, g, dim, &qvecs, qs, k, ingest_s, build_s, out);
    }
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(work)?;
    let db = Db::create(&path)?;
    db.create_space("patch", dim as u32, Metric::Cos, Level::Patch { rows: g, cols: g })?;
    const CHUNK: usize = 100;
    let mut bytes = vec![0u8; CHUNK * per * dim * 4];
    let mut grid = vec![0f32; CHUNK * per * dim];
    let mut ingest_s = 0.0;
    for start in (0..nt).step_by(CHUNK) {
        let end = (start + CHUNK).min(nt);
        let len = (end - start) * per * dim;
        src.read_exact(&mut bytes[..len * 4])?;
        for (x, b) in grid[..len].iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let t = Instant::now();
        let mut w = db.begin_write()?;
        for i in start..end {
            let b = &boxes[i * 4..i * 4 + 4];
            let key = w.insert(Record::Tile(Tile {
                id: RecordId::Int(i as i64),
                footprint: vec![[b[0], b[3]], [b[2], b[3]], [b[2], b[1]], [b[0], b[1]], [b[0], b[3]]],
                source: "peers".into(),
                gsd_m: 10.0,
                time: None,
                cloud_cover: None,
                pixels: Default::default(),
            }))?;
            let o = (i - start) * per * dim;
            w.put_patches("patch", key, &grid[o..o + per * dim])?;
        }
        w.commit()?;
        ingest_s += t.elapsed().as_secs_f64();
    }
    drop(bytes);
    drop(grid);
    eprintln!("graftdb: patch ingest {nt} tiles × {per} {ingest_s:.1} s");
    let t = Instant::now();
    db.checkpoint()?;
    let build_s = t.elapsed().as_secs_f64();
    eprintln!("graftdb: checkpoint {build_s:.1} s");
    drop(db);
    time_patch_queries(&path, g, dim, &qvecs, qs, k, ingest_s, build_s, out)
}

/// Time the patch queries on the database at `path` ([`timed_pass`]), at the beams of
/// [`run_options`], then under each cap of PEERS_GRAFT_TILES=N[,N...] (`Query::max_tiles`:
/// at most N tiles visited, best mean patch first; engine `graftdb-tilesN`, OUT-tilesN.json).
#[allow(clippy::too_many_arguments)]
fn time_patch_queries(path: &std::path::Path, g: u16, dim: usize, qvecs: &[f32], qs: &[Value], k: usize, ingest_s: f64, build_s: f64, out: &str) -> Result<()> {
    const CHUNK: usize = 100;
    let per = usize::from(g) * usize::from(g);
    let disk = dir_bytes(path);
    let (base, beams) = run_options();
    let caps = std::env::var("PEERS_GRAFT_TILES").unwrap_or_default().split(',').filter_map(|v| v.trim().parse().ok()).collect::<Vec<usize>>();
    let runs = beams.into_iter().map(|ef| (ef, None)).chain(caps.into_iter().map(|c| (None, Some(c))));
    for (ef, cap) in runs {
        let opts = graftdb::Options { ef_search: ef.unwrap_or(base.ef_search), ..base.clone() };
        let db = Db::open_with(path, opts.clone())?;
        let run = |qi: usize, q: &Value| {
            search_once(&db, "patch", &qvecs[qi * dim..(qi + 1) * dim], k, q, cap, |h| match (&h.id, &h.patch) {
                (RecordId::Int(i), Some(p)) => i * per as i64 + i64::from(p.row) * i64::from(g) + i64::from(p.col),
                _ => -1,
            })
        };
        let results = timed_pass(qs, run)?;
        eprintln!("graftdb: {} patch queries done", qs.len());
        let doc = json!({
            "engine": match (ef, cap) {
                (_, Some(c)) => format!("graftdb-tiles{c}"),
                (Some(_), None) => format!("graftdb-ef{}", opts.ef_search),
                (None, None) => "graftdb".to_string(),
            },
            "mode": format!("library: patch space {g}×{g} (i8 codes + per-patch scale), put_patches in {CHUNK}-tile commits, checkpoint (patch partitions {}, patch graph M {}, ef_add {}); Db::search with Region::bbox (tiles by footprint, edge tiles patch by patch), {}{}", if opts.partitions { "on" } else { "off" }, graftdb::index::hnsw::PATCH_CONNECTIVITY, graftdb::index::hnsw::EXPANSION_ADD, cap.map_or(format!("ef_search {}/√selectivity", opts.ef_search), |c| format!("max_tiles {c} (best mean patch first)")), sketch_note()),
            "ingest_s": ingest_s,
            "build_s": build_s,
            "disk_bytes": disk,
            "peak_rss_kb": proc_status("VmHWM:"),
            "results": results,
        });
        let file = match cap {
            Some(c) => out.replace(".json", &format!("-tiles{c}.json")),
            None => out_for(out, ef),
        };
        std::fs::write(file, serde_json::to_string(&doc)?)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: graftdb-peer-adapter DATA_DIR WORK_DIR OUT.json");
    let (data, work, out) = (std::path::Path::new(&args[1]), std::path::Path::new(&args[2]), &args[3]);
    if std::env::var("PEERS_JOIN_ONLY").is_ok_and(|v| v != "0") {
        return join_only(data, work, out);
    }
    if std::env::var("PEERS_PATCH").is_ok_and(|v| v != "0") {
        return patch_mode(data, work, out);
    }
    let (shape, vecs) = npy::<f32>(&data.join("vecs.npy"))?;
    let (n, dim) = (shape[0] as usize, shape[1] as usize);
    let (_, lon) = npy::<f64>(&data.join("lon.npy"))?;
    let (_, lat) = npy::<f64>(&data.join("lat.npy"))?;
    let (_, qvecs) = npy::<f32>(&data.join("qvecs.npy"))?;
    let queries: Value = serde_json::from_str(&std::fs::read_to_string(data.join("queries.json"))?)?;
    let k = queries["k"].as_u64().unwrap_or(10) as usize;
    let qs = queries["queries"].as_array().context("queries")?;

    let path = work.join("graftdb");
    // PEERS_GRAFT_REUSE=PRIOR.json: query the database an earlier run left in WORK_DIR again
    // (a 1M build takes ~30 min here), reporting that run's ingest and build times.
    if let Ok(prior) = std::env::var("PEERS_GRAFT_REUSE") {
        let prior: Value = serde_json::from_str(&std::fs::read_to_string(&prior).with_context(|| prior.clone())?)?;
        let (ingest_s, build_s) = (prior["ingest_s"].as_f64().context("ingest_s")?, prior["build_s"].as_f64().context("build_s")?);
        anyhow::ensure!(path.exists(), "PEERS_GRAFT_REUSE: no database at {}", path.display());
        eprintln!("graftdb: reusing {} (ingest {ingest_s:.1} s, checkpoint {build_s:.1} s in the run that built it)", path.display());
        return time_queries(data, &path, dim, &qvecs, qs, k, ingest_s, build_s);
    }
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(work)?;
    let db = Db::create(&path)?;
    db.create_space("clip", dim as u32, Metric::Cos, Level::Image)?;
    let t = Instant::now();
    for start in (0..n).step_by(10_000) {
        let rows: Vec<(Record, Vec<f32>)> = (start..(start + 10_000).min(n))
            .map(|i| {
                (photo(i, lon[i], lat[i]), vecs[i * dim..(i + 1) * dim].to_vec())
            })
            .collect();
        let mut w = db.begin_write()?;
        w.insert_batch("peers", start as u64 + 1, "clip", &rows)?;
        w.commit()?;
    }
    let ingest_s = t.elapsed().as_secs_f64();
    eprintln!("graftdb: ingest {ingest_s:.1} s");
    let t = Instant::now();
    db.checkpoint()?;
    let build_s = t.elapsed().as_secs_f64();
    eprintln!("graftdb: checkpoint (arena + HNSW) {build_s:.1} s");
    drop(db);
    time_queries(data, &path, dim, &qvecs, qs, k, ingest_s, build_s)
}

/// The `Options` of a timed run and the beams to run it at (`None`: the default run, then each
/// extra beam). PEERS_GRAFT_EF sets the beam, PEERS_GRAFT_EXACT the exact threshold,
/// PEERS_GRAFT_NOPARTS=1 turns the partitions off, PEERS_GRAFT_NOSHORT=1 the capped scans'
/// short lists (`Options::row_shortlist`, `tile_shortlist`); PEERS_GRAFT_EFS (comma list) adds runs at
/// other beams, each written beside OUT ([`out_for`]). PEERS_GRAFT_PORTABLE=1 (diagnosis) scans
/// without the two-bit sketches, as on a CPU without AVX-512BW.
fn run_options() -> (graftdb::Options, Vec<Option<usize>>) {
    graftdb::index::sketch::scan_as_without_avx512(std::env::var("PEERS_GRAFT_PORTABLE").is_ok_and(|v| v != "0"));
    let mut opts = graftdb::Options::default();
    if let Some(ef) = std::env::var("PEERS_GRAFT_EF").ok().and_then(|v| v.parse().ok()) {
        opts.ef_search = ef;
    }
    if let Some(t) = std::env::var("PEERS_GRAFT_EXACT").ok().and_then(|v| v.parse().ok()) {
        opts.exact_threshold = t;
    }
    if std::env::var("PEERS_GRAFT_NOPARTS").is_ok_and(|v| v != "0") {
        opts.partitions = false;
    }
    if std::env::var("PEERS_GRAFT_NOSHORT").is_ok_and(|v| v != "0") {
        opts.row_shortlist = false;
        opts.tile_shortlist = false;
    }
    let extra = std::env::var("PEERS_GRAFT_EFS").unwrap_or_default().split(',').filter_map(|v| v.trim().parse().ok()).map(Some).collect::<Vec<_>>();
    (opts, std::iter::once(None).chain(extra).collect())
}

/// Said in the mode line when the scans run without sketches (PEERS_GRAFT_PORTABLE=1).
fn sketch_note() -> &'static str {
    if std::env::var("PEERS_GRAFT_PORTABLE").is_ok_and(|v| v != "0") {
        ", sketches off (PEERS_GRAFT_PORTABLE)"
    } else if std::env::var("PEERS_GRAFT_NOSHORT").is_ok_and(|v| v != "0") {
        ", short lists off (PEERS_GRAFT_NOSHORT)"
    } else {
        ""
    }
}

/// OUT for the default run, `OUT-ef<X>.json` for an extra beam.
fn out_for(out: &str, ef: Option<usize>) -> String {
    match ef {
        None => out.to_string(),
        Some(ef) => out.replace(".json", &format!("-ef{ef}.json")),
    }
}

/// One query of `space` with `q`'s region, timed around `Db::search` alone: ms, the hits' ids
/// as the dataset numbers them (`id`), the plan path and [estimate, tested, matched].
/// `cap` is `Query::max_tiles` in the patch space, `Query::max_partitions` in the image one.
fn search_once(db: &Db, space: &str, qv: &[f32], k: usize, q: &Value, cap: Option<usize>, id: impl Fn(&graftdb::Hit) -> i64) -> Result<(f64, Vec<i64>, String, [u64; 3])> {
    let filter = Filter { regions: region(q)?.into_iter().collect(), ..Default::default() };
    let query = Query::new(space, qv.to_vec(), k).filter(filter);
    let query = if space == "patch" { query.max_tiles(cap) } else { query.max_partitions(cap) };
    let t = Instant::now();
    let res = db.search(&query)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let e = &res.explain;
    Ok((ms, res.hits.iter().map(id).collect(), e.path.as_str().to_string(), [e.estimate, e.tested, e.matched]))
}

/// One timed pass over `qs` with `run` (query number and query → ms, ids, plan, [estimate,
/// tested, matched]), as JSON results. Before it: PEERS_GRAFT_SETTLE=S (diagnosis) waits S
/// seconds after open, e.g. for the background prefault of the mapped index files, as in a
/// long-running process; the first 20 queries run untimed (every engine does the same); and
/// PEERS_GRAFT_WARM=1 (diagnosis) answers every query once untimed, so the timed pass runs
/// with the mapped index files already faulted in. PEERS_GRAFT_FLUSH_MB=N writes N MB of
/// scratch memory first, evicting the CPU caches, so that a pass after the first (a cap, a
/// beam) does not find the same queries' data cached by the passes before it: every pass
/// then starts as the first does, and as each peer's one pass does.
fn timed_pass(qs: &[Value], run: impl Fn(usize, &Value) -> Result<(f64, Vec<i64>, String, [u64; 3])>) -> Result<Vec<Value>> {
    if let Some(s) = std::env::var("PEERS_GRAFT_SETTLE").ok().and_then(|v| v.parse::<f64>().ok()) {
        std::thread::sleep(std::time::Duration::from_secs_f64(s));
    }
    if let Some(mb) = std::env::var("PEERS_GRAFT_FLUSH_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        let mut junk = vec![0u64; mb << 17];
        for (i, x) in junk.iter_mut().enumerate() {
            *x = i as u64;
        }
        std::hint::black_box(&junk);
    }
    let warm = if std::env::var("PEERS_GRAFT_WARM").is_ok_and(|v| v != "0") { qs.len() } else { 20 };
    for (qi, q) in qs.iter().enumerate().take(warm) {
        run(qi, q)?;
    }
    let mut results = Vec::with_capacity(qs.len());
    for (qi, q) in qs.iter().enumerate() {
        let (ms, ids, plan, [estimate, tested, matched]) = run(qi, q)?;
        results.push(json!({"ms": ms, "ids": ids, "plan": plan, "estimate": estimate, "tested": tested, "matched": matched}));
    }
    Ok(results)
}

/// Time the queries on the built database at `path`, run the join, write OUT.json; then,
/// under each cap of PEERS_GRAFT_PARTS=N[,N...] (`Query::max_partitions`: at most N cone
/// partitions visited, best bound first), engine `graftdb-partsN`, OUT-partsN.json.
#[allow(clippy::too_many_arguments)]
fn time_queries(data: &std::path::Path, path: &std::path::Path, dim: usize, qvecs: &[f32], qs: &[Value], k: usize, ingest_s: f64, build_s: f64) -> Result<()> {
    let out = &std::env::args().nth(3).context("OUT.json")?;
    let path = path.to_path_buf();
    let disk = dir_bytes(&path);
    let (base, beams) = run_options();
    let mut docs = Vec::new();
    let caps = std::env::var("PEERS_GRAFT_PARTS").unwrap_or_default().split(',').filter_map(|v| v.trim().parse().ok()).collect::<Vec<usize>>();
    let runs = beams.into_iter().map(|ef| (ef, None)).chain(caps.into_iter().map(|c| (None, Some(c))));
    for (ef, cap) in runs {
        let opts = graftdb::Options { ef_search: ef.unwrap_or(base.ef_search), ..base.clone() };
        let mode = format!(
            "library (Db::search), exact_threshold {}, {}, graph M 16, ef_add {}{}",
            opts.exact_threshold,
            cap.map_or(format!("ef_search {}/√selectivity", opts.ef_search), |c| format!("max_partitions {c} (best bound first, where it beats the exact scan)")),
            graftdb::index::hnsw::EXPANSION_ADD,
            sketch_note()
        );
        let db = Db::open_with(&path, opts)?;
        let run = |qi: usize, q: &Value| search_once(&db, "clip", &qvecs[qi * dim..(qi + 1) * dim], k, q, cap, |h| if let RecordId::Int(i) = h.id { i } else { -1 });
        let results = timed_pass(qs, run)?;
        eprintln!("graftdb: {} queries done ({mode})", qs.len());
        docs.push((ef, cap, mode, results));
    }
    let db = Db::open(&path)?;

    // Spatial join: tile footprints (tiles.npy, T × 4 boxes) against every photo.
    let mut join = Value::Null;
    let tiles_path = data.join("tiles.npy");
    if tiles_path.exists() && std::env::var("PEERS_JOIN").map_or(true, |v| v != "0") {
        let (tshape, boxes) = npy::<f64>(&tiles_path)?;
        let nt = tshape[0] as usize;
        let t = Instant::now();
        insert_tiles(&db, &boxes[..nt * 4])?;
        let tile_ingest_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let st = db.join(|_| Ok(()))?;
        let join_s = t.elapsed().as_secs_f64();
        eprintln!("graftdb: join {} photos × {} tiles -> {} pairs in {join_s:.2} s", st.photos, st.tiles, st.pairs);
        join = json!({"tiles": st.tiles, "photos": st.photos, "pairs": st.pairs, "join_s": join_s, "tile_ingest_s": tile_ingest_s});
    }
    for (ef, cap, mode, results) in docs {
        let doc = json!({
            "engine": match (ef, cap) {
                (_, Some(c)) => format!("graftdb-parts{c}"),
                (Some(ef), None) => format!("graftdb-ef{ef}"),
                (None, None) => "graftdb".to_string(),
            },
            "mode": mode,
            "ingest_s": ingest_s,
            "build_s": build_s,
            "disk_bytes": disk,
            "peak_rss_kb": proc_status("VmHWM:"),
            "results": results,
            "join": if ef.is_none() && cap.is_none() { join.clone() } else { Value::Null },
        });
        let file = match cap {
            Some(c) => out.replace(".json", &format!("-parts{c}.json")),
            None => out_for(out, ef),
        };
        std::fs::write(file, serde_json::to_string(&doc)?)?;
    }
    Ok(())
}
