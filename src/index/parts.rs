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
//! Partitions are derived state, built at checkpoint beside the graph and saved as
//! `space-N-SEQ.parts` (format in `schema/storage.md`).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::index::arena::{sections, write_sections, Col, MetaView, Segment, HEADER};
use crate::index::scan;
use crate::{Error, Result};

/// Magic bytes at the start of a partitions file.
const MAGIC: &[u8; 8] = b"GDBPART1";
/// Version of the partitions file layout. 2: the per-position column after the code scale
/// holds the residual norm `ρ` (version 1 held ‖x̂‖₁; such a file is read with that column
/// copied from the snapshot, and rewritten at the next checkpoint).
pub const VERSION: u32 = 2;

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
    /// `parts × dim` unit centroids.
    centroids: Vec<f32>,
    /// Per partition: the least cosine between a member and the centroid.
    min_cos: Vec<f32>,
    /// `parts + 1` offsets into the positions.
    offsets: Vec<u32>,
    /// Segment row of each position (within a partition, widest angle to the centroid first).
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
}

/// How many partitions for `n` rows: about √n, so a query scores as many centroids as a
/// partition has rows.
pub fn count_for(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).clamp(1, 4096)
}

/// Byte ranges of the sections after the header.
fn layout(np: usize, n: usize, dim: usize) -> [Range<usize>; 12] {
    // centroids, min_cos, offsets, then per position: row, cos_c, codes, scale, ρ, key,
    // time, bbox, kind.
    sections([np * dim * 4, np * 4, (np + 1) * 4, n * 4, n * 4, n * dim, n * 4, n * 4, n * 8, n * 8, n * 32, n])
}

/// One partition's bound for a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartBound {
    /// No member scores above this.
    pub bound: f32,
    /// The partition.
    pub part: u32,
    /// The query's angle to the centroid (radians), made small by the slack.
    pub theta: f64,
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
    /// Rows covered (the base segment's length).
    pub fn rows_total(&self) -> usize {
        self.rows.len()
    }
    /// The positions of partition `p`.
    pub fn positions(&self, p: usize) -> Range<usize> {
        match (self.offsets.get(p), self.offsets.get(p + 1)) {
            (Some(&a), Some(&b)) => a as usize..b as usize,
            _ => 0..0,
        }
    }
    /// The segment row at a position.
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

    /// Ask the CPU to start loading the i8 codes at a position (a hint; no effect elsewhere).
    #[inline]
    pub fn prefetch_codes(&self, j: usize) {
        if let Some(c) = self.codes.get(j * self.dim..(j + 1) * self.dim) {
            crate::index::scan::prefetch(c);
        }
    }

    /// The positions of a partition that can still score `t` or more: rows are stored widest
    /// angle first and `q·x ≤ cos(max(0, θ − ∠(x, c)))`, so the rows whose angle is below
    /// `θ − acos(t)` are a suffix that cannot reach `t`. `t = −∞` keeps them all.
    pub fn reaching(&self, b: &PartBound, t: f32) -> Range<usize> {
        let all = self.positions(b.part as usize);
        let tt = f64::from(t) - SLACK;
        if tt > 1.0 {
            return all.start..all.start;
        }
        if !(tt > -1.0) {
            return all;
        }
        let min_angle = b.theta - tt.acos();
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

    /// An upper bound of `q·x` for every member `x` of each partition, best first, for a unit
    /// query `q`.
    pub fn bounds(&self, q: &[f32]) -> Vec<PartBound> {
        let mut out: Vec<PartBound> = (0..self.len())
            .map(|p| {
                let c = &self.centroids[p * self.dim..(p + 1) * self.dim];
                let qc = f64::from(scan::dot(q, c));
                // Widen both angles' errors the safe way: a smaller angle to the centroid,
                // a wider cone.
                let theta = (qc + SLACK).clamp(-1.0, 1.0).acos();
                let r = (f64::from(self.min_cos[p]) - SLACK).clamp(-1.0, 1.0).acos();
                let b = (theta - r).max(0.0).cos() + SLACK;
                PartBound { bound: b as f32, part: p as u32, theta }
            })
            .collect();
        out.sort_unstable_by(|a, b| b.bound.total_cmp(&a.bound));
        out
    }

    /// Group the rows of `seg` (unit vectors with i8 codes) into about `count_for(len)`
    /// partitions; `None` when the segment has no rows or no codes. `threads` score rows
    /// against centroids in parallel. Deterministic for a given segment.
    pub fn build(seg: &Segment, dim: usize, threads: usize) -> Option<Parts> {
        let n = seg.len();
        if n == 0 || seg.codes.len() != n * dim || u32::try_from(n).is_err() {
            return None;
        }
        let np = count_for(n).min(n);
        let threads = threads.max(1);
        // Training sample and first centroids: evenly strided rows (the arena is in key
        // order, so a stride samples every region).
        let s = (np * SAMPLE_PER_PART).min(n);
        let sample: Vec<usize> = (0..s).map(|i| i * n / s).collect();
        let mut centroids: Vec<f32> = Vec::with_capacity(np * dim);
        for j in 0..np {
            centroids.extend_from_slice(seg.vector(sample[j * s / np]));
        }
        let mut assign = vec![(0f32, 0u32); s];
        for _ in 0..ITERS {
            nearest(&centroids, dim, threads, &sample, seg, &mut assign);
            let mut sums = vec![0f64; np * dim];
            let mut counts = vec![0usize; np];
            for (&row, &(_, a)) in sample.iter().zip(&assign) {
                let a = a as usize;
                counts[a] += 1;
                for (acc, x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(seg.vector(row)) {
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
        let mut part = vec![(0f32, 0u32); n];
        nearest(&centroids, dim, threads, &all, seg, &mut part);
        let mut offsets = vec![0u32; np + 1];
        for &(_, p) in &part {
            offsets[p as usize + 1] += 1;
        }
        for p in 0..np {
            offsets[p + 1] += offsets[p];
        }
        let mut fill: Vec<u32> = offsets[..np].to_vec();
        let mut by_pos = vec![(0f32, 0u32); n];
        for (i, &(c, p)) in part.iter().enumerate() {
            let p = p as usize;
            by_pos[fill[p] as usize] = (c, i as u32);
            fill[p] += 1;
        }
        let mut min_cos = vec![1f32; np];
        for p in 0..np {
            let part = &mut by_pos[offsets[p] as usize..offsets[p + 1] as usize];
            part.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            min_cos[p] = part.first().map_or(1.0, |x| x.0);
        }
        let rows: Vec<u32> = by_pos.iter().map(|x| x.1).collect();
        let cos_c: Vec<f32> = by_pos.iter().map(|x| x.0).collect();
        let gather = |col: &[f32]| -> Vec<f32> { rows.iter().map(|&r| col[r as usize]).collect() };
        let mut codes = Vec::with_capacity(n * dim);
        let mut bbox = Vec::with_capacity(n * 4);
        for &r in &rows {
            let r = r as usize;
            codes.extend_from_slice(&seg.codes[r * dim..(r + 1) * dim]);
            bbox.extend_from_slice(&seg.bbox[r * 4..r * 4 + 4]);
        }
        Some(Parts {
            dim,
            centroids,
            min_cos,
            offsets,
            qscale: Col::Owned(gather(&seg.qscale)),
            qres: Col::Owned(gather(&seg.qres)),
            keys: Col::Owned(rows.iter().map(|&r| seg.keys[r as usize]).collect()),
            time: Col::Owned(rows.iter().map(|&r| seg.time[r as usize]).collect()),
            kind: Col::Owned(rows.iter().map(|&r| seg.kind[r as usize]).collect()),
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
        for (i, v) in [VERSION, self.dim as u32, np as u32, n as u32].into_iter().enumerate() {
            head[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let cols: [&[u8]; 12] = [
            bytemuck::cast_slice(&self.centroids),
            bytemuck::cast_slice(&self.min_cos),
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

    /// Map a partitions file written for `base` (its row count, dimension `dim`). The small
    /// sections are checked (offsets in order, every row exactly once); the copied columns
    /// are mapped. The flag says the file is of an older version, upgraded in memory.
    pub fn load(path: &Path, dim: usize, base: &Segment) -> Result<(Parts, bool)> {
        let rows = base.len();
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
        if d != dim || n != rows || np == 0 || np > n {
            return Err(corrupt("partitions were built for another segment"));
        }
        let lay = layout(np, n, dim);
        if map.len() != lay[11].end {
            return Err(corrupt("partitions file has the wrong length"));
        }
        let [c, mc, o, r, cc, cd, qs, l1, k, t, b, kd] = lay;
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
        if centroids.iter().chain(&min_cos).any(|x| !x.is_finite()) {
            return Err(corrupt("partitions hold a non-finite number"));
        }
        let old = version < VERSION as usize;
        let qres = if old {
            // Version 1 held ‖x̂‖₁ here: take the snapshot's residual norms instead.
            Col::Owned(prows.iter().map(|&r| base.qres.get(r as usize).copied().unwrap_or(f32::INFINITY)).collect())
        } else {
            Col::mapped(&map, l1, path)?
        };
        let parts = Parts {
            dim,
            centroids,
            min_cos,
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
        };
        Ok((parts, old))
    }
}

/// For each listed row, `(x·c, partition)` of the centroid with the largest dot product, in
/// parallel.
fn nearest(centroids: &[f32], dim: usize, threads: usize, rows: &[usize], seg: &Segment, out: &mut [(f32, u32)]) {
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (rs, os) in rows.chunks(chunk).zip(out.chunks_mut(chunk)) {
            s.spawn(move || {
                for (&r, o) in rs.iter().zip(os.iter_mut()) {
                    let v = seg.vector(r);
                    let mut best = (f32::NEG_INFINITY, 0u32);
                    for (p, c) in centroids.chunks_exact(dim).enumerate() {
                        let d = scan::dot(v, c);
                        if d > best.0 {
                            best = (d, p as u32);
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
    use crate::Kind;
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
        let (back, old) = Parts::load(&p, 16, &seg).unwrap();
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
        assert!(Parts::load(&p, 16, &segment(501, 16, 5)).is_err(), "other row count");
        assert!(Parts::load(&p, 8, &seg).is_err(), "other dimension");
        let good = std::fs::read(&p).unwrap();
        // A version 1 file (‖x̂‖₁ in the residual column) is read with the snapshot's
        // residual norms, and says so.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[layout(parts.len(), 500, 16)[7].clone()].fill(0x7f);
        std::fs::write(&p, &b).unwrap();
        let (v1, old) = Parts::load(&p, 16, &seg).unwrap();
        assert!(old);
        for j in 0..500 {
            assert_eq!(v1.coded(j), parts.coded(j), "position {j}");
        }
        drop(v1);
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(Parts::load(&p, 16, &seg).is_err(), "a newer version");
        let mut b = good.clone();
        b.truncate(b.len() - 4);
        std::fs::write(&p, &b).unwrap();
        assert!(Parts::load(&p, 16, &seg).is_err(), "truncated");
        // Two positions naming row 0.
        let [.., rows_sec, _, _, _, _, _, _, _, _] = layout(parts.len(), 500, 16);
        let mut b = good.clone();
        b[rows_sec.start..rows_sec.start + 8].copy_from_slice(&[0u8; 8]);
        std::fs::write(&p, &b).unwrap();
        assert!(Parts::load(&p, 16, &seg).is_err(), "duplicate row");
    }
}
