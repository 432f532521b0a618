//! Filtered recall: 20,000 clustered 512-d cosine vectors at points clustered like photos
//! around 30 cities. For each selectivity (0.01 %, 0.1 %, 1 %, 10 %, 50 %, 100 %) 100 bbox
//! queries are built by growing a box around a random record until it holds the target
//! number of records (counted by brute force). Each query's k = 10 hits are compared with an
//! exact brute-force answer over the same filter.
//!
//! Budget: mean recall@10 ≥ 0.99 at every selectivity, and no query may return fewer than
//! `min(k, matches)` hits. The last 10 % of the records are committed after the graph is
//! built, so graph queries also scan an unindexed delta.

use std::time::Instant;

use graftdb::{Db, Filter, Level, Metric, Options, Photo, Query, Record, RecordId, Region};
use ndarray::{Array2, ArrayView1, ArrayView2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const N: usize = 20_000;
const DIM: usize = 512;
const CITIES: usize = 30;
const CENTROIDS: usize = 50;
const K: usize = 10;
const QUERIES: usize = 100;
const SELECTIVITIES: [f64; 6] = [0.0001, 0.001, 0.01, 0.1, 0.5, 1.0];

struct Data {
    lon: Vec<f64>,
    lat: Vec<f64>,
    /// Unit vectors, row-major.
    vecs: Vec<f32>,
    centroids: Vec<Vec<f32>>,
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

/// Cities with Zipf-like sizes and spreads; each city prefers five content clusters (70 %),
/// so a region's content differs from the world's, as with real photos.
fn generate(seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let std = Normal::new(0.0f64, 1.0).unwrap();
    let cities: Vec<(f64, f64, f64, f64)> = (0..CITIES)
        .map(|i| {
            let weight = 1.0 / (i as f64 + 1.0);
            (rng.random_range(-160.0..160.0), rng.random_range(-50.0..65.0), rng.random_range(0.02..0.8), weight)
        })
        .collect();
    let total: f64 = cities.iter().map(|c| c.3).sum();
    let centroids: Vec<Vec<f32>> = (0..CENTROIDS)
        .map(|_| {
            let mut c: Vec<f32> = (0..DIM).map(|_| std.sample(&mut rng) as f32).collect();
            normalise(&mut c);
            c
        })
        .collect();
    // Noise comes from a pool of 1,000 gaussian vectors, each used at a random rotation:
    // 512 × 1,000 × 50 distinct vectors, at a fraction of the cost of fresh samples in a
    // debug build.
    let noise = Normal::new(0.0f32, 0.03).unwrap();
    let pool: Vec<f32> = (0..1_000 * DIM).map(|_| noise.sample(&mut rng)).collect();
    let (mut lon, mut lat, mut vecs) = (Vec::with_capacity(N), Vec::with_capacity(N), Vec::with_capacity(N * DIM));
    for _ in 0..N {
        let mut pick = rng.random_range(0.0..total);
        let mut city = 0;
        for (i, c) in cities.iter().enumerate() {
            if pick < c.3 {
                city = i;
                break;
            }
            pick -= c.3;
        }
        let (cx, cy, sd, _) = cities[city];
        if rng.random_bool(0.05) {
            // Scattered photos away from any city.
            lon.push(rng.random_range(-179.0..179.0));
            lat.push(rng.random_range(-60.0..70.0));
        } else {
            lon.push((cx + sd * std.sample(&mut rng)).clamp(-179.9, 179.9));
            lat.push((cy + sd * std.sample(&mut rng)).clamp(-89.9, 89.9));
        }
        let c = if rng.random_bool(0.7) { (city * 7 + rng.random_range(0..5)) % CENTROIDS } else { rng.random_range(0..CENTROIDS) };
        let start = vecs.len();
        let p = &pool[rng.random_range(0..1_000) * DIM..][..DIM];
        let off = rng.random_range(0..DIM);
        vecs.extend(centroids[c].iter().enumerate().map(|(j, x)| x + p[(j + off) % DIM]));
        normalise(&mut vecs[start..]);
    }
    Data { lon, lat, vecs, centroids }
}

/// The smallest box (half-width `h`, half-height `h·aspect`) around `(lon, lat)` that holds
/// at least `target` records: the `target`-th smallest per-record half-width needed.
fn grow_box(d: &Data, lon: f64, lat: f64, aspect: f64, target: usize) -> [f64; 4] {
    let mut need: Vec<f64> = d.lon.iter().zip(&d.lat).map(|(x, y)| (x - lon).abs().max((y - lat).abs() / aspect)).collect();
    let (_, h, _) = need.select_nth_unstable_by(target - 1, f64::total_cmp);
    let h = *h;
    [(lon - h).max(-180.0), (lat - h * aspect).max(-90.0), (lon + h).min(180.0), (lat + h * aspect).min(90.0)]
}

#[test]
fn filtered_recall_at_every_selectivity() {
    let t0 = Instant::now();
    let d = generate(0x5EED_0001);
    let t_gen = t0.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { exact_threshold: 1_000, hnsw_min_rows: 5_000, ..Options::default() };
    let db = Db::create_with(dir.path().join("recall.graftdb"), opts).unwrap();
    db.create_space("clip", DIM as u32, Metric::Cos, Level::Image).unwrap();
    let ingest = |range: std::ops::Range<usize>| {
        for chunk in range.collect::<Vec<_>>().chunks(5_000) {
            let mut w = db.begin_write().unwrap();
            for &i in chunk {
                let rec = Record::Photo(Photo {
                    id: RecordId::Int(i as i64),
                    lon: d.lon[i],
                    lat: d.lat[i],
                    accuracy: None,
                    time: None,
                    source: "recall".into(),
                    license: None,
                    url: None,
                    user: None,
                });
                let key = w.insert(rec).unwrap();
                w.put_vector("clip", key, &d.vecs[i * DIM..(i + 1) * DIM]).unwrap();
            }
            w.commit().unwrap();
        }
    };
    let indexed = N * 9 / 10;
    let t1 = Instant::now();
    ingest(0..indexed);
    let t_ingest = t1.elapsed();
    let t2 = Instant::now();
    db.checkpoint().unwrap();
    let t_build = t2.elapsed();
    ingest(indexed..N);

    let vmat = ArrayView2::from_shape((N, DIM), &d.vecs).unwrap();
    let mut rng = StdRng::seed_from_u64(0x5EED_0002);
    let qnoise = Normal::new(0.0f32, 0.04).unwrap();
    println!("| selectivity | target | mean matches | mean recall@10 | min recall@10 | exact | hnsw | hnsw->exact | mean tested | mean µs |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    let (mut t_ref, mut t_db) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for sel in SELECTIVITIES {
        let target = ((sel * N as f64).round() as usize).max(1);
        let (mut recall_sum, mut recall_min, mut matches_sum, mut tested, mut micros) = (0.0, 1.0f64, 0usize, 0u64, 0u64);
        let mut paths = [0usize; 3];
        // Build the 100 queries, then score every record for all of them in one matrix
        // product (ndarray → matrixmultiply), the brute-force reference.
        let mut specs = Vec::with_capacity(QUERIES);
        let mut qmat = Array2::<f32>::zeros((QUERIES, DIM));
        for qi in 0..QUERIES {
            let a = rng.random_range(0..N);
            let bbox = if sel >= 1.0 {
                None
            } else {
                Some(grow_box(&d, d.lon[a], d.lat[a], rng.random_range(0.5..2.0), target))
            };
            // The query looks like some content cluster, not necessarily the region's.
            let mut qv: Vec<f32> = d.centroids[rng.random_range(0..CENTROIDS)].iter().map(|x| x + qnoise.sample(&mut rng)).collect();
            normalise(&mut qv);
            qmat.row_mut(qi).assign(&ArrayView1::from(&qv));
            specs.push((bbox, qv));
        }
        let tr = Instant::now();
        let scores = qmat.dot(&vmat.t());
        t_ref += tr.elapsed();
        for (qi, (bbox, qv)) in specs.into_iter().enumerate() {
            let row = scores.row(qi);
            let mut reference: Vec<(f32, usize)> = (0..N)
                .filter(|&i| bbox.is_none_or(|b| b[0] <= d.lon[i] && d.lon[i] <= b[2] && b[1] <= d.lat[i] && d.lat[i] <= b[3]))
                .map(|i| (row[i], i))
                .collect();
            reference.sort_unstable_by(|x, y| y.0.total_cmp(&x.0));
            let matches = reference.len();
            matches_sum += matches;
            let want = K.min(matches);
            let filter = Filter { regions: bbox.map(|b| Region::bbox(b[0], b[1], b[2], b[3]).unwrap()).into_iter().collect(), ..Default::default() };
            let td = Instant::now();
            let res = db.search(&Query::new("clip", qv.clone(), K).filter(filter)).unwrap();
            t_db += td.elapsed();
            paths[match res.explain.path.as_str() {
                "exact" => 0,
                "hnsw" => 1,
                _ => 2,
            }] += 1;
            tested += res.explain.tested;
            micros += res.explain.micros;
            if res.hits.len() != want {
                failures.push(format!("selectivity {sel}: query {qi} returned {} hits, {matches} match (explain {:?})", res.hits.len(), res.explain));
            }
            if want == 0 {
                recall_sum += 1.0;
                continue;
            }
            // Hits scoring at least the k-th true score (less float error) are true neighbours.
            let kth = reference[want - 1].0;
            let good = res
                .hits
                .iter()
                .filter(|h| {
                    let RecordId::Int(i) = h.id else { return false };
                    let i = i as usize;
                    let inside = bbox.is_none_or(|b| b[0] <= d.lon[i] && d.lon[i] <= b[2] && b[1] <= d.lat[i] && d.lat[i] <= b[3]);
                    inside && h.score >= kth - 1e-5
                })
                .count();
            let recall = good as f64 / want as f64;
            recall_sum += recall;
            recall_min = recall_min.min(recall);
        }
        let mean = recall_sum / QUERIES as f64;
        println!(
            "| {:.2} % | {target} | {:.1} | {mean:.4} | {recall_min:.2} | {} | {} | {} | {} | {} |",
            sel * 100.0,
            matches_sum as f64 / QUERIES as f64,
            paths[0],
            paths[1],
            paths[2],
            tested / QUERIES as u64,
            micros / QUERIES as u64
        );
        if mean < 0.99 {
            failures.push(format!("selectivity {sel}: mean recall@10 {mean:.4} < 0.99"));
        }
    }
    println!(
        "data {:.1?}, ingest {:.1?} ({} records), graph build {:.1?}, reference {:.1?}, graftdb {:.1?}, total {:.1?}; counters {:?}",
        t_gen,
        t_ingest,
        indexed,
        t_build,
        t_ref,
        t_db,
        t0.elapsed(),
        db.counters().snapshot()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
