//! Exact scoring kernels and a bounded top-k.
//!
//! The dot product is written so LLVM vectorises it; on x86-64 a copy compiled for
//! AVX2+FMA is chosen at run time.

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
    fn kernels_match_naive() {
        let a: Vec<f32> = (0..517).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..517).map(|i| (i as f32 * 0.11).cos()).collect();
        let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let l: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - d).abs() < 1e-3);
        assert!((l2sq(&a, &b) - l).abs() < 1e-3);
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
