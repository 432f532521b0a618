//! Exact scoring kernels, the i8 codes that let a scan skip most f32 reads, and a bounded top-k.
//!
//! The f32 dot product is written so LLVM vectorises it; on x86-64 a copy compiled for
//! AVX2+FMA is chosen at run time. The code dot product (i16 query × i8 row) uses AVX2
//! `madd` when present.
//!
//! **i8 codes.** Every image-level row also has i8 codes with a per-row scale
//! (`code = round(x / s)`, `s = max|x| / 127`) and the L2 norm of its rounding residual,
//! `ρ = ‖x − x̂‖₂` with `x̂ = s·c`. A query is quantised to i16 codes the same way
//! (`q̂ = s_q·c_q`, `s_q = max|q| / 32767`), and the approximate dot product `q̂·x̂` is off
//! from `q·x` by a *bounded* error (Cauchy–Schwarz on each part of
//! `q·x − q̂·x̂ = q·(x − x̂) + (q − q̂)·x̂`):
//! `|q·x − q̂·x̂| ≤ ‖q‖₂·ρ + ‖q − q̂‖₂·‖x̂‖₂`, and `‖x̂‖₂ ≤ 127·s·√d`.
//! The exact scan uses the bound to read f32 only for the rows that can still make the top k
//! ([`Bound`]), so the result is the same as an f32 scan, not an approximation. (Format 2
//! used `(s_x/2)·‖q‖₁ + (s_q/2)·‖x̂‖₁` with an i8 query: about 2.7× wider on 512-d unit
//! vectors, so more rows needed their f32 read.)

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
/// `Σ a[i]·b[i]` of an f32 vector with i8 codes (the caller applies the codes' scale).
#[inline(always)]
fn dot_f32_i8_generic(a: &[f32], b: &[i8]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * f32::from(y[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, &y) in ra.iter().zip(rb) {
        s += x * f32::from(y);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_i8_avx2(a: &[f32], b: &[i8]) -> f32 {
    dot_f32_i8_generic(a, b)
}

/// Dot product of an f32 vector with i8 codes, unscaled (patch grids: the caller multiplies
/// by the patch's scale). Lengths may differ; the shorter one ends the sum.
#[inline]
pub fn dot_f32_i8(a: &[f32], b: &[i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA, checked above.
        return unsafe { dot_f32_i8_avx2(a, b) };
    }
    dot_f32_i8_generic(a, b)
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
fn dot_i16_i8_generic(a: &[i16], b: &[i8]) -> i64 {
    let mut acc = [0i64; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += i64::from(x[i]) * i64::from(y[i]);
        }
    }
    let mut s: i64 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i64::from(*x) * i64::from(*y);
    }
    s
}

/// The most elements [`dot_i16_i8_avx2`] takes: each of its 16 i32 lanes adds one `madd`
/// pair (≤ 2·32 768·128 = 2²³ in magnitude) per 32 elements, so 255 rounds stay below 2³¹.
#[cfg(target_arch = "x86_64")]
const AVX2_I16_MAX: usize = 255 * 32;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i16_i8_avx2(a: &[i16], b: &[i8]) -> i64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut i = 0;
    while i + 32 <= n {
        let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast()));
        let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i + 16).cast()));
        let a0 = _mm256_loadu_si256(pa.add(i).cast());
        let a1 = _mm256_loadu_si256(pa.add(i + 16).cast());
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
        i += 32;
    }
    let mut lanes = [0i32; 16];
    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc0);
    _mm256_storeu_si256(lanes.as_mut_ptr().add(8).cast(), acc1);
    // The elements past the last full round, by the portable kernel.
    lanes.iter().map(|&x| i64::from(x)).sum::<i64>() + dot_i16_i8_generic(&a[i..n], &b[i..n])
}

/// The most elements [`dot_i16_i8_avx512`] takes: as [`AVX2_I16_MAX`], 64 elements a round.
#[cfg(target_arch = "x86_64")]
const AVX512_I16_MAX: usize = 255 * 64;

/// [`dot_i16_i8_avx2`] 64 elements at a time: twice the elements per instruction, for the
/// i8 bound every passing row of a scan pays (~45 ns a 512-d row with AVX2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dot_i16_i8_avx512(a: &[i16], b: &[i8]) -> i64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let mut i = 0;
    while i + 64 <= n {
        let b0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pb.add(i).cast()));
        let b1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pb.add(i + 32).cast()));
        let a0 = _mm512_loadu_si512(pa.add(i).cast());
        let a1 = _mm512_loadu_si512(pa.add(i + 32).cast());
        acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(a0, b0));
        acc1 = _mm512_add_epi32(acc1, _mm512_madd_epi16(a1, b1));
        i += 64;
    }
    let mut lanes = [0i32; 32];
    _mm512_storeu_si512(lanes.as_mut_ptr().cast(), acc0);
    _mm512_storeu_si512(lanes.as_mut_ptr().add(16).cast(), acc1);
    // The elements past the last full round, by the portable kernel.
    lanes.iter().map(|&x| i64::from(x)).sum::<i64>() + dot_i16_i8_generic(&a[i..n], &b[i..n])
}

/// Dot product of an i16 query code vector with a row's i8 codes, exact in i64.
#[inline]
pub fn dot_i16_i8(a: &[i16], b: &[i8]) -> i64 {
    #[cfg(target_arch = "x86_64")]
    if crate::index::sketch::avx512_bw() && a.len().min(b.len()) <= AVX512_I16_MAX {
        // SAFETY: the CPU supports AVX-512F/BW, checked above; reads stay within both slices,
        // and the length limit keeps every i32 lane from overflowing.
        return unsafe { dot_i16_i8_avx512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && a.len().min(b.len()) <= AVX2_I16_MAX {
        // SAFETY: the CPU supports AVX2, checked above; reads stay within both slices, and
        // the length limit keeps every i32 lane from overflowing.
        return unsafe { dot_i16_i8_avx2(a, b) };
    }
    dot_i16_i8_generic(a, b)
}

/// A hint to load `data` into the cache ahead of its use (every 64-byte line); a no-op off
/// x86-64.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = data.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(data);
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch never faults, and the address lies within `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Quantise `v` to i8 codes appended to `out`; returns `(scale, ρ)`, where the decoded value
/// of code `c` is `c × scale` and `ρ ≥ ‖v − decoded‖₂` (computed in f64, rounded up to f32).
/// A zero or non-finite vector gets scale 0, zero codes and `ρ = ‖v‖₂` (+∞ when non-finite,
/// so a bound built on it never excludes the row).
pub fn quantise(v: &[f32], out: &mut Vec<i8>) -> (f32, f32) {
    let start = out.len();
    let s = codes_i8(v, out);
    (s, residual(v, &out[start..], s))
}

/// The step that maps `v`'s largest magnitude to code `top`: 0 for a zero or non-finite
/// vector, whose codes are then all 0.
fn step(v: &[f32], top: f32) -> f32 {
    let max = lanes(v, 0.0, |m, x| m.max(x.abs()), f32::max);
    if max > 0.0 && max.is_finite() {
        max / top
    } else {
        0.0
    }
}

/// The code of `x` at step `s > 0`: `round(x / s)`, clamped to `±top`.
#[inline]
fn code(x: f32, s: f32, top: f32) -> f32 {
    round_near((x / s).clamp(-top, top))
}

/// `code(x, s, top)` of every `x` of `v`, as i16, handed to `out` a few at a time in order
/// (`top` ≤ 32767): the query's side of [`Bound`], eight lanes at a time where the CPU has
/// AVX2 (the scalar loop converts one lane at a time: ~1 µs of a 512-d query).
fn codes_i16(v: &[f32], s: f32, top: f32, mut out: impl FnMut(&[i16])) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, checked above; the kernel reads within `v`.
        unsafe { codes_i16_avx2(v, s, top, &mut out) };
        return;
    }
    for &x in v {
        out(&[code(x, s, top) as i16]);
    }
}

/// [`codes_i16`] with AVX2: the same division and clamp, then the conversion's own rounding
/// (to nearest, ties to even, as [`round_near`]) and a saturating pack, which is exact for
/// clamped values. Finite values give the scalar loop's codes exactly (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn codes_i16_avx2(v: &[f32], s: f32, top: f32, out: &mut impl FnMut(&[i16])) {
    use std::arch::x86_64::*;
    let (sv, hi, lo) = (_mm256_set1_ps(s), _mm256_set1_ps(top), _mm256_set1_ps(-top));
    let mut lanes = [0i16; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let x = _mm256_loadu_ps(c.as_ptr());
        let y = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(x, sv), lo), hi);
        let i = _mm256_cvtps_epi32(y);
        let packed = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256::<1>(i));
        _mm_storeu_si128(lanes.as_mut_ptr().cast(), packed);
        out(&lanes);
    }
    for &x in chunks.remainder() {
        out(&[code(x, s, top) as i16]);
    }
}

/// The i8 codes of `v` appended to `out`, and their scale (see [`step`]).
fn codes_i8(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let s = step(v, 127.0);
    if s > 0.0 {
        out.extend(v.iter().map(|&x| code(x, s, 127.0) as i8));
    } else {
        out.extend(std::iter::repeat_n(0i8, v.len()));
    }
    s
}

/// `‖v − s·c‖₂` computed in f64 and rounded up to the next f32, so it bounds the true
/// residual of the decoded codes.
pub fn residual(v: &[f32], c: &[i8], s: f32) -> f32 {
    let mut acc = [0f64; 4];
    let (s, mut i) = (f64::from(s), 0);
    for (x, &k) in v.iter().zip(c) {
        let d = f64::from(*x) - s * f64::from(k);
        acc[i & 3] += d * d;
        i += 1;
    }
    round_up((acc[0] + acc[1] + acc[2] + acc[3]).sqrt())
}

/// A non-negative f64 as the least f32 not below it (+∞ when not finite): what a bound
/// computed in f64 is stored as.
pub(crate) fn round_up(x: f64) -> f32 {
    if !x.is_finite() {
        return f32::INFINITY;
    }
    let y = x as f32;
    if f64::from(y) < x {
        y.next_up()
    } else {
        y
    }
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

/// A query in i16 codes, with what [`Bound::upper`] needs to bound the error of a row.
pub struct Bound {
    /// The query's i8 codes, as the graph (which holds rows' i8 codes) is searched with.
    pub codes: Vec<i8>,
    /// Their scale: the query is `≈ code_scale × codes` (0 for a zero or non-finite query).
    pub(crate) code_scale: f32,
    q16: Vec<i16>,
    /// `s_q`: the query is `≈ s_q × q16`.
    scale: f32,
    /// `‖q‖₂`, rounded up: times a row's `ρ` bounds `|q·(x − x̂)|`.
    q2: f32,
    /// A bound of `‖q − q̂‖₂ · 127 · √d`: times a row's scale it bounds `|(q − q̂)·x̂|`.
    eq: f32,
}

impl Bound {
    /// Quantise a query vector. Cheap (no f64 pass): it runs once per search.
    pub fn new(q: &[f32]) -> Self {
        let scale = step(q, 32767.0);
        let mut q16 = Vec::with_capacity(q.len());
        if scale > 0.0 {
            codes_i16(q, scale, 32767.0, |c| q16.extend_from_slice(c));
        } else {
            q16.resize(q.len(), 0);
        }
        // The row codes' rule (`codes_i8`), through the same kernel (|codes| ≤ 127).
        let code_scale = step(q, 127.0);
        let mut codes = Vec::with_capacity(q.len());
        if code_scale > 0.0 {
            codes_i16(q, code_scale, 127.0, |c| codes.extend(c.iter().map(|&c| c as i8)));
        } else {
            codes.resize(q.len(), 0);
        }
        // ‖q‖₂ from an f32 sum of squares (relative error ≪ 1e-4), rounded up by 1e-4.
        let q2 = dot(q, q).sqrt() * (1.0 + 1e-4);
        // Each component is off by at most half a step, plus the f32 division's rounding
        // (≤ 32767·2⁻²³ < 0.004 of a step): ‖q − q̂‖₂ ≤ 0.504·s_q·√d. Analytic rather than
        // measured, so no per-query pass; it is ~1 % of the bound either way.
        let sqrt_d = (q.len() as f32).sqrt();
        let eq = 0.504 * scale * sqrt_d * 127.0 * sqrt_d;
        let (q2, eq) = if q2.is_finite() && eq.is_finite() { (q2, eq * (1.0 + 1e-4)) } else { (f32::INFINITY, f32::INFINITY) };
        Bound { scale, q2, eq, codes, code_scale, q16 }
    }

    /// An upper bound of `q·x` from row `x`'s codes, scale and residual norm `ρ` (an exact
    /// dot product in f32 can exceed it only by rounding, which the slack term covers).
    #[inline]
    pub fn upper(&self, codes: &[i8], scale: f32, rho: f32) -> f32 {
        let approx = self.scale * scale * dot_i16_i8(&self.q16, codes) as f32;
        let err = self.q2 * rho + self.eq * scale;
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
#[derive(Clone)]
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
    fn query_codes_match_the_scalar_rule() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for len in [1usize, 7, 8, 9, 64, 512, 515] {
            for spread in [1e-6f32, 1.0, 3e5] {
                let mut v: Vec<f32> = (0..len).map(|_| next() * spread).collect();
                // Ties: exact half steps of the 127-step scale, and both extremes.
                v[0] = spread;
                if len > 2 {
                    v[1] = -spread;
                    v[2] = 2.5 * spread / 127.0;
                }
                for top in [127.0f32, 32767.0] {
                    let s = step(&v, top);
                    let mut fast = Vec::new();
                    codes_i16(&v, s, top, |c| fast.extend_from_slice(c));
                    let slow: Vec<i16> = v.iter().map(|&x| code(x, s, top) as i16).collect();
                    assert_eq!(fast, slow, "len {len} spread {spread} top {top}");
                }
                let b = Bound::new(&v);
                let mut rows = Vec::new();
                assert_eq!(b.code_scale, codes_i8(&v, &mut rows));
                assert_eq!(b.codes, rows, "the query's i8 codes follow the rows' rule");
            }
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
        // f32 × i8 at lengths around the 16-lane edge, against an f64 sum.
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 512, 517] {
            let c: Vec<i8> = (0..n).map(|i| ((i * 37 % 255) as i32 - 127) as i8).collect();
            let exact: f64 = a[..n].iter().zip(&c).map(|(x, &y)| f64::from(*x) * f64::from(y)).sum();
            let got = dot_f32_i8(&a[..n], &c);
            assert!((f64::from(got) - exact).abs() < 1e-3 * (1.0 + exact.abs()), "n {n}: {got} vs {exact}");
        }
    }

    #[test]
    fn code_kernel_matches_naive_and_bound_holds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for dim in [1usize, 15, 16, 31, 32, 33, 63, 64, 65, 100, 512, 515, 8160, 8161, 9000, 16320, 16321, 17000] {
            let a: Vec<i16> = (0..dim).map(|_| rng.random_range(-32767..=32767)).collect();
            let b: Vec<i8> = (0..dim).map(|_| rng.random_range(-127..=127)).collect();
            let naive: i64 = a.iter().zip(&b).map(|(x, y)| i64::from(*x) * i64::from(*y)).sum();
            assert_eq!(dot_i16_i8(&a, &b), naive, "dim {dim}");
            assert_eq!(dot_i16_i8_generic(&a, &b), naive, "dim {dim}");
            #[cfg(target_arch = "x86_64")]
            if has_avx2() && dim <= AVX2_I16_MAX {
                // SAFETY: AVX2 checked; the length is within the kernel's limit.
                assert_eq!(unsafe { dot_i16_i8_avx2(&a, &b) }, naive, "AVX2, dim {dim}");
            }
            #[cfg(target_arch = "x86_64")]
            if crate::index::sketch::avx512_bw() && dim <= AVX512_I16_MAX {
                // SAFETY: AVX-512F/BW checked; the length is within the kernel's limit.
                assert_eq!(unsafe { dot_i16_i8_avx512(&a, &b) }, naive, "AVX-512, dim {dim}");
            }
        }
        // Extremes: the largest products, all one sign, at each vector path's longest input
        // and beyond it, must not overflow.
        for dim in [512, 8160, 8161, 16320, 16321] {
            for (x, y) in [(32767i16, -128i8), (-32768, -128)] {
                let (a, b) = (vec![x; dim], vec![y; dim]);
                assert_eq!(dot_i16_i8(&a, &b), i64::from(x) * i64::from(y) * dim as i64, "dim {dim}");
            }
        }
        let mut widths = (0f64, 0f64);
        for round in 0..400 {
            let dim = if round % 2 == 0 { 512 } else { 77 };
            let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut x: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0f32).powi(3)).collect();
            normalise(&mut q);
            if round % 3 != 0 {
                normalise(&mut x); // cos; otherwise an ip row of any length
            }
            let mut codes = Vec::new();
            let (s, rho) = quantise(&x, &mut codes);
            let true_rho = x.iter().zip(&codes).map(|(a, &c)| (f64::from(*a) - f64::from(s) * f64::from(c)).powi(2)).sum::<f64>().sqrt();
            assert!(f64::from(rho) >= true_rho * (1.0 - 1e-12), "residual {rho} below {true_rho}");
            let b = Bound::new(&q);
            let exact = dot(&q, &x);
            let up = b.upper(&codes, s, rho);
            assert!(up >= exact, "bound {up} below exact {exact}");
            // The old bound, for comparison: this one must be much tighter.
            let l1x: f32 = codes.iter().map(|c| f32::from(c.unsigned_abs())).sum::<f32>() * s;
            let l1q: f32 = q.iter().map(|v| v.abs()).sum();
            let sq = q.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let old = s / 2.0 * l1q + sq / 2.0 * l1x;
            if dim == 512 && round % 3 != 0 {
                widths.0 += f64::from(up - exact);
                widths.1 += f64::from(old);
            }
        }
        assert!(widths.0 < widths.1 * 0.6, "bound width {} is not well below the L1 bound's {}", widths.0, widths.1);
        // A zero row and a zero query bound nothing away.
        let mut codes = Vec::new();
        let (s, rho) = quantise(&[0.0; 8], &mut codes);
        assert_eq!((s, rho), (0.0, 0.0));
        assert!(Bound::new(&[0.0; 8]).upper(&codes, s, rho) >= 0.0);
    }

    #[test]
    fn bound_with_no_residual_covers_the_codes_own_score() {
        // The patch scan skips a patch when `upper(codes, scale, 0)` is below the k-th score
        // and otherwise scores it as `dot_f32_i8(q, codes) × scale`: the first must never be
        // below the second. The query's own rounding is what the bound has to cover: the i16
        // estimate alone falls below the exact score on some patches.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (mut estimate_below, mut widest) = (0, 0f32);
        for round in 0..2_000 {
            let dim = if round % 4 == 0 { 77 } else { 512 };
            let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            normalise(&mut q);
            let mut x: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0f32)).collect();
            normalise(&mut x);
            // Patches near the query, as the top of a scan: half of them.
            if round % 2 == 0 {
                x.iter_mut().zip(&q).for_each(|(a, b)| *a = 0.2 * *a + b);
                normalise(&mut x);
            }
            let mut codes = Vec::new();
            let (scale, _) = quantise(&x, &mut codes);
            let b = Bound::new(&q);
            let exact = dot_f32_i8(&q, &codes) * scale;
            let up = b.upper(&codes, scale, 0.0);
            assert!(up >= exact, "round {round}: bound {up} below the codes' score {exact}");
            widest = widest.max(up - exact);
            estimate_below += usize::from(b.scale * scale * (dot_i16_i8(&b.q16, &codes) as f32) < exact);
        }
        assert!(widest < 2e-3, "the bound is {widest} wide: too loose to skip patches");
        assert!(estimate_below > 0, "the i16 estimate never fell below the exact score: the test cannot tell a bound without its error term");
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
