//! The indexed GRAFT assignment against a plain O(n²) reference of the same rule.

use graft_pairs::assign::{assign, days_from_civil, Params, PhotoPt};
use std::collections::HashMap;

/// SplitMix64: a tiny deterministic generator, so the test needs no extra crates.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.f()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn us(y: i64, m: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
    (days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000
}

// ---- the reference, written plainly -------------------------------------------------------

fn ref_norm(lon: f64) -> f64 {
    let mut l = lon;
    while l >= 180.0 {
        l -= 360.0;
    }
    while l < -180.0 {
        l += 360.0;
    }
    l
}

fn ref_quarter(t: Option<i64>) -> Option<(i64, u32)> {
    let t = t?;
    // Walk dates the slow way: find the year and month by comparing with month starts.
    let day = t.div_euclid(86_400_000_000);
    let mut y = 1900;
    while days_from_civil(y + 1, 1, 1) <= day {
        y += 1;
    }
    let mut m = 1;
    while m < 12 && days_from_civil(y, m + 1, 1) <= day {
        m += 1;
    }
    Some((y, (m - 1) / 3))
}

/// Tiles as (centre index, kept photo indices, over-cap indices).
fn reference(photos: &[PhotoPt], tile_px: u32, gsd: f64, cap: usize) -> Vec<(usize, Vec<usize>, Vec<usize>)> {
    let mut bins: HashMap<(i64, i64, Option<(i64, u32)>), Vec<usize>> = HashMap::new();
    for (i, p) in photos.iter().enumerate() {
        let lon = ref_norm(p.lon);
        bins.entry(((lon / 10.0).floor() as i64, (p.lat / 10.0).floor() as i64, ref_quarter(p.time)))
            .or_default()
            .push(i);
    }
    let mut tiles = Vec::new();
    for members in bins.values() {
        let mut covered: HashMap<usize, bool> = HashMap::new();
        for &c in members {
            if covered.get(&c).copied().unwrap_or(false) {
                continue;
            }
            let clon = ref_norm(photos[c].lon);
            let clat = photos[c].lat;
            let half_lat = tile_px as f64 * gsd / 2.0 / 111_320.0;
            let half_lon = half_lat / clat.to_radians().cos().abs().max(1e-12);
            let mut kept = Vec::new();
            let mut over = Vec::new();
            for &i in members {
                if covered.get(&i).copied().unwrap_or(false) {
                    continue;
                }
                let d_lon = ref_norm(ref_norm(photos[i].lon) - clon);
                let d_lat = photos[i].lat - clat;
                if d_lat.abs() <= half_lat && d_lon.abs() <= half_lon {
                    covered.insert(i, true);
                    if kept.len() < cap {
                        kept.push(i);
                    } else {
                        over.push(i);
                    }
                }
            }
            tiles.push((c, kept, over));
        }
    }
    tiles.sort();
    tiles
}

// ---- random photos with the awkward cases ----------------------------------------------------

fn random_photos(rng: &mut Rng, n: usize, tile_px: u32, gsd: f64) -> Vec<PhotoPt> {
    let half_lat = tile_px as f64 * gsd / 2.0 / 111_320.0;
    let q_edge = us(2021, 3, 31, 23, 59, 59);
    let q_next = us(2021, 4, 1, 0, 0, 0);
    let mut v: Vec<PhotoPt> = Vec::with_capacity(n);
    // A few cluster centres, some at the awkward places.
    let centres: [(f64, f64); 6] =
        [(179.995, 10.0), (-179.995, 10.0), (10.0, 50.0), (-0.0005, -0.0005), (20.0, 60.0), (100.0, -30.0)];
    while v.len() < n {
        let (cx, cy) = centres[rng.below(centres.len() as u64) as usize];
        let spread = 4.0 * half_lat;
        let time = match rng.below(5) {
            0 => None,
            1 => Some(q_edge),
            2 => Some(q_next),
            _ => Some(us(2021, 1 + rng.below(12) as u32, 1 + rng.below(28) as u32, 0, 0, 0)),
        };
        let kind = rng.below(10);
        let p = if kind == 0 && !v.is_empty() {
            // Exactly on the edge of the square of an earlier photo (a likely centre).
            let base = v[rng.below(v.len() as u64) as usize];
            let hl = half_lat / base.lat.to_radians().cos().abs().max(1e-12);
            let (dx, dy) = match rng.below(4) {
                0 => (hl, 0.0),
                1 => (-hl, 0.0),
                2 => (0.0, half_lat),
                _ => (hl, -half_lat),
            };
            PhotoPt { lon: base.lon + dx, lat: base.lat + dy, time: base.time }
        } else if kind == 1 {
            // Exactly on a 10° bin edge.
            PhotoPt { lon: (cx / 10.0).round() * 10.0, lat: cy + rng.range(-spread, spread), time }
        } else if kind == 2 {
            // A duplicate location.
            let base =
                if v.is_empty() { PhotoPt { lon: cx, lat: cy, time } } else { v[rng.below(v.len() as u64) as usize] };
            PhotoPt { time, ..base }
        } else {
            PhotoPt { lon: cx + rng.range(-spread, spread), lat: cy + rng.range(-spread, spread), time }
        };
        v.push(p);
    }
    v
}

fn check(photos: &[PhotoPt], tile_px: u32, gsd: f64, cap: usize) {
    let got = assign(photos, Params { tile_px, gsd_m: gsd, max_photos: cap });
    let mut mine: Vec<(usize, Vec<usize>, Vec<usize>)> =
        got.tiles.iter().map(|t| (t.centre, t.photos.iter().map(|p| p.0).collect(), t.over_cap.clone())).collect();
    mine.sort();
    let want = reference(photos, tile_px, gsd, cap);
    assert_eq!(mine, want, "assignment differs from the brute-force reference");

    // Every photo in exactly one tile (kept or over the cap).
    let mut seen = vec![0u32; photos.len()];
    for t in &got.tiles {
        for &(i, [r, c]) in &t.photos {
            seen[i] += 1;
            assert!(r < tile_px && c < tile_px);
        }
        for &i in &t.over_cap {
            seen[i] += 1;
        }
        assert!(t.photos.len() <= cap);
        assert_eq!(t.photos[0].0, t.centre, "the centre is the tile's first photo");
        let mid = tile_px / 2;
        assert_eq!(t.photos[0].1, [mid, mid]);
    }
    assert!(seen.iter().all(|&s| s == 1), "a photo is in zero or several tiles");

    // Centres of one bin are at least tile_px/2 px apart in the square metric: a later centre
    // lies outside every earlier centre's square.
    let mut by_bin: HashMap<_, Vec<&graft_pairs::assign::TileAssign>> = HashMap::new();
    for t in &got.tiles {
        by_bin.entry(t.bin).or_default().push(t);
    }
    for ts in by_bin.values() {
        for (j, b) in ts.iter().enumerate() {
            for a in &ts[..j] {
                let dl = graft_pairs::assign::dlon(b.lon, a.lon).abs() / a.half.0;
                let dt = (b.lat - a.lat).abs() / a.half.1;
                assert!(dl.max(dt) > 1.0, "centres {} and {} closer than tile_px/2", a.centre, b.centre);
            }
        }
    }
}

#[test]
fn random_photos_match_reference() {
    let mut rng = Rng(42);
    for round in 0..200 {
        let (tile_px, gsd) = if round % 2 == 0 { (224, 10.0) } else { (224, 1.0) };
        let cap = if round % 3 == 0 { 3 } else { 25 };
        let n = 50 + rng.below(1500) as usize;
        let photos = random_photos(&mut rng, n, tile_px, gsd);
        check(&photos, tile_px, gsd, cap);
    }
}

#[test]
fn antimeridian_and_bin_edges() {
    let t = Some(us(2021, 5, 1, 0, 0, 0));
    let photos = vec![
        PhotoPt { lon: 179.999, lat: 0.0, time: t },
        PhotoPt { lon: -179.999, lat: 0.0, time: t }, // other side: other 10° cell
        PhotoPt { lon: 180.0, lat: 0.0, time: t },    // = -180: same cell as -179.999
        PhotoPt { lon: 10.0, lat: 20.0, time: t },    // on a bin edge
        PhotoPt { lon: 9.99999, lat: 20.0, time: t }, // just across it
    ];
    let got = assign(&photos, Params { tile_px: 224, gsd_m: 10.0, max_photos: 25 });
    assert_eq!(got.tiles.len(), 4);
    let t = got.tiles.iter().find(|t| t.centre == 1).unwrap();
    assert_eq!(t.photos.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
    check(&photos, 224, 10.0, 25);
}

#[test]
fn quarter_boundary_splits() {
    let photos = vec![
        PhotoPt { lon: 5.0, lat: 5.0, time: Some(us(2021, 3, 31, 23, 59, 59)) },
        PhotoPt { lon: 5.0, lat: 5.0, time: Some(us(2021, 4, 1, 0, 0, 0)) },
        PhotoPt { lon: 5.0, lat: 5.0, time: None },
        PhotoPt { lon: 5.0, lat: 5.0, time: Some(us(2021, 1, 1, 0, 0, 0)) },
    ];
    let got = assign(&photos, Params { tile_px: 224, gsd_m: 10.0, max_photos: 25 });
    assert_eq!(got.tiles.len(), 3);
    assert_eq!(got.no_time, 1);
    check(&photos, 224, 10.0, 25);
}

#[test]
fn cap_drops_and_counts() {
    let t = Some(us(2022, 7, 1, 0, 0, 0));
    let photos: Vec<PhotoPt> = (0..30).map(|i| PhotoPt { lon: 1.0 + i as f64 * 1e-6, lat: 1.0, time: t }).collect();
    let got = assign(&photos, Params { tile_px: 224, gsd_m: 10.0, max_photos: 25 });
    assert_eq!(got.tiles.len(), 1);
    assert_eq!(got.tiles[0].photos.len(), 25);
    assert_eq!(got.over_cap, 5);
    check(&photos, 224, 10.0, 25);
}
