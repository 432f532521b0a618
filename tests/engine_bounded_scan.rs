//! The exact scan reads i8 codes first and f32 only for rows whose bounded score can still
//! make the top k. These tests check that the answer is still the f32 scan's — ranks and
//! scores equal to brute force — on data the codes can and cannot tell apart, and that the
//! bound actually prunes (few f32 reads) when the codes can. Over 4,096 rows the scan first
//! bounds rows from the two-bit sketches of their codes (on CPUs with AVX-512BW): the answer
//! must still be the f32 scan's, and `check` must notice a sketch that is not its codes'.
//! (That a row's sketch bound covers its f32 score and not only its codes' is a unit test in
//! `src/index/sketch.rs`.)

#[path = "support/index_files.rs"]
mod index_files;
#[path = "support/records.rs"]
mod records;

use graftdb::{Db, Level, Metric, Options, Query, Record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 64;
const K: usize = 10;

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn photo(i: usize, rng: &mut StdRng) -> Record {
    records::photo_at(i as i64, rng.random_range(-10.0..10.0), rng.random_range(-10.0..10.0))
}

/// Store `vecs` (unit vectors) in a fresh cos space, fold them into a snapshot (no graph),
/// and answer `queries` exactly; compare each answer with brute force. Returns the mean
/// number of f32 vectors read per query, and of rows ruled out by their sketches.
fn check(vecs: &[Vec<f32>], queries: &[Vec<f32>], what: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    check_in(dir.path(), vecs, queries, what)
}

/// [`check`] with the database left at `dir/db`.
fn check_in(dir: &std::path::Path, vecs: &[Vec<f32>], queries: &[Vec<f32>], what: &str) -> (f64, f64) {
    // No graph: every query takes the scan.
    let db = Db::create_with(dir.join("db"), Options { hnsw_min_rows: usize::MAX, ..Options::default() }).unwrap();
    db.create_space("s", DIM as u32, Metric::Cos, Level::Image).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let rows: Vec<(Record, Vec<f32>)> = vecs.iter().enumerate().map(|(i, v)| (photo(i, &mut rng), v.clone())).collect();
    let mut w = db.begin_write().unwrap();
    w.insert_batch("test", 1, "s", &rows).unwrap();
    w.commit().unwrap();
    db.checkpoint().unwrap();
    let (mut reads, mut sketched) = (0u64, 0u64);
    for (qi, q) in queries.iter().enumerate() {
        let res = db.search(&Query::new("s", q.clone(), K)).unwrap();
        reads += res.explain.rescored;
        sketched += res.explain.sketched;
        let mut truth: Vec<(f32, usize)> = vecs.iter().enumerate().map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i)).collect();
        truth.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(res.hits.len(), K, "{what} query {qi}: short");
        for (rank, (h, t)) in res.hits.iter().zip(&truth).enumerate() {
            assert!((h.score - t.0).abs() <= 1e-5, "{what} query {qi} rank {rank}: score {} but brute force has {}", h.score, t.0);
        }
    }
    (reads as f64 / queries.len() as f64, sketched as f64 / queries.len() as f64)
}

/// Whether this CPU scores sketches (the scan uses them only then).
fn sketches_used() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn spread_vectors_need_few_f32_reads() {
    let mut rng = StdRng::seed_from_u64(1);
    let gauss = |rng: &mut StdRng| -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        unit(&mut v);
        v
    };
    let vecs: Vec<Vec<f32>> = (0..5_000).map(|_| gauss(&mut rng)).collect();
    let queries: Vec<Vec<f32>> = (0..30).map(|_| gauss(&mut rng)).collect();
    let (reads, _) = check(&vecs, &queries, "spread");
    // The bound rules out nearly every row from its codes alone.
    assert!(reads < 500.0, "{reads} f32 reads per query out of 5,000 rows: the i8 bound is not pruning");
}

#[test]
fn near_duplicates_below_code_resolution_are_still_ranked_exactly() {
    // Every vector is one base vector plus noise far below one i8 step: the codes cannot
    // tell them apart, so the bound must send (nearly) every row to f32, and the ranking
    // must still be the f32 one.
    let mut rng = StdRng::seed_from_u64(2);
    let mut base: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    unit(&mut base);
    let vecs: Vec<Vec<f32>> = (0..5_000)
        .map(|_| {
            let mut v: Vec<f32> = base.iter().map(|x| x + rng.random_range(-1e-4f32..1e-4)).collect();
            unit(&mut v);
            v
        })
        .collect();
    let queries: Vec<Vec<f32>> = (0..10)
        .map(|_| {
            let mut q: Vec<f32> = base.iter().map(|x| x + rng.random_range(-0.05f32..0.05)).collect();
            unit(&mut q);
            q
        })
        .collect();
    let (reads, _) = check(&vecs, &queries, "near-duplicates");
    assert!(reads > 1_000.0, "only {reads} f32 reads per query: rows the codes cannot separate were ruled out");
}

#[test]
fn row_sketches_rule_out_other_clusters_and_keep_the_answer() {
    // 24 tight content clusters of 250 rows; each query sits near one centre, so the rows of
    // the other 23 cannot reach its k-th score and their sketches should say so.
    let mut rng = StdRng::seed_from_u64(4);
    let centres: Vec<Vec<f32>> = (0..24)
        .map(|_| {
            let mut c: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            unit(&mut c);
            c
        })
        .collect();
    let near = |c: &[f32], r: f32, rng: &mut StdRng| -> Vec<f32> {
        let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-r..r)).collect();
        unit(&mut v);
        v
    };
    let vecs: Vec<Vec<f32>> = (0..6_000).map(|i| near(&centres[i % 24], 0.08, &mut rng)).collect();
    let queries: Vec<Vec<f32>> = (0..24).map(|i| near(&centres[i], 0.05, &mut rng)).collect();
    let dir = tempfile::tempdir().unwrap();
    let (_, sketched) = check_in(dir.path(), &vecs, &queries, "clusters");
    if sketches_used() {
        assert!(sketched > 4_000.0, "the sketches ruled out {sketched} of 6,000 rows per query");
    } else {
        assert_eq!(sketched, 0.0, "no AVX-512BW: the scan must not use sketches");
    }
    // The snapshot keeps the sketches (the section before the last, the record ids) and
    // `check` rebuilds them from the codes: a changed byte in the last row's is reported.
    let path = dir.path().join("db");
    let db = Db::open_with(&path, Options { hnsw_min_rows: usize::MAX, ..Options::default() }).unwrap();
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    drop(db);
    let sketches = 6_000 * graftdb::index::sketch::record_bytes(DIM);
    index_files::flip_arena_byte(&path, 6_000 * 8 + sketches.next_multiple_of(64) - sketches + 12, 0x40);
    let db = Db::open_with(&path, Options { hnsw_min_rows: usize::MAX, ..Options::default() }).unwrap();
    let problems = db.check().unwrap();
    assert!(problems.iter().any(|p| p.contains("sketch of row 5999")), "{problems:?}");
}
