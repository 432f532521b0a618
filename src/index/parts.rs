//! Cone partitions of a cosine space: an exact, prunable alternative to the graph.
//!
//! The base rows of a cosine space are grouped by spherical k-means around unit centroids
//! `c`. Each partition keeps the cosine of its widest member, `min_cos = min x·c`, i.e. the
//! half-angle `r = acos(min_cos)` of the cone around `c` that holds every member. Angles on
//! the unit sphere obey the triangle inequality, so for a unit query `q` and any member `x`:
//!
//! `angle(q, x) ≥ angle(q, c) − r`, hence `q·x ≤ cos(max(0, angle(q, c) − r))`.
//!
//! The same holds row by row with the row's own angle `∠(x, c)` in place of `r`. Within a
//! partition, rows are stored widest angle first, so once the k-th score `t` is known a scan
//! stops inside a partition at the first row whose angle is too small to reach `t`.
//!
//! A query visits partitions in order of that bound and stops when the next bound is below
//! its k-th exact score: every row it skips provably cannot make the top k, so the answer
//! is the exact scan's. How much it skips depends on the data: content clusters that lie
//! apart prune well; a query equidistant from everything prunes nothing, and the planner
//! then gives up within a budget and takes another path.
//!
//! Patch-level spaces get the same index over every patch of every tile: an item is then
//! patch `p` of row `r` (item number `r × per + p`), ranked as its i8 codes decode
//! (`x̂ = code × scale`, not unit). For such an `x̂`, `q·x̂ = ‖x̂‖ cos ∠(q, x̂)`, so each
//! partition also keeps its largest `‖x̂‖` and every bound is scaled by it.
//!
//! Partitions are derived state, built at checkpoint beside the graph and saved as
//! `space-N-SEQ.parts` (format in `schema/storage.md`).

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

use crate::index::arena::{sections, write_sections, BuiltOnce, Col, MetaView, Segment, BUILT_INLINE_MAX, HEADER};
use crate::index::resid::Resid;
use crate::index::scan;
use crate::{Error, Kind, Result};

/// Magic bytes at the start of a partitions file.
const MAGIC: &[u8; 8] = b"GDBPART1";
/// Version of the partitions file layout. 2: the per-position column after the code scale
/// holds the residual norm `ρ` (version 1 held ‖x̂‖₁; such a file is read with that column
/// copied from the snapshot, and rewritten at the next checkpoint). 3: items per row
/// (`per`, patch level) in the header and each partition's largest norm as a last section
/// (a version 2 file is read with `per` 1 and norms 1).
pub const VERSION: u32 = 3;

/// Slack on every cosine in the bound: covers f32 rounding in the dot products (512-d unit
/// vectors round by ~1e-6) and the normalisation of stored vectors.
const SLACK: f64 = 1e-4;

/// Spherical k-means iterations on the training sample.
const ITERS: usize = 8;
/// Training rows per partition.
const SAMPLE_PER_PART: usize = 40;

/// The partitions of a segment's rows, with a copy of what a scan reads (i8 codes, scale,
/// residual norm, key and filter fields) in partition order, so a partition is read front to back.
/// "Position" below is an index into that order; [`Parts::row`] maps it to the segment row.
pub struct Parts {
    dim: usize,
    /// Items per segment row: 1 for image-level spaces, the patches of a grid for patch-level.
    per: usize,
    /// `parts × dim` unit centroids.
    centroids: Vec<f32>,
    /// The centroids' i8 codes, scales and residual norms, made at load (never stored): a
    /// query bounds its angle to every centroid from them at a quarter of the bytes.
    coded: CodedCentroids,
    /// Per partition: the least cosine between a member and the centroid.
    min_cos: Vec<f32>,
    /// Per partition: the largest norm of a member (1 for unit vectors), rounded up.
    max_norm: Vec<f32>,
    /// `parts + 1` offsets into the positions.
    offsets: Vec<u32>,
    /// Item of each position (within a partition, widest angle to the centroid first): the
    /// segment row, or `row × per + patch` at the patch level.
    rows: Col<u32>,
    /// `x·c` of each position with its partition's centroid (ascending within a partition).
    cos_c: Col<f32>,
    codes: Col<i8>,
    qscale: Col<f32>,
    qres: Col<f32>,
    keys: Col<u64>,
    time: Col<i64>,
    bbox: Col<f64>,
    kind: Col<u8>,
    /// Each partition's positions in key order, made on first use or in the background after
    /// open (never stored).
    by_key: Arc<OnceLock<KeyOrder>>,
    /// Two-bit codes of each image row's residual from its centroid
    /// ([`crate::index::resid`]), made by [`Parts::residuals`] or in the background; never
    /// stored.
    resid: Arc<BuiltOnce<Resid>>,
}

/// The positions of every partition sorted by record key, with the keys beside them: a
/// region's key ranges find the rows of a partition inside them by binary search instead of
/// a pass over the partition's keys.
struct KeyOrder {
    keys: Vec<u64>,
    pos: Vec<u32>,
    /// Per partition: every row is a photo (its record key then places the row itself, so a
    /// region test can go by the key's geohash cell, [`crate::geo::region::PointTest::cell`]).
    photos: Vec<bool>,
}

impl KeyOrder {
    /// Sort each partition's positions (`offsets`) by their `keys`; note the partitions of
    /// photos alone (`kind`).
    fn new(offsets: &[u32], keys: &[u64], kind: &[u8]) -> Self {
        let photos = offsets.windows(2).map(|w| kind.get(w[0] as usize..w[1] as usize).is_some_and(|k| k.iter().all(|&b| Kind::from_u8(b) == Some(Kind::Photo)))).collect();
        let mut pos: Vec<u32> = (0..keys.len() as u32).collect();
        for w in offsets.windows(2) {
            if let Some(seg) = pos.get_mut(w[0] as usize..w[1] as usize) {
                seg.sort_unstable_by_key(|&j| keys.get(j as usize).copied().unwrap_or(u64::MAX));
            }
        }
        let keys = pos.iter().map(|&j| keys.get(j as usize).copied().unwrap_or(u64::MAX)).collect();
        KeyOrder { keys, pos, photos }
    }
}

/// How many partitions for `n` rows: about √n, so a query scores as many centroids as a
/// partition has rows.
pub fn count_for(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).clamp(1, 4096)
}

/// Byte ranges of the sections after the header.
fn layout(np: usize, n: usize, dim: usize) -> [Range<usize>; 13] {
    // centroids, min_cos, max_norm, offsets, then per position: item, cos_c, codes, scale,
    // ρ, key, time, bbox, kind.
    sections([np * dim * 4, np * 4, np * 4, (np + 1) * 4, n * 4, n * 4, n * dim, n * 4, n * 4, n * 8, n * 8, n * 32, n])
}

/// The sections of a version 1 or 2 file (no max_norm), in [`layout`]'s order with an empty
/// max_norm range.
fn layout_v2(np: usize, n: usize, dim: usize) -> [Range<usize>; 13] {
    let [c, mc, rest @ ..]: [Range<usize>; 12] = sections([np * dim * 4, np * 4, (np + 1) * 4, n * 4, n * 4, n * dim, n * 4, n * 4, n * 8, n * 8, n * 32, n]);
    let [o, r, cc, cd, qs, l1, k, t, b, kd] = rest;
    [c, mc, 0..0, o, r, cc, cd, qs, l1, k, t, b, kd]
}

/// What a build groups: the rows of an image-level segment (unit f32 vectors with i8 codes),
/// or every patch of a patch-level segment's grids (`per` a row, i8 with a scale each).
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Unit f32 rows with their i8 codes.
    Rows(&'a Segment),
    /// Every patch of a patch-level segment's grids, `per` a row.
    Patches(&'a Segment, usize),
    /// Rows held only as i8 codes, of any norm (the tile summaries, [`Parts::build_means`]).
    Means(&'a Segment),
}

impl Source<'_> {
    fn seg(&self) -> &Segment {
        match *self {
            Source::Rows(s) | Source::Patches(s, _) | Source::Means(s) => s,
        }
    }
    fn per(&self) -> usize {
        match *self {
            Source::Rows(_) | Source::Means(_) => 1,
            Source::Patches(_, per) => per,
        }
    }
    /// Whether every item is a unit vector (else each partition keeps its largest norm).
    fn unit(&self) -> bool {
        matches!(self, Source::Rows(_))
    }
    fn len(&self) -> usize {
        self.seg().len() * self.per()
    }
    /// Item `i`'s unit direction into `buf`, and its norm.
    fn direction(&self, i: usize, dim: usize, buf: &mut Vec<f32>) -> f32 {
        buf.clear();
        match *self {
            Source::Rows(s) => {
                buf.extend_from_slice(s.vector(i));
                1.0
            }
            Source::Patches(..) | Source::Means(_) => {
                let coded = match *self {
                    Source::Patches(s, per) => s.patch_coded(i / per, i % per, dim),
                    _ => self.seg().coded(i).map(|(c, sc, _)| (c, sc)),
                };
                let Some((codes, scale)) = coded else {
                    buf.resize(dim, 0.0);
                    return 0.0;
                };
                buf.extend(codes.iter().map(|&c| f32::from(c) * scale));
                let norm = buf.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                if norm > 0.0 {
                    buf.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
                }
                norm as f32
            }
        }
    }
    /// Item `i`'s codes, scale and residual norm (0 for patches: they are ranked as coded).
    fn coded(&self, i: usize, dim: usize) -> Option<(&[i8], f32, f32)> {
        self.seg().item_coded(i, self.per(), dim)
    }
}

/// The bound `‖x‖ cos(max(0, θ − r))` of every member of a cone of half-angle `r` (`cos_r`,
/// `sin_r`) and largest norm `max_norm`, for a unit query at angle θ (`cos_theta`) to its
/// centroid. Both angles' errors are widened the safe way by the caller (a smaller θ, a
/// wider r). Without trigonometry (θ, r ∈ [0, π], so both sines are the non-negative roots):
/// 1 inside the cone, else cos θ cos r + sin θ sin r.
#[inline(always)]
fn cone_bound(cos_theta: f64, cos_r: f64, sin_r: f64, max_norm: f32) -> f32 {
    let sin_theta = (1.0 - cos_theta * cos_theta).max(0.0).sqrt();
    let outside = cos_theta * cos_r + sin_theta * sin_r;
    let cos_gap = if cos_theta >= cos_r { 1.0 } else { outside };
    ((cos_gap.min(1.0) + SLACK) * f64::from(max_norm)) as f32
}

/// How many of their own items [`Parts::prune_their_own_items`] tries as queries.
pub const SELF_CHECK_QUERIES: usize = 16;
/// The share of all positions such a query may visit. A visited position costs a filter test
/// and a score read out of order, ~23× a patch of the sketched tile scan (the planner's
/// `PATCH_SCAN_COST_SKETCHED` against `SCAN_COST_I8` × 1.15), so partitions that visit more
/// than ~4 % of the patches lose to that scan even where they finish. A query can prove its
/// top 10 only after visiting its own content cluster, so this keeps partitions where the
/// patches fall into more than ~25 content clusters. Measured: the peers' 10k-tile set (its
/// patches spread around 1 of 50 content centroids each, unevenly) visits a median 9.0 % (1.5 s for
/// the 16 queries over 1.96M patches), and its partitions never answered a query there.
pub const SELF_CHECK_MAX_VISIT: f64 = 0.04;

/// One partition's bound for a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartBound {
    /// No member scores above this.
    pub bound: f32,
    /// The partition.
    pub part: u32,
    /// The cosine of the query's angle to the centroid, made large (the angle small) by the
    /// slack.
    pub cos_theta: f64,
}

/// Centroids in i8 codes, as rows are held (see [`scan::quantise`]).
#[derive(Default)]
struct CodedCentroids {
    codes: Vec<i8>,
    scale: Vec<f32>,
    rho: Vec<f32>,
    /// Per partition the cosine and sine of its cone's half-angle `r`, widened by the slack
    /// (`cos r = min_cos − SLACK`): constant, so a query's bounds take one square root each.
    cos_r: Vec<f64>,
    sin_r: Vec<f64>,
}

impl CodedCentroids {
    fn new(centroids: &[f32], min_cos: &[f32], dim: usize) -> Self {
        let mut c = CodedCentroids { codes: Vec::with_capacity(centroids.len()), ..Default::default() };
        for v in centroids.chunks_exact(dim.max(1)) {
            let (s, r) = scan::quantise(v, &mut c.codes);
            c.scale.push(s);
            c.rho.push(r);
        }
        c.cos_r = min_cos.iter().map(|&m| (f64::from(m) - SLACK).clamp(-1.0, 1.0)).collect();
        c.sin_r = c.cos_r.iter().map(|&cr| (1.0 - cr * cr).max(0.0).sqrt()).collect();
        c
    }
}

impl Parts {
    /// The mapped file its columns are windows of, if loaded from one.
    pub(crate) fn maps(&self) -> Vec<Arc<Mmap>> {
        self.codes.map().into_iter().chain(self.keys.map()).take(1).cloned().collect()
    }

    /// Partitions held.
    pub fn len(&self) -> usize {
        self.min_cos.len()
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.min_cos.is_empty()
    }
    /// Items covered (the base segment's length × [`Parts::per`]).
    pub fn rows_total(&self) -> usize {
        self.rows.len()
    }
    /// Items per segment row (1, or the patches of a grid).
    pub fn per(&self) -> usize {
        self.per
    }
    /// The positions of partition `p`.
    pub fn positions(&self, p: usize) -> Range<usize> {
        match (self.offsets.get(p), self.offsets.get(p + 1)) {
            (Some(&a), Some(&b)) => a as usize..b as usize,
            _ => 0..0,
        }
    }
    /// The item at a position (the segment row, or `row × per + patch`).
    #[inline]
    pub fn row(&self, j: usize) -> Option<u32> {
        self.rows.get(j).copied()
    }
    /// The record key at a position.
    #[inline]
    pub fn key(&self, j: usize) -> Option<u64> {
        self.keys.get(j).copied()
    }
    /// The filter-field columns in position order.
    pub fn metas(&self) -> MetaView<'_> {
        MetaView::new(&self.time, &self.bbox, &self.kind)
    }
    /// The i8 codes, scale and residual norm `ρ` at a position.
    #[inline]
    pub fn coded(&self, j: usize) -> Option<(&[i8], f32, f32)> {
        Some((self.codes.get(j * self.dim..(j + 1) * self.dim)?, *self.qscale.get(j)?, *self.qres.get(j)?))
    }

    /// The positions of partition `p` within `range` whose key lies in `lo..=hi`, with their
    /// keys, appended to `out` in key order. The first call orders every partition's
    /// positions by key (12 bytes a position, kept; ~70 ms at 1M rows).
    pub fn keyed_in(&self, p: usize, range: &Range<usize>, lo: u64, hi: u64, out: &mut Vec<(usize, u64)>) {
        let ko = self.key_order();
        let all = self.positions(p);
        let (Some(keys), Some(pos)) = (ko.keys.get(all.clone()), ko.pos.get(all)) else { return };
        let a = keys.partition_point(|&k| k < lo);
        let b = keys.partition_point(|&k| k <= hi).max(a);
        out.extend(keys[a..b].iter().zip(&pos[a..b]).filter(|(_, &j)| range.contains(&(j as usize))).map(|(&k, &j)| (j as usize, k)));
    }

    /// Ask the CPU to start loading partition `p`'s keys and positions in key order, where the
    /// key order is made (a hint: [`Parts::keyed_in`]'s binary searches over a partition
    /// fresh from memory wait on a miss at every step).
    pub fn prefetch_keyed(&self, p: usize) {
        if let Some(ko) = self.by_key.get() {
            let all = self.positions(p);
            if let Some(keys) = ko.keys.get(all) {
                scan::prefetch(keys);
            }
        }
    }

    fn key_order(&self) -> &KeyOrder {
        self.by_key.get_or_init(|| KeyOrder::new(&self.offsets, &self.keys, &self.kind))
    }

    /// Whether every row of partition `p` is a photo (made with the key order).
    pub fn photos_only(&self, p: usize) -> bool {
        self.key_order().photos.get(p).copied().unwrap_or(false)
    }

    /// Make the key order of [`Parts::keyed_in`] on a background thread (from a copy of the
    /// keys), so that the first filtered scan after open or checkpoint finds it ready; a scan
    /// that comes first makes it itself.
    pub fn key_order_in_background(&self) {
        let (cell, offsets, keys, kind) = (Arc::clone(&self.by_key), self.offsets.clone(), self.keys.to_vec(), self.kind.to_vec());
        let _ = std::thread::Builder::new().name("graftdb-keyorder".into()).spawn(move || {
            let _ = cell.set(KeyOrder::new(&offsets, &keys, &kind));
        });
    }

    /// The two-bit residual codes of every position ([`crate::index::resid`]); `None` at the
    /// patch level, where the layout does not hold the dimension, or while a background
    /// thread still makes them (started here if it was not: mapped partitions of more than
    /// [`BUILT_INLINE_MAX`] positions). Small or in-memory partitions have them made here.
    pub fn residuals(&self) -> Option<&Resid> {
        if let Some(r) = self.resid.get() {
            return r;
        }
        if self.per != 1 || !crate::index::resid::fits(self.dim) {
            return None;
        }
        if self.rows_total() > BUILT_INLINE_MAX && self.codes.map().is_some() {
            self.residuals_in_background();
            return None;
        }
        self.resid.get_or_make(|| Resid::build(&self.codes, &self.qscale, &self.cos_c, &self.centroids, &self.offsets, self.dim))
    }

    /// Make [`Parts::residuals`] on a background thread from mapped partitions, once (after
    /// open with `Options::prefault` and `row_shortlist`, or at the first capped scan that
    /// wants them); in-memory partitions (a checkpoint's) are not copied for it: the first
    /// capped scan makes them.
    pub fn residuals_in_background(&self) {
        if self.per != 1 || !crate::index::resid::fits(self.dim) {
            return;
        }
        let (Col::Mapped(m1, codes), Col::Mapped(m2, scales), Col::Mapped(m3, cos_c)) = (&self.codes, &self.qscale, &self.cos_c) else { return };
        if !self.resid.claim() {
            return;
        }
        let (cell, centroids, offsets, dim) = (Arc::clone(&self.resid), self.centroids.clone(), self.offsets.clone(), self.dim);
        let (codes, scales, cos_c) = ((Arc::clone(m1), codes.clone()), (Arc::clone(m2), scales.clone()), (Arc::clone(m3), cos_c.clone()));
        let _ = std::thread::Builder::new().name("graftdb-resid".into()).spawn(move || {
            fn col((m, r): &(Arc<Mmap>, Range<usize>)) -> &[u8] {
                m.get(r.clone()).unwrap_or(&[])
            }
            let built = match (bytemuck::try_cast_slice::<u8, i8>(col(&codes)), bytemuck::try_cast_slice::<u8, f32>(col(&scales)), bytemuck::try_cast_slice::<u8, f32>(col(&cos_c))) {
                (Ok(c), Ok(s), Ok(h)) => Resid::build(c, s, h, &centroids, &offsets, dim),
                _ => None,
            };
            cell.set(built);
        });
    }

    /// `q·c` of partition `p`'s centroid.
    pub fn centroid_dot(&self, p: usize, q: &[f32]) -> f32 {
        self.centroids.get(p * self.dim..(p + 1) * self.dim).map_or(0.0, |c| scan::dot(q, c))
    }

    /// Ask the CPU to start loading the i8 codes at a position, its code scale, residual norm
    /// and item number (in columns of their own: for a scattered row each is a cache miss of
    /// its own, ~20 % of a 10 % query's scan stalled on the scale's); a hint, no effect
    /// elsewhere.
    #[inline]
    pub fn prefetch_codes(&self, j: usize) {
        if let (Some(c), Some(s), Some(r), Some(i)) = (self.codes.get(j * self.dim..(j + 1) * self.dim), self.qscale.get(j..j + 1), self.qres.get(j..j + 1), self.rows.get(j..j + 1)) {
            crate::index::scan::prefetch(c);
            crate::index::scan::prefetch(s);
            crate::index::scan::prefetch(r);
            crate::index::scan::prefetch(i);
        }
    }

    /// The positions of a partition that can still score `t` or more: rows are stored widest
    /// angle first and `q·x ≤ cos(max(0, θ − ∠(x, c)))`, so the rows whose angle is below
    /// `θ − acos(t)` are a suffix that cannot reach `t`. `t = −∞` keeps them all.
    pub fn reaching(&self, b: &PartBound, t: f32) -> Range<usize> {
        let all = self.positions(b.part as usize);
        // A member of norm ν ≤ `max_norm` reaches `t > 0` only if cos ∠(q, x) ≥ t / ν ≥
        // t / max_norm; a negative `t` keeps every row.
        if t.is_nan() || t <= 0.0 {
            return all;
        }
        let tt = f64::from(t) / f64::from(self.max_norm.get(b.part as usize).copied().unwrap_or(1.0)) - SLACK;
        if tt > 1.0 {
            return all.start..all.start;
        }
        if tt.is_nan() || tt <= -1.0 {
            return all;
        }
        let min_angle = b.cos_theta.acos() - tt.acos();
        if min_angle <= 0.0 {
            return all;
        }
        // A row is kept while its (widened) angle is at least `min_angle`, i.e. while
        // `cos_c − SLACK ≤ cos(min_angle)`; `cos_c` ascends, so this is a prefix.
        let cut = min_angle.cos();
        let cos: &[f32] = &self.cos_c;
        let slice = cos.get(all.clone()).unwrap_or(&[]);
        all.start..all.start + slice.partition_point(|&c| f64::from(c) - SLACK <= cut)
    }

    /// Whether patch partitions pay on their own data: the median share of all positions an
    /// exact top-10 scan visits for [`SELF_CHECK_QUERIES`] of their own items (evenly strided,
    /// each as a unit query) is at most [`SELF_CHECK_MAX_VISIT`]. A stored item is about the
    /// easiest query they will meet (it scores 1 against itself, so the k-th score is high at
    /// once); partitions that fail it lose to the sketched tile scan on users' queries too,
    /// and cost their file and each query's attempt for nothing.
    pub fn prune_their_own_items(&self) -> bool {
        self.own_item_visits().is_some_and(|v| v <= SELF_CHECK_MAX_VISIT)
    }

    /// The median share of all positions the self-check's queries visit (see
    /// [`Parts::prune_their_own_items`]); a query that would visit more than
    /// [`SELF_CHECK_MAX_VISIT`] counts as 1. `None` without items.
    pub fn own_item_visits(&self) -> Option<f64> {
        let n = self.rows_total();
        if n == 0 {
            return None;
        }
        let cap = ((n as f64 * SELF_CHECK_MAX_VISIT) as u64).max(1);
        let queries = SELF_CHECK_QUERIES.min(n);
        let mut q = vec![0f32; self.dim];
        let mut shares = Vec::with_capacity(queries);
        for i in 0..queries {
            let Some((codes, scale, _)) = self.coded(i * n / queries) else { continue };
            for (x, &c) in q.iter_mut().zip(codes) {
                *x = f32::from(c) * scale;
            }
            if !scan::normalise(&mut q) {
                continue;
            }
            let mut top: scan::TopK<()> = scan::TopK::new(10);
            let mut visited = 0u64;
            'parts: for pb in self.bounds(&q) {
                if top.len() >= top.capacity() && pb.bound < top.threshold() {
                    break;
                }
                for j in self.reaching(&pb, top.threshold()) {
                    visited += 1;
                    if visited > cap {
                        break 'parts;
                    }
                    if let Some((c, s, _)) = self.coded(j) {
                        top.push(scan::Scored { score: crate::store::codec::patch_score(&q, c, s), key: j as u64, extra: () });
                    }
                }
            }
            shares.push(if visited <= cap { visited as f64 / n as f64 } else { 1.0 });
        }
        shares.sort_by(f64::total_cmp);
        shares.get(shares.len() / 2).copied()
    }

    /// An upper bound of `q·x` for every member `x` of each partition, best first, for a unit
    /// query `q`.
    pub fn bounds(&self, q: &[f32]) -> Vec<PartBound> {
        let mut out = self.bounds_from(|p| f64::from(scan::dot(q, &self.centroids[p * self.dim..(p + 1) * self.dim])));
        out.sort_unstable_by(|a, b| b.bound.total_cmp(&a.bound));
        out
    }

    /// The same bounds from the query's codes and the centroids' (`q·c` bounded by
    /// [`scan::Bound::upper`], a little wider than the f32 dot product, at a quarter of the
    /// bytes), in no order.
    pub fn bounds_coded(&self, b: &scan::Bound) -> Vec<PartBound> {
        let c = &self.coded;
        self.bounds_from(|p| match c.codes.get(p * self.dim..(p + 1) * self.dim) {
            Some(codes) => f64::from(b.upper(codes, c.scale[p], c.rho[p])),
            None => 1.0,
        })
    }

    /// The bound of each partition from `q·c` of its centroid (an over-estimate is safe): the
    /// dot products first, then [`Parts::bound_of`]'s arithmetic over columns, branch-free, so
    /// that it vectorises (one partition at a time, its square root's latency made the bounds
    /// of 1,000 partitions cost ~20 µs a query).
    fn bounds_from(&self, dot: impl Fn(usize) -> f64) -> Vec<PartBound> {
        let n = self.len();
        let mut ct: Vec<f64> = (0..n).map(|p| (dot(p) + SLACK).clamp(-1.0, 1.0)).collect();
        let c = &self.coded;
        let (cos_r, sin_r, max_norm) = (c.cos_r.get(..n).unwrap_or(&[]), c.sin_r.get(..n).unwrap_or(&[]), self.max_norm.get(..n).unwrap_or(&[]));
        let mut b = vec![f32::INFINITY; n];
        for ((((b, &ct), &cr), &sr), &m) in b.iter_mut().zip(&ct).zip(cos_r).zip(sin_r).zip(max_norm) {
            *b = cone_bound(ct, cr, sr, m);
        }
        ct.truncate(b.len());
        b.iter().zip(&ct).enumerate().map(|(p, (&bound, &cos_theta))| PartBound { bound, part: p as u32, cos_theta }).collect()
    }

    /// The f32 bound of a partition whose bound came from [`Parts::bounds_coded`]: never
    /// above it but for rounding, usually a little below.
    pub fn refine(&self, b: &PartBound, q: &[f32]) -> PartBound {
        let p = b.part as usize;
        match self.centroids.get(p * self.dim..(p + 1) * self.dim) {
            Some(c) => self.bound_of(p, f64::from(scan::dot(q, c))),
            None => *b,
        }
    }

    fn bound_of(&self, p: usize, dot: f64) -> PartBound {
        let cos_theta = (dot + SLACK).clamp(-1.0, 1.0);
        let c = &self.coded;
        let bound = match (c.cos_r.get(p), c.sin_r.get(p), self.max_norm.get(p)) {
            (Some(&cr), Some(&sr), Some(&m)) => cone_bound(cos_theta, cr, sr, m),
            _ => f32::INFINITY,
        };
        PartBound { bound, part: p as u32, cos_theta }
    }

    /// Group the rows of `seg` (unit vectors with i8 codes) into about `count_for(len)`
    /// partitions; `None` when the segment has no rows or no codes. `threads` score rows
    /// against centroids in parallel. Deterministic for a given segment.
    pub fn build(seg: &Segment, dim: usize, threads: usize) -> Option<Parts> {
        if seg.codes.len() != seg.len() * dim {
            return None;
        }
        Self::build_from(Source::Rows(seg), dim, threads)
    }

    /// Group every patch of a patch-level segment (`per` patches a row, encoded as
    /// `codec::encode_patch_grid` writes them) into about `count_for(len × per)` partitions.
    pub fn build_patches(seg: &Segment, dim: usize, per: usize, threads: usize) -> Option<Parts> {
        if per == 0 || seg.bytes.len() != seg.len() * per * crate::store::codec::patch_stride(dim) {
            return None;
        }
        Self::build_from(Source::Patches(seg, per), dim, threads)
    }

    /// Group the rows of `seg`, held as i8 codes of any norm (no f32 rows), into about
    /// `count_for(len)` partitions, each bounded by its largest norm: the tile summaries of
    /// a patch-level segment, so a capped tile scan finds the tiles with the best mean patch
    /// without scoring every summary ([`crate::index::arena::Segment::tile_groups`]).
    pub fn build_means(seg: &Segment, dim: usize, threads: usize) -> Option<Parts> {
        if seg.codes.len() != seg.len() * dim || seg.qscale.len() != seg.len() {
            return None;
        }
        Self::build_from(Source::Means(seg), dim, threads)
    }

    fn build_from(src: Source<'_>, dim: usize, threads: usize) -> Option<Parts> {
        let n = src.len();
        if n == 0 || u32::try_from(n).is_err() {
            return None;
        }
        let (seg, per) = (src.seg(), src.per());
        let np = count_for(n).min(n);
        let threads = threads.max(1);
        // Training sample and first centroids: evenly strided items (the arena is in key
        // order, so a stride samples every region).
        let s = (np * SAMPLE_PER_PART).min(n);
        let sample: Vec<usize> = (0..s).map(|i| i * n / s).collect();
        let mut buf = Vec::with_capacity(dim);
        let mut centroids: Vec<f32> = Vec::with_capacity(np * dim);
        for j in 0..np {
            src.direction(sample[j * s / np], dim, &mut buf);
            centroids.extend_from_slice(&buf);
        }
        let mut assign = vec![(0f32, 0u32, 0f32); s];
        for _ in 0..ITERS {
            nearest(&centroids, dim, threads, &sample, src, &mut assign);
            let mut sums = vec![0f64; np * dim];
            let mut counts = vec![0usize; np];
            for (&item, &(_, a, _)) in sample.iter().zip(&assign) {
                let a = a as usize;
                counts[a] += 1;
                src.direction(item, dim, &mut buf);
                for (acc, x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(&buf) {
                    *acc += f64::from(*x);
                }
            }
            for p in (0..np).filter(|&p| counts[p] > 0) {
                // An empty partition keeps its old centroid.
                let mut c: Vec<f32> = sums[p * dim..(p + 1) * dim].iter().map(|&x| x as f32).collect();
                if scan::normalise(&mut c) {
                    centroids[p * dim..(p + 1) * dim].copy_from_slice(&c);
                }
            }
        }
        let all: Vec<usize> = (0..n).collect();
        let mut part = vec![(0f32, 0u32, 0f32); n];
        nearest(&centroids, dim, threads, &all, src, &mut part);
        let mut offsets = vec![0u32; np + 1];
        for &(_, p, _) in &part {
            offsets[p as usize + 1] += 1;
        }
        for p in 0..np {
            offsets[p + 1] += offsets[p];
        }
        let mut fill: Vec<u32> = offsets[..np].to_vec();
        let mut by_pos = vec![(0f32, 0u32); n];
        let mut max_norm = vec![0f32; np];
        for (i, &(c, p, norm)) in part.iter().enumerate() {
            let p = p as usize;
            by_pos[fill[p] as usize] = (c, i as u32);
            fill[p] += 1;
            max_norm[p] = max_norm[p].max(norm);
        }
        // Unit vectors keep 1; a decoded patch's norm is rounded up past its f32 rounding.
        for m in &mut max_norm {
            *m = if src.unit() { 1.0 } else { (*m * (1.0 + 1e-5)).max(f32::MIN_POSITIVE) };
        }
        let mut min_cos = vec![1f32; np];
        for p in 0..np {
            let part = &mut by_pos[offsets[p] as usize..offsets[p + 1] as usize];
            part.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            min_cos[p] = part.first().map_or(1.0, |x| x.0);
        }
        let rows: Vec<u32> = by_pos.iter().map(|x| x.1).collect();
        let cos_c: Vec<f32> = by_pos.iter().map(|x| x.0).collect();
        let mut codes = Vec::with_capacity(n * dim);
        let (mut qscale, mut qres) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut bbox = Vec::with_capacity(n * 4);
        for &it in &rows {
            let (c, sc, rho) = src.coded(it as usize, dim)?;
            codes.extend_from_slice(c);
            qscale.push(sc);
            qres.push(rho);
            let r = it as usize / per;
            bbox.extend_from_slice(&seg.bbox[r * 4..r * 4 + 4]);
        }
        let tile = |it: &u32| *it as usize / per;
        Some(Parts {
            coded: CodedCentroids::new(&centroids, &min_cos, dim),
            dim,
            per,
            centroids,
            min_cos,
            max_norm,
            offsets,
            qscale: Col::Owned(qscale),
            qres: Col::Owned(qres),
            keys: Col::Owned(rows.iter().map(|it| seg.keys[tile(it)]).collect()),
            time: Col::Owned(rows.iter().map(|it| seg.time[tile(it)]).collect()),
            kind: Col::Owned(rows.iter().map(|it| seg.kind[tile(it)]).collect()),
            by_key: Arc::default(),
            resid: Arc::default(),
            bbox: Col::Owned(bbox),
            codes: Col::Owned(codes),
            rows: Col::Owned(rows),
            cos_c: Col::Owned(cos_c),
        })
    }

    /// Write to `path` (via a temporary name, fsync and rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (np, n) = (self.len(), self.rows_total());
        let lay = layout(np, n, self.dim);
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(MAGIC);
        for (i, v) in [VERSION, self.dim as u32, np as u32, n as u32, self.per as u32].into_iter().enumerate() {
            head[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let cols: [&[u8]; 13] = [
            bytemuck::cast_slice(&self.centroids),
            bytemuck::cast_slice(&self.min_cos),
            bytemuck::cast_slice(&self.max_norm),
            bytemuck::cast_slice(&self.offsets),
            bytemuck::cast_slice(&self.rows),
            bytemuck::cast_slice(&self.cos_c),
            bytemuck::cast_slice(&self.codes),
            bytemuck::cast_slice(&self.qscale),
            bytemuck::cast_slice(&self.qres),
            bytemuck::cast_slice(&self.keys),
            bytemuck::cast_slice(&self.time),
            bytemuck::cast_slice(&self.bbox),
            &self.kind,
        ];
        let secs: Vec<(usize, &[u8])> = lay.iter().map(|r| r.start).zip(cols).collect();
        write_sections(path, &head, &secs)
    }

    /// Map a partitions file written for `base` (its row count, dimension `dim`, `per` items
    /// a row). The small sections are checked (offsets in order, every item exactly once);
    /// the copied columns are mapped. The flag says the file is of an older version, upgraded
    /// in memory.
    pub fn load(path: &Path, dim: usize, base: &Segment, per: usize) -> Result<(Parts, bool)> {
        let rows = base.len() * per;
        let corrupt = |detail: &str| Error::Corrupt { path: path.into(), detail: detail.into() };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: partitions files are written once under a temporary name and renamed into
        // place; graftdb never modifies one after that, so the mapping is stable.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
        let head = map.get(..HEADER).ok_or_else(|| corrupt("shorter than its header"))?;
        if &head[..8] != MAGIC {
            return Err(corrupt("not a partitions file"));
        }
        let word = |i: usize| u32::from_le_bytes([head[8 + 4 * i], head[9 + 4 * i], head[10 + 4 * i], head[11 + 4 * i]]) as usize;
        let (version, d, np, n) = (word(0), word(1), word(2), word(3));
        if !(1..=VERSION as usize).contains(&version) {
            return Err(corrupt(&format!("partitions version {version} (this graftdb reads {VERSION})")));
        }
        let file_per = if version >= 3 { word(4) } else { 1 };
        if d != dim || n != rows || file_per != per || np == 0 || np > n {
            return Err(corrupt("partitions were built for another segment"));
        }
        let lay = if version >= 3 { layout(np, n, dim) } else { layout_v2(np, n, dim) };
        if map.len() != lay[12].end {
            return Err(corrupt("partitions file has the wrong length"));
        }
        let [c, mc, mn, o, r, cc, cd, qs, l1, k, t, b, kd] = lay;
        let max_norm = if version >= 3 { Col::<f32>::mapped(&map, mn, path)?.to_vec() } else { vec![1.0; np] };
        let centroids = Col::<f32>::mapped(&map, c, path)?.to_vec();
        let min_cos = Col::<f32>::mapped(&map, mc, path)?.to_vec();
        let offsets = Col::<u32>::mapped(&map, o, path)?.to_vec();
        let prows = Col::<u32>::mapped(&map, r, path)?;
        if offsets.first() != Some(&0) || offsets.last().map(|&x| x as usize) != Some(n) || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(corrupt("partition offsets are out of order"));
        }
        let mut seen = vec![false; n];
        for &r in prows.iter() {
            match seen.get_mut(r as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(corrupt("a row is missing from the partitions or listed twice")),
            }
        }
        if centroids.iter().chain(&min_cos).chain(&max_norm).any(|x| !x.is_finite()) || max_norm.iter().any(|&x| x <= 0.0) {
            return Err(corrupt("partitions hold a non-finite number"));
        }
        let old = version < VERSION as usize;
        let qres = if version < 2 {
            // Version 1 held ‖x̂‖₁ here: take the snapshot's residual norms instead.
            Col::Owned(prows.iter().map(|&r| base.qres.get(r as usize).copied().unwrap_or(f32::INFINITY)).collect())
        } else {
            Col::mapped(&map, l1, path)?
        };
        let parts = Parts {
            coded: CodedCentroids::new(&centroids, &min_cos, dim),
            dim,
            per,
            centroids,
            min_cos,
            max_norm,
            offsets,
            qres,
            rows: prows,
            cos_c: Col::mapped(&map, cc, path)?,
            codes: Col::mapped(&map, cd, path)?,
            qscale: Col::mapped(&map, qs, path)?,
            keys: Col::mapped(&map, k, path)?,
            time: Col::mapped(&map, t, path)?,
            bbox: Col::mapped(&map, b, path)?,
            kind: Col::mapped(&map, kd, path)?,
            by_key: Arc::default(),
            resid: Arc::default(),
        };
        Ok((parts, old))
    }
}

/// For each listed item, `(x·c, partition, ‖x‖)` of the centroid with the largest dot
/// product with its direction, in parallel.
fn nearest(centroids: &[f32], dim: usize, threads: usize, items: &[usize], src: Source<'_>, out: &mut [(f32, u32, f32)]) {
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (is, os) in items.chunks(chunk).zip(out.chunks_mut(chunk)) {
            s.spawn(move || {
                let mut v = Vec::with_capacity(dim);
                for (&it, o) in is.iter().zip(os.iter_mut()) {
                    let norm = src.direction(it, dim, &mut v);
                    let mut best = (f32::NEG_INFINITY, 0u32, norm);
                    for (p, c) in centroids.chunks_exact(dim).enumerate() {
                        let d = scan::dot(&v, c);
                        if d > best.0 {
                            best = (d, p as u32, norm);
                        }
                    }
                    *o = best;
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::arena::{RowMeta, SegmentBuilder};
    use rand::{Rng, SeedableRng};

    fn segment(n: usize, dim: usize, seed: u64) -> Segment {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..8).map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let mut b = SegmentBuilder::new(dim, n, false);
        for i in 0..n {
            let c = &centres[i % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.3..0.3)).collect();
            scan::normalise(&mut v);
            let x = i as f64 * 0.01;
            b.push(i as u64, RowMeta { kind: Kind::Photo, time: Some(i as i64), bbox: [x, x, x, x] }, &v, &[]);
        }
        b.finish_sorted()
    }

    fn members(parts: &Parts, p: usize) -> Vec<u32> {
        parts.positions(p).filter_map(|j| parts.row(j)).collect()
    }

    #[test]
    fn keyed_in_finds_exactly_the_positions_in_a_key_range() {
        let (n, dim) = (3000, 16);
        let seg = segment(n, dim, 9);
        let parts = Parts::build(&seg, dim, 2).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let mut got = Vec::new();
        for _ in 0..200 {
            let p = rng.random_range(0..parts.len());
            let all = parts.positions(p);
            // A prefix of the partition, as the angle cut leaves, and a key range that may
            // start or end on a stored key or hold none.
            let range = all.start..rng.random_range(all.start..=all.end);
            let key_at = |j: usize| parts.key(j).unwrap();
            let (a, b) = match rng.random_range(0..3) {
                // Both ends on keys of this partition (the boundary cases)…
                0 => (key_at(rng.random_range(all.clone())), key_at(rng.random_range(all.clone()))),
                // …one end just beside one…
                1 => (key_at(rng.random_range(all.clone())) + 1, rng.random_range(0..n as u64 + 5)),
                // …or anywhere.
                _ => (rng.random_range(0..n as u64 + 5), rng.random_range(0..n as u64 + 5)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            got.clear();
            parts.keyed_in(p, &range, lo, hi, &mut got);
            got.sort_unstable();
            let want: Vec<(usize, u64)> = range.clone().filter_map(|j| parts.key(j).filter(|k| (lo..=hi).contains(k)).map(|k| (j, k))).collect();
            assert_eq!(got, want, "partition {p}, positions {range:?}, keys {lo}..={hi}");
        }
    }

    #[test]
    fn bound_holds_for_every_member_and_rows_are_a_permutation() {
        let (n, dim) = (3000, 24);
        let seg = segment(n, dim, 3);
        let parts = Parts::build(&seg, dim, 2).unwrap();
        assert_eq!(parts.len(), count_for(n));
        let mut all: Vec<u32> = (0..parts.len()).flat_map(|p| members(&parts, p)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..n as u32).collect::<Vec<_>>());
        // The copied columns agree with the segment at every position.
        for j in 0..n {
            let r = parts.row(j).unwrap() as usize;
            assert_eq!(parts.key(j), seg.keys.get(r).copied());
            assert_eq!(parts.coded(j), seg.coded(r));
            assert_eq!(parts.metas().get(j), seg.meta(r));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (mut pruned, mut cut) = (0, 0);
        for _ in 0..50 {
            let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            scan::normalise(&mut q);
            let bounds = parts.bounds(&q);
            assert!(bounds.windows(2).all(|w| w[0].bound >= w[1].bound), "bounds are sorted best first");
            let t: f32 = rng.random_range(0.3..0.95);
            for pb in &bounds {
                let keep = parts.reaching(pb, t);
                for j in parts.positions(pb.part as usize) {
                    let r = parts.row(j).unwrap();
                    let s = scan::dot(&q, seg.vector(r as usize));
                    assert!(s <= pb.bound, "row {r} scores {s} above its partition's bound {}", pb.bound);
                    assert!(keep.contains(&j) || s < t, "row {r} scores {s} ≥ {t} but was cut");
                }
                pruned += usize::from(pb.bound < 0.9);
                cut += parts.positions(pb.part as usize).len() - keep.len();
            }
        }
        // Clustered data: some bounds must be below 0.9, or the bound is useless.
        assert!(pruned > 0, "no partition bound was ever below 0.9");
        assert!(cut > 0, "the per-row angle never cut a row");
    }

    #[test]
    fn save_and_load_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(500, 16, 5);
        let parts = Parts::build(&seg, 16, 1).unwrap();
        let p = dir.path().join("x.parts");
        parts.save(&p).unwrap();
        let (back, old) = Parts::load(&p, 16, &seg, 1).unwrap();
        assert!(!old);
        assert_eq!(back.len(), parts.len());
        for q in 0..parts.len() {
            assert_eq!(members(&back, q), members(&parts, q));
        }
        for j in 0..500 {
            assert_eq!(back.coded(j), parts.coded(j));
            assert_eq!(back.key(j), parts.key(j));
            assert_eq!(back.metas().get(j), parts.metas().get(j));
        }
        let q: Vec<f32> = seg.vector(7).to_vec();
        assert_eq!(back.bounds(&q), parts.bounds(&q));
        drop(back);
        assert!(Parts::load(&p, 16, &segment(501, 16, 5), 1).is_err(), "other row count");
        assert!(Parts::load(&p, 8, &seg, 1).is_err(), "other dimension");
        let good = std::fs::read(&p).unwrap();
        // A version 1 file (‖x̂‖₁ in the residual column) is read with the snapshot's
        // residual norms, and says so.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        // Rewrite it in the version 2 layout (no norms), ‖x̂‖₁ where ρ is.
        let (new, old2) = (layout(parts.len(), 500, 16), layout_v2(parts.len(), 500, 16));
        let mut v2 = vec![0u8; old2[12].end];
        v2[..HEADER].copy_from_slice(&b[..HEADER]);
        for (a, o) in new.iter().zip(&old2) {
            v2[o.clone()].copy_from_slice(&b[a.start..a.start + o.len()]);
        }
        let mut b = v2;
        b[old2[8].clone()].fill(0x7f);
        std::fs::write(&p, &b).unwrap();
        let (v1, old) = Parts::load(&p, 16, &seg, 1).unwrap();
        assert!(old);
        for j in 0..500 {
            assert_eq!(v1.coded(j), parts.coded(j), "position {j}");
        }
        drop(v1);
        b[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(Parts::load(&p, 16, &seg, 1).is_err(), "a newer version");
        // Version 2 (no `per`, no norms) is read as one item a row with norms 1.
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let (v2, old) = Parts::load(&p, 16, &seg, 1).unwrap();
        assert!(old);
        assert_eq!(v2.bounds(&q), parts.bounds(&q));
        drop(v2);
        let mut b = good.clone();
        b.truncate(b.len() - 4);
        std::fs::write(&p, &b).unwrap();
        assert!(Parts::load(&p, 16, &seg, 1).is_err(), "truncated");
        // Two positions naming row 0.
        let rows_sec = layout(parts.len(), 500, 16)[4].clone();
        let mut b = good.clone();
        b[rows_sec.start..rows_sec.start + 8].copy_from_slice(&[0u8; 8]);
        std::fs::write(&p, &b).unwrap();
        assert!(Parts::load(&p, 16, &seg, 1).is_err(), "duplicate row");
    }

    /// A patch-level segment: `per` patches a row around one of 8 centres, i8-encoded.
    fn patch_segment(n: usize, per: usize, dim: usize, seed: u64) -> Segment {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..8).map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let mut b = SegmentBuilder::new(per * crate::store::codec::patch_stride(dim), n, true);
        for i in 0..n {
            let c = &centres[i % centres.len()];
            let mut grid = Vec::with_capacity(per * dim);
            for _ in 0..per {
                let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.3..0.3)).collect();
                scan::normalise(&mut v);
                grid.extend(v);
            }
            let x = i as f64 * 0.01;
            b.push(i as u64, RowMeta { kind: Kind::Tile, time: Some(i as i64), bbox: [x, x, x + 0.01, x + 0.01] }, &[], &crate::store::codec::encode_patch_grid(&grid, dim));
        }
        b.finish_sorted()
    }

    /// Partitions over patches of many small content clusters prune on their own patches;
    /// over few large clusters, or patches spread evenly on the sphere, they do not.
    #[test]
    fn self_check_keeps_partitions_only_where_they_prune() {
        let (n, per, dim) = (600, 9, 24);
        let grids = |centres: usize, noise: f32, seed: u64| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let cs: Vec<Vec<f32>> = (0..centres).map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
            let mut b = SegmentBuilder::new(per * crate::store::codec::patch_stride(dim), n, true);
            for i in 0..n {
                let grid: Vec<f32> = (0..per).flat_map(|_| {
                    let c = &cs[rng.random_range(0..centres)];
                    let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-noise..noise)).collect();
                    scan::normalise(&mut v);
                    v
                }).collect();
                let x = i as f64 * 0.01;
                b.push(i as u64, RowMeta { kind: Kind::Tile, time: None, bbox: [x, x, x + 0.01, x + 0.01] }, &[], &crate::store::codec::encode_patch_grid(&grid, dim));
            }
            Parts::build_patches(&b.finish_sorted(), dim, per, 2).unwrap()
        };
        let many = grids(60, 0.1, 4);
        let few = grids(6, 0.1, 5);
        let spread = grids(1, 10.0, 6);
        let v = |p: &Parts| p.own_item_visits().unwrap();
        eprintln!("visits: 60 clusters {:.3}, 6 clusters {:.3}, spread {:.3}", v(&many), v(&few), v(&spread));
        assert!(many.prune_their_own_items(), "60 clusters: {}", v(&many));
        assert!(!few.prune_their_own_items(), "6 clusters: {}", v(&few));
        assert!(!spread.prune_their_own_items(), "spread: {}", v(&spread));
    }

    #[test]
    fn patch_bounds_hold_for_every_decoded_patch_and_round_trip() {
        let (n, per, dim) = (60, 9, 24);
        let seg = patch_segment(n, per, dim, 4);
        let parts = Parts::build_patches(&seg, dim, per, 2).unwrap();
        assert_eq!(parts.per(), per);
        assert_eq!(parts.rows_total(), n * per);
        let mut all: Vec<u32> = (0..parts.len()).flat_map(|p| members(&parts, p)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..(n * per) as u32).collect::<Vec<_>>());
        for j in 0..n * per {
            let it = parts.row(j).unwrap() as usize;
            let (codes, scale) = seg.patch_coded(it / per, it % per, dim).unwrap();
            assert_eq!(parts.coded(j), Some((codes, scale, 0.0)));
            assert_eq!(parts.key(j), seg.keys.get(it / per).copied());
            assert_eq!(parts.metas().get(j), seg.meta(it / per));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut cut = 0;
        for _ in 0..50 {
            let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            scan::normalise(&mut q);
            let t: f32 = rng.random_range(0.3..0.95);
            for pb in &parts.bounds(&q) {
                let keep = parts.reaching(pb, t);
                for j in parts.positions(pb.part as usize) {
                    let it = parts.row(j).unwrap() as usize;
                    // The score the patch scan ranks by: the decoded codes.
                    let s = crate::store::codec::patch_dot(seg.grid(it / per), dim, it % per, &q).unwrap();
                    assert!(s <= pb.bound, "patch {it} scores {s} above its partition's bound {}", pb.bound);
                    assert!(keep.contains(&j) || s < t, "patch {it} scores {s} ≥ {t} but was cut");
                }
                cut += parts.positions(pb.part as usize).len() - keep.len();
            }
        }
        assert!(cut > 0, "the per-patch angle never cut a patch");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.parts");
        parts.save(&p).unwrap();
        let (back, old) = Parts::load(&p, dim, &seg, per).unwrap();
        assert!(!old);
        let q: Vec<f32> = crate::store::codec::patch_decode(seg.grid(3), dim, 2).unwrap();
        assert_eq!(back.bounds(&q), parts.bounds(&q));
        for j in 0..n * per {
            assert_eq!(back.coded(j), parts.coded(j));
        }
        drop(back);
        assert!(Parts::load(&p, dim, &seg, 1).is_err(), "built for patches, loaded as rows");
    }
}
