//! The vector arena of a space: every vector of the space with the few record fields the
//! planner filters on (key, bbox, time, kind), as columns sorted by record key.
//!
//! Because record keys start with the geohash of the record's position, a geohash range of
//! keys is a contiguous range of rows: counting the candidates of a region is a binary
//! search, and scanning them reads memory front to back.
//!
//! Image-level rows also carry i8 codes with a per-row scale and residual norm (see
//! [`crate::index::scan`]), a quarter of the f32 bytes, so an exact scan reads f32 only for
//! rows whose bounded i8 score can still make the top k.
//!
//! An arena is a [`Segment`] (mapped from a snapshot file, or built in memory) plus a small
//! in-memory delta of rows committed since; both are sorted by key.

use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::{Error, Kind, Result};

/// A column: an owned vector or a window of a mapped snapshot file.
pub enum Col<T: bytemuck::Pod> {
    /// Held in memory.
    Owned(Vec<T>),
    /// A byte range of a mapped file, checked for alignment and length when mapped.
    Mapped(Arc<Mmap>, Range<usize>),
}

impl<T: bytemuck::Pod> Deref for Col<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Col::Owned(v) => v,
            // Alignment and length were checked by `Col::mapped`, so this cast cannot fail;
            // an empty slice is returned if it ever did.
            Col::Mapped(m, r) => m.get(r.clone()).and_then(|b| bytemuck::try_cast_slice(b).ok()).unwrap_or(&[]),
        }
    }
}

impl<T: bytemuck::Pod> Col<T> {
    /// The mapped file this column is a window of, if any.
    pub(crate) fn map(&self) -> Option<&Arc<Mmap>> {
        match self {
            Col::Owned(_) => None,
            Col::Mapped(m, _) => Some(m),
        }
    }

    pub(crate) fn mapped(m: &Arc<Mmap>, r: Range<usize>, path: &Path) -> Result<Self> {
        if r.is_empty() {
            return Ok(Col::Owned(Vec::new()));
        }
        let bytes = m.get(r.clone()).ok_or_else(|| Error::Corrupt { path: path.into(), detail: "snapshot is truncated".into() })?;
        bytemuck::try_cast_slice::<u8, T>(bytes)
            .map_err(|e| Error::Corrupt { path: path.into(), detail: format!("misaligned column: {e}") })?;
        Ok(Col::Mapped(m.clone(), r))
    }
}

/// Fault the pages of `maps` into this process's page tables in a background thread
/// (`MADV_POPULATE_READ`, Linux 5.14+), so that queries on a freshly opened database do not
/// take a page fault for every 4 KB they touch first. Pages not yet in the page cache are
/// read from disk. Elsewhere, or where the kernel refuses, nothing happens and pages fault
/// on first touch as before. The thread holds the maps until it is done.
pub(crate) fn prefault(maps: Vec<Arc<Mmap>>) {
    #[cfg(target_os = "linux")]
    if !maps.is_empty() {
        let _ = std::thread::Builder::new().name("graftdb-prefault".into()).spawn(move || {
            for m in maps {
                let _ = m.advise(memmap2::Advice::PopulateRead);
            }
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = maps;
}

/// What a row stores besides its vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowMeta {
    /// Record kind.
    pub kind: Kind,
    /// Time, microseconds since the epoch.
    pub time: Option<i64>,
    /// `[w, s, e, n]`; a point for photos.
    pub bbox: [f64; 4],
}

/// The filter-field columns of a segment as plain slices ([`Segment::metas`]).
#[derive(Clone, Copy)]
pub struct MetaView<'a> {
    time: &'a [i64],
    bbox: &'a [f64],
    kind: &'a [u8],
}

impl<'a> MetaView<'a> {
    /// A view of filter-field columns laid out as a segment's (`bbox` four per row).
    pub(crate) fn new(time: &'a [i64], bbox: &'a [f64], kind: &'a [u8]) -> Self {
        MetaView { time, bbox, kind }
    }

    /// Ask the CPU to start loading row `i`'s filter fields (a hint).
    #[inline]
    pub fn prefetch(&self, i: usize) {
        if let (Some(t), Some(b), Some(k)) = (self.time.get(i..i + 1), self.bbox.get(i * 4..i * 4 + 4), self.kind.get(i..i + 1)) {
            crate::index::scan::prefetch(t);
            crate::index::scan::prefetch(&b[..1]);
            crate::index::scan::prefetch(k);
        }
    }

    /// Ask the CPU to start loading the filter fields of rows `r` (a hint).
    pub fn prefetch_rows(&self, r: Range<usize>) {
        crate::index::scan::prefetch(self.time.get(r.clone()).unwrap_or(&[]));
        crate::index::scan::prefetch(self.bbox.get(r.start * 4..r.end * 4).unwrap_or(&[]));
        crate::index::scan::prefetch(self.kind.get(r).unwrap_or(&[]));
    }

    /// The filter fields of row `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<RowMeta> {
        let t = *self.time.get(i)?;
        let b = self.bbox.get(i * 4..i * 4 + 4)?;
        Some(RowMeta { kind: Kind::from_u8(*self.kind.get(i)?)?, time: (t != NO_TIME).then_some(t), bbox: [b[0], b[1], b[2], b[3]] })
    }
}

/// Time column value meaning "no time".
pub const NO_TIME: i64 = i64::MIN;

/// Id column value meaning "read the record" (a tile, a string id, or a photo whose time is
/// [`NO_TIME`] itself).
pub const NO_ID: i64 = i64::MIN;

/// Sorted rows of one space.
pub struct Segment {
    /// Record keys, ascending.
    pub keys: Col<u64>,
    /// Times (`NO_TIME` when absent).
    pub time: Col<i64>,
    /// Four f64 per row: w, s, e, n.
    pub bbox: Col<f64>,
    /// Kind byte per row.
    pub kind: Col<u8>,
    /// Image-level spaces: `dim` f32 per row.
    pub f32s: Col<f32>,
    /// Patch-level spaces: encoded i8 grids, `row_bytes` per row.
    pub bytes: Col<u8>,
    /// Image-level spaces: `dim` i8 codes per row (value ≈ code × `qscale`).
    pub codes: Col<i8>,
    /// Image-level spaces: the code scale of each row.
    pub qscale: Col<f32>,
    /// Image-level spaces: `ρ ≥ ‖x − x̂‖₂` of each row, the rounding residual's norm (for the
    /// error bound).
    pub qres: Col<f32>,
    /// The two-bit sketches ([`crate::index::sketch`]) of every patch (patch-level spaces:
    /// with the tile's summary) or of every row's codes (image-level `cos`/`ip` spaces), the
    /// same number of bytes per row; empty where not built (the delta, an older snapshot).
    pub sketch: Col<u8>,
    /// Image-level spaces: each row's record id where the record is a photo with an integer
    /// id ([`NO_ID`] otherwise: a tile, a string id), so a query's hits are answered from the
    /// columns without reading their records; empty where not filled (the delta, an older
    /// snapshot), where hits read their records.
    pub ids: Col<i64>,
    /// Payload elements per row (`dim` for f32, grid bytes for patches).
    pub stride: usize,
    /// Every [`FENCE`]-th key, and every `FENCE`-th of those, built on first use by
    /// [`Segment::rows_in`] (never stored).
    pub(crate) fences: std::sync::OnceLock<Fences>,
    /// Patch-level segments: every tile's summary (the end of its sketch row) side by side,
    /// and the summaries grouped by content, made on first use by [`Segment::summary`] or in
    /// the background ([`Segment::summaries_in_background`]); never stored.
    pub(crate) summaries: Arc<std::sync::OnceLock<Summaries>>,
    /// Patch-level segments: four-bit copies of every patch's codes
    /// ([`crate::index::nibble`]), made by [`Segment::nibbles`] or in the background; never
    /// stored.
    pub(crate) nibbles: Arc<BuiltOnce<crate::index::nibble::Nibbles>>,
}

/// The tile summaries of a patch-level segment side by side ([`Segment::summary`]).
#[derive(Default)]
pub(crate) struct Summaries {
    /// Every tile's summary, `sketch::summary_bytes(dim)` each.
    all: Vec<u8>,
    /// The summaries' mean patches in cone partitions ([`Parts::build_means`]), where the
    /// segment has at least [`GROUPS_MIN_TILES`] tiles.
    groups: Option<crate::index::parts::Parts>,
}

/// A copy derived from a segment or partitions and held in memory (the four-bit patch codes,
/// the residual codes of the partitions), made once: in the query that first asks for it
/// (`get_or_make`) or on a background thread started by the one caller that `claim`s it.
/// `None` inside where the copy cannot be made (a dimension its layout does not hold).
pub(crate) struct BuiltOnce<T> {
    cell: std::sync::OnceLock<Option<T>>,
    started: std::sync::atomic::AtomicBool,
}

impl<T> Default for BuiltOnce<T> {
    fn default() -> Self {
        BuiltOnce { cell: std::sync::OnceLock::new(), started: std::sync::atomic::AtomicBool::new(false) }
    }
}

impl<T> BuiltOnce<T> {
    /// The copy, once made (`Some(None)` where it cannot be).
    pub(crate) fn get(&self) -> Option<Option<&T>> {
        self.cell.get().map(Option::as_ref)
    }
    /// True for the one caller that should start making it on a background thread: it is
    /// neither made nor started.
    pub(crate) fn claim(&self) -> bool {
        self.cell.get().is_none() && !self.started.swap(true, std::sync::atomic::Ordering::AcqRel)
    }
    /// Hold what a background thread made.
    pub(crate) fn set(&self, v: Option<T>) {
        let _ = self.cell.set(v);
    }
    /// The copy, made here if it is not yet.
    pub(crate) fn get_or_make(&self, make: impl FnOnce() -> Option<T>) -> Option<&T> {
        self.cell.get_or_init(make).as_ref()
    }
}

/// Up to this many items (patches, or partitioned rows; tens of ms of work) a [`BuiltOnce`]
/// copy is made in the query that asks for it; above it a mapped segment's or partitions'
/// copy is made on a background thread and the queries before it finishes read the i8 codes
/// (a one-shot CLI query must not wait ~1.6 s for the four-bit codes of 1.96M patches, or
/// ~1.4 s for the residual codes of 1M rows).
pub(crate) const BUILT_INLINE_MAX: usize = 50_000;

/// Below this many tiles a capped tile scan scores every summary (a fraction of a
/// millisecond) and the summaries are not grouped.
pub const GROUPS_MIN_TILES: usize = 2_048;

impl Summaries {
    /// The summaries `all` of the tiles whose keys and filter fields (time, bbox, kind) are
    /// given, grouped.
    fn new(all: Vec<u8>, keys: Vec<u64>, meta: (Vec<i64>, Vec<f64>, Vec<u8>), dim: usize, threads: usize) -> Self {
        let width = crate::index::sketch::summary_bytes(dim);
        let n = all.len() / width.max(1);
        if n < GROUPS_MIN_TILES || keys.len() != n {
            return Summaries { all, groups: None };
        }
        // The mean patches as a segment of coded rows, with their tiles' keys and fields.
        let mut means = Segment::empty(dim);
        let (mut codes, mut scales) = (Vec::with_capacity(n * dim), Vec::with_capacity(n));
        for sum in all.chunks_exact(width) {
            let Some((c, sc)) = crate::store::codec::patch_codes(sum, dim, 0) else { return Summaries { all, groups: None } };
            codes.extend_from_slice(c);
            scales.push(sc);
        }
        means.keys = Col::Owned(keys);
        means.time = Col::Owned(meta.0);
        means.bbox = Col::Owned(meta.1);
        means.kind = Col::Owned(meta.2);
        means.codes = Col::Owned(codes);
        means.qres = Col::Owned(vec![0.0; n]);
        means.qscale = Col::Owned(scales);
        let groups = crate::index::parts::Parts::build_means(&means, dim, threads);
        Summaries { all, groups }
    }
}

/// The summary of each of `rows` tiles side by side, from their sketch rows (`sketch`, the
/// same number of bytes a row); empty when a row has none.
fn gather_summaries(sketch: &[u8], rows: usize, per: usize, dim: usize) -> Vec<u8> {
    let width = crate::index::sketch::summary_bytes(dim);
    let Some(row) = sketch.len().checked_div(rows) else { return Vec::new() };
    let mut all = Vec::with_capacity(rows * width);
    for r in 0..rows {
        match sketch.get(r * row..(r + 1) * row).and_then(|s| crate::index::sketch::split_row(s, per, dim)) {
            Some((_, sum)) if sum.len() == width => all.extend_from_slice(sum),
            _ => return Vec::new(),
        }
    }
    all
}

/// Keys per fence. A key lookup searches the fences' own fences (1M rows: 2 KB), one block
/// of `FENCE` fences and then one block of `FENCE` keys (512 bytes each, each asked for
/// whole before it is searched), instead of binary-searching the whole key column: a cold
/// search over 1M keys misses the cache at each of its last ~10 steps, and one over the
/// 125 KB of fences at each of its last ~6 (measured at 1M rows, 0.01 %, each query after
/// others: finding the rows took 2.2 µs with one level of fences, 0.6 µs hot).
const FENCE: usize = 64;

/// Every [`FENCE`]-th key of a segment (`keys`), and every `FENCE`-th of those (`top`).
#[derive(Debug, Default)]
pub(crate) struct Fences {
    keys: Vec<u64>,
    top: Vec<u64>,
}

impl Segment {
    /// The mapped files its columns are windows of (one for a snapshot; none when owned).
    pub(crate) fn maps(&self) -> Vec<Arc<Mmap>> {
        let cols = [self.keys.map(), self.time.map(), self.bbox.map(), self.kind.map(), self.f32s.map(), self.bytes.map(), self.codes.map(), self.qscale.map(), self.qres.map(), self.sketch.map(), self.ids.map()];
        let mut out: Vec<Arc<Mmap>> = Vec::new();
        for m in cols.into_iter().flatten() {
            if !out.iter().any(|o| Arc::ptr_eq(o, m)) {
                out.push(m.clone());
            }
        }
        out
    }

    /// An empty in-memory segment.
    pub fn empty(stride: usize) -> Self {
        Segment {
            keys: Col::Owned(vec![]),
            time: Col::Owned(vec![]),
            bbox: Col::Owned(vec![]),
            kind: Col::Owned(vec![]),
            f32s: Col::Owned(vec![]),
            bytes: Col::Owned(vec![]),
            codes: Col::Owned(vec![]),
            qscale: Col::Owned(vec![]),
            qres: Col::Owned(vec![]),
            sketch: Col::Owned(vec![]),
            ids: Col::Owned(vec![]),
            stride,
            fences: Default::default(),
            summaries: Default::default(),
            nibbles: Default::default(),
        }
    }
    /// Rows held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// True when no rows.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// Row range whose keys lie in `[lo, hi]`.
    pub fn rows_in(&self, lo: u64, hi: u64) -> Range<usize> {
        let a = self.first_where_not(|x| x < lo);
        let b = self.first_where_not(|x| x <= hi);
        a..b.max(a)
    }
    /// The row ranges of key ranges `[lo, hi]` given in ascending order without overlaps (a
    /// region's cover), each as [`Segment::rows_in`] finds it. The fences are searched first,
    /// each bound after the first forward from the one before it, doubling the step
    /// (galloping: a small region's ranges lie close together); then the key blocks the bounds
    /// fall in are all asked for at once, and searched. From cold caches the one-by-one
    /// searches were ~20 dependent cache misses a range.
    pub fn rows_in_sorted(&self, ranges: &[(u64, u64)]) -> Vec<Range<usize>> {
        let k: &[u64] = &self.keys;
        let mut fs = Vec::with_capacity(ranges.len());
        let (mut f, mut last) = (0usize, None::<u64>);
        for &(lo, hi) in ranges {
            if last.is_some_and(|l| lo <= l) {
                // Not ascending: searched from the start.
                f = 0;
            }
            let fa = self.fence_from(f, |x| x < lo);
            // An empty range (hi < lo) ends where it starts: its rows are `a..a`, and the
            // next range continues from where the one before it left.
            let fb = if hi < lo { fa } else { self.fence_from(fa, |x| x <= hi) };
            if hi >= lo {
                (f, last) = (fb, Some(hi));
            }
            for g in [fa, fb] {
                crate::index::scan::prefetch(k.get(Self::block(g, k.len())).unwrap_or(&[]));
            }
            fs.push((fa, fb));
        }
        ranges
            .iter()
            .zip(fs)
            .map(|(&(lo, hi), (fa, fb))| {
                let a = self.in_block(fa, |x| x < lo);
                a..self.in_block(fb, |x| x <= hi).max(a)
            })
            .collect()
    }
    /// The first row whose key fails `below` (a predicate true for a prefix of the sorted
    /// keys), through the fences.
    #[inline]
    fn first_where_not(&self, below: impl Fn(u64) -> bool + Copy) -> usize {
        self.in_block(self.fence_from(0, below), below)
    }
    /// The first fence that fails `below` (a predicate true for a prefix of the sorted keys),
    /// given that every fence before `from` passes: by binary search from 0, else galloping
    /// forward from `from`.
    #[inline]
    fn fence_from(&self, from: usize, below: impl Fn(u64) -> bool) -> usize {
        let k: &[u64] = &self.keys;
        let f = self.fences.get_or_init(|| {
            let keys: Vec<u64> = k.iter().step_by(FENCE).copied().collect();
            Fences { top: keys.iter().step_by(FENCE).copied().collect(), keys }
        });
        let fences = &f.keys;
        if from == 0 {
            // The first failing fence lies in the block of fences before the first failing
            // top fence (as a row lies in the block of keys before its fence: `block`).
            let w = Self::block(f.top.partition_point(|&x| below(x)), fences.len());
            let window = fences.get(w.clone()).unwrap_or(&[]);
            crate::index::scan::prefetch(window);
            return w.start + window.partition_point(|&x| below(x));
        }
        // fences[from - 1] passes; step to a fence that fails, then search between.
        let (mut lo, mut step) = (from.min(fences.len()), 1);
        loop {
            match fences.get(lo) {
                Some(&x) if below(x) => {}
                _ => return lo,
            }
            let probe = lo + step;
            match fences.get(probe) {
                Some(&x) if below(x) => {
                    lo = probe;
                    step *= 2;
                }
                Some(_) => return lo + 1 + fences[lo + 1..probe].partition_point(|&x| below(x)),
                None => return lo + 1 + fences[lo + 1..].partition_point(|&x| below(x)),
            }
        }
    }
    /// The rows between fence `f - 1` (which passes) and fence `f` (which fails): the first
    /// row that fails lies in (FENCE·(f-1), FENCE·f].
    #[inline]
    fn block(f: usize, rows: usize) -> Range<usize> {
        let start = if f == 0 { 0 } else { (f - 1) * FENCE + 1 };
        start..(f * FENCE).min(rows).max(start)
    }
    /// The first row that fails `below`, given [`Segment::fence_from`]'s `f` for it.
    #[inline]
    fn in_block(&self, f: usize, below: impl Fn(u64) -> bool) -> usize {
        let k: &[u64] = &self.keys;
        let b = Self::block(f, k.len());
        b.start + k.get(b).map_or(0, |b| b.partition_point(|&x| below(x)))
    }
    /// Row of a key.
    pub fn find(&self, key: u64) -> Option<usize> {
        let r = self.rows_in(key, key);
        (!r.is_empty()).then_some(r.start)
    }
    /// The filter-field columns, dereferenced once for a loop over many rows.
    pub fn metas(&self) -> MetaView<'_> {
        MetaView { time: &self.time, bbox: &self.bbox, kind: &self.kind }
    }
    /// The filter fields of a row.
    pub fn meta(&self, i: usize) -> Option<RowMeta> {
        self.metas().get(i)
    }
    /// The f32 vector of a row (image-level spaces).
    #[inline]
    pub fn vector(&self, i: usize) -> &[f32] {
        self.f32s.get(i * self.stride..(i + 1) * self.stride).unwrap_or(&[])
    }
    /// The i8 codes, scale and residual norm `ρ` of a row (image-level spaces).
    #[inline]
    pub fn coded(&self, i: usize) -> Option<(&[i8], f32, f32)> {
        Some((self.codes.get(i * self.stride..(i + 1) * self.stride)?, *self.qscale.get(i)?, *self.qres.get(i)?))
    }
    /// Ask the CPU to start loading row `i`'s i8 codes (a hint; none without codes).
    #[inline]
    pub fn prefetch_codes(&self, i: usize) {
        if let Some(c) = self.codes.get(i * self.stride..(i + 1) * self.stride) {
            crate::index::scan::prefetch(c);
        }
    }
    /// Ask the CPU to start loading row `i`'s f32 vector (a hint; none at the patch level).
    #[inline]
    pub fn prefetch_vector(&self, i: usize) {
        if let Some(v) = self.f32s.get(i * self.stride..(i + 1) * self.stride) {
            crate::index::scan::prefetch(v);
        }
    }
    /// Patch `p` of row `i`'s grid as its i8 codes and scale (patch-level spaces).
    #[inline]
    pub fn patch_coded(&self, i: usize, p: usize, dim: usize) -> Option<(&[i8], f32)> {
        crate::store::codec::patch_codes(self.grid(i), dim, p)
    }
    /// Item `item` of a space with `per` items a row, as the partitions rank it: at the image
    /// level a row's codes, scale and residual norm; at the patch level (the segment holds
    /// grids) patch `item % per` of row `item / per`, with residual 0 (patches are ranked as
    /// coded).
    pub fn item_coded(&self, item: usize, per: usize, dim: usize) -> Option<(&[i8], f32, f32)> {
        if self.bytes.is_empty() {
            self.coded(item)
        } else {
            let per = per.max(1);
            self.patch_coded(item / per, item % per, dim).map(|(c, sc)| (c, sc, 0.0))
        }
    }
    /// The sketches of row `i`'s patches (patch-level spaces), or an empty slice when the
    /// segment has none.
    #[inline]
    pub fn sketches(&self, i: usize) -> &[u8] {
        let per_row = self.sketch_row();
        self.sketch.get(i * per_row..(i + 1) * per_row).unwrap_or(&[])
    }
    /// The summary of tile `i` of a patch-level segment with sketches (`per` patches of
    /// `dim`; see [`crate::index::sketch::split_row`]), from a copy of all the summaries side
    /// by side made on first use: a pass over many tiles' summaries then reads one stream
    /// instead of a line or two from each tile's sketches, ~29 KB apart at 512-d (each on its
    /// own page). `None` where the segment has no sketches.
    pub fn summary(&self, i: usize, per: usize, dim: usize) -> Option<&[u8]> {
        let width = crate::index::sketch::summary_bytes(dim);
        self.summaries(per, dim).all.get(i * width..(i + 1) * width)
    }
    /// The tile summaries' mean patches grouped by content (cone partitions whose items are
    /// the segment's rows), made with the summaries; `None` below [`GROUPS_MIN_TILES`] tiles
    /// or without sketches.
    pub fn tile_groups(&self, per: usize, dim: usize) -> Option<&crate::index::parts::Parts> {
        self.summaries(per, dim).groups.as_ref()
    }
    fn summaries(&self, per: usize, dim: usize) -> &Summaries {
        self.summaries.get_or_init(|| Summaries::new(self.gather_summaries(per, dim), self.keys.to_vec(), (self.time.to_vec(), self.bbox.to_vec(), self.kind.to_vec()), dim, 1))
    }
    /// Every tile's summary side by side; empty when a row has none.
    fn gather_summaries(&self, per: usize, dim: usize) -> Vec<u8> {
        gather_summaries(&self.sketch, self.len(), per, dim)
    }
    /// The four-bit copies of the patches' codes (`per` patches of `dim` a tile); `None`
    /// where the layout does not hold `dim`, or while a background thread still makes them
    /// (started here if it was not: a mapped segment of more than [`BUILT_INLINE_MAX`]
    /// patches). A small segment, or one held in memory (a checkpoint's), has them made here.
    pub fn nibbles(&self, per: usize, dim: usize) -> Option<&crate::index::nibble::Nibbles> {
        if let Some(n) = self.nibbles.get() {
            return n;
        }
        if self.len() * per > BUILT_INLINE_MAX && matches!(self.bytes, Col::Mapped(..)) {
            self.nibbles_in_background(per, dim);
            return None;
        }
        self.nibbles.get_or_make(|| crate::index::nibble::Nibbles::build(&self.bytes, self.len(), per, dim))
    }
    /// Make [`Segment::summary`]'s copy and [`Segment::tile_groups`] on a background thread
    /// (from copies of the keys and filter fields; the summaries are gathered there from the
    /// mapped snapshot, whose pages may still be on disk), so that the first capped tile scan
    /// after open or checkpoint finds them ready; a scan that comes first makes them itself.
    /// A segment without sketches does nothing.
    pub fn summaries_in_background(&self, per: usize, dim: usize) {
        if self.sketch.is_empty() || self.summaries.get().is_some() {
            return;
        }
        // Sketches held in memory (a checkpoint's new base) are gathered here, a copy of a few
        // MB; a mapped file's in the background.
        let source = match &self.sketch {
            Col::Mapped(map, range) => Err((Arc::clone(map), range.clone())),
            Col::Owned(_) => Ok(self.gather_summaries(per, dim)),
        };
        let rows = self.len();
        let (cell, keys, time, bbox, kind) = (Arc::clone(&self.summaries), self.keys.to_vec(), self.time.to_vec(), self.bbox.to_vec(), self.kind.to_vec());
        let _ = std::thread::Builder::new().name("graftdb-summaries".into()).spawn(move || {
            let all = source.unwrap_or_else(|(map, range)| gather_summaries(map.get(range).unwrap_or(&[]), rows, per, dim));
            let _ = cell.set(Summaries::new(all, keys, (time, bbox, kind), dim, 1));
        });
    }
    /// Make [`Segment::nibbles`] on a background thread from a mapped snapshot's grids, once
    /// (after open with `Options::prefault` and `tile_shortlist`, or at the first capped scan
    /// that wants them); a checkpoint's grids, held in memory, are not copied for it: the
    /// first capped scan makes them.
    pub fn nibbles_in_background(&self, per: usize, dim: usize) {
        let Col::Mapped(map, range) = &self.bytes else { return };
        if !self.nibbles.claim() {
            return;
        }
        let (map, range, rows, cell) = (Arc::clone(map), range.clone(), self.len(), Arc::clone(&self.nibbles));
        let _ = std::thread::Builder::new().name("graftdb-nibbles".into()).spawn(move || {
            cell.set(crate::index::nibble::Nibbles::build(map.get(range).unwrap_or(&[]), rows, per, dim));
        });
    }
    /// The integer id of row `i`'s record when the id column holds it (a photo with an integer
    /// id in a filled column): a hit on the row then needs no record read.
    #[inline]
    pub fn photo_id(&self, i: usize) -> Option<i64> {
        self.ids.get(i).copied().filter(|&id| id != NO_ID)
    }
    /// Ask the CPU to start loading row `i`'s id (a hint): a row being re-scored is likely a
    /// hit, and its id is read when the hits are made.
    #[inline]
    pub fn prefetch_id(&self, i: usize) {
        crate::index::scan::prefetch(self.ids.get(i..i + 1).unwrap_or(&[]));
    }
    /// The sketch bytes of one row (0: the segment has none).
    #[inline]
    pub fn sketch_row(&self) -> usize {
        self.sketch.len().checked_div(self.len()).unwrap_or(0)
    }
    /// Every `step`-th row (0, step, 2·step, …) as a new owned segment, codes copied (a
    /// sample that spans every region, the segment being in key order).
    pub fn every(&self, step: usize, patch: bool) -> Segment {
        let step = step.max(1);
        let mut b = SegmentBuilder::new(self.stride, self.len().div_ceil(step), patch);
        for i in (0..self.len()).step_by(step) {
            b.push_from(self, i);
        }
        b.finish()
    }
    /// Build the patch sketches of a patch-level segment that has none (`per` patches of
    /// `dim` a row), on up to `threads` threads.
    pub fn build_sketches(&mut self, per: usize, dim: usize, threads: usize) {
        if self.sketch.is_empty() && !self.bytes.is_empty() {
            self.sketch = Col::Owned(crate::index::sketch::build(&self.bytes, self.len(), per, dim, threads));
        }
    }
    /// Build the row sketches of an image-level segment that has codes and no sketches, on
    /// up to `threads` threads.
    pub fn build_row_sketches(&mut self, threads: usize) {
        if self.sketch.is_empty() && self.bytes.is_empty() && !self.codes.is_empty() {
            self.sketch = Col::Owned(crate::index::sketch::build_rows(&self.codes, &self.qscale, self.len(), self.stride, threads));
        }
    }
    /// The encoded grid of a row (patch-level spaces).
    #[inline]
    pub fn grid(&self, i: usize) -> &[u8] {
        self.bytes.get(i * self.stride..(i + 1) * self.stride).unwrap_or(&[])
    }
}

/// A row to add: key, filter fields, payload.
pub struct NewRow {
    /// Record key.
    pub key: u64,
    /// Filter fields.
    pub meta: RowMeta,
    /// f32 vector (image level) — empty for patch spaces.
    pub f32s: Vec<f32>,
    /// Encoded grid (patch level) — empty for image spaces.
    pub bytes: Vec<u8>,
}

/// A [`SegmentBuilder`]'s row columns: keys, times, bboxes (four a row), kinds, vectors, patch grids.
type BuilderColumns = (Vec<u64>, Vec<i64>, Vec<f64>, Vec<u8>, Vec<f32>, Vec<u8>);

/// Builds an owned segment from rows given in ascending key order.
pub struct SegmentBuilder {
    seg: BuilderColumns,
    codes: (Vec<i8>, Vec<f32>, Vec<f32>),
    stride: usize,
}

impl SegmentBuilder {
    /// A builder expecting about `cap` rows.
    pub fn new(stride: usize, cap: usize, patch: bool) -> Self {
        let (f, b) = if patch { (0, cap * stride) } else { (cap * stride, 0) };
        SegmentBuilder {
            seg: (
                Vec::with_capacity(cap),
                Vec::with_capacity(cap),
                Vec::with_capacity(cap * 4),
                Vec::with_capacity(cap),
                Vec::with_capacity(f),
                Vec::with_capacity(b),
            ),
            codes: (Vec::with_capacity(f), Vec::with_capacity(if patch { 0 } else { cap }), Vec::with_capacity(if patch { 0 } else { cap })),
            stride,
        }
    }
    fn push_fields(&mut self, key: u64, meta: RowMeta, f32s: &[f32], bytes: &[u8]) {
        let s = &mut self.seg;
        s.0.push(key);
        s.1.push(meta.time.unwrap_or(NO_TIME));
        s.2.extend_from_slice(&meta.bbox);
        s.3.push(meta.kind.to_u8());
        s.4.extend_from_slice(f32s);
        s.5.extend_from_slice(bytes);
    }
    /// Append a row (keys must ascend). An f32 vector is also quantised to i8 codes.
    pub fn push(&mut self, key: u64, meta: RowMeta, f32s: &[f32], bytes: &[u8]) {
        self.push_fields(key, meta, f32s, bytes);
        if !f32s.is_empty() {
            let (s, rho) = crate::index::scan::quantise(f32s, &mut self.codes.0);
            self.codes.1.push(s);
            self.codes.2.push(rho);
        }
    }
    /// Append row `i` of another segment (its codes are copied, not recomputed).
    pub fn push_from(&mut self, seg: &Segment, i: usize) {
        if let (Some(&k), Some(m)) = (seg.keys.get(i), seg.meta(i)) {
            let b = if seg.bytes.is_empty() { &[][..] } else { seg.grid(i) };
            if seg.f32s.is_empty() {
                self.push(k, m, &[], b);
            } else if let Some((c, s, rho)) = seg.coded(i) {
                self.push_fields(k, m, seg.vector(i), b);
                self.codes.0.extend_from_slice(c);
                self.codes.1.push(s);
                self.codes.2.push(rho);
            } else {
                self.push(k, m, seg.vector(i), b);
            }
        }
    }
    /// The segment, its rows sorted by key first (rows may have been pushed in any order,
    /// e.g. in commit order from the vector chunks). The payload column is permuted in place,
    /// one row of scratch, so a rebuild never holds two copies of the vectors.
    pub fn finish_sorted(mut self) -> Segment {
        let n = self.seg.0.len();
        if self.seg.0.windows(2).all(|w| w[0] <= w[1]) {
            return self.finish();
        }
        let mut perm: Vec<usize> = (0..n).collect();
        perm.sort_unstable_by_key(|&i| self.seg.0[i]);
        let s = &mut self.seg;
        s.0 = perm.iter().map(|&i| s.0[i]).collect();
        s.1 = perm.iter().map(|&i| s.1[i]).collect();
        s.2 = perm.iter().flat_map(|&i| [s.2[4 * i], s.2[4 * i + 1], s.2[4 * i + 2], s.2[4 * i + 3]]).collect();
        s.3 = perm.iter().map(|&i| s.3[i]).collect();
        permute_rows(&mut s.4, self.stride, &perm);
        permute_rows(&mut s.5, self.stride, &perm);
        let c = &mut self.codes;
        permute_rows(&mut c.0, self.stride, &perm);
        permute_rows(&mut c.1, 1, &perm);
        permute_rows(&mut c.2, 1, &perm);
        self.finish()
    }

    /// The segment.
    pub fn finish(self) -> Segment {
        let (s, c) = (self.seg, self.codes);
        Segment {
            keys: Col::Owned(s.0),
            time: Col::Owned(s.1),
            bbox: Col::Owned(s.2),
            kind: Col::Owned(s.3),
            f32s: Col::Owned(s.4),
            bytes: Col::Owned(s.5),
            codes: Col::Owned(c.0),
            qscale: Col::Owned(c.1),
            qres: Col::Owned(c.2),
            sketch: Col::Owned(Vec::new()),
            ids: Col::Owned(Vec::new()),
            stride: self.stride,
            fences: Default::default(),
            summaries: Default::default(),
            nibbles: Default::default(),
        }
    }
}

/// Reorder fixed-size rows in place so row `i` becomes old row `perm[i]` (cycle by cycle).
fn permute_rows<T: Copy>(data: &mut [T], stride: usize, perm: &[usize]) {
    if stride == 0 || data.len() != perm.len() * stride {
        return;
    }
    let mut done = vec![false; perm.len()];
    let mut tmp = Vec::with_capacity(stride);
    for start in 0..perm.len() {
        if done[start] || perm[start] == start {
            continue;
        }
        tmp.clear();
        tmp.extend_from_slice(&data[start * stride..(start + 1) * stride]);
        let mut j = start;
        loop {
            done[j] = true;
            let k = perm[j];
            if k == start {
                data[j * stride..(j + 1) * stride].copy_from_slice(&tmp);
                break;
            }
            data.copy_within(k * stride..(k + 1) * stride, j * stride);
            j = k;
        }
    }
}

/// Merge two sorted segments (keys are disjoint) into a new owned one. Sketches are copied
/// with their rows when every non-empty side carries them, at one size a row; otherwise the
/// result has none (and [`Segment::build_sketches`] or [`Segment::build_row_sketches`] builds
/// them all). Record ids likewise, when both sides have them.
pub fn merge(a: &Segment, b: &Segment, patch: bool) -> Segment {
    let mut out = SegmentBuilder::new(a.stride, a.len() + b.len(), patch);
    let sk = a.sketch_row().max(b.sketch_row());
    let whole = |s: &Segment| s.is_empty() || (s.sketch_row() == sk && s.sketch.len() == s.len() * sk);
    let mut sketch = if sk > 0 && whole(a) && whole(b) { Some(Vec::with_capacity((a.len() + b.len()) * sk)) } else { None };
    let with_ids = |s: &Segment| s.ids.len() == s.len();
    let mut ids = if with_ids(a) && with_ids(b) && !(a.is_empty() && b.is_empty()) { Some(Vec::with_capacity(a.len() + b.len())) } else { None };
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let take_a = match (a.keys.get(i), b.keys.get(j)) {
            (Some(x), Some(y)) => x <= y,
            (Some(_), None) => true,
            _ => false,
        };
        let (from, row) = if take_a { (a, &mut i) } else { (b, &mut j) };
        out.push_from(from, *row);
        if let Some(v) = sketch.as_mut() {
            v.extend_from_slice(from.sketches(*row));
        }
        if let Some(v) = ids.as_mut() {
            v.push(from.ids.get(*row).copied().unwrap_or(NO_ID));
        }
        *row += 1;
    }
    let mut seg = out.finish();
    if let Some(v) = sketch {
        seg.sketch = Col::Owned(v);
    }
    if let Some(v) = ids {
        seg.ids = Col::Owned(v);
    }
    seg
}

/// Sort new rows by key and merge them into `seg`.
pub fn merge_rows(seg: &Segment, mut rows: Vec<NewRow>, patch: bool) -> Segment {
    rows.sort_by_key(|r| r.key);
    let mut b = SegmentBuilder::new(seg.stride, rows.len(), patch);
    for r in &rows {
        b.push(r.key, r.meta, &r.f32s, &r.bytes);
    }
    merge(seg, &b.finish(), patch)
}

const MAGIC: &[u8; 8] = b"GRAFTARN";
/// 6: image-level snapshots add the record id of each row (an i64 section after the
/// sketches, flagged by header byte 13). A version 5 file is read without it (hits read their
/// records) and written as version 6 with it at the next checkpoint.
/// 5: image-level snapshots of `cos` and `ip` spaces fill the sketch section too, with the
/// two-bit sketch of every row's codes. A version 4 file is read as it is (an image-level one
/// scanned without sketches) and written as version 5 at the next checkpoint.
/// 4: patch-level snapshots add the patches' two-bit sketches as a last section, its bytes
/// per row in the header (0: none). A version 3 file is read as it is; its patch sketches
/// are built and written at the next checkpoint.
/// 3: i8 codes, scales and residual norms follow the f32 section. Version 2 held L1 norms of
/// the codes in the last column: such a file is read, its residual norms computed from its
/// f32 and code columns in memory, and the next checkpoint rewrites it. Version 1 files (no
/// codes) are rebuilt.
const SNAPSHOT_VERSION: u32 = 6;
/// The oldest snapshot version [`read_snapshot`] upgrades in memory.
const SNAPSHOT_UPGRADABLE: u32 = 2;
/// Header bytes of a sectioned file (arena snapshots, partitions files).
pub(crate) const HEADER: usize = 64;

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// The byte ranges of a sectioned file's sections of the given sizes: the first right after
/// the header, each next one at the following 64-byte boundary (so every column maps aligned).
pub(crate) fn sections<const N: usize>(sizes: [usize; N]) -> [Range<usize>; N] {
    let mut off = HEADER;
    sizes.map(|bytes| {
        let r = off..off + bytes;
        off = align64(off + bytes);
        r
    })
}

/// Write a sectioned file: `head`, then each non-empty section at its offset with zeros
/// between, via a temporary file, fsync and rename.
pub(crate) fn write_sections(path: &Path, head: &[u8; HEADER], sections: &[(usize, &[u8])]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |e| Error::io(&tmp, e);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
    let mut pos = 0usize;
    for &(at, data) in std::iter::once(&(0, &head[..])).chain(sections).filter(|s| !s.1.is_empty()) {
        if at > pos {
            f.write_all(&vec![0u8; at - pos]).map_err(io)?;
            pos = at;
        }
        f.write_all(data).map_err(io)?;
        pos += data.len();
    }
    let file = f.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

fn layout(rows: usize, stride: usize, patch: bool, sketch_row: usize, ids: bool) -> [Range<usize>; 11] {
    let image = if patch { 0 } else { rows };
    sections([
        rows * 8,                                      // keys
        rows * 8,                                      // time
        rows * 32,                                     // bbox
        rows,                                          // kind
        image * stride * 4,                            // f32
        if patch { rows * stride } else { 0 },         // patch grids
        image * stride,                                // i8 codes
        image * 4,                                     // code scale
        image * 4,                                     // residual norm ρ
        rows * sketch_row,                             // sketches (patches, or image rows)
        if ids { rows * 8 } else { 0 },                // record ids
    ])
}

/// Write a segment as a snapshot file (via a temporary file, fsync, rename).
pub fn write_snapshot(path: &Path, seg: &Segment, seq: u64, patch: bool) -> Result<()> {
    let rows = seg.len();
    let sketch_row = seg.sketch.len().checked_div(rows).unwrap_or(0);
    let ids = !patch && rows > 0 && seg.ids.len() == rows;
    let lay = layout(rows, seg.stride, patch, sketch_row, ids);
    let mut head = [0u8; HEADER];
    head[0..8].copy_from_slice(MAGIC);
    head[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    head[12] = u8::from(patch);
    head[13] = u8::from(ids);
    head[16..24].copy_from_slice(&(rows as u64).to_le_bytes());
    head[24..32].copy_from_slice(&(seg.stride as u64).to_le_bytes());
    head[32..40].copy_from_slice(&seq.to_le_bytes());
    head[40..48].copy_from_slice(&(sketch_row as u64).to_le_bytes());
    // A patch segment's f32 and code columns and an image segment's grids are empty, and
    // empty sections are not written.
    let cols: [&[u8]; 11] = [
        bytemuck::cast_slice(&seg.keys),
        bytemuck::cast_slice(&seg.time),
        bytemuck::cast_slice(&seg.bbox),
        &seg.kind,
        bytemuck::cast_slice(&seg.f32s),
        &seg.bytes,
        bytemuck::cast_slice(&seg.codes),
        bytemuck::cast_slice(&seg.qscale),
        bytemuck::cast_slice(&seg.qres),
        &seg.sketch,
        if ids { bytemuck::cast_slice(&seg.ids) } else { &[] },
    ];
    let secs: Vec<(usize, &[u8])> = lay.iter().map(|r| r.start).zip(cols).collect();
    write_sections(path, &head, &secs)
}

/// Map a snapshot file. Returns the segment, the log sequence it reflects, and whether the
/// file is of an older version that was upgraded in memory (write it again to persist that).
pub fn read_snapshot(path: &Path, expect_stride: usize, patch: bool) -> Result<(Segment, u64, bool)> {
    let corrupt = |d: &str| Error::Corrupt { path: path.into(), detail: d.into() };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: snapshot files are written once under a temporary name and renamed into
    // place; graftdb never modifies a snapshot after that, so the mapping is stable.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let head = map.get(..HEADER).ok_or_else(|| corrupt("shorter than its header"))?;
    if head.get(0..8) != Some(&MAGIC[..]) {
        return Err(corrupt("not a graftdb arena snapshot"));
    }
    let u64_at = |o: usize| head.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
    let version = head.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0);
    if !(SNAPSHOT_UPGRADABLE..=SNAPSHOT_VERSION).contains(&version) {
        return Err(corrupt(&format!("snapshot version {version} is not {SNAPSHOT_VERSION}")));
    }
    if head.get(12).copied() != Some(u8::from(patch)) {
        return Err(corrupt("snapshot level does not match its space"));
    }
    let rows = usize::try_from(u64_at(16)).map_err(|_| corrupt("row count"))?;
    let stride = usize::try_from(u64_at(24)).map_err(|_| corrupt("stride"))?;
    let seq = u64_at(32);
    if stride != expect_stride {
        return Err(corrupt(&format!("row size {stride} does not match the space ({expect_stride})")));
    }
    let sketch_row = usize::try_from(u64_at(40)).map_err(|_| corrupt("sketch size"))?;
    if sketch_row.checked_mul(rows).is_none_or(|b| b > map.len()) {
        return Err(corrupt(&format!("sketch size {sketch_row} per row does not fit the file")));
    }
    let ids = version >= 6 && head.get(13).copied() == Some(1);
    let lay = layout(rows, stride, patch, sketch_row, ids);
    let end = lay.iter().filter(|r| !r.is_empty()).map(|r| r.end).max().unwrap_or(HEADER);
    if map.len() < end {
        return Err(corrupt(&format!("truncated: {} bytes, expected {end}", map.len())));
    }
    let [k, t, b, kd, f, by, c, qs, l1, sk, id] = lay;
    let mut seg = Segment {
        keys: Col::mapped(&map, k, path)?,
        time: Col::mapped(&map, t, path)?,
        bbox: Col::mapped(&map, b, path)?,
        kind: Col::mapped(&map, kd, path)?,
        f32s: Col::mapped(&map, f, path)?,
        bytes: Col::mapped(&map, by, path)?,
        codes: Col::mapped(&map, c, path)?,
        qscale: Col::mapped(&map, qs, path)?,
        qres: Col::mapped(&map, l1, path)?,
        sketch: Col::mapped(&map, sk, path)?,
        ids: Col::mapped(&map, id, path)?,
        stride,
        fences: Default::default(),
        summaries: Default::default(),
        nibbles: Default::default(),
    };
    if !seg.keys.windows(2).all(|w| w[0] < w[1]) {
        return Err(corrupt("keys are not sorted"));
    }
    let old = version < SNAPSHOT_VERSION;
    if version < 3 && !patch {
        seg.qres = Col::Owned(residuals(&seg));
    }
    Ok((seg, seq, old))
}

/// The residual norm `ρ` of every image-level row, from its f32 vector and codes.
pub fn residuals(seg: &Segment) -> Vec<f32> {
    (0..seg.len())
        .map(|i| match (seg.codes.get(i * seg.stride..(i + 1) * seg.stride), seg.qscale.get(i)) {
            (Some(c), Some(&s)) => crate::index::scan::residual(seg.vector(i), c, s),
            _ => f32::INFINITY,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(x: f64) -> RowMeta {
        RowMeta { kind: Kind::Photo, time: Some(x as i64), bbox: [x, x, x, x] }
    }

    #[test]
    fn finish_sorted_permutes_every_column() {
        // Keys in a scrambled order with several permutation cycles, image and patch payloads.
        let keys = [50u64, 10, 40, 0, 30, 20, 70, 60];
        for patch in [false, true] {
            let mut b = SegmentBuilder::new(3, 0, patch);
            for &k in &keys {
                let f = [k as f32, k as f32 + 0.5, -(k as f32)];
                let g = [k as u8, k as u8 + 1, k as u8 + 2];
                if patch {
                    b.push(k, meta(k as f64), &[], &g);
                } else {
                    b.push(k, meta(k as f64), &f, &[]);
                }
            }
            let seg = b.finish_sorted();
            assert_eq!(&*seg.keys, &[0, 10, 20, 30, 40, 50, 60, 70]);
            for i in 0..seg.len() {
                let k = seg.keys[i];
                assert_eq!(seg.meta(i), Some(meta(k as f64)), "row {i}");
                if patch {
                    assert_eq!(seg.grid(i), &[k as u8, k as u8 + 1, k as u8 + 2]);
                } else {
                    assert_eq!(seg.vector(i), &[k as f32, k as f32 + 0.5, -(k as f32)]);
                    let mut codes = Vec::new();
                    let (s, rho) = crate::index::scan::quantise(seg.vector(i), &mut codes);
                    assert_eq!(seg.coded(i), Some((&codes[..], s, rho)), "codes of row {i}");
                }
            }
        }
    }

    /// The fenced lookup equals a binary search over all keys, for segment lengths around
    /// multiples of the fence and bounds below, between, on and above the keys.
    #[test]
    fn rows_in_through_fences_equals_a_plain_search() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let top = FENCE * FENCE;
        for n in [0, 1, 2, FENCE - 1, FENCE, FENCE + 1, 2 * FENCE, 3 * FENCE + 7, 1000, top - 1, top, top + 1, top + FENCE, 3 * top + 7] {
            let mut keys: Vec<u64> = (0..n).map(|_| rng.random_range(0..50_000u64) * 2 + 10).collect();
            keys.sort_unstable();
            keys.dedup();
            let rows: Vec<NewRow> = keys.iter().map(|&k| NewRow { key: k, meta: meta(0.0), f32s: vec![0.0; 2], bytes: vec![] }).collect();
            let seg = merge_rows(&Segment::empty(2), rows, false);
            let mut probes: Vec<u64> = vec![0, 9, 10, 11, u64::MAX - 1, u64::MAX];
            probes.extend(keys.iter().flat_map(|&k| [k - 1, k, k + 1]).take(600));
            probes.extend((0..200).map(|_| rng.random_range(0..110_000u64)));
            for &lo in &probes {
                let hi = lo.saturating_add(rng.random_range(0..3_000u64));
                let a = keys.partition_point(|&x| x < lo);
                let b = keys.partition_point(|&x| x <= hi).max(a);
                assert_eq!(seg.rows_in(lo, hi), a..b, "n {n}, [{lo}, {hi}]");
                assert_eq!(seg.rows_in(lo, lo), a..keys.partition_point(|&x| x <= lo).max(a), "n {n}, [{lo}, {lo}]");
            }
            // Ascending disjoint ranges, as a cover gives them, some not ascending (searched
            // from the start again), some empty.
            for _ in 0..50 {
                let mut bounds: Vec<u64> = (0..2 * rng.random_range(1..12)).map(|_| rng.random_range(0..110_000u64)).collect();
                bounds.sort_unstable();
                bounds.dedup();
                let mut ranges: Vec<(u64, u64)> = bounds.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                if rng.random_bool(0.3) {
                    ranges.push((rng.random_range(0..110_000u64), rng.random_range(0..110_000u64)));
                }
                if rng.random_bool(0.3) {
                    // An empty range (hi < lo) among the others.
                    let lo = rng.random_range(1..110_000u64);
                    ranges.insert(rng.random_range(0..=ranges.len()), (lo, lo - rng.random_range(1..=lo)));
                }
                let want: Vec<Range<usize>> = ranges.iter().map(|&(lo, hi)| seg.rows_in(lo, hi)).collect();
                assert_eq!(seg.rows_in_sorted(&ranges), want, "n {n}, {ranges:?}");
            }
            for (i, &k) in keys.iter().enumerate() {
                assert_eq!(seg.find(k), Some(i), "n {n}, key {k}");
                assert_eq!(seg.find(k + 1), None, "n {n}, key {}", k + 1);
            }
        }
    }

    #[test]
    fn snapshot_round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<NewRow> = (0..5u64)
            .rev()
            .map(|k| NewRow { key: k * 10, meta: meta(k as f64), f32s: vec![k as f32; 3], bytes: vec![] })
            .collect();
        let seg = merge_rows(&Segment::empty(3), rows, false);
        assert_eq!(&*seg.keys, &[0, 10, 20, 30, 40]);
        assert_eq!(seg.rows_in(10, 30), 1..4);
        let p = dir.path().join("a.arena");
        write_snapshot(&p, &seg, 77, false).unwrap();
        let (back, seq, old) = read_snapshot(&p, 3, false).unwrap();
        assert_eq!((seq, old), (77, false));
        assert_eq!(&*back.keys, &*seg.keys);
        assert_eq!(back.vector(4), &[4.0, 4.0, 4.0]);
        assert_eq!(back.meta(2), seg.meta(2));
        assert_eq!(back.coded(4), seg.coded(4));
        assert_eq!(back.coded(4).map(|c| c.0.to_vec()), Some(vec![127i8; 3]));
        // A version 2 file (L1 norms in the last column) is read with its residual norms
        // recomputed, and says so.
        drop(back);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let last = layout(5, 3, false, 0, false)[8].clone();
        bytes[last].fill(0x7f);
        std::fs::write(&p, &bytes).unwrap();
        let (old, _, upgraded) = read_snapshot(&p, 3, false).unwrap();
        assert!(upgraded);
        for i in 0..5 {
            assert_eq!(old.coded(i), seg.coded(i), "row {i}");
        }
        drop(old);
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_snapshot(&p, 3, false).is_err(), "version 1 is rebuilt, not read");
        write_snapshot(&p, &seg, 77, false).unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 10).unwrap();
        let e = read_snapshot(&p, 3, false).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    /// A patch segment's sketches survive a snapshot; a version 3 file (no sketch section)
    /// is read without them and flagged for rewriting; a sketch size that cannot fit the file
    /// is an error naming the file, not a panic.
    #[test]
    fn patch_snapshot_keeps_its_sketches() {
        use crate::store::codec;
        let dir = tempfile::tempdir().unwrap();
        let (dim, per) = (8, 4);
        let stride = per * codec::patch_stride(dim);
        let mut b = SegmentBuilder::new(stride, 3, true);
        for k in 0..3u64 {
            let v: Vec<f32> = (0..dim * per).map(|i| ((i as f32 + k as f32) * 0.37).sin()).collect();
            b.push(k, meta(k as f64), &[], &codec::encode_patch_grid(&v, dim));
        }
        let mut seg = b.finish();
        assert!(seg.sketches(0).is_empty());
        seg.build_sketches(per, dim, 2);
        assert_eq!(seg.sketches(2).len(), crate::index::sketch::row_bytes(per, dim));
        let p = dir.path().join("p.arena");
        write_snapshot(&p, &seg, 5, true).unwrap();
        let (back, seq, old) = read_snapshot(&p, stride, true).unwrap();
        assert_eq!((seq, old), (5, false));
        for i in 0..3 {
            assert_eq!(back.sketches(i), seg.sketches(i), "row {i}");
        }
        drop(back);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        bytes[40..48].fill(0);
        std::fs::write(&p, &bytes).unwrap();
        let (v3, _, old) = read_snapshot(&p, stride, true).unwrap();
        assert!(old && v3.sketch.is_empty());
        drop(v3);
        bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
        bytes[40..48].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = read_snapshot(&p, stride, true).err().unwrap().to_string();
        assert!(e.contains("sketch") && e.contains("p.arena"), "{e}");
    }

    /// `every` keeps rows 0, step, 2·step, … with their keys, filter fields and codes.
    #[test]
    fn every_samples_rows_with_their_columns() {
        let rows: Vec<NewRow> = (0..10u64).map(|k| NewRow { key: k * 10, meta: meta(k as f64), f32s: vec![k as f32, 1.0, 0.5], bytes: vec![] }).collect();
        let seg = merge_rows(&Segment::empty(3), rows, false);
        let s = seg.every(4, false);
        assert_eq!(&*s.keys, &[0, 40, 80]);
        for (j, i) in [0usize, 4, 8].into_iter().enumerate() {
            assert_eq!((s.meta(j), s.vector(j), s.coded(j)), (seg.meta(i), seg.vector(i), seg.coded(i)), "row {i}");
        }
    }

    /// Merging two sketched patch segments copies each row's sketches with the row: the same
    /// bytes as building them over the merged segment. A side without sketches leaves the
    /// merge without them (for `build_sketches` to build), never with rows misaligned.
    #[test]
    fn image_rows_sketches_survive_a_merge_and_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 70;
        let seg_of = |keys: &[u64]| {
            let mut b = SegmentBuilder::new(dim, keys.len(), false);
            for &k in keys {
                let v: Vec<f32> = (0..dim).map(|i| ((i as f32 * 0.7 + k as f32) * 0.41).sin()).collect();
                b.push(k, meta(k as f64), &v, &[]);
            }
            b.finish()
        };
        let (mut a, mut b) = (seg_of(&[2, 3, 8]), seg_of(&[1, 5, 9, 11]));
        a.build_row_sketches(2);
        assert_eq!(a.sketches(1).len(), crate::index::sketch::record_bytes(dim));
        assert!(merge(&a, &b, false).sketch.is_empty(), "one side without sketches");
        b.build_row_sketches(1);
        let merged = merge(&a, &b, false);
        let mut rebuilt = merge(&a, &b, false);
        rebuilt.sketch = Col::Owned(Vec::new());
        rebuilt.build_row_sketches(1);
        assert_eq!(&*merged.sketch, &*rebuilt.sketch);
        let p = dir.path().join("i.arena");
        write_snapshot(&p, &merged, 9, false).unwrap();
        let (back, seq, old) = read_snapshot(&p, dim, false).unwrap();
        assert_eq!((seq, old), (9, false));
        assert_eq!(&*back.sketch, &*merged.sketch);
        assert_eq!(&*back.codes, &*merged.codes);
    }

    #[test]
    fn merge_carries_patch_sketches_with_their_rows() {
        use crate::store::codec;
        let (dim, per) = (8, 4);
        let stride = per * codec::patch_stride(dim);
        let seg_of = |keys: &[u64]| {
            let mut b = SegmentBuilder::new(stride, keys.len(), true);
            for &k in keys {
                let v: Vec<f32> = (0..dim * per).map(|i| ((i as f32 * 1.3 + k as f32) * 0.37).sin()).collect();
                b.push(k, meta(k as f64), &[], &codec::encode_patch_grid(&v, dim));
            }
            b.finish()
        };
        let (mut a, mut b) = (seg_of(&[1, 4, 6, 9]), seg_of(&[0, 5, 7, 12, 13]));
        a.build_sketches(per, dim, 1);
        let unsketched = merge(&a, &b, true);
        assert!(unsketched.sketch.is_empty(), "one side without sketches");
        b.build_sketches(per, dim, 1);
        let merged = merge(&a, &b, true);
        assert_eq!(&*merged.keys, &[0, 1, 4, 5, 6, 7, 9, 12, 13]);
        let mut rebuilt = merge(&a, &b, true);
        rebuilt.sketch = Col::Owned(Vec::new());
        rebuilt.build_sketches(per, dim, 1);
        assert_eq!(merged.sketch.len(), rebuilt.sketch.len());
        for i in 0..merged.len() {
            assert_eq!(merged.sketches(i), rebuilt.sketches(i), "row {i}");
        }
        // An empty side takes nothing away.
        let alone = merge(&a, &Segment::empty(stride), true);
        assert_eq!(&*alone.sketch, &*a.sketch);
    }
}
