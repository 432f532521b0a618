//! Cone partitions: the planner's `parts` path must give the exact scan's answer (same ids,
//! same scores) with and without filters, must actually prune on clustered data, must give
//! way to another path when pruning fails, and must survive a reopen (the partitions file)
//! and rows added after the checkpoint (the delta).

#[path = "support/index_files.rs"]
mod index_files;
#[path = "support/records.rs"]
mod records;

use index_files::index_files;

use graftdb::geo::{Filter, Region};
use graftdb::{Db, Level, Metric, Options, PlanPath, Query, Record, RecordId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 48;
const K: usize = 10;
const CLUSTERS: usize = 40;

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

struct Data {
    centres: Vec<Vec<f32>>,
    rows: Vec<(Record, Vec<f32>)>,
}

fn data(n: usize, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| unit((0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    let rows = (0..n)
        .map(|i| {
            let c = &centres[rng.random_range(0..CLUSTERS)];
            let v = unit(c.iter().map(|x| x + rng.random_range(-0.12f32..0.12)).collect());
            let rec = records::photo_at(i as i64, rng.random_range(-20.0..20.0), rng.random_range(-20.0..20.0));
            (rec, v)
        })
        .collect();
    Data { centres, rows }
}

fn options() -> Options {
    // A small graph threshold so 12k rows get a graph and partitions.
    Options { hnsw_min_rows: 2_000, exact_threshold: 1_000, ..Options::default() }
}

/// Compare one planned query with the forced exact scan: same ids in the same order and the
/// same scores. Returns the path the planner took and the partitions it scanned.
fn same_as_exact(db: &Db, q: Query, what: &str) -> (PlanPath, u64) {
    let got = db.search(&q).unwrap();
    let want = db.search(&q.clone().exact(true)).unwrap();
    assert_eq!(want.explain.path, PlanPath::Exact);
    let ids = |r: &graftdb::SearchResult| r.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&want), "{what}: path {:?} disagrees with the exact scan", got.explain.path);
    for (a, b) in got.hits.iter().zip(&want.hits) {
        assert!((a.score - b.score).abs() <= 1e-6, "{what}: score {} vs exact {}", a.score, b.score);
    }
    (got.explain.path, got.explain.partitions)
}

fn query_near(d: &Data, rng: &mut StdRng, noise: f32) -> Vec<f32> {
    let c = &d.centres[rng.random_range(0..CLUSTERS)];
    unit(c.iter().map(|x| x + rng.random_range(-noise..noise)).collect())
}

/// A database at `path` holding `d` in space "s", checkpointed (snapshot, graph, partitions).
fn checkpointed(d: &Data, path: &std::path::Path, opts: Options) -> Db {
    let db = Db::create_with(path, opts).unwrap();
    db.create_space("s", DIM as u32, Metric::Cos, Level::Image).unwrap();
    let mut w = db.begin_write().unwrap();
    w.insert_batch("test", 1, "s", &d.rows).unwrap();
    w.commit().unwrap();
    db.checkpoint().unwrap();
    db
}

#[test]
fn partitions_answer_exactly_and_prune() {
    let d = data(12_000, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(checkpointed(&d, &path, options()));
    // Reopen: the partitions come from their file.
    let db = Db::open_with(&path, options()).unwrap();
    let stats = db.stats().unwrap();
    assert_eq!(stats.spaces[0].partitions, graftdb::index::parts::count_for(12_000) as u64, "stats names the loaded partitions");
    let mut rng = StdRng::seed_from_u64(2);
    let (mut via_parts, mut scanned, mut filtered_parts) = (0, 0, 0);
    for qi in 0..40 {
        let q = query_near(&d, &mut rng, 0.1);
        let (p, n) = same_as_exact(&db, Query::new("s", q.clone(), K), &format!("unfiltered query {qi}"));
        if p == PlanPath::Parts {
            via_parts += 1;
            scanned += n;
        }
        // A wide box, circle or (concave) polygon keeps most rows, so the partitions stay
        // worth trying; their photos are mostly decided by their keys' geohash cells, the
        // rest (cells on the region's edge) by their positions.
        let regions = [
            Region::bbox(-20.0, -20.0, 12.0, 20.0).unwrap(),
            Region::circle(-2.0, 1.0, 1_800.0).unwrap(),
            Region::parse_polygon("q", "POLYGON((-20 -20, 15 -19, 3 0, 18 19, -19 18, -20 -20))").unwrap(),
        ];
        for (ri, r) in regions.into_iter().enumerate() {
            let f = Filter { regions: vec![r], ..Default::default() };
            let (p, _) = same_as_exact(&db, Query::new("s", q.clone(), K).filter(f), &format!("filtered query {qi}, region {ri}"));
            filtered_parts += usize::from(p == PlanPath::Parts);
        }
    }
    assert!(filtered_parts >= 60, "only {filtered_parts} of 120 filtered queries took the partitions");
    let parts = graftdb::index::parts::count_for(12_000) as u64;
    assert!(via_parts >= 30, "only {via_parts} of 40 unfiltered queries took the partitions");
    // Clustered data: a query near one centre should scan a small share of the partitions.
    assert!(scanned / via_parts < parts / 2, "{} of {parts} partitions scanned per query: the cone bound is not pruning", scanned / via_parts);
    // Rows committed after the checkpoint (the delta) are found too: add a row equal to a
    // query, which must come back first.
    let q = query_near(&d, &mut rng, 0.1);
    let extra = records::photo_at(1_000_000, 1.0, 1.0);
    let mut w = db.begin_write().unwrap();
    w.insert_batch("test", 2, "s", &[(extra, q.clone())]).unwrap();
    w.commit().unwrap();
    let res = db.search(&Query::new("s", q.clone(), K)).unwrap();
    assert_eq!(res.hits[0].id, RecordId::Int(1_000_000), "the delta row is missing (path {:?})", res.explain.path);
    same_as_exact(&db, Query::new("s", q, K), "with a delta");
}

#[test]
fn rows_on_the_region_edge_are_tested_by_position() {
    // Half the photos lie within a metre of lon 5 (either side): their keys' geohash cells
    // (~38 m) straddle the edge of a region along it, so the partitions' filter pass must
    // read their positions; answering them from the cell (either way) breaks exactness.
    let mut d = data(12_000, 3);
    let mut rng = StdRng::seed_from_u64(4);
    for (i, (rec, _)) in d.rows.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        *rec = records::photo_at(i as i64, 5.0 + rng.random_range(-1e-5..1e-5), rng.random_range(-20.0..20.0));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = checkpointed(&d, &dir.path().join("db"), options());
    let regions = [
        Region::bbox(-20.0, -20.0, 5.0, 20.0).unwrap(),
        Region::parse_polygon("q", "POLYGON((-20 -20, 5 -20, 5 20, -20 20, -20 -20))").unwrap(),
        Region::parse_polygon("q", "POLYGON((5 -20, 20 -20, 20 20, 5 20, 5 -20))").unwrap(),
    ];
    let mut via_parts = 0;
    for qi in 0..20 {
        let q = query_near(&d, &mut rng, 0.1);
        for (ri, r) in regions.iter().enumerate() {
            let f = Filter { regions: vec![r.clone()], ..Default::default() };
            let (p, _) = same_as_exact(&db, Query::new("s", q.clone(), K).filter(f), &format!("query {qi}, region {ri}"));
            via_parts += usize::from(p == PlanPath::Parts);
        }
    }
    assert!(via_parts >= 30, "only {via_parts} of 60 queries took the partitions");
}

#[test]
fn a_query_far_from_every_cluster_still_gets_the_exact_answer() {
    // A random direction is about equally far from every centre: the bounds prune little,
    // and the planner either scans (exactly) or gives up and takes the graph — then the
    // answer must still hold k results; when it is the scan, it must be exact.
    let d = data(6_000, 5);
    let dir = tempfile::tempdir().unwrap();
    let db = checkpointed(&d, &dir.path().join("db"), Options { cost_switch: false, ..options() });
    let mut rng = StdRng::seed_from_u64(8);
    for qi in 0..20 {
        let q = unit((0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect());
        let res = db.search(&Query::new("s", q.clone(), K)).unwrap();
        assert_eq!(res.hits.len(), K, "query {qi} is short");
        if res.explain.path == PlanPath::Parts {
            same_as_exact(&db, Query::new("s", q, K), &format!("far query {qi}"));
        }
    }
}

#[test]
fn check_catches_a_partitions_copy_that_disagrees_with_the_snapshot() {
    let d = data(3_000, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = checkpointed(&d, &path, options());
        assert_eq!(db.check().unwrap(), Vec::<String>::new());
    }
    let parts = index_files(&path, "parts");
    assert_eq!(parts.len(), 1, "one partitions file after the checkpoint");
    // The file ends with the kind byte of its last position: make it no kind at all.
    let mut b = std::fs::read(&parts[0]).unwrap();
    *b.last_mut().unwrap() = 0xFF;
    std::fs::write(&parts[0], &b).unwrap();
    let db = Db::open_with(&path, options()).unwrap();
    let problems = db.check().unwrap();
    assert!(problems.iter().any(|p| p.contains("partition position")), "check missed the damaged copy: {problems:?}");
}

/// A version 3 partitions file of `np` partitions in the layout of versions 1 and 2: the
/// per-partition norms (the third section, each section 64-byte aligned after a 64-byte
/// header) taken out.
fn v2_layout(b: &[u8], np: usize, dim: usize) -> Vec<u8> {
    let a = |x: usize| x.div_ceil(64) * 64;
    let norms = a(a(64 + np * dim * 4) + np * 4);
    let offsets = a(norms + np * 4);
    [&b[..norms], &b[offsets..]].concat()
}

/// The byte ranges of the residual norms ρ and of the row sketches (the two sections before
/// the record ids, the last; each 64-byte aligned) in a version 6 image snapshot of `rows`
/// rows, `len` bytes long.
fn rho_and_sketches(len: usize, rows: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let a = |x: usize| x.div_ceil(64) * 64;
    let ids = len - rows * 8;
    let sketches = ids - a(rows * graftdb::index::sketch::record_bytes(DIM));
    let rho = sketches - a(rows * 4);
    (rho..rho + rows * 4, sketches..sketches + rows * graftdb::index::sketch::record_bytes(DIM))
}

fn version_of(file: &std::path::Path) -> u32 {
    let b = std::fs::read(file).unwrap();
    u32::from_le_bytes(b[8..12].try_into().unwrap())
}

#[test]
fn older_index_formats_are_read_upgraded_and_rewritten_and_check_catches_wrong_residuals() {
    let d = data(3_000, 13);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut rng = StdRng::seed_from_u64(14);
    let queries: Vec<Vec<f32>> = (0..10).map(|_| query_near(&d, &mut rng, 0.1)).collect();
    let answers = |db: &Db| -> Vec<Vec<RecordId>> { queries.iter().map(|q| db.search(&Query::new("s", q.clone(), K).exact(true)).unwrap().hits.into_iter().map(|h| h.id).collect()).collect() };
    let want = {
        let db = checkpointed(&d, &path, options());
        answers(&db)
    };
    let (arena, parts) = (index_files(&path, "arena"), index_files(&path, "parts"));
    assert_eq!((arena.len(), parts.len()), (1, 1));
    assert_eq!((version_of(&arena[0]), version_of(&parts[0])), (6, 3));
    // Make them the previous formats: the snapshot's residual column (ρ now, ‖x̂‖₁ then, the
    // last column before version 4 added sketches) holds numbers that would be wrong as
    // residual norms, there are no sketches and no record ids, and the versions say 2 and 1.
    let mut a = std::fs::read(&arena[0]).unwrap();
    let (rho, sketches) = rho_and_sketches(a.len(), 3_000);
    a[8..12].copy_from_slice(&2u32.to_le_bytes());
    a[13] = 0;
    a[40..48].fill(0);
    a[rho].fill(0);
    a.truncate(sketches.start);
    std::fs::write(&arena[0], &a).unwrap();
    let mut p = v2_layout(&std::fs::read(&parts[0]).unwrap(), graftdb::index::parts::count_for(3_000), DIM);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&parts[0], &p).unwrap();
    {
        let db = Db::open_with(&path, options()).unwrap();
        assert_eq!(answers(&db), want, "answers from the upgraded-in-memory index");
        for q in &queries {
            same_as_exact(&db, Query::new("s", q.clone(), K), "old format");
        }
        assert_eq!(db.check().unwrap(), Vec::<String>::new());
        db.checkpoint().unwrap();
    }
    assert_eq!((version_of(&arena[0]), version_of(&parts[0])), (6, 3), "the checkpoint rewrote both in the current format");
    let head = std::fs::read(&arena[0]).unwrap();
    assert_eq!(u64::from_le_bytes(head[40..48].try_into().unwrap()) as usize, graftdb::index::sketch::record_bytes(DIM), "the rewrite built the row sketches");
    assert_eq!(head[13], 1, "the rewrite filled the record ids");
    let db = Db::open_with(&path, options()).unwrap();
    assert_eq!(answers(&db), want);
    drop(db);
    // Residual norms of zero in a current-format snapshot would make the bound unsound:
    // check must say so.
    let mut a = std::fs::read(&arena[0]).unwrap();
    let (rho, _) = rho_and_sketches(a.len(), 3_000);
    a[rho].fill(0);
    std::fs::write(&arena[0], &a).unwrap();
    let db = Db::open_with(&path, options()).unwrap();
    let problems = db.check().unwrap();
    assert!(problems.iter().any(|p| p.contains("codes")), "check missed wrong residual norms: {problems:?}");
}

/// `Query::max_partitions`: the partition scan visits at most that many partitions, nearest
/// centroid first, once the top k is full; the answer is approximate. Miss budget: with 4
/// of the 110 partitions, recall@10 against the exact scan ≥ 0.9 over 30 queries near the
/// 40 content centres (a centre spreads over ~3 partitions); visiting partitions in any
/// other order than the bounds' would find almost nothing in 4 of 110.
#[test]
fn capped_partition_scan_visits_the_nearest_partitions_first() {
    let d = data(12_000, 11);
    let dir = tempfile::tempdir().unwrap();
    let db = checkpointed(&d, &dir.path().join("db"), options());
    let np = db.stats().unwrap().spaces[0].partitions as usize;
    assert_eq!(np, graftdb::index::parts::count_for(12_000));
    let mut rng = StdRng::seed_from_u64(12);
    let (mut found, mut wanted, mut probes) = (0usize, 0usize, 0usize);
    let half = Filter { regions: vec![Region::bbox(-20.0, -20.0, 0.0, 20.0).unwrap()], ..Default::default() };
    for qi in 0..30 {
        let q = query_near(&d, &mut rng, 0.1);
        let filter = if qi % 2 == 0 { Filter::default() } else { half.clone() };
        let exact = db.search(&Query::new("s", q.clone(), K).filter(filter.clone()).exact(true)).unwrap();
        let got = db.search(&Query::new("s", q.clone(), K).filter(filter.clone()).max_partitions(Some(4))).unwrap();
        assert_eq!(got.hits.len(), K, "query {qi} is short");
        assert!(got.explain.partitions <= 4, "query {qi} visited {} partitions under a cap of 4", got.explain.partitions);
        match got.explain.path {
            PlanPath::PartsProbe => probes += 1,
            // Exact when no partition left out could reach the k-th score.
            PlanPath::Parts => {
                same_as_exact(&db, Query::new("s", q.clone(), K).filter(filter.clone()).max_partitions(Some(4)), &format!("capped query {qi} called exact"));
            }
            p => panic!("query {qi}: a cap that pays took path {p:?}"),
        };
        if qi % 2 == 1 {
            for h in &got.hits {
                let (lon, lat) = (h.lon, h.lat);
                assert!((-20.0..=0.0).contains(&lon) && (-20.0..=20.0).contains(&lat), "query {qi}: hit at {lon},{lat} outside the box");
            }
        }
        let truth: Vec<_> = exact.hits.iter().map(|h| h.id.clone()).collect();
        found += got.hits.iter().filter(|h| truth.contains(&h.id)).count();
        wanted += truth.len();
    }
    let recall = found as f64 / wanted as f64;
    assert!(recall >= 0.9, "recall@10 {recall:.3} under a cap of 4 of {np} partitions");
    assert!(probes > 0, "no capped query was cut: the cap was not applied");
    // Never short: 300 results asked of a cap of one partition (~110 rows).
    let q = query_near(&d, &mut rng, 0.1);
    let r = db.search(&Query::new("s", q.clone(), 300).max_partitions(Some(1))).unwrap();
    assert_eq!(r.hits.len(), 300, "a cap of 1 came back short");
    assert!(r.explain.partitions >= 3, "300 rows need at least 3 partitions, visited {}", r.explain.partitions);
    // A cap of every partition is the exact scan.
    let (p, _) = same_as_exact(&db, Query::new("s", q.clone(), K).max_partitions(Some(np)), "cap = all partitions");
    assert_eq!(p, PlanPath::Parts);
    // A filter the cover cannot see (no row is a tile): the capped scan would visit every
    // partition to find k; it gives up within the exact scan's cost and the exact scan
    // answers (here: nothing).
    let tiles = Filter { regions: vec![Region::bbox(-20.0, -20.0, 0.0, 0.0).unwrap()], kind: Some(graftdb::Kind::Tile), ..Default::default() };
    let r = db.search(&Query::new("s", q.clone(), K).filter(tiles).max_partitions(Some(4))).unwrap();
    assert!(r.hits.is_empty());
    assert_eq!(r.explain.path, PlanPath::Exact);
    assert!(r.explain.tested <= 3 * r.explain.estimate, "{} rows tested for a cover of {}", r.explain.tested, r.explain.estimate);
    // A small region is answered by the exact range scan, cap or not: visiting 4 partitions
    // to find 10 rows of 1 % would cost more.
    let small = Filter { regions: vec![Region::bbox(-2.0, -2.0, 2.0, 2.0).unwrap()], ..Default::default() };
    let r = db.search(&Query::new("s", q.clone(), K).filter(small.clone()).max_partitions(Some(4))).unwrap();
    assert_eq!(r.explain.path, PlanPath::Exact);
    same_as_exact(&db, Query::new("s", q, K).filter(small).max_partitions(Some(4)), "small region under a cap");
}

/// `Options::row_shortlist`: a capped partition scan ranks the rows of the partitions it
/// visits by two-bit codes of their residuals from their centroid and reads the i8 codes of a
/// short list (192 rows for k = 10) alone. Miss budget: over 30 queries near 4 content
/// clusters of 3,000 rows (256-d; a cap of 16 of 110 partitions visits ~1,700 rows, so
/// the short list holds ~11 % of them), it keeps ≥ 97 % of the hits the same capped scan
/// finds reading every visited row's i8 codes; a short list drawn at random would keep ~11 %.
#[test]
fn capped_partition_scan_short_list_keeps_what_the_i8_scan_of_the_same_partitions_finds() {
    const D: usize = 256;
    let mut rng = StdRng::seed_from_u64(21);
    let centres: Vec<Vec<f32>> = (0..4).map(|_| unit((0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect())).collect();
    // Noise of ~0.05 a coordinate (a sum of uniforms, near normal), as the peers' rows.
    let noise = |rng: &mut StdRng| (0..4).map(|_| rng.random_range(-0.05f32..0.05)).sum::<f32>();
    let rows: Vec<(Record, Vec<f32>)> = (0..12_000)
        .map(|i| {
            let c = &centres[i % 4];
            let v = unit(c.iter().map(|x| x + noise(&mut rng)).collect());
            (records::photo_at(i as i64, rng.random_range(-20.0..20.0), rng.random_range(-20.0..20.0)), v)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = Db::create_with(&path, options()).unwrap();
    db.create_space("s", D as u32, Metric::Cos, Level::Image).unwrap();
    let mut w = db.begin_write().unwrap();
    w.insert_batch("test", 1, "s", &rows).unwrap();
    w.commit().unwrap();
    db.checkpoint().unwrap();
    let np = db.stats().unwrap().spaces[0].partitions as usize;
    // Filtered, the short list serves partitions where at least 64 rows pass (fewer are read
    // in i8 directly): a box of ~7/8 of the rows, and one of half (~55 of a partition's ~110
    // rows: either way).
    let most = Filter { regions: vec![Region::bbox(-20.0, -20.0, 20.0, 15.0).unwrap()], ..Default::default() };
    let half = Filter { regions: vec![Region::bbox(-20.0, -20.0, 0.0, 20.0).unwrap()], ..Default::default() };
    let queries: Vec<(Vec<f32>, Filter)> = (0..30)
        .map(|qi| {
            let c = &centres[qi % 4];
            let q = unit(c.iter().map(|x| x + 1.3 * noise(&mut rng)).collect());
            (q, [Filter::default(), most.clone(), half.clone()][qi % 3].clone())
        })
        .collect();
    let cap = 16;
    let run = |db: &Db| -> Vec<(Vec<RecordId>, graftdb::Explain)> {
        queries
            .iter()
            .map(|(q, f)| {
                let r = db.search(&Query::new("s", q.clone(), K).filter(f.clone()).max_partitions(Some(cap))).unwrap();
                (r.hits.iter().map(|h| h.id.clone()).collect(), r.explain)
            })
            .collect()
    };
    // The short list where the CPU runs its kernel (AVX-512BW); elsewhere both runs read i8.
    let fast = std::arch::is_x86_feature_detected!("avx512bw");
    let mut first = Some(db);
    for label in ["after the checkpoint", "after reopening"] {
        let db = first.take().unwrap_or_else(|| Db::open_with(&path, options()).unwrap());
        let short = run(&db);
        drop(db);
        let plain = run(&Db::open_with(&path, Options { row_shortlist: false, ..options() }).unwrap());
        let (mut kept, mut all) = (0usize, 0usize);
        for (qi, ((s_ids, s_ex), (p_ids, p_ex))) in short.iter().zip(&plain).enumerate() {
            assert_eq!(s_ids.len(), K, "{label}: query {qi} is short");
            assert!(s_ex.partitions <= cap as u64 && p_ex.partitions == s_ex.partitions, "{label}: query {qi} visited {} / {} partitions", s_ex.partitions, p_ex.partitions);
            assert_eq!(p_ex.sketched, 0, "{label}: query {qi} left rows out without the short list");
            if fast {
                // Rows left out by their estimates, their i8 codes never read: most of them,
                // but where half the rows pass.
                if qi % 3 != 2 {
                    assert!(s_ex.sketched * 2 >= s_ex.matched, "{label}: query {qi} left out {} of {} rows", s_ex.sketched, s_ex.matched);
                }
                assert_eq!(s_ex.path, PlanPath::PartsProbe, "{label}: query {qi} called exact");
            }
            kept += s_ids.iter().filter(|id| p_ids.contains(id)).count();
            all += p_ids.len();
        }
        let share = kept as f64 / all as f64;
        assert!(share >= 0.97, "{label}: the short list kept {kept} of the {all} hits of the i8 scan of the same partitions ({share:.3})");
        // A cap of every partition is still the exact scan: no short list.
        let db = Db::open_with(&path, options()).unwrap();
        let (q, f) = &queries[0];
        let (p, _) = same_as_exact(&db, Query::new("s", q.clone(), K).filter(f.clone()).max_partitions(Some(np)), "cap = all partitions");
        assert_eq!(p, PlanPath::Parts);
    }
}
