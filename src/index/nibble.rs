//! Four-bit copies of a patch-level segment's i8 patch codes, for ranking the patches of the
//! tiles a capped tile scan visits (`Query::max_tiles`) at half the bytes: the scan keeps a
//! short list of the best patches by their four-bit estimate and reads the i8 codes of those
//! alone ([`crate::query`]). Made in memory from the grid (on a background thread after
//! open, or by the first capped scan that wants them: `Segment::nibbles`); never stored.
//!
//! A patch's i8 codes `c` (value `scale·c`) become `n = round(7·c / max|c|)` in `[-7, 7]` with
//! the scale `s₄ = scale·max|c| / 7`. Its estimate for a query with i8 codes `q₈` (scale `s₈`)
//! is `s₈·s₄·Σ q₈ᵢ·nᵢ`. On the peers' 512-d patches the estimate errs by ~0.006 rms, half the
//! two-bit sketch's (~0.013): among 20 tiles' 3,920 patches the best 128 by it hold the same
//! top 10 as the i8 scores (recall 0.710 either way; the sketch's best 128 hold 0.660).
//!
//! Layout: per patch `dim / 2` bytes; for each block of 128 dimensions, 64 bytes whose low
//! nibble holds `n + 8` of dimension `128·b + t` and whose high nibble `n + 8` of dimension
//! `128·b + 64 + t`, so that an AVX-512 lane pairs each nibble with a contiguous query chunk.
//! Only `dim` a multiple of 128 is laid out (512-d CLIP and GRAFT are).

use crate::store::codec;

/// Bytes of one patch's four-bit codes for `dim` dimensions.
pub fn patch_bytes(dim: usize) -> usize {
    dim / 2
}

/// 1.5·2²³: `(x + ROUND) − ROUND` is `x` rounded to an integer for `|x| < 2²²`.
const ROUND: f32 = 12_582_912.0;

/// Patches ahead [`NibbleQuery::estimates`] fetches (2 KB at 512-d).
const PREFETCH: usize = 8;

/// The four-bit codes and scales of every patch of a segment, tile-major.
pub struct Nibbles {
    codes: Vec<u8>,
    scales: Vec<f32>,
    per: usize,
    dim: usize,
}

impl Nibbles {
    /// The four-bit copy of `rows` tiles' i8 grids (`per` patches of `dim` each, encoded as
    /// `codec::encode_patch_grid` writes them) in `grids`; `None` for a `dim` that is not a
    /// multiple of 128 or grids of the wrong size.
    pub fn build(grids: &[u8], rows: usize, per: usize, dim: usize) -> Option<Nibbles> {
        let stride = codec::patch_stride(dim);
        if dim == 0 || !dim.is_multiple_of(128) || per == 0 || grids.len() != rows * per * stride {
            return None;
        }
        let n = rows * per;
        let (mut codes, mut scales) = (Vec::with_capacity(n * patch_bytes(dim)), Vec::with_capacity(n));
        let mut nib = vec![0u8; dim];
        for grid in grids.chunks_exact(per * stride) {
            for p in 0..per {
                let (c, scale) = codec::patch_codes(grid, dim, p)?;
                let max = c.iter().map(|&x| i32::from(x).abs()).max().unwrap_or(0);
                // Round to nearest by the float trick (adding and taking away 1.5·2²³ rounds
                // to an integer, ties to even), which vectorises where `round` is a call.
                let k = if max == 0 { 0.0 } else { 7.0 / max as f32 };
                for (o, &x) in nib.iter_mut().zip(c) {
                    let v = (f32::from(x) * k + ROUND) - ROUND;
                    *o = (v.clamp(-7.0, 7.0) + 8.0) as u8;
                }
                for block in nib.chunks_exact(128) {
                    let (lo, hi) = block.split_at(64);
                    codes.extend(lo.iter().zip(hi).map(|(&l, &h)| l | (h << 4)));
                }
                scales.push(scale * max as f32 / 7.0);
            }
        }
        Some(Nibbles { codes, scales, per, dim })
    }

    /// The codes (`per × dim / 2` bytes) and scales (`per`) of tile `i`'s patches.
    pub fn tile(&self, i: usize) -> Option<(&[u8], &[f32])> {
        let b = patch_bytes(self.dim) * self.per;
        Some((self.codes.get(i * b..(i + 1) * b)?, self.scales.get(i * self.per..(i + 1) * self.per)?))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

/// A query prepared for [`NibbleQuery::estimates`].
pub struct NibbleQuery {
    /// The query's i8 codes.
    q: Vec<i8>,
    /// `8·Σ q₈ᵢ`: the nibbles are stored as `n + 8`.
    offset: i32,
    /// `s₈`.
    scale: f32,
}

impl NibbleQuery {
    /// From the query's i8 codes and their scale; `None` for a `dim` the layout does not
    /// hold or a query without a finite scale.
    pub fn new(codes: &[i8], scale: f32) -> Option<Self> {
        if codes.is_empty() || !codes.len().is_multiple_of(128) || !(scale > 0.0 && scale.is_finite()) {
            return None;
        }
        let offset = 8 * codes.iter().map(|&c| i32::from(c)).sum::<i32>();
        Some(NibbleQuery { q: codes.to_vec(), offset, scale })
    }

    /// Whether the estimates run in AVX-512 on this CPU (the tile scan uses them only then:
    /// the portable loop costs more than reading the i8 codes).
    pub fn fast(&self) -> bool {
        crate::index::sketch::avx512_bw()
    }

    /// Push the estimate of each patch of `codes` (patches one after another, `dim / 2`
    /// bytes each) with scale `scales[p]` to `out`.
    pub fn estimates(&self, codes: &[u8], scales: &[f32], out: &mut Vec<f32>) {
        let pb = self.q.len() / 2;
        let patches = codes.chunks_exact(pb).zip(scales);
        #[cfg(target_arch = "x86_64")]
        if self.fast() {
            for (p, (c, &s)) in patches.enumerate() {
                crate::index::scan::prefetch(codes.get((p + PREFETCH) * pb..(p + PREFETCH + 1) * pb).unwrap_or(&[]));
                // SAFETY: the CPU supports AVX-512F/BW (checked); each chunk holds `dim / 2`
                // bytes and `q` `dim` codes, `dim` a multiple of 128, so every 64-byte load is
                // in bounds.
                out.push(self.scale * s * (unsafe { dot_avx512(&self.q, c) } - self.offset) as f32);
            }
            return;
        }
        out.extend(patches.map(|(c, &s)| self.scale * s * (dot_generic(&self.q, c) - self.offset) as f32));
    }
}

/// `Σ (nᵢ + 8)·qᵢ` over the layout of the module docs, one dimension at a time.
fn dot_generic(q: &[i8], c: &[u8]) -> i32 {
    let mut s = 0i32;
    for (b, block) in c.chunks_exact(64).enumerate() {
        for (t, &byte) in block.iter().enumerate() {
            let (lo, hi) = (i32::from(byte & 0x0F), i32::from(byte >> 4));
            s += lo * i32::from(q.get(128 * b + t).copied().unwrap_or(0));
            s += hi * i32::from(q.get(128 * b + 64 + t).copied().unwrap_or(0));
        }
    }
    s
}

/// [`dot_generic`] in AVX-512BW: per 64 bytes, the low and high nibbles times their query
/// chunks (`vpmaddubsw`, at most 2·15·128 a pair), widened to i32.
///
/// # Safety
/// The CPU supports AVX-512F/BW; `c.len()` is a multiple of 64 and `q.len() == 2·c.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dot_avx512(q: &[i8], c: &[u8]) -> i32 {
    use std::arch::x86_64::*;
    let (mask, ones) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi16(1));
    let mut acc = _mm512_setzero_si512();
    for b in 0..c.len() / 64 {
        let v = _mm512_loadu_si512(c.as_ptr().add(64 * b).cast());
        let lo = _mm512_and_si512(v, mask);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
        let ql = _mm512_loadu_si512(q.as_ptr().add(128 * b).cast());
        let qh = _mm512_loadu_si512(q.as_ptr().add(128 * b + 64).cast());
        let pairs = _mm512_add_epi16(_mm512_maddubs_epi16(lo, ql), _mm512_maddubs_epi16(hi, qh));
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, ones));
    }
    _mm512_reduce_add_epi32(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `rows` tiles of `per` random unit patches as encoded grids, and the patches in f32.
    fn grids(rows: usize, per: usize, dim: usize, seed: u64) -> (Vec<u8>, Vec<Vec<f32>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut out, mut all) = (Vec::new(), Vec::new());
        for _ in 0..rows {
            let patches: Vec<Vec<f32>> = (0..per)
                .map(|_| {
                    let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    crate::index::scan::normalise(&mut v);
                    v
                })
                .collect();
            out.extend(codec::encode_patch_grid(&patches.concat(), dim));
            all.extend(patches);
        }
        (out, all)
    }

    #[test]
    fn the_estimate_is_the_four_bit_dot_product_and_close_to_the_score() {
        let (rows, per, dim) = (3, 5, 256);
        let (g, patches) = grids(rows, per, dim, 7);
        let nb = Nibbles::build(&g, rows, per, dim).unwrap();
        assert_eq!(nb.bytes(), rows * per * (dim / 2 + 4));
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for _ in 0..20 {
            let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            crate::index::scan::normalise(&mut q);
            let bound = crate::index::scan::Bound::new(&q);
            let nq = NibbleQuery::new(&bound.codes, bound.code_scale).unwrap();
            for i in 0..rows {
                let (codes, scales) = nb.tile(i).unwrap();
                let mut est = Vec::new();
                nq.estimates(codes, scales, &mut est);
                assert_eq!(est.len(), per);
                for (p, &e) in est.iter().enumerate() {
                    // The portable loop agrees with whichever kernel ran.
                    let c = &codes[p * dim / 2..(p + 1) * dim / 2];
                    let want = nq.scale * scales[p] * (dot_generic(&nq.q, c) - nq.offset) as f32;
                    assert!((e - want).abs() <= 1e-5 * (1.0 + want.abs()), "kernel {e} against {want}");
                    // And it is near the score: random 256-d unit vectors score ~±0.06, the
                    // four-bit rounding moves a score by ~0.01.
                    let exact = crate::index::scan::dot(&q, &patches[i * per + p]);
                    assert!((e - exact).abs() < 0.04, "estimate {e} against {exact}");
                }
            }
        }
    }

    #[test]
    fn a_dimension_out_of_the_layout_or_a_short_grid_is_refused() {
        let (g, _) = grids(2, 3, 256, 1);
        assert!(Nibbles::build(&g, 2, 3, 256).is_some());
        assert!(Nibbles::build(&g[..g.len() - 1], 2, 3, 256).is_none());
        let (g, _) = grids(2, 3, 96, 1);
        assert!(Nibbles::build(&g, 2, 3, 96).is_none());
        assert!(NibbleQuery::new(&[1; 96], 0.1).is_none());
        assert!(NibbleQuery::new(&[1; 128], 0.0).is_none());
    }
}
