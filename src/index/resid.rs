//! Two-bit codes of each image row's residual from its cone partition's centroid, for
//! ranking the rows a capped partition scan visits (`Query::max_partitions`) at a quarter of
//! the i8 codes' bytes: the scan keeps a short list of the best rows by their estimate and
//! reads the i8 codes of those alone ([`crate::query`]). Made in memory from the partitions'
//! copy of the codes (on a background thread after open, or by the first capped scan that
//! wants them: `Parts::residuals`); never stored.
//!
//! A row `x` of partition `p` (unit centroid `c`, `h = x·c` kept by the partitions) is
//! `x = h·c + r`, and for a query `q`: `q·x = h·(q·c) + q·r`. The first term is exact given
//! `q·c`, one dot product a partition; the second is estimated from two-bit codes of `r`.
//! Content clusters make `r` much shorter than `x`, so the same bits err far less than codes
//! of `x` itself: on the peers' 512-d rows (a content centroid plus noise) the best 256 of
//! 14,000 rows of the query's cluster by this estimate hold 98.5 % of those rows' true top
//! 10, the best 512 all of it, where two-bit codes of `x` hold 88 % and 96 % (simulated).
//!
//! Each residual coordinate `rᵢ` becomes `vᵢ ∈ {0, 1, 2, 3}` on a uniform grid of step
//! `0.996·σ` (`σ = ‖r‖/√dim`, the step that serves a normal coordinate best), read back as
//! `a·(vᵢ − 1.5)` with the least-squares scale `a`. For a query with i8 codes `q₈` (scale
//! `s₈`) the estimate of `q·r` is `a·s₈·(Σ q₈ᵢ·vᵢ − 1.5·Σ q₈ᵢ)`.
//!
//! Layout: one record a position, `dim / 4` bytes of codes then the scale `a` and `h = x·c`
//! (two little-endian f32), so that a scattered row (a filtered scan's) is one place in memory,
//! not three. In the codes, for each block of 256 dimensions, 64 bytes whose bit pairs
//! 0–1, 2–3, 4–5 and 6–7 of byte `t` hold `v` of dimensions `256·b + t`, `+ 64`, `+ 128` and
//! `+ 192`, so that an AVX-512 lane pairs each bit pair with a contiguous query chunk. Only
//! `dim` a multiple of 256 is laid out (512-d CLIP and GRAFT are).

/// Bytes of one row's two-bit codes for `dim` dimensions.
pub fn row_bytes(dim: usize) -> usize {
    dim / 4
}

/// Bytes of one position's record: its codes, scale and `h`.
pub fn record_bytes(dim: usize) -> usize {
    row_bytes(dim) + 8
}

/// Whether rows of `dim` dimensions can be laid out.
pub fn fits(dim: usize) -> bool {
    dim > 0 && dim.is_multiple_of(256)
}

/// The grid step for a normal coordinate of unit deviation with four levels.
const STEP: f32 = 0.996;

/// Records ahead the estimates fetch (~4 KB at 512-d; 1M rows, 10 %, cap 5: 8 ahead cost
/// 51 µs a box query, 16 ahead 40, 32 ahead 41 and less for circles and polygons).
const PREFETCH: usize = 32;

/// The two-bit residual codes, scales and cosines to the centroid of every position of a set
/// of partitions, one record a position ([`record_bytes`]).
pub struct Resid {
    recs: Vec<u8>,
    dim: usize,
}

impl Resid {
    /// The codes of every position: `rows` i8 codes (`dim` each) with their `scales`, the
    /// positions' cosines `cos_c` to their centroid, and the partitions (`offsets`, `parts + 1`
    /// of them, into the positions) with their unit `centroids`. `None` for a `dim` the layout
    /// does not hold or columns of the wrong length.
    pub fn build(codes: &[i8], scales: &[f32], cos_c: &[f32], centroids: &[f32], offsets: &[u32], dim: usize) -> Option<Resid> {
        let n = scales.len();
        if !fits(dim) || codes.len() != n * dim || cos_c.len() != n || offsets.last().map(|&o| o as usize) != Some(n) || centroids.len() + dim != offsets.len() * dim {
            return None;
        }
        let mut out = Resid { recs: Vec::with_capacity(n * record_bytes(dim)), dim };
        let (mut r, mut v) = (vec![0f32; dim], vec![0u8; dim]);
        for (p, w) in offsets.windows(2).enumerate() {
            let c = centroids.get(p * dim..(p + 1) * dim)?;
            for j in w[0] as usize..w[1] as usize {
                let (x, s, h) = (codes.get(j * dim..(j + 1) * dim)?, scales[j], cos_c[j]);
                for ((r, &x), &c) in r.iter_mut().zip(x).zip(c) {
                    *r = f32::from(x) * s - h * c;
                }
                let a = encode(&r, &mut v);
                for block in v.chunks_exact(256) {
                    let (a, rest) = block.split_at(64);
                    let (b, rest) = rest.split_at(64);
                    let (c, d) = rest.split_at(64);
                    out.recs.extend(a.iter().zip(b).zip(c).zip(d).map(|(((&a, &b), &c), &d)| a | (b << 2) | (c << 4) | (d << 6)));
                }
                out.recs.extend(a.to_le_bytes());
                out.recs.extend(h.to_le_bytes());
            }
        }
        Some(out)
    }

    /// The records of positions `range`, one after another.
    #[inline]
    pub fn records(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        let b = record_bytes(self.dim);
        self.recs.get(range.start.checked_mul(b)?..range.end.checked_mul(b)?)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.recs.len()
    }
}

/// The scale `a` and `h` of a record.
#[inline(always)]
fn tail(rec: &[u8], rb: usize) -> (f32, f32) {
    match rec.get(rb..rb + 8) {
        Some(t) => (f32::from_le_bytes([t[0], t[1], t[2], t[3]]), f32::from_le_bytes([t[4], t[5], t[6], t[7]])),
        None => (0.0, 0.0),
    }
}

/// The levels `v` of a residual `r` (into `v`) and their least-squares scale `a`
/// (`r ≈ a·(v − 1.5)`); 0 for a zero residual.
fn encode(r: &[f32], v: &mut [u8]) -> f32 {
    let sd = (r.iter().map(|x| x * x).sum::<f32>() / r.len().max(1) as f32).sqrt();
    if !(sd > 0.0 && sd.is_finite()) {
        v.fill(1);
        return 0.0;
    }
    let inv = 1.0 / (STEP * sd);
    let (mut rl, mut ll) = (0f32, 0f32);
    for (o, &x) in v.iter_mut().zip(r) {
        // Truncation is the floor of a non-negative number, and vectorises where `floor`
        // is a call.
        let level = (x * inv + 2.0).clamp(0.0, 3.0) as u8;
        *o = level;
        let l = f32::from(level) - 1.5;
        rl += x * l;
        ll += l * l;
    }
    rl / ll
}

/// A query prepared for [`ResidQuery::estimates`].
pub struct ResidQuery {
    /// The query's i8 codes.
    q: Vec<i8>,
    /// `1.5·Σ q₈ᵢ`.
    offset: f32,
    /// `s₈`.
    scale: f32,
}

impl ResidQuery {
    /// From the query's i8 codes and their scale; `None` for a `dim` the layout does not
    /// hold or a query without a finite scale.
    pub fn new(codes: &[i8], scale: f32) -> Option<Self> {
        if !(fits(codes.len()) && scale > 0.0 && scale.is_finite()) {
            return None;
        }
        let offset = 1.5 * codes.iter().map(|&c| i32::from(c)).sum::<i32>() as f32;
        Some(ResidQuery { q: codes.to_vec(), offset, scale })
    }

    /// Whether the estimates run in AVX-512 on this CPU (the partition scan short-lists only
    /// then: the portable loop costs more than reading the i8 codes).
    pub fn fast(&self) -> bool {
        crate::index::sketch::avx512_bw()
    }

    /// Push to `out` the estimate of `q·x = h·(q·c) + q·r` for each record of `recs`
    /// (records one after another, as [`Resid::records`] gives them), `qc` being `q·c` of
    /// their partition's centroid.
    pub fn estimates(&self, recs: &[u8], qc: f32, out: &mut Vec<f32>) {
        let n = recs.len() / record_bytes(self.q.len());
        let start = out.len();
        out.resize(start + n, 0.0);
        self.fill(recs, n, |i| i, qc, &mut out[start..]);
    }

    /// Push to `out` the estimate of `q·x` for each listed position of `res` (scattered:
    /// each record is fetched a few ahead), `qc` as for [`ResidQuery::estimates`]. Positions
    /// past the end estimate as `−∞`.
    pub fn estimates_at(&self, res: &Resid, pos: &[usize], qc: f32, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + pos.len(), f32::NEG_INFINITY);
        if res.dim != self.q.len() {
            return;
        }
        // A position past the end has no whole record in `recs`: its slot keeps −∞.
        let past = res.recs.len() / record_bytes(res.dim);
        self.fill(&res.recs, pos.len(), |i| pos.get(i).copied().unwrap_or(past), qc, &mut out[start..]);
    }

    /// `out[i]` = the estimate of record `at(i)` of `recs`, for `i < count`; a record that
    /// does not lie wholly in `recs` leaves its slot as it is.
    #[inline(always)]
    fn fill(&self, recs: &[u8], count: usize, at: impl Fn(usize) -> usize, qc: f32, out: &mut [f32]) {
        let (rb, stride) = (row_bytes(self.q.len()), record_bytes(self.q.len()));
        if recs.len() < stride {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.fast() {
            // SAFETY: the CPU supports AVX-512F/BW (checked); `dim` is a multiple of 256, so
            // each record's `dim / 4` code bytes and `q`'s `dim` codes are whole 64- and
            // 256-byte blocks; the kernel reads only whole records inside `recs`.
            unsafe { estimates_avx512(&self.q, recs, count, &at, self.scale, self.offset, qc, out) };
            return;
        }
        for (i, o) in out.iter_mut().enumerate().take(count) {
            if let Some(rec) = recs.get(at(i) * stride..(at(i) + 1) * stride) {
                let (a, h) = tail(rec, rb);
                *o = self.scale * a * (dot_generic(&self.q, &rec[..rb]) as f32 - self.offset) + h * qc;
            }
        }
    }
}

/// `Σ vᵢ·qᵢ` over the layout of the module docs, one dimension at a time.
fn dot_generic(q: &[i8], c: &[u8]) -> i32 {
    let mut s = 0i32;
    for (b, block) in c.chunks_exact(64).enumerate() {
        for (t, &byte) in block.iter().enumerate() {
            for plane in 0..4 {
                let v = i32::from((byte >> (2 * plane)) & 3);
                s += v * i32::from(q.get(256 * b + 64 * plane + t).copied().unwrap_or(0));
            }
        }
    }
    s
}

/// [`ResidQuery::fill`] in AVX-512BW, one record at a time into `out` (one slot a record),
/// each record fetched [`PREFETCH`] records ahead; records `at(i)` that do not lie wholly in
/// `recs` are left as they are.
///
/// # Safety
/// The CPU supports AVX-512F/BW; `q.len()` is a multiple of 256.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn estimates_avx512(q: &[i8], recs: &[u8], count: usize, at: &impl Fn(usize) -> usize, scale: f32, offset: f32, qc: f32, out: &mut [f32]) {
    let (rb, stride) = (row_bytes(q.len()), record_bytes(q.len()));
    for i in 0..count.min(PREFETCH) {
        crate::index::scan::prefetch(recs.get(at(i) * stride..(at(i) + 1) * stride).unwrap_or(&[]));
    }
    for (i, o) in out.iter_mut().enumerate().take(count) {
        if i + PREFETCH < count {
            let a = at(i + PREFETCH);
            crate::index::scan::prefetch(recs.get(a * stride..(a + 1) * stride).unwrap_or(&[]));
        }
        let j = at(i);
        if let Some(rec) = recs.get(j * stride..(j + 1) * stride) {
            let (a, h) = tail(rec, rb);
            *o = scale * a * (dot_avx512(q, &rec[..rb]) as f32 - offset) + h * qc;
        }
    }
}

/// [`dot_generic`] in AVX-512BW: per 64 bytes, each bit pair times its query chunk
/// (`vpmaddubsw`, at most 2·3·128 a pair, four planes summed in i16), widened to i32.
///
/// # Safety
/// The CPU supports AVX-512F/BW; `c.len()` is a multiple of 64 and `q.len() == 4·c.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn dot_avx512(q: &[i8], c: &[u8]) -> i32 {
    use std::arch::x86_64::*;
    let (mask, ones) = (_mm512_set1_epi8(3), _mm512_set1_epi16(1));
    let mut acc = _mm512_setzero_si512();
    for b in 0..c.len() / 64 {
        let v = _mm512_loadu_si512(c.as_ptr().add(64 * b).cast());
        let qp = q.as_ptr().add(256 * b);
        let p0 = _mm512_maddubs_epi16(_mm512_and_si512(v, mask), _mm512_loadu_si512(qp.cast()));
        let p1 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16::<2>(v), mask), _mm512_loadu_si512(qp.add(64).cast()));
        let p2 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16::<4>(v), mask), _mm512_loadu_si512(qp.add(128).cast()));
        let p3 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16::<6>(v), mask), _mm512_loadu_si512(qp.add(192).cast()));
        let pairs = _mm512_add_epi16(_mm512_add_epi16(p0, p1), _mm512_add_epi16(p2, p3));
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, ones));
    }
    _mm512_reduce_add_epi32(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `parts` partitions of `per` unit rows each around random unit centroids (noise of
    /// deviation `noise` a coordinate), as the partitions hold them: i8 codes, scales, cosines
    /// to the centroid, offsets; and the rows in f32.
    #[allow(clippy::type_complexity)]
    fn partitions(parts: usize, per: usize, dim: usize, noise: f32, seed: u64) -> (Vec<i8>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<u32>, Vec<Vec<f32>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut codes, mut scales, mut cos_c, mut centroids, mut offsets, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), vec![0u32], Vec::new());
        for _ in 0..parts {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            crate::index::scan::normalise(&mut c);
            for _ in 0..per {
                let mut x: Vec<f32> = c.iter().map(|&c| c + noise * rng.random_range(-1.7f32..1.7)).collect();
                crate::index::scan::normalise(&mut x);
                let (s, _) = crate::index::scan::quantise(&x, &mut codes);
                scales.push(s);
                cos_c.push(crate::index::scan::dot(&x, &c));
                rows.push(x);
            }
            centroids.extend(c);
            offsets.push(rows.len() as u32);
        }
        (codes, scales, cos_c, centroids, offsets, rows)
    }

    #[test]
    fn the_estimate_is_the_two_bit_dot_product_and_close_to_the_score() {
        let (parts, per, dim) = (3, 40, 512);
        let (codes, scales, cos_c, centroids, offsets, rows) = partitions(parts, per, dim, 0.03, 5);
        let res = Resid::build(&codes, &scales, &cos_c, &centroids, &offsets, dim).unwrap();
        assert_eq!(res.bytes(), parts * per * (dim / 4 + 8));
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        // Squared errors of the estimate, and of the centroid's part alone (the residual's
        // estimate dropped).
        let (mut err, mut err_without, mut n_rows) = (0f64, 0f64, 0usize);
        for t in 0..10 {
            // A query near one of the centroids, as a user's is near its content cluster.
            let p = t % parts;
            let mut q: Vec<f32> = centroids[p * dim..(p + 1) * dim].iter().map(|&c| c + 0.04 * rng.random_range(-1.7f32..1.7)).collect();
            crate::index::scan::normalise(&mut q);
            let bound = crate::index::scan::Bound::new(&q);
            let rq = ResidQuery::new(&bound.codes, bound.code_scale).unwrap();
            for p in 0..parts {
                let qc = crate::index::scan::dot(&q, &centroids[p * dim..(p + 1) * dim]);
                let range = offsets[p] as usize..offsets[p + 1] as usize;
                let recs = res.records(range.clone()).unwrap();
                let mut est = Vec::new();
                rq.estimates(recs, qc, &mut est);
                assert_eq!(est.len(), per);
                // The same positions scattered (backwards, one past the end) estimate the same.
                let mut pos: Vec<usize> = range.clone().rev().collect();
                pos.push(parts * per);
                let mut at = Vec::new();
                rq.estimates_at(&res, &pos, qc, &mut at);
                assert_eq!(at.len(), per + 1);
                assert_eq!(at[per], f32::NEG_INFINITY);
                for (n, (&e, j)) in est.iter().zip(range).enumerate() {
                    assert_eq!(at[per - 1 - n], e, "position {j} scattered");
                    // The portable loop agrees with whichever kernel ran.
                    let rec = &recs[n * record_bytes(dim)..(n + 1) * record_bytes(dim)];
                    let (a, h) = tail(rec, dim / 4);
                    assert_eq!((a.is_finite(), h), (true, cos_c[j]));
                    let want = rq.scale * a * (dot_generic(&rq.q, &rec[..dim / 4]) as f32 - rq.offset) + h * qc;
                    assert!((e - want).abs() <= 1e-5 * (1.0 + want.abs()), "kernel {e} against {want}");
                    // Near the score: the residual's two bits move a score of these rows by
                    // ~0.01.
                    let exact = crate::index::scan::dot(&q, &rows[j]);
                    err += f64::from(e - exact).powi(2);
                    err_without += f64::from(cos_c[j] * qc - exact).powi(2);
                    n_rows += 1;
                }
            }
        }
        let (rms, rms_without) = ((err / n_rows as f64).sqrt(), (err_without / n_rows as f64).sqrt());
        assert!(rms < 0.5 * rms_without && rms < 0.01, "estimate off by {rms} rms ({rms_without} without the residual's)");
    }

    #[test]
    fn a_dimension_out_of_the_layout_or_a_short_column_is_refused() {
        let (codes, scales, cos_c, centroids, offsets, _) = partitions(2, 5, 256, 0.05, 1);
        assert!(Resid::build(&codes, &scales, &cos_c, &centroids, &offsets, 256).is_some());
        assert!(Resid::build(&codes[..codes.len() - 1], &scales, &cos_c, &centroids, &offsets, 256).is_none());
        assert!(Resid::build(&codes, &scales, &cos_c[1..], &centroids, &offsets, 256).is_none());
        let (codes, scales, cos_c, centroids, offsets, _) = partitions(2, 5, 128, 0.05, 1);
        assert!(Resid::build(&codes, &scales, &cos_c, &centroids, &offsets, 128).is_none());
        assert!(ResidQuery::new(&[1; 128], 0.1).is_none());
        assert!(ResidQuery::new(&[1; 256], 0.0).is_none());
    }
}
