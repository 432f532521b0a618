//! Benchmark (ignored by default): the GRAFT rule on 1M random clustered photos.
//! `cargo test --release --manifest-path tools/pairs/Cargo.toml --test bench_assign -- --ignored --nocapture`

use graft_pairs::assign::{assign, Params, PhotoPt};
use graft_pairs::build::SplitMix;
use std::time::Instant;

fn clustered(n: usize, seed: u64, n_cities: usize, spread_deg: f64, years: i64) -> Vec<PhotoPt> {
    let mut r = SplitMix(seed);
    let mut f = move || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    // 2,000 cities; photos within ~5 km of a city centre (sum of uniforms ≈ bell shape).
    let cities: Vec<(f64, f64)> = (0..n_cities).map(|_| (f() * 360.0 - 180.0, f() * 140.0 - 70.0)).collect();
    let t0 = 1_420_070_400_000_000i64; // 2015-01-01
    let span = years * 365 * 86_400_000_000i64;
    (0..n)
        .map(|_| {
            let (cx, cy) = cities[(f() * cities.len() as f64) as usize];
            let dx = (f() + f() + f() - 1.5) * spread_deg;
            let dy = (f() + f() + f() - 1.5) * spread_deg;
            let time = if f() < 0.02 { None } else { Some(t0 + (f() * span as f64) as i64) };
            PhotoPt { lon: cx + dx / cy.to_radians().cos(), lat: cy + dy, time }
        })
        .collect()
}

#[test]
#[ignore]
fn assign_1m_clustered_photos() {
    let sparse = clustered(1_000_000, 7, 2000, 0.05, 8);
    let dense = clustered(1_000_000, 8, 100, 0.02, 2);
    for (photos, what, gsd, name) in [
        (&sparse, "2,000 cities, ±0.075°, 8 years", 10.0, "Sentinel-2 10 m"),
        (&sparse, "2,000 cities, ±0.075°, 8 years", 1.0, "NAIP 1 m"),
        (&dense, "100 cities, ±0.03°, 2 years", 10.0, "Sentinel-2 10 m"),
        (&dense, "100 cities, ±0.03°, 2 years", 1.0, "NAIP 1 m"),
    ] {
        let t = Instant::now();
        let a = assign(photos, Params { tile_px: 224, gsd_m: gsd, max_photos: 25 });
        let secs = t.elapsed().as_secs_f64();
        println!(
            "assign 1M clustered photos ({what}), {name}: {secs:.2} s, {} tiles, {} over the cap, {} without time",
            a.tiles.len(),
            a.over_cap,
            a.no_time
        );
        assert!(secs <= 10.0, "1M photos took {secs:.2} s (target ≤ 10 s)");
    }
}
