//! Geohash as integers: z-order keys, base-32 prefixes, and region covers.
//!
//! A position is quantised to 32 bits of longitude and 32 bits of latitude, and the bits
//! are interleaved longitude first — exactly the bit order of a textual geohash. So the
//! first `5·n` bits of a [`zorder`] value *are* the `n`-character geohash, and every
//! geohash prefix is one contiguous range of keys.

use crate::{Error, Result};

const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// Quantise a longitude in [-180, 180] to 32 bits (180 maps to the top cell).
pub(crate) fn q_lon(lon: f64) -> u32 {
    quantise((lon + 180.0) / 360.0)
}
/// Quantise a latitude in [-90, 90] to 32 bits.
pub(crate) fn q_lat(lat: f64) -> u32 {
    quantise((lat + 90.0) / 180.0)
}
fn quantise(unit: f64) -> u32 {
    let v = (unit * 4_294_967_296.0).floor();
    if v.is_nan() || v < 0.0 {
        0
    } else if v >= 4_294_967_295.0 {
        u32::MAX
    } else {
        v as u32
    }
}

/// Spread the 32 bits of `v` over the even bit positions of a u64.
fn spread(v: u32) -> u64 {
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    x = (x | (x << 1)) & 0x5555_5555_5555_5555;
    x
}
fn squash(mut x: u64) -> u32 {
    x &= 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF;
    x as u32
}

/// The quantised longitude and latitude (32 bits each) a z-order value interleaves.
#[inline]
pub(crate) fn split(z: u64) -> (u32, u32) {
    (squash(z >> 1), squash(z))
}

/// The 64-bit z-order (integer geohash) of a position. Longitude bits come first.
///
/// Callers validate coordinates; out-of-range values are clamped.
pub fn zorder(lon: f64, lat: f64) -> u64 {
    (spread(q_lon(lon)) << 1) | spread(q_lat(lat))
}

/// The cell `[west, south, east, north]` of the first `bits` bits of a z-order value.
pub fn cell_bounds(z: u64, bits: u32) -> [f64; 4] {
    let bits = bits.min(64);
    let lon_bits = bits.div_ceil(2);
    let lat_bits = bits / 2;
    let (lon_q, lat_q) = split(z);
    let lon_cell = if lon_bits == 0 { 0 } else { u64::from(lon_q) >> (32 - lon_bits) };
    let lat_cell = if lat_bits == 0 { 0 } else { u64::from(lat_q) >> (32 - lat_bits) };
    let lon_w = 360.0 / f64::from(1u32 << lon_bits.min(31)) / if lon_bits == 32 { 2.0 } else { 1.0 };
    let lat_h = 180.0 / f64::from(1u32 << lat_bits.min(31)) / if lat_bits == 32 { 2.0 } else { 1.0 };
    let w = -180.0 + lon_cell as f64 * lon_w;
    let s = -90.0 + lat_cell as f64 * lat_h;
    [w, s, w + lon_w, s + lat_h]
}

/// Encode a position as a textual geohash of `chars` characters (1–12).
pub fn encode(lon: f64, lat: f64, chars: usize) -> String {
    let z = zorder(lon, lat);
    let chars = chars.clamp(1, 12);
    (0..chars)
        .map(|i| {
            let idx = ((z >> (59 - 5 * i)) & 31) as usize;
            char::from(BASE32.get(idx).copied().unwrap_or(b'0'))
        })
        .collect()
}

/// Decode a textual geohash into its z-order prefix and number of bits.
pub fn decode_prefix(hash: &str) -> Result<(u64, u32)> {
    if hash.is_empty() || hash.len() > 12 {
        return Err(Error::invalid("--geohash", format!("'{hash}' must have 1 to 12 characters")));
    }
    let mut z = 0u64;
    for (i, ch) in hash.bytes().enumerate() {
        let lc = ch.to_ascii_lowercase();
        let v = BASE32.iter().position(|&b| b == lc).ok_or_else(|| {
            Error::invalid("--geohash", format!("'{hash}': character {} ('{}') is not geohash base-32", i + 1, char::from(ch)))
        })?;
        z |= (v as u64) << (59 - 5 * i);
    }
    Ok((z, 5 * hash.len() as u32))
}

/// The inclusive key range `[lo, hi]` of all z-order values sharing the first `bits` bits of `z`.
pub fn prefix_range(z: u64, bits: u32) -> (u64, u64) {
    if bits == 0 {
        return (0, u64::MAX);
    }
    let bits = bits.min(64);
    let mask = if bits == 64 { u64::MAX } else { !(u64::MAX >> bits) };
    let lo = z & mask;
    (lo, lo | !mask)
}

/// Decode a textual geohash to its cell `[west, south, east, north]`.
pub fn decode_bounds(hash: &str) -> Result<[f64; 4]> {
    let (z, bits) = decode_prefix(hash)?;
    Ok(cell_bounds(z, bits))
}

/// Cover a bbox `[w, s, e, n]` (with `w <= e`) by z-order ranges, inclusive, sorted and merged.
///
/// The cover is a superset: every position inside the bbox has its z-order inside one of
/// the ranges. At most about `max_ranges` ranges are produced; cells are refined
/// breadth-first while the budget allows, down to `max_bits`.
pub fn cover_bbox(b: [f64; 4], max_ranges: usize, max_bits: u32) -> Vec<(u64, u64)> {
    let qb = QBox::new(b);
    let (z0, start) = qb.start(max_bits);
    let budget = max_ranges.max(4);
    // Each cell carries its span: a child's is half of its parent's in each axis (cells
    // start and step at an even number of bits: a longitude bit, then a latitude bit), so no
    // cell's bits are squashed back into coordinates.
    type Cell = (u64, u32, [u32; 4]);
    let mut done: Vec<(u64, u32)> = Vec::with_capacity(budget + 4);
    let mut frontier: Vec<Cell> = Vec::with_capacity(budget + 4);
    let (mut next, mut refinable): (Vec<Cell>, Vec<Cell>) = (Vec::with_capacity(budget + 4), Vec::with_capacity(budget / 4 + 1));
    frontier.push((z0, start, cell_span(z0, start)));
    while !frontier.is_empty() {
        for &(z, bits, c) in &frontier {
            if !qb.touches(c) {
                continue;
            }
            if qb.holds(c) || bits >= max_bits {
                done.push((z, bits));
            } else {
                refinable.push((z, bits, c));
            }
        }
        // Refining turns each partial cell into up to 4 (two bits); stop when over budget.
        if done.len() + refinable.len() * 4 > budget {
            done.extend(refinable.drain(..).map(|(z, bits, _)| (z, bits)));
            break;
        }
        for (z, bits, c) in refinable.drain(..) {
            let nb = bits + 2;
            // `bits` < `max_bits` ≤ 64 and even, so each axis has a bit left to split on.
            let (hx, hy) = ((c[1] - c[0]) >> 1, (c[3] - c[2]) >> 1);
            let xs = [[c[0], c[0] + hx], [c[0] + hx + 1, c[1]]];
            let ys = [[c[2], c[2] + hy], [c[2] + hy + 1, c[3]]];
            next.extend((0..4u64).map(|child| {
                let (x, y) = (xs[(child >> 1) as usize], ys[(child & 1) as usize]);
                (z | (child << (64 - nb)), nb, [x[0], x[1], y[0], y[1]])
            }));
        }
        std::mem::swap(&mut frontier, &mut next);
        next.clear();
    }
    merge_ranges(done.into_iter().map(|(z, bits)| prefix_range(z, bits)).collect())
}

/// A bbox in quantised coordinates, as keys are: a cell is a block of them, so the cover's
/// tests are integer compares (no cell bounds in degrees to compute per cell).
struct QBox {
    x0: u32,
    x1: u32,
    y0: u32,
    y1: u32,
}

impl QBox {
    fn new(b: [f64; 4]) -> Self {
        QBox { x0: q_lon(b[0]), x1: q_lon(b[2]), y0: q_lat(b[1]), y1: q_lat(b[3]) }
    }
    /// Whether cell span `c` ([`cell_span`]) overlaps the box.
    fn touches(&self, c: [u32; 4]) -> bool {
        c[0] <= self.x1 && c[1] >= self.x0 && c[2] <= self.y1 && c[3] >= self.y0
    }
    /// Whether cell span `c` lies inside the box.
    fn holds(&self, c: [u32; 4]) -> bool {
        c[0] >= self.x0 && c[1] <= self.x1 && c[2] >= self.y0 && c[3] <= self.y1
    }
    /// The cover's first cell `(z, bits)`: the smallest of an even number of bits (at most
    /// `max_bits`) holding both corners. z-order is monotone in each axis, so it holds the
    /// whole box, and its ancestors would each refine to one cell anyway.
    fn start(&self, max_bits: u32) -> (u64, u32) {
        let (lo, hi) = ((spread(self.x0) << 1) | spread(self.y0), (spread(self.x1) << 1) | spread(self.y1));
        let bits = ((lo ^ hi).leading_zeros() & !1).min(max_bits & !1);
        (prefix_range(lo, bits).0, bits)
    }
}

/// The quantised coordinates a cell spans, inclusive: `[lon_lo, lon_hi, lat_lo, lat_hi]`.
fn cell_span(z: u64, bits: u32) -> [u32; 4] {
    let bits = bits.min(64);
    // Longitude takes the odd bit when `bits` is odd (it comes first).
    let lon_mask = (u64::MAX << (32 - bits.div_ceil(2))) as u32;
    let lat_mask = (u64::MAX << (32 - bits / 2)) as u32;
    let (x, y) = split(z);
    let (x, y) = (x & lon_mask, y & lat_mask);
    [x, x | !lon_mask, y, y | !lat_mask]
}

/// Sort inclusive key ranges and merge those that overlap or touch.
pub fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_geohashes() {
        // Reference values from the geohash definition (Niemeyer's examples).
        assert_eq!(encode(-5.6, 42.6, 5), "ezs42");
        assert_eq!(encode(10.40744, 57.64911, 11), "u4pruydqqvj");
    }

    #[test]
    fn poles_and_antimeridian_encode() {
        assert_eq!(encode(-180.0, -90.0, 4), "0000");
        assert_eq!(encode(180.0, 90.0, 4), "zzzz");
        let b = decode_bounds("zzzz").unwrap();
        assert!(b[2] == 180.0 && b[3] == 90.0);
    }

    #[test]
    fn bad_geohash_is_named() {
        let e = decode_prefix("u4a").unwrap_err().to_string();
        assert!(e.contains("--geohash") && e.contains('a'), "{e}");
    }

    proptest! {
        #[test]
        fn encode_decode_contains_point(lon in -180.0f64..=180.0, lat in -90.0f64..=90.0, n in 1usize..=12) {
            let h = encode(lon, lat, n);
            let b = decode_bounds(&h).unwrap();
            prop_assert!(b[0] <= lon && lon <= b[2] && b[1] <= lat && lat <= b[3], "{h} {b:?}");
            let (z, bits) = decode_prefix(&h).unwrap();
            let (lo, hi) = prefix_range(z, bits);
            let zz = zorder(lon, lat);
            prop_assert!(lo <= zz && zz <= hi);
        }

        #[test]
        fn cover_contains_every_inside_point(
            w in -180.0f64..180.0, s in -90.0f64..90.0,
            dw in 0.0f64..40.0, dh in 0.0f64..30.0,
            fx in 0.0f64..=1.0, fy in 0.0f64..=1.0,
            budget in 4usize..128,
        ) {
            // Zero-width boxes (dw = 0 or dh = 0) are included by the range.
            let e = (w + dw).min(180.0);
            let n = (s + dh).min(90.0);
            let ranges = cover_bbox([w, s, e, n], budget, 40);
            let (lon, lat) = (w + fx * (e - w), s + fy * (n - s));
            let z = zorder(lon, lat);
            prop_assert!(ranges.iter().any(|&(lo, hi)| lo <= z && z <= hi), "{lon},{lat} not covered");
            prop_assert!(ranges.windows(2).all(|p| p[0].1 < p[1].0), "ranges sorted and disjoint");
        }
    }

    /// The cover as first written: each cell's span recomputed from its bits.
    fn cover_bbox_from_bits(b: [f64; 4], max_ranges: usize, max_bits: u32) -> Vec<(u64, u64)> {
        let qb = QBox::new(b);
        let budget = max_ranges.max(4);
        let (mut done, mut frontier, mut refinable) = (Vec::new(), vec![qb.start(max_bits)], Vec::new());
        while !frontier.is_empty() {
            for &(z, bits) in &frontier {
                let c = cell_span(z, bits);
                if !qb.touches(c) {
                    continue;
                }
                if qb.holds(c) || bits >= max_bits {
                    done.push((z, bits));
                } else {
                    refinable.push((z, bits));
                }
            }
            if done.len() + refinable.len() * 4 > budget {
                done.append(&mut refinable);
                break;
            }
            frontier = refinable.drain(..).flat_map(|(z, bits)| (0..4u64).map(move |child| (z | (child << (62 - bits)), bits + 2))).collect();
        }
        merge_ranges(done.into_iter().map(|(z, bits)| prefix_range(z, bits)).collect())
    }

    /// Halving a parent's span gives each child's span exactly as its bits do.
    #[test]
    fn cover_from_halved_spans_is_the_cover_from_bits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..2_000 {
            let (w, s) = (rng.random_range(-180.0..180.0), rng.random_range(-90.0..90.0));
            let size = 10f64.powf(rng.random_range(-5.0..1.5));
            let b = [w, s, (w + size * rng.random_range(0.0..2.0)).min(180.0), (s + size).min(90.0)];
            for (budget, bits) in [(64, 40), (16, 40), (128, 64), (64, 20)] {
                assert_eq!(cover_bbox(b, budget, bits), cover_bbox_from_bits(b, budget, bits), "{b:?} {budget} {bits}");
            }
        }
    }

    #[test]
    fn cover_of_corner_boxes() {
        for b in [[-180.0, -90.0, -180.0, -90.0], [180.0, 90.0, 180.0, 90.0], [179.9, -1.0, 180.0, 1.0], [-180.0, 89.0, 180.0, 90.0]] {
            let ranges = cover_bbox(b, 32, 40);
            for (lon, lat) in [(b[0], b[1]), (b[2], b[3]), (b[0], b[3]), (b[2], b[1])] {
                let z = zorder(lon, lat);
                assert!(ranges.iter().any(|&(lo, hi)| lo <= z && z <= hi), "{b:?}");
            }
        }
    }
}
