//! Patch-level queries: a tile's 14×14 grid is stored as i8 with a per-patch scale, and a
//! region query returns the best patches with their tile id, row, column and footprint.
//! The reference is brute force over the original f32 grids.

#[path = "support/index_files.rs"]
mod index_files;

use graftdb::query::patch_footprint;
use graftdb::{Db, Filter, Level, Metric, PixelRef, PlanPath, Query, Record, RecordId, Region, Tile};
use rand::{Rng, SeedableRng};

const DIM: usize = 32;
const G: u16 = 14;

fn tile(i: usize, lon: f64, lat: f64) -> Tile {
    let h = 0.01;
    Tile {
        id: RecordId::Str(format!("t{i}")),
        // Upper-left, upper-right, lower-right, lower-left, closed.
        footprint: vec![[lon - h, lat + h], [lon + h, lat + h], [lon + h, lat - h], [lon - h, lat - h], [lon - h, lat + h]],
        source: "test".into(),
        gsd_m: 10.0,
        time: None,
        cloud_cover: None,
        pixels: PixelRef::None,
    }
}

#[test]
fn best_patches_in_a_region_match_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path().join("db")).unwrap();
    db.create_space("px", DIM as u32, Metric::Ip, Level::Patch { rows: G, cols: G }).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let n_patches = usize::from(G) * usize::from(G);
    let mut grids = Vec::new();
    let mut w = db.begin_write().unwrap();
    for i in 0..60 {
        let (lon, lat) = (10.0 + (i % 10) as f64 * 0.03, 45.0 + (i / 10) as f64 * 0.03);
        let t = tile(i, lon, lat);
        let key = w.insert(Record::Tile(t.clone())).unwrap();
        let grid: Vec<f32> = (0..n_patches * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
        w.put_patches("px", key, &grid).unwrap();
        grids.push((t, grid));
    }
    w.commit().unwrap();

    let q: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    // A region covering some tiles whole and cutting others.
    let region = Region::bbox(10.05, 45.0, 10.2, 45.1).unwrap();
    let res = db.search(&Query::new("px", q.clone(), 10).filter(Filter { regions: vec![region.clone()], ..Default::default() })).unwrap();
    assert_eq!(res.hits.len(), 10);

    // Brute force in f32 over patches whose footprint intersects the region.
    let mut all: Vec<(f32, String, u16, u16)> = Vec::new();
    for (t, grid) in &grids {
        if !region.intersects_ring(&t.footprint) {
            continue;
        }
        for p in 0..n_patches {
            let (r, c) = ((p / usize::from(G)) as u16, (p % usize::from(G)) as u16);
            if !region.intersects_ring(&patch_footprint(&t.footprint, G, G, r, c)) {
                continue;
            }
            let s: f32 = grid[p * DIM..(p + 1) * DIM].iter().zip(&q).map(|(a, b)| a * b).sum();
            all.push((s, t.id.to_string(), r, c));
        }
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let truth: Vec<(String, u16, u16)> = all.iter().take(10).map(|x| (x.1.clone(), x.2, x.3)).collect();
    let got: Vec<(String, u16, u16)> = res.hits.iter().map(|h| (h.id.to_string(), h.patch.as_ref().unwrap().row, h.patch.as_ref().unwrap().col)).collect();
    // Budget: i8 codes may swap near-ties, so allow 1 miss in 10 (measured: 0 with this seed).
    let found = truth.iter().filter(|t| got.contains(t)).count();
    assert!(found >= 9, "recall {found}/10\ntruth {truth:?}\ngot {got:?}");
    for (h, (s, ..)) in res.hits.iter().zip(&all) {
        assert!((h.score - s).abs() < 0.05 * s.abs().max(1.0), "i8 score {} vs f32 {}", h.score, s);
        let p = h.patch.as_ref().unwrap();
        assert_eq!(p.footprint.len(), 5);
        assert!(region.intersects_ring(&p.footprint), "patch footprint must touch the region");
        // The patch footprint is 1/14 of the tile's 0.02° side.
        let w = p.footprint[1][0] - p.footprint[0][0];
        assert!((w - 0.02 / 14.0).abs() < 1e-9, "{w}");
    }
}

#[test]
fn patch_grid_of_wrong_size_or_for_a_photo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path().join("db")).unwrap();
    db.create_space("px", DIM as u32, Metric::Ip, Level::Patch { rows: G, cols: G }).unwrap();
    let mut w = db.begin_write().unwrap();
    let key = w.insert(Record::Tile(tile(0, 1.0, 1.0))).unwrap();
    let e = w.put_patches("px", key, &[0.5; 10]).unwrap_err().to_string();
    assert!(e.contains("14×14×32"), "{e}");
    let e = w.put_vector("px", key, &[0.5; DIM]).unwrap_err().to_string();
    assert!(e.contains("patch grids"), "{e}");
}

/// Unit vector.
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Patch hits as comparable tuples: (id, row, col, score).
fn patch_hits(r: &graftdb::SearchResult) -> Vec<(String, u16, u16, f32)> {
    r.hits.iter().map(|h| (h.id.to_string(), h.patch.as_ref().unwrap().row, h.patch.as_ref().unwrap().col, h.score)).collect()
}

/// A patch grid whose patches scatter around content centre `c`.
fn grid_near(rng: &mut rand::rngs::StdRng, c: &[f32]) -> Vec<f32> {
    (0..usize::from(G) * usize::from(G)).flat_map(|_| unit(c.iter().map(|x| x + rng.random_range(-0.15f32..0.15)).collect())).collect()
}

/// A checkpointed cosine patch space "px" at `path`: `n` tiles, `per_row` to a row of the
/// layout, each tile's patches around one of `k` content centres (returned).
fn clustered_patch_db(path: &std::path::Path, opts: &graftdb::Options, n: usize, per_row: usize, k: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..k).map(|_| unit((0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    let db = Db::create_with(path, opts.clone()).unwrap();
    db.create_space("px", DIM as u32, Metric::Cos, Level::Patch { rows: G, cols: G }).unwrap();
    let mut w = db.begin_write().unwrap();
    for i in 0..n {
        let key = w.insert(Record::Tile(tile(i, 10.0 + (i % per_row) as f64 * 0.03, 45.0 + (i / per_row) as f64 * 0.03))).unwrap();
        let c = centres[rng.random_range(0..centres.len())].clone();
        w.put_patches("px", key, &grid_near(rng, &c)).unwrap();
    }
    w.commit().unwrap();
    db.checkpoint().unwrap();
    centres
}

#[test]
fn patch_partitions_answer_exactly_and_prune() {
    // 240 tiles × 196 patches in a cosine space: enough patches for partitions. Each tile
    // has a content centre (one of 60) and its patches scatter around it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // No cost switch: on 47k patches the sketched tile scan is cheaper than any other path.
    let opts = graftdb::Options { hnsw_min_rows: 2_000, cost_switch: false, ..graftdb::Options::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    // 60 content centres: a query's own cluster is ~2 % of the patches, few enough for the
    // partitions to pass their self-check (`Parts::prune_their_own_items`) and be kept.
    let centres = clustered_patch_db(&path, &opts, 240, 20, 60, &mut rng);
    let n_patches = usize::from(G) * usize::from(G);
    // Reopen: the partitions come from their file.
    let db = Db::open_with(&path, opts).unwrap();
    let np = graftdb::index::parts::count_for(240 * n_patches) as u64;
    assert_eq!(db.stats().unwrap().spaces[0].partitions, np, "stats names the loaded patch partitions");
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    let same = |q: Query, what: &str| -> graftdb::SearchResult {
        let got = db.search(&q).unwrap();
        let want = db.search(&q.clone().exact(true)).unwrap();
        assert_eq!(want.explain.path, PlanPath::PatchExact);
        assert_eq!(patch_hits(&got), patch_hits(&want), "{what}: path {:?} disagrees with the tile scan", got.explain.path);
        got
    };
    // Regions: none, a box cutting tiles, a polygon with a hole.
    let boxed = Filter { regions: vec![Region::bbox(10.05, 45.0, 10.4, 45.2).unwrap()], ..Default::default() };
    let poly = Region::parse_polygon("test", "POLYGON((10.0 45.0, 10.5 45.0, 10.5 45.3, 10.0 45.3, 10.0 45.0), (10.1 45.1, 10.2 45.1, 10.2 45.2, 10.1 45.2, 10.1 45.1))").unwrap();
    let poly = Filter { regions: vec![poly], ..Default::default() };
    let (mut via_parts, mut scanned, mut filtered_parts) = (0, 0, 0);
    for qi in 0..20 {
        let c = &centres[qi % centres.len()];
        let q = unit(c.iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect());
        let r = same(Query::new("px", q.clone(), 10), &format!("unfiltered query {qi}"));
        assert_eq!(r.hits.len(), 10);
        if r.explain.path == PlanPath::PatchParts {
            via_parts += 1;
            scanned += r.explain.partitions;
        }
        for (f, name) in [(&boxed, "box"), (&poly, "polygon")] {
            let r = same(Query::new("px", q.clone(), 10).filter(f.clone()), &format!("{name} query {qi}"));
            assert_eq!(r.hits.len(), 10, "{name} query {qi} is short");
            filtered_parts += usize::from(r.explain.path == PlanPath::PatchParts);
            for h in &r.hits {
                assert!(f.regions[0].intersects_ring(&h.patch.as_ref().unwrap().footprint), "{name} query {qi}: a patch outside the region");
            }
        }
    }
    assert!(via_parts >= 18, "only {via_parts} of 20 unfiltered queries took the patch partitions");
    eprintln!("filtered via parts: {filtered_parts} of 40; partitions scanned per unfiltered query {} of {np}", scanned / via_parts);
    assert!(filtered_parts >= 10, "only {filtered_parts} of 40 filtered queries took the patch partitions");
    assert!(scanned / via_parts < np / 2, "{} of {np} partitions scanned per query: the bound is not pruning", scanned / via_parts);
    // A tile committed after the checkpoint (the delta) is found too: its patch equal to the
    // query comes back first.
    let q = unit(centres[3].iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect());
    let mut w = db.begin_write().unwrap();
    let key = w.insert(Record::Tile(tile(999, 10.2, 45.05))).unwrap();
    let mut grid = grid_near(&mut rng, &centres[5]);
    grid[7 * DIM..8 * DIM].copy_from_slice(&q);
    w.put_patches("px", key, &grid).unwrap();
    w.commit().unwrap();
    let r = same(Query::new("px", q, 10), "with a delta");
    assert_eq!((r.hits[0].id.to_string().as_str(), r.hits[0].patch.as_ref().unwrap().col), ("t999", 7), "the delta tile's patch is missing (path {:?})", r.explain.path);
    // Queries in random directions (near no tile's content) make the partitions give up and
    // the next path start over: the delta's patches must survive the restart. A narrow beam
    // makes the walk cheap, so the partitions' budget (one walk) is small enough to run out.
    drop(db);
    let db = Db::open_with(&path, graftdb::Options { hnsw_min_rows: 2_000, cost_switch: false, ef_search: 40, ..graftdb::Options::default() }).unwrap();
    let mut gave_up = 0;
    for qi in 0..8usize {
        let q = unit((0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect());
        let mut w = db.begin_write().unwrap();
        let key = w.insert(Record::Tile(tile(1000 + qi, 10.25, 45.1))).unwrap();
        let mut grid = grid_near(&mut rng, &centres[0]);
        grid[3 * DIM..4 * DIM].copy_from_slice(&q);
        w.put_patches("px", key, &grid).unwrap();
        w.commit().unwrap();
        // The walk that may follow is approximate, so only the delta's patch is checked.
        let r = db.search(&Query::new("px", q, 10)).unwrap();
        assert_eq!(r.hits.len(), 10, "random query {qi} is short");
        gave_up += usize::from(r.explain.path != PlanPath::PatchParts);
        assert_eq!((r.hits[0].id.to_string(), r.hits[0].patch.as_ref().unwrap().col), (format!("t{}", 1000 + qi), 3), "random query {qi}: the delta tile's patch is missing (path {:?})", r.explain.path);
    }
    assert!(gave_up >= 4, "only {gave_up} of 8 random queries made the partitions give up");
}

/// Patch partitions over a few large content clusters do not prune (a query must visit its
/// whole cluster): the checkpoint builds them, finds so on its own patches, and keeps none;
/// the manifest remembers it, so a checkpoint with nothing new does not build them again.
#[test]
fn patch_partitions_that_do_not_prune_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = graftdb::Options { hnsw_min_rows: 2_000, ..graftdb::Options::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let centres = clustered_patch_db(&path, &opts, 120, 12, 3, &mut rng);
    let manifest = index_files::index_files(&path, "json").into_iter().next().unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(m["parts_declined"] == true && m["parts"].is_null(), "{text}");
    let db = Db::open_with(&path, opts).unwrap();
    assert_eq!(db.stats().unwrap().spaces[0].partitions, 0);
    let before = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    db.checkpoint().unwrap();
    assert_eq!(std::fs::metadata(&manifest).unwrap().modified().unwrap(), before, "an empty checkpoint rewrote the manifest (built the partitions again)");
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    // Without partitions the planner scans (or walks); the scan is exact.
    let q = unit(centres[1].iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect());
    let got = db.search(&Query::new("px", q.clone(), 10)).unwrap();
    let want = db.search(&Query::new("px", q, 10).exact(true)).unwrap();
    assert_eq!(got.explain.path, PlanPath::PatchExact);
    assert_eq!(patch_hits(&got), patch_hits(&want));
}

#[test]
fn patch_graph_answers_within_its_miss_budget_and_never_short() {
    // Partitions off: wide patch queries take the graph over every patch (i8 codes), which is
    // approximate. Miss budget: mean recall@10 ≥ 0.9 against the exact tile scan, every
    // query full, and a region too tight for the graph answered exactly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = graftdb::Options { hnsw_min_rows: 2_000, exact_threshold: 2_000, partitions: false, cost_switch: false, ..graftdb::Options::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let centres = clustered_patch_db(&path, &opts, 150, 15, 12, &mut rng);
    let db = Db::open_with(&path, opts).unwrap();
    assert_eq!(db.check().unwrap(), Vec::<String>::new(), "the patch graph agrees with the snapshot");
    let key = |h: &graftdb::Hit| (h.id.to_string(), h.patch.as_ref().unwrap().row, h.patch.as_ref().unwrap().col);
    let (mut found, mut via_graph) = (0, 0);
    let wide = Filter { regions: vec![Region::bbox(10.0, 45.0, 10.35, 45.3).unwrap()], ..Default::default() };
    for qi in 0..20 {
        let q = unit(centres[qi % 12].iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect());
        for f in [Filter::default(), wide.clone()] {
            let got = db.search(&Query::new("px", q.clone(), 10).filter(f.clone())).unwrap();
            let want = db.search(&Query::new("px", q.clone(), 10).filter(f.clone()).exact(true)).unwrap();
            assert_eq!(got.hits.len(), 10, "query {qi} is short (path {:?})", got.explain.path);
            via_graph += usize::from(got.explain.path == PlanPath::PatchHnsw);
            let truth: Vec<_> = want.hits.iter().map(key).collect();
            found += got.hits.iter().filter(|h| truth.contains(&key(h))).count();
            for h in &got.hits {
                let p = h.patch.as_ref().unwrap();
                assert!(f.regions.iter().all(|r| r.intersects_ring(&p.footprint)), "query {qi}: a patch outside the region");
            }
        }
    }
    let recall = found as f64 / 400.0;
    assert!(via_graph >= 30, "only {via_graph} of 40 wide queries took the patch graph");
    assert!(recall >= 0.9, "patch graph recall@10 {recall:.3} is below the 0.9 budget");
    // One tile: the scan is cheaper than any walk, and exact.
    let tight = Filter { regions: vec![Region::bbox(10.0, 45.0, 10.005, 45.005).unwrap()], ..Default::default() };
    let q = unit(centres[0].clone());
    let got = db.search(&Query::new("px", q, 10).filter(tight)).unwrap();
    assert_eq!(got.explain.path, PlanPath::PatchExact);
    assert_eq!(got.hits.len(), 10);
    // With the cost switch (the default), 29k patches are cheaper to scan from their sketches
    // and tile bounds than to walk: the planner scans, exactly, even with no filter.
    drop(db);
    let db = Db::open_with(&path, graftdb::Options { hnsw_min_rows: 2_000, exact_threshold: 2_000, partitions: false, ..graftdb::Options::default() }).unwrap();
    let q = unit(centres[1].clone());
    let got = db.search(&Query::new("px", q.clone(), 10)).unwrap();
    let want = db.search(&Query::new("px", q, 10).exact(true)).unwrap();
    assert_eq!(got.explain.path, PlanPath::PatchExact, "the planner walked 29k patches");
    assert_eq!(patch_hits(&got), patch_hits(&want));
}

/// The tile scan over a checkpointed base (tiles visited best tile bound first, patches
/// bounded from their two-bit sketches, see `graftdb::index::sketch`) returns exactly the
/// top k of scoring every patch's stored codes, with and without a region; and the bounds
/// prune: most patches' codes are never read for queries near a tile's content.
#[test]
fn sketched_tile_scan_equals_scoring_every_stored_patch() {
    const D: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = graftdb::Options { hnsw_min_rows: usize::MAX, partitions: false, ..graftdb::Options::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(33);
    let n_patches = usize::from(G) * usize::from(G);
    let centres: Vec<Vec<f32>> = (0..8).map(|_| unit((0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    let db = Db::create_with(&path, opts.clone()).unwrap();
    // Inner product: the engine stores and queries the vectors as given, so the reference
    // below scores the very codes it stores.
    db.create_space("px", D as u32, Metric::Ip, Level::Patch { rows: G, cols: G }).unwrap();
    let mut tiles = Vec::new();
    let mut w = db.begin_write().unwrap();
    for i in 0..64 {
        if i == 40 {
            // Two checkpoints: the second merges the first's sketched base with a delta, so
            // its sketches are partly copied (base rows) and partly built (delta rows).
            w.commit().unwrap();
            db.checkpoint().unwrap();
            w = db.begin_write().unwrap();
        }
        let t = tile(i, 10.0 + (i % 8) as f64 * 0.03, 45.0 + (i / 8) as f64 * 0.03);
        let key = w.insert(Record::Tile(t.clone())).unwrap();
        let c = &centres[rng.random_range(0..centres.len())];
        let grid: Vec<f32> = (0..n_patches).flat_map(|_| unit(c.iter().map(|x| x + rng.random_range(-0.06f32..0.06)).collect())).collect();
        w.put_patches("px", key, &grid).unwrap();
        // The reference scores what the engine stores: each patch's i8 codes and scale.
        tiles.push((t, graftdb::store::codec::encode_patch_grid(&grid, D)));
    }
    w.commit().unwrap();
    db.checkpoint().unwrap();
    drop(db);
    // Reopened: the sketches come from the snapshot file.
    let db = Db::open_with(&path, opts).unwrap();
    // No region, a box, a circle and a triangle, each cutting through tiles (patch by patch).
    let regions = [
        None,
        Some(Region::bbox(10.02, 45.0, 10.13, 45.13).unwrap()),
        Some(Region::circle(10.1, 45.1, 4.0).unwrap()),
        Some(Region::parse_polygon("test", "POLYGON((10.0 45.0, 10.2 45.03, 10.05 45.2, 10.0 45.0))").unwrap()),
    ];
    let (mut read, mut all) = ([0u64; 2], [0u64; 2]);
    // The second round runs as on a CPU without AVX-512: tile bounds, no patch sketches.
    for qi in 0..24 {
        graftdb::index::sketch::scan_as_without_avx512(qi >= 12);
        let q = unit(centres[qi % centres.len()].iter().map(|x| x + rng.random_range(-0.05f32..0.05)).collect());
        for region in &regions {
            let filter = Filter { regions: region.iter().cloned().collect(), ..Default::default() };
            let r = db.search(&Query::new("px", q.clone(), 10).filter(filter)).unwrap();
            assert_eq!(r.explain.path, PlanPath::PatchExact);
            let mut want: Vec<(f32, String, u16, u16)> = Vec::new();
            for (t, enc) in &tiles {
                for p in 0..n_patches {
                    let (row, col) = ((p / usize::from(G)) as u16, (p % usize::from(G)) as u16);
                    if region.as_ref().is_some_and(|g| !g.intersects_ring(&patch_footprint(&t.footprint, G, G, row, col))) {
                        continue;
                    }
                    want.push((graftdb::store::codec::patch_dot(enc, D, p, &q).unwrap(), t.id.to_string(), row, col));
                }
            }
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            let got: Vec<(f32, String, u16, u16)> = patch_hits(&r).into_iter().map(|(id, row, col, s)| (s, id, row, col)).collect();
            assert_eq!(got, want[..10].to_vec(), "query {qi}, region {region:?}");
            let at = usize::from(qi >= 12);
            read[at] += r.explain.rescored;
            all[at] += want.len() as u64;
        }
    }
    graftdb::index::sketch::scan_as_without_avx512(false);
    eprintln!("codes read: sketches {} of {}, tile bounds alone {} of {}", read[0], all[0], read[1], all[1]);
    // Queries sit near one of 8 centres, so most tiles hold nothing like them.
    assert!(read[0] * 4 < all[0], "the sketches and tile bounds let {} of {} patches through", read[0], all[0]);
    assert!(read[1] * 2 < all[1], "the tile bounds alone let {} of {} patches through", read[1], all[1]);
    // `check` compares the sketches with the grids: a changed byte in the last tile's summary
    // (the end of the snapshot file) is reported.
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    drop(db);
    index_files::flip_arena_byte(&path, 100, 0x40);
    let db = Db::open_with(&path, graftdb::Options { hnsw_min_rows: usize::MAX, partitions: false, ..graftdb::Options::default() }).unwrap();
    let problems = db.check().unwrap();
    assert!(problems.iter().any(|p| p.contains("patch sketches of row 63")), "{problems:?}");
}

/// `Query::max_tiles`: the tile scan visits at most that many tiles, best mean patch first.
/// Over tiles whose patches gather around their tile's content it finds what the exact scan
/// finds while reading the codes of only the capped tiles (miss budget: recall@10 ≥ 0.9
/// against scoring every stored patch; visiting tiles in any other order than by their mean
/// patch's score finds few of the ten); a patch unlike the rest of its tile is missed under
/// a small cap and found with a cap of every tile; the path says whether the cap left out a
/// tile that could have held a better patch.
#[test]
fn capped_tile_scan_visits_the_best_tiles_first() {
    const D: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = graftdb::Options { hnsw_min_rows: usize::MAX, partitions: false, ..graftdb::Options::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let n_patches = usize::from(G) * usize::from(G);
    let centres: Vec<Vec<f32>> = (0..24).map(|_| unit((0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    let db = Db::create_with(&path, opts.clone()).unwrap();
    db.create_space("px", D as u32, Metric::Ip, Level::Patch { rows: G, cols: G }).unwrap();
    let mut tiles = Vec::new();
    let mut w = db.begin_write().unwrap();
    for i in 0..96 {
        let t = tile(i, 10.0 + (i % 12) as f64 * 0.03, 45.0 + (i / 12) as f64 * 0.03);
        let key = w.insert(Record::Tile(t.clone())).unwrap();
        let c = &centres[i % centres.len()];
        let mut grid: Vec<f32> = (0..n_patches).flat_map(|_| unit(c.iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect())).collect();
        // Tile 95 (content 23) hides one patch of content 0: unlike the rest of its tile.
        if i == 95 {
            grid[77 * D..78 * D].copy_from_slice(&centres[0]);
        }
        w.put_patches("px", key, &grid).unwrap();
        tiles.push((t, graftdb::store::codec::encode_patch_grid(&grid, D)));
    }
    w.commit().unwrap();
    db.checkpoint().unwrap();
    let exact_top = |q: &[f32], region: Option<&Region>| -> Vec<(String, u16, u16)> {
        let mut all: Vec<(f32, String, u16, u16)> = Vec::new();
        for (t, enc) in &tiles {
            for p in 0..n_patches {
                let (row, col) = ((p / usize::from(G)) as u16, (p % usize::from(G)) as u16);
                if region.is_some_and(|g| !g.intersects_ring(&patch_footprint(&t.footprint, G, G, row, col))) {
                    continue;
                }
                all.push((graftdb::store::codec::patch_dot(enc, D, p, q).unwrap(), t.id.to_string(), row, col));
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.into_iter().take(10).map(|(_, id, r, c)| (id, r, c)).collect()
    };
    let west = Region::bbox(9.98, 44.98, 10.17, 45.3).unwrap();
    let (mut found, mut wanted, mut probes) = (0, 0, 0);
    for qi in 0..20 {
        // Content 1..=20: four tiles each, none of them tile 95.
        let q = unit(centres[1 + qi].iter().map(|x| x + rng.random_range(-0.05f32..0.05)).collect());
        for region in [None, Some(&west)] {
            let filter = Filter { regions: region.into_iter().cloned().collect(), ..Default::default() };
            let r = db.search(&Query::new("px", q.clone(), 10).filter(filter).max_tiles(Some(6))).unwrap();
            assert!(matches!(r.explain.path, PlanPath::PatchProbe | PlanPath::PatchExact), "{:?}", r.explain.path);
            probes += usize::from(r.explain.path == PlanPath::PatchProbe);
            assert!(r.explain.rescored <= 6 * n_patches as u64, "codes of {} patches read under a cap of 6 tiles", r.explain.rescored);
            let got: Vec<(String, u16, u16)> = patch_hits(&r).into_iter().map(|(id, row, col, _)| (id, row, col)).collect();
            assert_eq!(got.len(), 10, "short under a cap");
            let want = exact_top(&q, region);
            wanted += want.len();
            found += want.iter().filter(|h| got.contains(h)).count();
            if let Some(g) = region {
                for h in &r.hits {
                    let p = h.patch.as_ref().unwrap();
                    assert!(g.intersects_ring(&p.footprint), "a hit outside the region");
                }
            }
        }
    }
    let recall = found as f64 / wanted as f64;
    eprintln!("capped at 6 tiles: recall@10 {recall:.3}, {probes} of 40 queries cut short");
    assert!(recall >= 0.9, "recall@10 {recall:.3} under a cap of 6 tiles");
    assert!(probes > 0, "a cap of 6 of 96 tiles never left out a tile that might hold a better patch");
    // Never short: a cap of one tile (196 patches) asked for 300 visits more tiles.
    let r = db.search(&Query::new("px", centres[3].clone(), 300).max_tiles(Some(1))).unwrap();
    assert_eq!(r.hits.len(), 300, "short under a cap of one tile");
    assert!(r.explain.rescored <= 2 * n_patches as u64, "codes of {} patches read for 300 hits", r.explain.rescored);
    // The lone patch of content 0 in tile 95: under a cap of 4 the four tiles of content 0
    // fill the cap and it is missed; with a cap of every tile the answer is the exact scan's.
    let q = centres[0].clone();
    let capped = db.search(&Query::new("px", q.clone(), 10).max_tiles(Some(4))).unwrap();
    assert_eq!(capped.explain.path, PlanPath::PatchProbe);
    assert!(!patch_hits(&capped).iter().any(|h| h.0 == "t95"), "the lone patch was found under a cap of 4");
    let whole = db.search(&Query::new("px", q.clone(), 10).max_tiles(Some(96))).unwrap();
    let exact = db.search(&Query::new("px", q.clone(), 10)).unwrap();
    assert_eq!(whole.explain.path, PlanPath::PatchExact);
    assert_eq!(patch_hits(&whole), patch_hits(&exact));
    assert_eq!(patch_hits(&whole)[0].0, "t95", "the lone patch of content 0 is the best");
    let got: Vec<(String, u16, u16)> = patch_hits(&exact).into_iter().map(|(id, row, col, _)| (id, row, col)).collect();
    assert_eq!(got, exact_top(&q, None));
}

#[test]
fn capped_tile_scan_through_the_tile_groups_visits_the_same_tiles() {
    // 2,400 tiles of 2×2 patches (the tile summaries are grouped from 2,048 tiles up), each
    // tile's patches around one of 40 content centres. A capped scan over most of the tiles
    // finds its best tiles through the groups, testing a few groups' tiles instead of every
    // tile's summary; the answer must be the one of scoring every summary.
    const D: usize = 32;
    const N: usize = 2_400;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = graftdb::Options { hnsw_min_rows: usize::MAX, partitions: false, ..graftdb::Options::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let centres: Vec<Vec<f32>> = (0..40).map(|_| unit((0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    {
        let db = Db::create_with(&path, opts.clone()).unwrap();
        db.create_space("px", D as u32, Metric::Cos, Level::Patch { rows: 2, cols: 2 }).unwrap();
        let mut w = db.begin_write().unwrap();
        for i in 0..N {
            let key = w.insert(Record::Tile(tile(i, 10.0 + (i % 60) as f64 * 0.03, 45.0 + (i / 60) as f64 * 0.03))).unwrap();
            let c = &centres[rng.random_range(0..centres.len())];
            let grid: Vec<f32> = (0..4).flat_map(|_| unit(c.iter().map(|x| x + rng.random_range(-0.3f32..0.3)).collect())).collect();
            w.put_patches("px", key, &grid).unwrap();
        }
        w.commit().unwrap();
        db.checkpoint().unwrap();
    }
    // Every tile, and a box holding 56 of the 60 columns and all 40 rows of tiles.
    let most = Region::bbox(10.05, 44.98, 11.80, 46.2).unwrap();
    let queries: Vec<Vec<f32>> = (0..16).map(|qi| unit(centres[qi * 2].iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect())).collect();
    type Answers = Vec<Vec<(String, u16, u16, f32)>>;
    let run = |groups: bool| -> (Answers, u64) {
        let db = Db::open_with(&path, graftdb::Options { tile_groups: groups, ..opts.clone() }).unwrap();
        let (mut answers, mut tested) = (Vec::new(), 0);
        for q in &queries {
            for region in [None, Some(&most)] {
                for (k, cap) in [(10, 3), (10, 8), (300, 1)] {
                    let filter = Filter { regions: region.into_iter().cloned().collect(), ..Default::default() };
                    let r = db.search(&Query::new("px", q.clone(), k).filter(filter).max_tiles(Some(cap))).unwrap();
                    assert_eq!(r.hits.len(), k, "short under a cap of {cap} tiles");
                    if k == 10 {
                        tested += r.explain.tested;
                    }
                    answers.push(patch_hits(&r));
                }
            }
        }
        (answers, tested)
    };
    let (grouped, tested_grouped) = run(true);
    let (plain, tested_plain) = run(false);
    assert_eq!(grouped.len(), plain.len());
    for (n, (a, b)) in grouped.iter().zip(&plain).enumerate() {
        assert_eq!(a, b, "query {n}: the groups found other tiles than scoring every summary");
    }
    // The plain pass tests every tile of the region (~2,300 a query); the groups a few of
    // their 49 groups.
    eprintln!("tiles tested: {tested_grouped} through the groups, {tested_plain} one by one");
    assert!(tested_grouped * 4 < tested_plain, "the groups tested {tested_grouped} tiles, the plain pass {tested_plain}");
}

/// `Options::tile_shortlist`: a capped tile scan (of 12 tiles or more) that leaves tiles out
/// ranks its tiles' patches by four-bit copies of their codes, from the first tile whose
/// sketches let most patches through, and reads the i8 codes of a short list only (128
/// patches for k = 10). Miss budget: it keeps at least 97 % of the hits the i8 scan of
/// the same tiles finds, over 512-d-like data where a query's best tiles' patches score
/// within a few hundredths of each other; never short; a cap of every tile reads every
/// patch, as the exact scan does. Without AVX-512BW the short list is not used and the two
/// answers are equal.
#[test]
fn capped_tile_scan_short_list_keeps_what_the_i8_scan_of_the_same_tiles_finds() {
    const D: usize = 128;
    const N: usize = 240;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = graftdb::Options { hnsw_min_rows: usize::MAX, partitions: false, ..graftdb::Options::default() };
    let n_patches = usize::from(G) * usize::from(G);
    let mut rng = rand::rngs::StdRng::seed_from_u64(47);
    let centres: Vec<Vec<f32>> = (0..24).map(|_| unit((0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    {
        let db = Db::create_with(&path, opts.clone()).unwrap();
        db.create_space("px", D as u32, Metric::Cos, Level::Patch { rows: G, cols: G }).unwrap();
        let mut w = db.begin_write().unwrap();
        for i in 0..N {
            let key = w.insert(Record::Tile(tile(i, 10.0 + (i % 20) as f64 * 0.03, 45.0 + (i / 20) as f64 * 0.03))).unwrap();
            // Each tile's content: a centre moved a little; each patch around it.
            let c = unit(centres[i % centres.len()].iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect());
            let grid: Vec<f32> = (0..n_patches).flat_map(|_| unit(c.iter().map(|x| x + rng.random_range(-0.15f32..0.15)).collect())).collect();
            w.put_patches("px", key, &grid).unwrap();
        }
        w.commit().unwrap();
        db.checkpoint().unwrap();
    }
    let west = Region::bbox(9.98, 44.98, 10.30, 45.4).unwrap();
    let queries: Vec<Vec<f32>> = (0..12).map(|qi| unit(centres[qi].iter().map(|x| x + rng.random_range(-0.1f32..0.1)).collect())).collect();
    type Answers = Vec<Vec<(String, u16, u16, f32)>>;
    let run = |shortlist: bool, cap: usize| -> (Answers, u64) {
        let db = Db::open_with(&path, graftdb::Options { tile_shortlist: shortlist, ..opts.clone() }).unwrap();
        let (mut answers, mut read) = (Vec::new(), 0);
        for q in &queries {
            for region in [None, Some(&west)] {
                let filter = Filter { regions: region.into_iter().cloned().collect(), ..Default::default() };
                let r = db.search(&Query::new("px", q.clone(), 10).filter(filter).max_tiles(Some(cap))).unwrap();
                assert_eq!(r.hits.len(), 10, "short under a cap of {cap} tiles");
                if let Some(g) = region {
                    assert!(r.hits.iter().all(|h| g.intersects_ring(&h.patch.as_ref().unwrap().footprint)), "a hit outside the region");
                }
                read += r.explain.rescored;
                answers.push(patch_hits(&r));
            }
        }
        (answers, read)
    };
    let (short, read_short) = run(true, 16);
    let (plain, read_plain) = run(false, 16);
    let (mut kept, mut wanted) = (0, 0);
    for (a, b) in short.iter().zip(&plain) {
        let ids = |h: &Vec<(String, u16, u16, f32)>| h.iter().map(|x| (x.0.clone(), x.1, x.2)).collect::<Vec<_>>();
        let (a, b) = (ids(a), ids(b));
        wanted += b.len();
        kept += b.iter().filter(|h| a.contains(h)).count();
    }
    let share = kept as f64 / wanted as f64;
    eprintln!("short list: {kept} of {wanted} hits of the i8 scan kept; codes read {read_short} against {read_plain}");
    assert!(share >= 0.97, "the short list kept {share:.3} of the i8 scan's hits");
    if avx512bw() {
        // 24 queries: the patches of the tiles read before the short list takes over (two
        // at most: the first, and the one whose sketches let most patches through) and 128
        // short-listed ones, against up to 16 tiles × 196.
        assert!(read_short <= 24 * (2 * 196 + 128), "the short list read {read_short} patches' codes");
        assert!(read_plain > 3 * read_short, "the i8 scan read {read_plain} patches' codes");
    } else {
        assert_eq!(short, plain, "without AVX-512BW the short list is not used");
    }
    // A cap of every tile: no short list, the exact scan's answer.
    let (all_short, _) = run(true, N);
    let (all_plain, _) = run(false, N);
    assert_eq!(all_short, all_plain, "a cap of every tile ranked by the short list");
}

/// Whether this CPU has AVX-512BW (the short list is used only then).
fn avx512bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
