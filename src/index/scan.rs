//! Exact scoring kernels, the i8 codes that let a scan skip most f32 reads, and a bounded top-k.
//!
//! The f32 dot product is written so LLVM vectorises it; on x86-64 a copy compiled for
//! AVX2+FMA is chosen at run time. The i8 dot product uses AVX2 `maddubs` when present.
//!
//! **i8 codes.** Every image-level row also has i8 codes with a per-row scale
//! (`code = round(x / s)`, `s = max|x| / 127`). A query quantised the same way gives an
//! approximate dot product whose error is *bounded*: with `x̂ = s·c`,
//! `|q·x − q̂·x̂| ≤ (s_x/2)·‖q‖₁ + (s_q/2)·‖x̂‖₁` (every component rounds by at most half a
//! step). The exact scan uses the bound to read f32 only for the rows that can still make the
//! top k ([`Bound`]), so the result is the same as an f32 scan, not an approximation.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::Metric;

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn l2_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    l2_generic(a, b)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot product.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, checked above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

/// Squared Euclidean distance.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, checked above.
        return unsafe { l2_avx2(a, b) };
    }
    l2_generic(a, b)
}

#[inline(always)]
fn dot_i8_generic(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 32];
    let ca = a.chunks_exact(32);
    let cb = b.chunks_exact(32);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i32::from(*x) * i32::from(*y);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    // Codes lie in [-127, 127], so |a|·b pairs sum to at most 2·127² = 32,258: `maddubs`
    // (u8 × i8 → saturating i16) never saturates.
    while i + 32 <= n {
        let va = _mm256_loadu_si256(pa.add(i).cast());
        let vb = _mm256_loadu_si256(pb.add(i).cast());
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        i += 32;
    }
    let lo = _mm256_castsi256_si128(acc);
    let hi = _mm256_extracti128_si256(acc, 1);
    let s4 = _mm_add_epi32(lo, hi);
    let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01));
    let mut s = _mm_cvtsi128_si32(s1);
    while i < n {
        s += i32::from(*pa.add(i)) * i32::from(*pb.add(i));
        i += 1;
    }
    s
}

/// Dot product of two i8 code vectors (codes in [-127, 127]).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, checked above; reads stay within both slices.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_generic(a, b)
}

/// Quantise `v` to i8 codes appended to `out`; returns `(scale, ‖x̂‖₁)`, where the decoded
/// value of code `c` is `c × scale`. A zero vector gets scale 0 and zero codes.
pub fn quantise(v: &[f32], out: &mut Vec<i8>) -> (f32, f32) {
    let max = lanes(v, 0.0, |m, x| m.max(x.abs()), f32::max);
    if !(max > 0.0 && max.is_finite()) {
        out.extend(std::iter::repeat_n(0i8, v.len()));
        return (0.0, 0.0);
    }
    let s = max / 127.0;
    let start = out.len();
    out.extend(v.iter().map(|x| round_near((x / s).clamp(-127.0, 127.0)) as i8));
    let l1: u32 = out[start..].iter().map(|c| u32::from(c.unsigned_abs())).sum();
    (s, l1 as f32 * s)
}

/// Fold `v` in eight independent lanes, then fold the lanes: a plain fold over floats runs
/// one element per add latency, since the compiler may not reorder float operations.
#[inline]
fn lanes(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32, join: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = f(*a, x);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    acc.into_iter().fold(tail, join)
}

/// Round to the nearest integer (ties to even) for |y| ≤ 2²², by the float-add trick: adding
/// 1.5·2²³ leaves no fraction bits. It vectorises, where `f32::round` is a libm call per
/// element (measured: quantising a 512-d query took ~1.8 µs that way).
#[inline]
fn round_near(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (y + MAGIC) - MAGIC
}

/// A query in i8 codes, with what [`Bound::upper`] needs to bound the error of a row.
pub struct Bound {
    /// The query's codes.
    pub codes: Vec<i8>,
    scale: f32,
    half_q1: f32,
}

impl Bound {
    /// Quantise a query vector.
    pub fn new(q: &[f32]) -> Self {
        let mut codes = Vec::with_capacity(q.len());
        let (scale, _) = quantise(q, &mut codes);
        let q1 = lanes(q, 0.0, |a, x| a + x.abs(), |a, b| a + b);
        Bound { codes, scale, half_q1: q1 / 2.0 }
    }

    /// An upper bound of `q·x` from row `x`'s codes, scale and `‖x̂‖₁` (an exact dot product
    /// in f32 can exceed it only by rounding, which the slack term covers).
    #[inline]
    pub fn upper(&self, codes: &[i8], scale: f32, l1: f32) -> f32 {
        let approx = self.scale * scale * dot_i8(&self.codes, codes) as f32;
        let err = scale * self.half_q1 + self.scale * 0.5 * l1;
        approx + err + 1e-4 * (1.0 + approx.abs())
    }
}

/// The similarity score of a metric: higher is more similar.
/// Cosine spaces hold unit vectors, so cosine is a dot product.
#[inline]
pub fn score(metric: Metric, q: &[f32], v: &[f32]) -> f32 {
    match metric {
        Metric::Cos | Metric::Ip => dot(q, v),
        Metric::L2 => -l2sq(q, v),
    }
}

/// Normalise to unit length in place; false for a zero vector.
pub fn normalise(v: &mut [f32]) -> bool {
    let n = dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
        true
    } else {
        false
    }
}

/// A scored item; ordered by score, then by key (smaller key wins ties) so results are deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored<T: Copy> {
    /// Similarity; higher is better.
    pub score: f32,
    /// Record key.
    pub key: u64,
    /// Extra payload (e.g. patch index).
    pub extra: T,
}

impl<T: Copy + PartialEq> Eq for Scored<T> {}
impl<T: Copy + PartialEq> Ord for Scored<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reverse so that BinaryHeap is a min-heap on quality: the worst item is on top.
        o.score.total_cmp(&self.score).then(self.key.cmp(&o.key))
    }
}
impl<T: Copy + PartialEq> PartialOrd for Scored<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Keeps the `k` best items seen.
pub struct TopK<T: Copy + PartialEq> {
    k: usize,
    heap: BinaryHeap<Scored<T>>,
}

impl<T: Copy + PartialEq> TopK<T> {
    /// An empty top-k.
    pub fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }
    /// The score an item must beat to enter (−∞ until full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |s| s.score)
        }
    }
    /// Offer an item.
    #[inline]
    pub fn push(&mut self, item: Scored<T>) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(top) = self.heap.peek() {
            if item < *top {
                self.heap.pop();
                self.heap.push(item);
            }
        }
    }
    /// The `k` it keeps.
    pub fn capacity(&self) -> usize {
        self.k
    }
    /// Number held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
    /// Best first.
    pub fn into_sorted(self) -> Vec<Scored<T>> {
        let mut v = self.heap.into_vec();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_near_is_round_ties_even() {
        for i in -2_540_000..=2_540_000 {
            let y = i as f32 / 20_000.0;
            assert_eq!(round_near(y), y.round_ties_even(), "{y}");
        }
        for y in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -126.5, 127.0, -127.0, 0.49999997] {
            assert_eq!(round_near(y), y.round_ties_even(), "{y}");
        }
    }

    #[test]
    fn kernels_match_naive() {
        let a: Vec<f32> = (0..517).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..517).map(|i| (i as f32 * 0.11).cos()).collect();
        let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let l: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - d).abs() < 1e-3);
        assert!((l2sq(&a, &b) - l).abs() < 1e-3);
    }

    #[test]
    fn i8_kernel_matches_naive_and_bound_holds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for dim in [1usize, 31, 32, 33, 512, 515] {
            let a: Vec<i8> = (0..dim).map(|_| rng.random_range(-127..=127)).collect();
            let b: Vec<i8> = (0..dim).map(|_| rng.random_range(-127..=127)).collect();
            let naive: i32 = a.iter().zip(&b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum();
            assert_eq!(dot_i8(&a, &b), naive, "dim {dim}");
            assert_eq!(dot_i8_generic(&a, &b), naive, "dim {dim}");
        }
        // Extremes: every product at ±127² must not saturate.
        let a = vec![127i8; 512];
        let b = vec![-127i8; 512];
        assert_eq!(dot_i8(&a, &b), -127 * 127 * 512);
        for _ in 0..200 {
            let dim = 512;
            let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut x: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0f32).powi(3)).collect();
            normalise(&mut q);
            normalise(&mut x);
            let mut codes = Vec::new();
            let (s, l1) = quantise(&x, &mut codes);
            let b = Bound::new(&q);
            let exact = dot(&q, &x);
            let up = b.upper(&codes, s, l1);
            assert!(up >= exact, "bound {up} below exact {exact}");
            assert!(up - exact < 0.2, "bound {up} is too loose for {exact}");
        }
    }

    #[test]
    fn topk_keeps_best_with_key_tiebreak() {
        let mut t = TopK::new(3);
        for (s, k) in [(0.5, 9), (0.9, 1), (0.5, 3), (0.1, 4), (0.9, 0), (0.7, 2)] {
            t.push(Scored { score: s, key: k, extra: () });
        }
        let keys: Vec<u64> = t.into_sorted().iter().map(|s| s.key).collect();
        assert_eq!(keys, vec![0, 1, 2]);
    }
}
