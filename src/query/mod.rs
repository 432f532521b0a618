//! Query planning and execution. Nothing here writes.
//!
//! The plan: cover the filter's boxes with geohash key ranges, count the rows inside them
//! (binary searches over the sorted arena), and pick a path:
//! - **exact**: at or below `Options::exact_threshold` candidates, or when asked, or with no
//!   graph: scan the candidate rows in key order, test each exactly, score exactly;
//! - **parts**: above it, in cos spaces with cone partitions: partitions scanned best bound
//!   first until no bound reaches the k-th exact score (exact; see [`crate::index::parts`]),
//!   given up within a budget when the bounds do not prune;
//! - **count**: above it (and up to `Options::prefilter_max`), one pass over the candidates'
//!   filter fields counts the rows that really pass. If they are few, or an exact scan of them
//!   is expected to compute fewer distances than a filtered graph walk would (`ef/sel × M`),
//!   the listed rows are scored exactly;
//! - **hnsw**: otherwise usearch's filtered search, the predicate a bitmap of the counted rows
//!   (or the exact filter read by row number when uncounted), each hit re-scored from the
//!   arena, plus an exact scan of rows not yet in the graph;
//! - **hnsw→exact**: when the graph returns fewer than `k` and more rows may match, the query
//!   falls back to the exact scan. Results are never short.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::db::{Options, SpaceIndex};
use crate::index::parts::{PartBound, Parts};
use crate::geo::region::PointTest;
use crate::geo::{hash, Filter, Region};
use crate::index::arena::{RowMeta, Segment};
use crate::index::hnsw;
use crate::index::nibble::{NibbleQuery, Nibbles};
use crate::index::resid::{Resid, ResidQuery};
use crate::index::scan::{self, Bound, Scored, TopK};
use crate::index::sketch::{self, SketchQuery};
use crate::store::codec;
use crate::{Error, Kind, Level, Record, RecordId, Result, SpaceDef};

/// Image-level (one vector per record) or patch-level (best patches of tiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryLevel {
    /// Whole records.
    #[default]
    Image,
    /// Patches of tiles.
    Patch,
}

/// A k-nearest-neighbour query with filters.
#[derive(Debug, Clone)]
pub struct Query {
    /// Space name.
    pub space: String,
    /// Query vector (normalised for cosine spaces by the planner).
    pub vector: Vec<f32>,
    /// Results wanted.
    pub k: usize,
    /// Space, time and kind filters.
    pub filter: Filter,
    /// Force the exact path.
    pub exact: bool,
    /// Patch level: visit at most this many tiles, best first by their mean patch's score
    /// (an approximate answer; see [`Query::max_tiles`]).
    pub max_tiles: Option<usize>,
    /// Image level: visit at most this many cone partitions, best bound first (an
    /// approximate answer; see [`Query::max_partitions`]).
    pub max_partitions: Option<usize>,
}

impl Query {
    /// A query with no filter.
    pub fn new(space: &str, vector: Vec<f32>, k: usize) -> Self {
        Query { space: space.into(), vector, k, filter: Filter::default(), exact: false, max_tiles: None, max_partitions: None }
    }
    /// Set the filter.
    pub fn filter(mut self, f: Filter) -> Self {
        self.filter = f;
        self
    }
    /// Force the exact path.
    pub fn exact(mut self, yes: bool) -> Self {
        self.exact = yes;
        self
    }
    /// Patch level: answer from at most `n` tiles of the region, those whose mean patch
    /// scores best against the query (from the tile summaries kept with the patch sketches),
    /// instead of the planner's exact tile scan or graph walk; more tiles only while fewer
    /// than k patches have passed (never short). Tiles whose bound cannot reach
    /// the k-th score are skipped, and when every tile the cap left out is ruled out by its
    /// bound the answer is exact on the stored codes (path `patch-exact`), else approximate
    /// (path `patch-probe`). Recall depends on how closely a tile's patches gather around
    /// their mean: a patch unlike the rest of its tile ranks its tile low. Ignored at the
    /// image level (the CLI and the HTTP API refuse it there), with [`Query::exact`], and
    /// where the snapshot has no sketches.
    pub fn max_tiles(mut self, n: Option<usize>) -> Self {
        self.max_tiles = n;
        self
    }
    /// Image level: answer from at most `n` of the space's cone partitions (the content
    /// clusters of [`crate::index::parts`]), best bound first (the query's angle to the
    /// centroid less the cluster's spread: the clusters that can hold the best rows), testing
    /// their rows against the filter, instead of the planner's exact answer; more
    /// partitions only while fewer than k rows have passed (never short). It is taken only
    /// where it should cost less than the exact range scan of the region (from about 1 % of
    /// the rows up; below that the exact scan answers, as it does when too few visited rows
    /// pass a time or kind filter to fill k within that scan's cost), and ignored with [`Query::exact`],
    /// at the patch level (the CLI and the HTTP API refuse it there) and where the space has
    /// no partitions (an L2 space, or a base too small to keep them). The answer is exact
    /// (path `parts`) when every partition left out is ruled out by its bound, else
    /// approximate (path `parts-probe`); recall grows with `n` and with how tightly a
    /// query's neighbours gather in content clusters (measured at 1M rows: 4 of 1,000
    /// partitions gave recall@10 0.71 / 0.80 / 0.65 at 1 / 10 / 100 % selectivity).
    pub fn max_partitions(mut self, n: Option<usize>) -> Self {
        self.max_partitions = n;
        self
    }
}

/// The patch of a patch-level hit.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchHit {
    /// Grid row (0 at the top of the tile).
    pub row: u16,
    /// Grid column (0 at the left).
    pub col: u16,
    /// The patch footprint, a closed lon/lat ring.
    pub footprint: Vec<[f64; 2]>,
}

/// One result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Internal key.
    pub key: u64,
    /// Id as ingested.
    pub id: RecordId,
    /// Tile or photo.
    pub kind: Kind,
    /// Similarity: cosine for `cos`, dot product for `ip`, −L2² for `l2`.
    pub score: f32,
    /// Position (the photo, or the tile's centre).
    pub lon: f64,
    /// Position latitude.
    pub lat: f64,
    /// 12-character geohash of the position.
    pub geohash: String,
    /// Distance from the `--near` centre, km.
    pub distance_km: Option<f64>,
    /// Time, microseconds since the epoch.
    pub time: Option<i64>,
    /// Tile footprint (closed ring), for tiles.
    pub footprint: Option<Vec<[f64; 2]>>,
    /// The patch, for patch-level hits.
    pub patch: Option<PatchHit>,
}

/// Which path a query took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanPath {
    /// Exact scan of the candidates.
    Exact,
    /// Filtered HNSW.
    Hnsw,
    /// Filtered HNSW came up short; exact scan followed.
    HnswThenExact,
    /// Exact scan of patch grids.
    PatchExact,
    /// Exact scan of the patch partitions whose bound reaches the k-th score.
    PatchParts,
    /// (Filtered) HNSW over the patches, re-scored from their codes.
    PatchHnsw,
    /// The tile scan cut at [`Query::max_tiles`] tiles, best mean first, with tiles left
    /// out that might have held better patches: approximate.
    PatchProbe,
    /// Exact scan of the cone partitions whose bound reaches the k-th score.
    Parts,
    /// The partition scan cut at [`Query::max_partitions`] partitions, with partitions left
    /// out that might have held better rows: approximate.
    PartsProbe,
}

impl PlanPath {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanPath::Exact => "exact",
            PlanPath::Hnsw => "hnsw",
            PlanPath::HnswThenExact => "hnsw->exact",
            PlanPath::PatchExact => "patch-exact",
            PlanPath::PatchParts => "patch-parts",
            PlanPath::PatchHnsw => "patch-hnsw",
            PlanPath::PatchProbe => "patch-probe",
            PlanPath::Parts => "parts",
            PlanPath::PartsProbe => "parts-probe",
        }
    }
}

/// What the planner did.
#[derive(Debug, Clone, PartialEq)]
pub struct Explain {
    /// Path taken.
    pub path: PlanPath,
    /// Rows in the space.
    pub rows: u64,
    /// Candidate rows inside the cover (an over-estimate of matches).
    pub estimate: u64,
    /// Key ranges in the cover.
    pub ranges: usize,
    /// Rows tested against the filter.
    pub tested: u64,
    /// Rows that matched the filter among those tested.
    pub matched: u64,
    /// Threshold in force.
    pub exact_threshold: u64,
    /// Rows not yet in the graph, scanned exactly.
    pub unindexed: u64,
    /// Rows whose f32 vector was read: on the exact path, the rows whose bounded i8 score
    /// could still make the top k (the others were ruled out from their i8 codes alone). At
    /// the patch level, the patches whose codes were read (the tile scan rules the others out
    /// from their sketches or their tile's bound), or that the patch graph found.
    pub rescored: u64,
    /// Rows that passed the filter and were ruled out by the two-bit sketch of their codes
    /// alone, their codes never read (image-level exact scan; see [`crate::index::sketch`]),
    /// or left out of a capped partition scan's short list by the two-bit codes of their
    /// residuals (see [`crate::index::resid`]).
    pub sketched: u64,
    /// Cone partitions scanned (`parts` path), of the space's partitions.
    pub partitions: u64,
    /// Microseconds spent.
    pub micros: u64,
}

/// Hits and how they were found.
#[derive(Debug, Clone)]
pub struct SearchResult {
    /// Best first.
    pub hits: Vec<Hit>,
    /// The plan.
    pub explain: Explain,
}

/// Counts of paths taken, for tests and `stats`.
#[derive(Debug, Default)]
pub struct PlanCounters {
    /// Exact scans.
    pub exact: AtomicU64,
    /// Graph searches that filled k.
    pub hnsw: AtomicU64,
    /// Graph searches that fell back to exact.
    pub fallback: AtomicU64,
    /// Patch scans.
    pub patch: AtomicU64,
    /// Exact scans of cone partitions (not in [`PlanCounters::snapshot`]).
    pub parts: AtomicU64,
}

impl PlanCounters {
    /// `(exact, hnsw, fallback, patch)`.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.exact.load(Ordering::Relaxed),
            self.hnsw.load(Ordering::Relaxed),
            self.fallback.load(Ordering::Relaxed),
            self.patch.load(Ordering::Relaxed),
        )
    }
}

type Records<'a> = redb::ReadOnlyTable<u64, &'static [u8]>;

/// Row filter: the exact test of a row's fields against the query filter.
struct Matcher<'a> {
    filter: &'a Filter,
    boxes: Option<Vec<[f64; 4]>>,
    /// The filter's regions, prepared for testing many points.
    tests: Vec<PointTest<'a>>,
    recs: &'a Records<'a>,
    /// The filter is regions alone (no time, photos or any kind): a photo's record key can
    /// decide it ([`Matcher::by_cell`]).
    keyed: bool,
}

impl<'a> Matcher<'a> {
    fn new(filter: &'a Filter, recs: &'a Records<'a>) -> Self {
        let keyed = !filter.regions.is_empty() && filter.from.is_none() && filter.to.is_none() && filter.kind.is_none_or(|k| k == Kind::Photo);
        Matcher { filter, boxes: filter.bboxes(), tests: filter.regions.iter().map(PointTest::new).collect(), recs, keyed }
    }

    /// The whole test of a photo whose record key is `key`, where the key's geohash cell
    /// decides it for every region ([`PointTest::cell`]) and the filter is regions alone;
    /// `None` where the row's own fields must be read.
    #[inline]
    fn by_cell(&self, key: u64) -> Option<bool> {
        if !self.keyed {
            return None;
        }
        let mut all = true;
        for t in &self.tests {
            match t.cell(key) {
                Some(false) => return Some(false),
                Some(true) => {}
                None => all = false,
            }
        }
        all.then_some(true)
    }

    /// The part of the test that needs only the arena's filter fields: kind, time and, for
    /// photos, the exact region test; for tiles, whether the bounding box can touch the
    /// region. A row failing it does not match; a tile passing it may still need
    /// [`Matcher::footprint_ok`].
    #[inline]
    fn quick(&self, m: &RowMeta) -> bool {
        if self.filter.kind.is_some_and(|k| k != m.kind) || !self.filter.time_ok(m.time) {
            return false;
        }
        if self.filter.regions.is_empty() {
            return true;
        }
        match m.kind {
            Kind::Photo => self.tests.iter().all(|t| t.contains(m.bbox[0], m.bbox[1])),
            Kind::Tile => {
                let b = m.bbox;
                self.boxes.as_ref().is_none_or(|bs| bs.iter().any(|c| b[0] <= c[2] && b[2] >= c[0] && b[1] <= c[3] && b[3] >= c[1]))
            }
        }
    }

    /// True when a row that passed [`Matcher::quick`] must still have its footprint read.
    fn needs_footprint(&self, m: &RowMeta) -> bool {
        m.kind == Kind::Tile && !self.filter.regions.is_empty()
    }

    /// The footprint test of a tile (reads its record).
    fn footprint_ok(&self, key: u64) -> bool {
        match footprint(self.recs, key) {
            Some(ring) => self.filter.regions.iter().all(|r| r.intersects_ring(&ring)),
            None => false,
        }
    }

    /// The whole exact test.
    #[inline]
    fn matches(&self, key: u64, m: &RowMeta) -> bool {
        self.quick(m) && (!self.needs_footprint(m) || self.footprint_ok(key))
    }
}

fn footprint(recs: &Records<'_>, key: u64) -> Option<Vec<[f64; 2]>> {
    let v = recs.get(key).ok()??;
    match codec::decode_record(v.value()).ok()? {
        Record::Tile(t) => Some(t.footprint),
        Record::Photo(_) => None,
    }
}

/// Key ranges covering the filter, expanded by the largest tile half-extent.
fn cover(filter: &Filter, expand: f64) -> Vec<(u64, u64)> {
    let Some(boxes) = filter.bboxes() else { return vec![(0, u64::MAX)] };
    let mut all = Vec::new();
    for b in boxes {
        let e = [(b[0] - expand).max(-180.0), (b[1] - expand).max(-90.0), (b[2] + expand).min(180.0), (b[3] + expand).min(90.0)];
        all.extend(hash::cover_bbox(e, 64, 40));
    }
    hash::merge_ranges(all)
}

/// The rows of a space's two segments inside a query's key ranges, found once per query
/// (the planner counts them, the scans read them).
struct Rows {
    /// Row ranges of the base segment, ascending.
    base: Vec<Range<usize>>,
    /// Row ranges of the delta, ascending.
    delta: Vec<Range<usize>>,
}

impl Rows {
    fn new(st: &SpaceIndex, ranges: &[(u64, u64)]) -> Self {
        let rows = |seg: &Segment| {
            let mut r = seg.rows_in_sorted(ranges);
            r.retain(|r| !r.is_empty());
            r
        };
        Rows { base: rows(&st.base), delta: rows(&st.delta) }
    }
    /// Rows of the base inside the ranges.
    fn in_base(&self) -> u64 {
        self.base.iter().map(|r| r.len() as u64).sum()
    }
    /// Rows of both segments inside the ranges: the planner's estimate.
    fn total(&self) -> u64 {
        self.in_base() + self.delta.iter().map(|r| r.len() as u64).sum::<u64>()
    }
}

/// The cost of scanning one row from its i8 codes, relative to one distance of a graph walk
/// (which reads a random row's i8 codes). Measured on the 100k benchmark at 50 %
/// selectivity: the scan of 50k rows and a walk of ef = 543 both took ~2.9 ms, and the
/// walk's estimate is 17.4k distances, so one scanned row ≈ 0.35 distances. Set a little
/// lower so that a near-tie goes to the scan, whose answer is exact.
const SCAN_COST_I8: f64 = 0.3;

/// Scores the rows that pass the filter, keeping the best `k`.
///
/// In `cos` and `ip` spaces a row is first scored from its i8 codes, as an upper bound
/// ([`Bound`]); [`Scorer::settle`] then reads the f32 vectors of the best bounds, and of every
/// other row whose bound still reaches the k-th exact score. The result is the f32 scan's,
/// reading about a quarter of its bytes. `l2` spaces are scored in f32 directly.
struct Scorer<'a> {
    def: &'a SpaceDef,
    q: &'a [f32],
    bound: Option<Bound>,
    /// Bounded rows waiting for [`Scorer::settle`]: (upper bound, segment, row).
    cands: Vec<(f32, u8, u32)>,
    /// The best k, each with where its row lies ([`row_at`]).
    top: TopK<u32>,
    rescored: u64,
}

impl<'a> Scorer<'a> {
    /// A scorer of `q` keeping the best `k`, sized for about `rows` bounded rows (capped).
    fn new(def: &'a SpaceDef, q: &'a [f32], k: usize, rows: u64) -> Self {
        let bound = matches!(def.metric, crate::Metric::Cos | crate::Metric::Ip).then(|| Bound::new(q));
        let cands = Vec::with_capacity(if bound.is_some() { rows.min(CANDS_PRESIZED) as usize } else { 0 });
        Scorer { def, q, bound, cands, top: TopK::new(k), rescored: 0 }
    }

    /// Score row `i` of `seg` (segment number `sn`: 0 base, 1 delta), which passed the filter.
    #[inline]
    fn offer(&mut self, seg: &Segment, sn: u8, i: usize, key: u64) {
        self.offer_coded(seg.coded(i), seg, sn, i, key);
    }

    /// [`Scorer::offer`] with the row's codes read from wherever they are held (the
    /// segment, or the partitions' copy); rows without codes, or a space without a bound,
    /// are scored in f32.
    #[inline]
    fn offer_coded(&mut self, coded: Option<(&[i8], f32, f32)>, seg: &Segment, sn: u8, i: usize, key: u64) {
        if let (Some(b), Some((codes, scale, rho))) = (&self.bound, coded) {
            self.cands.push((b.upper(codes, scale, rho), sn, i as u32));
        } else {
            self.rescored += 1;
            score_row(self.def, self.q, seg.vector(i), key, row_at(sn, i), &mut self.top);
        }
    }

    /// [`Scorer::offer_coded`] that drops a coded row at once when its bound is below
    /// `floor` (a k-th score already reached: such a row cannot make the top k). The row's
    /// key is read only where it is scored at once (no bound).
    #[inline]
    fn offer_coded_above(&mut self, coded: Option<(&[i8], f32, f32)>, floor: f32, seg: &Segment, sn: u8, i: usize) {
        if let (Some(b), Some((codes, scale, rho))) = (&self.bound, coded) {
            let upper = b.upper(codes, scale, rho);
            if upper >= floor {
                self.cands.push((upper, sn, i as u32));
            }
        } else if let Some(&key) = seg.keys.get(i) {
            self.offer_coded(coded, seg, sn, i, key);
        }
    }

    /// Drop everything offered and kept so far (the f32 read count stays).
    fn reset(&mut self) {
        self.cands.clear();
        self.top = TopK::new(self.top.capacity());
    }

    /// Read f32 for the bounded rows that can still make the top k, leaving the top k in
    /// `self.top` and no rows waiting.
    fn settle(&mut self, segs: [&Segment; 2]) {
        let mut cands = std::mem::take(&mut self.cands);
        let first = (self.top.capacity() * 2).max(32).min(cands.len());
        if first < cands.len() {
            cands.select_nth_unstable_by(first, |a, b| b.0.total_cmp(&a.0));
        }
        // Best bounds first, so the threshold rises fast and later rows can be skipped.
        cands[..first].sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        for &(_, sn, i) in cands.iter().take(RESCORE_AHEAD) {
            segs[usize::from(sn).min(1)].prefetch_vector(i as usize);
        }
        for (j, &(upper, sn, i)) in cands.iter().enumerate() {
            if upper >= self.top.threshold() {
                // The f32 rows are read out of order: start loading one a few candidates
                // ahead while this one is scored (it is read if its bound still reaches).
                if let Some(&(_, next_sn, next)) = cands.get(j + RESCORE_AHEAD).filter(|c| c.0 >= self.top.threshold()) {
                    segs[usize::from(next_sn).min(1)].prefetch_vector(next as usize);
                }
                self.rescore(segs, sn, i);
            }
        }
    }

    /// Score row `i` of segment `sn` in f32.
    #[inline]
    fn rescore(&mut self, segs: [&Segment; 2], sn: u8, i: u32) {
        let seg = segs[usize::from(sn).min(1)];
        let i = i as usize;
        if let Some(&key) = seg.keys.get(i) {
            self.rescored += 1;
            seg.prefetch_id(i);
            score_row(self.def, self.q, seg.vector(i), key, row_at(sn, i), &mut self.top);
        }
    }
}

/// At most this many bounded rows are room made for before a scan (more grow the list): a
/// small region's rows are all bounded without reallocating.
const CANDS_PRESIZED: u64 = 4_096;

/// How many candidates ahead [`Scorer::settle`] starts loading a row's f32 vector.
const RESCORE_AHEAD: usize = 2;

/// The filtered graph walk when `passing` of `rows` rows pass: its beam and its expected cost
/// in distances. Lower selectivity needs a wider beam for the walk to meet enough passing
/// nodes (ef = ef_search/√sel, at least `want`); the walk expands about ef/sel nodes and scores
/// each one's M neighbours. M is the image graphs' 16 for patch graphs too: their M of 32
/// made a walk ~1.2× dearer, not 2× (measured, see `hnsw::PATCH_CONNECTIVITY`): most of the
/// extra neighbours are already visited.
fn walk(opts: &Options, want: usize, passing: u64, rows: usize) -> (usize, f64) {
    let sel = (passing as f64 / rows.max(1) as f64).clamp(1e-6, 1.0);
    let ef = ((opts.ef_search as f64 / sel.sqrt()) as usize).clamp(want.max(opts.ef_search), 4096);
    (ef, ef as f64 / sel * hnsw::CONNECTIVITY as f64)
}

/// How many times the graph walk's expected cost the partitions may spend before giving up:
/// their answer is exact and the graph's is not (at 1M the graph's recall is 0.84 unfiltered).
const GRAPH_PREMIUM: f64 = 4.0;

/// The cost of testing one row's filter fields, relative to scoring it from its i8 codes.
const FILTER_COST: f64 = 0.15;

/// What a capped partition scan costs per row it visits, against a row of the exact range
/// scan (filter test, bound, sometimes codes): measured at 1M rows, 4.5–10 ns against 26–29
/// ns, taken at half so that where the two are close the exact answer wins.
const CAPPED_VISIT_COST: f64 = 0.5;

/// The scan of the cone partitions ([`crate::index::parts`]): rows not yet partitioned (the
/// delta) first, then partitions best bound first until the next bound is below the k-th
/// exact score; every skipped row provably scores below it. With a `cap`
/// ([`Query::max_partitions`]) it also stops after that many partitions once the top k is
/// full. Returns the path (`Parts` when exact, `PartsProbe` when the cap left out a
/// partition that reached the k-th score), or `None`, with the scorer emptied, when the rows
/// it would still have to visit exceed `budget`; another path then answers.
#[allow(clippy::too_many_arguments)]
fn scan_parts(parts: &Parts, st: &SpaceIndex, rows: &Rows, cover: &[(u64, u64)], m: &Matcher<'_>, sc: &mut Scorer<'_>, budget: u64, cap: Option<usize>, use_shortlist: bool, ex: &mut Explain) -> Option<PlanPath> {
    let segs = [&st.base, &st.delta];
    let mut n = ScanCounts::default();
    scan_exact(segs, 1, &rows.delta, m, sc, &mut n);
    let (tested, mut matched) = (n.tested, n.matched);
    sc.settle(segs);
    // From the codes where the query has them (a quarter of the bytes of the f32 centroids);
    // under a cap only the best few are sorted, the rest if the scan gets there.
    let mut bounds = match &sc.bound {
        Some(b) => parts.bounds_coded(b),
        None => parts.bounds(sc.q),
    };
    let mut sorted = sort_best(&mut bounds, cap.map(|c| c.saturating_mul(4)));
    let filtered = !m.filter.is_empty();
    // The share of the base's rows inside the cover.
    let share = rows.in_base() as f64 / st.base.len().max(1) as f64;
    let metas = parts.metas();
    let mut visited = 0u64;
    let mut scanned = 0u64;
    // Positions of the rows that pass; their row numbers are read only for the rows whose
    // codes are offered (a scattered read each, wasted on rows the short list drops).
    let mut passing: Vec<usize> = Vec::new();
    let mut inside: Vec<(usize, u64)> = Vec::new();
    let mut path = PlanPath::Parts;
    // Under a cap, dense partitions' rows are ranked by their residual codes into a short
    // list whose i8 codes are read when the cap is reached (or the scan ends).
    let mut short = match (&sc.bound, cap) {
        (Some(b), Some(c)) if use_shortlist && c < parts.len() => RowShortlist::new(parts, b, row_shortlist_len(sc.top.capacity())),
        _ => None,
    };
    if filtered {
        if let Some(b) = bounds.first() {
            parts.prefetch_keyed(b.part as usize);
        }
    }
    for j in 0..bounds.len() {
        if j == sorted {
            sorted = j + sort_best(&mut bounds[j..], None);
        }
        // The next partition's keys in key order load while this one is scanned.
        if filtered && j + 1 < sorted {
            parts.prefetch_keyed(bounds[j + 1].part as usize);
        }
        if cap.is_some_and(|c| scanned as usize >= c) {
            if let Some(s) = short.as_mut() {
                s.rescore(parts, st, sc);
            }
        }
        let full = sc.top.len() >= sc.top.capacity();
        if full && bounds[j].bound < sc.top.threshold() {
            break;
        }
        if full && cap.is_some_and(|c| scanned as usize >= c) {
            // Cut: approximate if this or a later partition may hold a better row (the coded
            // bounds are sorted, so this one is the best of them).
            if parts.refine(&bounds[j], sc.q).bound >= sc.top.threshold() || bounds[j + 1..].iter().any(|b| b.bound >= sc.top.threshold() && parts.refine(b, sc.q).bound >= sc.top.threshold()) {
                path = PlanPath::PartsProbe;
            }
            break;
        }
        // The coded bound ordered the partitions; the f32 one, tighter, decides this one.
        let pb = &parts.refine(&bounds[j], sc.q);
        if full && pb.bound < sc.top.threshold() {
            continue;
        }
        // Once the k-th score is known, the rows still to visit are those of the partitions
        // whose bound reaches it; give up as soon as they would overrun the budget. Checked
        // after the 4th, 8th, 16th, … partition once the top k is full: the k-th score of the
        // first few partitions is still low and overstates what is left, and each check
        // costs a cut per partition still in reach (the per-partition test below caps the
        // rows visited at the budget whatever the checks say).
        if full && cap.is_none() && scanned >= 4 && scanned.is_power_of_two() && over_budget(parts, &bounds[j..], sc.q, sc.top.threshold(), budget.saturating_sub(visited)) {
            sc.reset();
            return None;
        }
        // Rows whose own angle to the centroid is too small to reach the k-th score are cut.
        let pos = parts.reaching(pb, sc.top.threshold());
        let reach = pos.len();
        visited += reach as u64;
        if visited > budget {
            sc.reset();
            return None;
        }
        // Two passes: the filter fields first, then the codes of the rows that passed, each
        // prefetched a few rows ahead (a partition's codes are one front-to-back stream, but
        // the hardware prefetcher stops at every 4 KB page, i.e. every 8 rows at 512-d).
        passing.clear();
        if let Some(s) = short.as_mut().filter(|_| !filtered && pos.len() >= ROW_SHORTLIST_MIN_ROWS) {
            matched += pos.len() as u64;
            s.estimate_range(parts, pb.part as usize, sc.q, pos);
            scanned += 1;
            continue;
        }
        if filtered {
            // The cover's key ranges first, from the key column alone; then the filter fields
            // of the rows inside it, each prefetched a few rows ahead (they are scattered).
            inside.clear();
            // By key when the binary searches and the partition's rows inside the cover cost
            // less than testing the keys of the positions still in reach (a prefix, after the
            // angle cut): at 10 % of rows the exact scan's cut prefixes are often short.
            let whole = parts.positions(pb.part as usize).len() as f64;
            let keyed_cost = whole * share + cover.len() as f64 * 2.0 * whole.max(2.0).log2();
            if cover.len() <= KEYED_MAX_RANGES && keyed_cost < KEYED_GAIN * pos.len() as f64 {
                for &(lo, hi) in cover {
                    parts.keyed_in(pb.part as usize, &pos, lo, hi, &mut inside);
                }
            } else {
                inside.extend(pos.filter_map(|j| parts.key(j).filter(|&key| in_cover(cover, key)).map(|key| (j, key))));
            }
            // In a partition of photos, most rows are decided by their key's geohash cell
            // (~38 m): inside or outside the region whatever the exact position. Only rows
            // of cells on the region's edge read their filter fields (three scattered cache
            // lines a row, the larger part of a 10 % query's filter pass before).
            if m.keyed && parts.photos_only(pb.part as usize) {
                inside.retain(|&(j, key)| match m.by_cell(key) {
                    Some(true) => {
                        passing.push(j);
                        false
                    }
                    Some(false) => false,
                    None => true,
                });
            }
            for (n, &(j, key)) in inside.iter().enumerate() {
                if let Some(&(ahead, _)) = inside.get(n + PREFETCH_META) {
                    metas.prefetch(ahead);
                }
                let Some(meta) = metas.get(j) else { continue };
                if m.matches(key, &meta) {
                    passing.push(j);
                }
            }
        } else {
            passing.extend(pos);
        }
        matched += passing.len() as u64;
        // Filtered too, wherever enough rows pass: a scattered row's residual record is one
        // place in memory (codes, scale and cosine together), against four for its i8 codes
        // (codes, scale, residual norm, row number). Before the records were laid out so, a
        // row's estimate cost as much as its i8 codes and the short list lost at 1 % and 10 %;
        // with them, 1M rows, 10 %, cap 5: the scan's mean per query 259 -> 177 µs (box).
        if let Some(s) = short.as_mut().filter(|_| passing.len() >= ROW_SHORTLIST_MIN_ROWS && (filtered || passing.len() * 2 >= reach)) {
            s.estimate_rows(parts, pb.part as usize, sc.q, &passing);
            scanned += 1;
            continue;
        }
        offer_positions(parts, st, sc, &passing);
        scanned += 1;
    }
    if let Some(s) = short.as_mut() {
        s.rescore(parts, st, sc);
        // Rows the short list left out were never scored: approximate even where the scan
        // ran out of partitions before the cap.
        if s.estimated > s.read {
            path = PlanPath::PartsProbe;
        }
        ex.sketched += s.estimated - s.read;
    }
    ex.tested += tested + visited;
    ex.matched += matched;
    ex.partitions = scanned;
    Some(path)
}

/// Offer the rows at partition positions `rows` (in the order their codes are read) to the
/// scorer on their i8 codes, each row's codes and row number fetched a few rows ahead, and
/// settle it. Rows whose bound is below the k-th score already held are not kept.
fn offer_positions(parts: &Parts, st: &SpaceIndex, sc: &mut Scorer<'_>, rows: &[usize]) {
    let floor = if sc.top.len() >= sc.top.capacity() { sc.top.threshold() } else { f32::NEG_INFINITY };
    for &j in rows.iter().take(PREFETCH_POSITIONS) {
        parts.prefetch_codes(j);
    }
    for (n, &j) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(n + PREFETCH_POSITIONS) {
            parts.prefetch_codes(ahead);
        }
        if let Some(row) = parts.row(j) {
            sc.offer_coded_above(parts.coded(j), floor, &st.base, 0, row as usize);
        }
    }
    sc.settle([&st.base, &st.delta]);
}

/// The best rows of a capped partition scan's dense partitions by their residual estimates
/// ([`crate::index::resid`]). Kept as a buffer of up to twice the list's length, cut to its
/// best `len` whenever it fills (a selection, not a heap: ~12k rows are offered at 100 %).
struct RowShortlist<'p> {
    len: usize,
    /// (estimate, position), those above `floor`.
    cands: Vec<(f32, u32)>,
    /// The `len`-th best estimate at the last cut (−∞ before the first).
    floor: f32,
    query: ResidQuery,
    codes: &'p Resid,
    /// The estimates of the partition at hand.
    est: Vec<f32>,
    /// Rows estimated, and those whose i8 codes the short lists sent to the scorer.
    estimated: u64,
    read: u64,
}

impl<'p> RowShortlist<'p> {
    /// An empty short list of `len` rows, where the query (`bound`'s codes) and the
    /// partitions' residual codes allow one (the codes made, `dim` a multiple of 256,
    /// AVX-512BW).
    fn new(parts: &'p Parts, bound: &Bound, len: usize) -> Option<Self> {
        let query = ResidQuery::new(&bound.codes, bound.code_scale).filter(ResidQuery::fast)?;
        let len = len.max(1);
        Some(RowShortlist { len, cands: Vec::with_capacity(2 * len), floor: f32::NEG_INFINITY, query, codes: parts.residuals()?, est: Vec::new(), estimated: 0, read: 0 })
    }

    #[inline]
    fn offer(&mut self, e: f32, j: usize) {
        if e > self.floor {
            self.cands.push((e, j as u32));
            if self.cands.len() >= 2 * self.len {
                self.cut();
            }
        }
    }

    /// Keep the best `len` candidates.
    fn cut(&mut self) {
        if self.cands.len() > self.len {
            self.cands.select_nth_unstable_by(self.len - 1, |a, b| b.0.total_cmp(&a.0));
            self.cands.truncate(self.len);
            self.floor = self.cands[self.len - 1].0;
        }
    }

    /// Short-list the positions `pos` of partition `p` (front to back, one stream).
    fn estimate_range(&mut self, parts: &Parts, p: usize, q: &[f32], pos: Range<usize>) {
        let Some(recs) = self.codes.records(pos.clone()) else { return };
        let qc = parts.centroid_dot(p, q);
        let mut est = std::mem::take(&mut self.est);
        est.clear();
        self.query.estimates(recs, qc, &mut est);
        self.estimated += est.len() as u64;
        for (j, &e) in pos.zip(&est) {
            self.offer(e, j);
        }
        self.est = est;
    }

    /// Short-list the listed positions of partition `p` (out of order, each record fetched
    /// a few ahead).
    fn estimate_rows(&mut self, parts: &Parts, p: usize, q: &[f32], pos: &[usize]) {
        let qc = parts.centroid_dot(p, q);
        let mut est = std::mem::take(&mut self.est);
        est.clear();
        self.query.estimates_at(self.codes, pos, qc, &mut est);
        self.estimated += est.len() as u64;
        for (&j, &e) in pos.iter().zip(&est) {
            self.offer(e, j);
        }
        self.est = est;
    }

    /// Offer the short-listed rows to the scorer on their i8 codes (in position order,
    /// fetched a few ahead) and settle it; the list is left empty.
    fn rescore(&mut self, parts: &Parts, st: &SpaceIndex, sc: &mut Scorer<'_>) {
        if self.cands.is_empty() {
            return;
        }
        self.cut();
        let mut picked: Vec<usize> = self.cands.drain(..).map(|(_, j)| j as usize).collect();
        self.floor = f32::NEG_INFINITY;
        picked.sort_unstable();
        self.read += picked.len() as u64;
        offer_positions(parts, st, sc, &picked);
    }
}

/// How many rows a capped partition scan short-lists by their residual estimates for `k`.
/// Measured on the peers' 1M rows (100 %, cap 4: 12,400 rows visited, recall 0.741 reading
/// every row's i8 codes): 128 / 192 / 256 / 384 rows keep 0.707 / 0.727 / 0.733 / 0.741 in
/// 0.178 / 0.189 / 0.203 / 0.226 ms (0.37 ms without the short list); 192 keeps 98 %.
fn row_shortlist_len(k: usize) -> usize {
    k.saturating_mul(ROW_SHORTLIST_PER_HIT).max(ROW_SHORTLIST_MIN)
}
const ROW_SHORTLIST_MIN: usize = 192;
const ROW_SHORTLIST_PER_HIT: usize = 19;
/// A partition with fewer rows to score than this reads their i8 codes directly.
const ROW_SHORTLIST_MIN_ROWS: usize = 64;

/// Sort the best `best` partition bounds (all of them when `None`) to the front, best first;
/// returns how many are sorted.
fn sort_best(bounds: &mut [PartBound], best: Option<usize>) -> usize {
    let by = |a: &PartBound, b: &PartBound| b.bound.total_cmp(&a.bound);
    match best.filter(|&n| n < bounds.len()) {
        Some(n) => {
            bounds.select_nth_unstable_by(n, by);
            bounds[..n].sort_unstable_by(by);
            n
        }
        None => {
            bounds.sort_unstable_by(by);
            bounds.len()
        }
    }
}

/// Whether `key` lies in one of the sorted, disjoint, inclusive key ranges of a cover.
#[inline]
fn in_cover(cover: &[(u64, u64)], key: u64) -> bool {
    match (cover.first(), cover.last()) {
        (Some(a), Some(b)) if key >= a.0 && key <= b.1 => {}
        _ => return false,
    }
    let i = cover.partition_point(|r| r.1 < key);
    cover.get(i).is_some_and(|r| r.0 <= key)
}

/// True when the rows of `rest` (partitions in bound order) that can still reach the k-th
/// score `t` are more than `left`. Stops counting as soon as they are: whole partitions first
/// (no cut needed while even they fit), then each partition's cut.
fn over_budget(parts: &Parts, rest: &[PartBound], q: &[f32], t: f32, left: u64) -> bool {
    let reach = rest.iter().take_while(|x| x.bound >= t);
    if reach.clone().map(|x| parts.positions(x.part as usize).len() as u64).sum::<u64>() <= left {
        return false;
    }
    let mut n = 0u64;
    for x in reach {
        n += parts.reaching(&parts.refine(x, q), t).len() as u64;
        if n > left {
            return true;
        }
    }
    false
}

/// How many passing rows ahead [`offer_rows`] and [`scan_patch_parts`] prefetch a
/// row's codes.
const PREFETCH_ROWS: usize = 4;

/// How many rows ahead [`offer_positions`] prefetches a row's codes, scale, residual norm
/// and row number (four cache misses a scattered row, more in flight than [`PREFETCH_ROWS`]
/// allows).
const PREFETCH_POSITIONS: usize = 8;

/// Up to this many key ranges in a cover, [`scan_parts`] finds a partition's rows inside them
/// by binary search over the partition's keys in key order ([`Parts::keyed_in`]), instead of
/// testing every row's key against the ranges.
const KEYED_MAX_RANGES: usize = 64;

/// The keyed lookup is taken when its estimated steps are below this share of the positions
/// a key pass would test (it returns rows out of position order, so it must win clearly).
const KEYED_GAIN: f64 = 0.5;

/// How many rows inside the cover ahead [`scan_parts`] prefetches a row's filter fields.
const PREFETCH_META: usize = 8;

/// What an exact scan did, for [`Explain`].
#[derive(Default)]
struct ScanCounts {
    tested: u64,
    matched: u64,
    sketched: u64,
}

impl ScanCounts {
    fn add_to(&self, ex: &mut Explain) {
        ex.tested += self.tested;
        ex.matched += self.matched;
        ex.sketched += self.sketched;
    }
}

/// Offer every row of segment `sn` of `segs` in `rows` that passes the whole filter.
fn scan_exact(segs: [&Segment; 2], sn: u8, rows: &[Range<usize>], m: &Matcher<'_>, sc: &mut Scorer<'_>, ex: &mut ScanCounts) {
    let seg = segs[usize::from(sn).min(1)];
    let (keys, metas): (&[u64], _) = (&seg.keys, seg.metas());
    let total: usize = rows.iter().map(|r| r.len()).sum();
    if total <= PREFETCH_ALL_ROWS {
        // A small region's rows lie in a few short runs, too short for the hardware to see
        // a stream in: ask for all their filter fields at once.
        for r in rows {
            metas.prefetch_rows(r.clone());
            scan::prefetch(keys.get(r.clone()).unwrap_or(&[]));
        }
    }
    let sketch = sketch_query(seg, sc, total);
    // Two passes per row range, as in `scan_parts`: the filter fields, then the passing rows'
    // codes, each prefetched a few passing rows ahead. With sketches the second pass waits
    // for the rows of every range (`scan_sketched`), and so it does in a small region, whose
    // short runs would each restart the prefetch: there a passing row's codes are asked for
    // as soon as it passes.
    let small = sketch.is_none() && total <= PREFETCH_ALL_ROWS;
    let whole = small || sketch.is_some();
    let mut passing: Vec<u32> = Vec::with_capacity(if whole { total } else { 0 });
    for r in rows {
        if !whole {
            passing.clear();
        }
        for i in r.clone() {
            let (Some(&key), Some(meta)) = (keys.get(i), metas.get(i)) else { continue };
            ex.tested += 1;
            if m.matches(key, &meta) {
                if small {
                    seg.prefetch_codes(i);
                }
                passing.push(i as u32);
                ex.matched += 1;
            }
        }
        if !whole {
            offer_rows(seg, sn, &passing, sc);
        }
    }
    match sketch {
        Some(sq) => scan_sketched(segs, sn, &passing, sc, &sq, ex),
        None if small => offer_rows(seg, sn, &passing, sc),
        None => {}
    }
}

/// At most this many rows in its key ranges, [`scan_exact`] asks for all their filter fields
/// before testing the first (~50 lines a 64 rows).
const PREFETCH_ALL_ROWS: usize = 1_024;

/// Offer rows `rows` of segment `sn` (`seg`), which passed the filter, prefetching each
/// row's codes a few rows ahead.
fn offer_rows(seg: &Segment, sn: u8, rows: &[u32], sc: &mut Scorer<'_>) {
    for &i in rows.iter().take(PREFETCH_ROWS) {
        seg.prefetch_codes(i as usize);
    }
    for (n, &i) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(n + PREFETCH_ROWS) {
            seg.prefetch_codes(ahead as usize);
        }
        if let Some(&key) = seg.keys.get(i as usize) {
            sc.offer(seg, sn, i as usize, key);
        }
    }
}

/// A sketch query for scanning `rows` rows of `seg` when the segment has row sketches, the
/// rows are enough to pay for them ([`SKETCH_MIN_ROWS`]) and the CPU scores them fast.
fn sketch_query(seg: &Segment, sc: &Scorer<'_>, rows: usize) -> Option<SketchQuery> {
    if rows < SKETCH_MIN_ROWS || seg.sketch_row() != sketch::record_bytes(seg.stride) {
        return None;
    }
    sc.bound.as_ref().and_then(|b| SketchQuery::new(sc.q, b)).filter(SketchQuery::fast)
}

/// Below this many rows in its key ranges the exact scan bounds every passing row from its
/// codes directly: preparing the sketch query and the seed pass cost more than the sketches
/// save (measured at 1M rows: at 0.1 % the region rarely holds the query's content, the k-th
/// score is low, and the sketches rule out ~20 % of ~1,000 rows).
const SKETCH_MIN_ROWS: usize = 4_096;

/// Rows of a sketched scan bounded from their codes first — the best sketch bounds — so the
/// k-th score is known before the rest are tested against it (at least `4·k`).
const SKETCH_SEED: usize = 64;

/// The rest of [`scan_exact`] or [`scan_rows`] over an image-level segment with row sketches,
/// given the rows that passed the filter: every passing row's sketch bound (`q·x̂` from the two-bit sketch of its codes, plus `‖q‖₂·ρ` for
/// the codes' own rounding: an upper bound of its f32 score); the rows with the best
/// [`SKETCH_SEED`] bounds are scored from their codes and settled in f32, which sets the k-th
/// score `t`; of the rest, only the rows whose sketch bound reaches `t` have their codes read.
/// The answer is the plain scan's: a row skipped here scores below a k-th score already held.
fn scan_sketched(segs: [&Segment; 2], sn: u8, passing: &[u32], sc: &mut Scorer<'_>, sq: &SketchQuery, ex: &mut ScanCounts) {
    let seg = segs[usize::from(sn).min(1)];
    let mut bounded: Vec<(f32, u32)> = Vec::new();
    sq.row_bounds(&seg.sketch, &seg.qres, passing, &mut bounded);
    let seed = SKETCH_SEED.max(4 * sc.top.capacity()).min(bounded.len());
    if seed < bounded.len() {
        bounded.select_nth_unstable_by(seed, |a, b| b.0.total_cmp(&a.0));
    }
    let first: Vec<u32> = bounded[..seed].iter().map(|b| b.1).collect();
    offer_rows(seg, sn, &first, sc);
    sc.settle(segs);
    let t = sc.top.threshold();
    let rest: Vec<u32> = bounded[seed..].iter().filter(|b| b.0 >= t).map(|b| b.1).collect();
    ex.sketched += (bounded.len() - seed - rest.len()) as u64;
    offer_rows(seg, sn, &rest, sc);
}

/// Score one row's vector and keep it if it makes the top k, with where it lies (`at`).
#[inline]
fn score_row(def: &SpaceDef, q: &[f32], v: &[f32], key: u64, at: u32, top: &mut TopK<u32>) {
    let s = scan::score(def.metric, q, v);
    if s >= top.threshold() {
        top.push(Scored { score: s, key, extra: at });
    }
}

/// Offer the listed rows of the base segment (already through [`Matcher::quick`]).
fn scan_rows(segs: [&Segment; 2], rows: &[u32], m: &Matcher<'_>, sc: &mut Scorer<'_>, ex: &mut ScanCounts) {
    let seg = segs[0];
    let (keys, metas): (&[u64], _) = (&seg.keys, seg.metas());
    // Counted rows passed `quick`; only a tile's footprint is left to test.
    let passes = |i: usize| match (keys.get(i), metas.get(i)) {
        (Some(&key), Some(meta)) => !m.needs_footprint(&meta) || m.footprint_ok(key),
        _ => false,
    };
    if let Some(sq) = sketch_query(seg, sc, rows.len()) {
        let passing: Vec<u32> = rows.iter().copied().filter(|&r| passes(r as usize)).collect();
        ex.matched += passing.len() as u64;
        return scan_sketched(segs, 0, &passing, sc, &sq, ex);
    }
    for &r in rows {
        let i = r as usize;
        if let (true, Some(&key)) = (passes(i), keys.get(i)) {
            ex.matched += 1;
            sc.offer(seg, 0, i, key);
        }
    }
}

/// One bit per base row: the rows a graph walk may return.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn from_rows(n: usize, rows: &[u32]) -> Self {
        let mut w = vec![0u64; n.div_ceil(64)];
        for &r in rows {
            if let Some(x) = w.get_mut(r as usize / 64) {
                *x |= 1 << (r % 64);
            }
        }
        Bitmap(w)
    }
    #[inline]
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
}

/// Execute a query against a space's index.
pub(crate) fn run(def: &SpaceDef, st: &SpaceIndex, q: &Query, recs: &Records<'_>, opts: &Options, counters: &PlanCounters) -> Result<SearchResult> {
    let t0 = Instant::now();
    if q.vector.len() != def.dim as usize {
        return Err(Error::invalid("--vector", format!("query has {} dimensions, space '{}' has {}", q.vector.len(), def.name, def.dim)));
    }
    if let Some(i) = q.vector.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid("--vector", format!("value {i} is NaN or infinite")));
    }
    let mut qv = q.vector.clone();
    if def.metric == crate::Metric::Cos && !scan::normalise(&mut qv) {
        return Err(Error::invalid("--vector", "a zero vector has no direction (cosine space)"));
    }
    let ranges = cover(&q.filter, st.max_half_extent);
    let rows = Rows::new(st, &ranges);
    let est = rows.total();
    let m = Matcher::new(&q.filter, recs);
    let mut ex = Explain {
        path: PlanPath::Exact,
        rows: (st.base.len() + st.delta.len()) as u64,
        estimate: est,
        ranges: ranges.len(),
        tested: 0,
        matched: 0,
        exact_threshold: opts.exact_threshold as u64,
        unindexed: st.delta.len() as u64,
        rescored: 0,
        sketched: 0,
        partitions: 0,
        micros: 0,
    };
    if let Level::Patch { rows: grid_rows, cols: grid_cols } = def.level {
        ex.path = PlanPath::PatchExact;
        let hits = run_patch(def, st, &rows, &m, &qv, q, opts, grid_rows, grid_cols, &mut ex)?;
        counters.patch.fetch_add(1, Ordering::Relaxed);
        ex.micros = t0.elapsed().as_micros() as u64;
        let hits = hits.into_iter().map(|(s, p)| (Scored { score: s.score, key: s.key, extra: NO_ROW }, p)).collect();
        return Ok(SearchResult { hits: finish(hits, [&st.base, &st.delta], recs, &q.filter)?, explain: ex });
    }
    let mut sc = Scorer::new(def, &qv, q.k, est);
    // Graph hits asked for: enough to re-score and still fill k after the filter.
    let want = (q.k * 3).max(40);
    // Rows of the base known to pass `Matcher::quick`, when the planner counted them.
    let mut listed: Option<Vec<u32>> = None;
    let graph = st.hnsw.as_ref().filter(|_| !q.exact && q.k > 0 && est as usize > opts.exact_threshold);
    // Below the exact threshold the range scan is already short (measured at 1M, 1 %: trying
    // the partitions first cost 0.5 ms more than it saved).
    let usable = st.parts.as_ref().filter(|p| opts.partitions && !q.exact && q.k > 0 && p.rows_total() == st.base.len());
    // A cap on the partitions (`Query::max_partitions`) is taken where visiting them should
    // cost less than the exact range scan: `cap` partitions of the average size, and about
    // `k·n/est` rows more to find k that pass when the region is small.
    let cap = q.max_partitions.filter(|&c| {
        usable.is_some_and(|p| {
            let n = st.base.len() as f64;
            let visits = c as f64 * n / p.len().max(1) as f64 + q.k as f64 * n / est.max(1) as f64;
            visits * CAPPED_VISIT_COST < est as f64
        })
    });
    let parts = usable.filter(|p| cap.is_some() || (est as usize > opts.exact_threshold && est >= 4 * p.len() as u64));
    if let Some(p) = parts {
        // Visit no more rows than the next best path costs, in graph-walk distances: the range
        // scan tests `est` rows and scores those that pass (at most `est`); the graph walk
        // computes about `ef/sel × M` distances, and the partitions may cost `GRAPH_PREMIUM`
        // times that, since their answer is exact. A visited row costs its filter test (when there is a filter) and
        // one bounded i8 score: rows of the query's content cluster pass a region filter far
        // more often than `sel` (content and place correlate: measured at 100k, 10 %), so a
        // visited row is assumed to pass.
        let visit_cost = if q.filter.is_empty() { 1.0 } else { FILTER_COST + 1.0 };
        let mut alt = est as f64 * (FILTER_COST + 1.0) * SCAN_COST_I8;
        if graph.is_some() {
            alt = alt.min(GRAPH_PREMIUM * walk(opts, want, est, st.base.len()).1);
        }
        // Under a cap, the rows visited may cost what the exact range scan would: more are
        // visited only when few rows pass (a time or kind filter the cover cannot see), and
        // then the exact scan answers instead.
        let budget = if cap.is_some() { (est as f64 / CAPPED_VISIT_COST) as u64 } else { (alt / (visit_cost * SCAN_COST_I8)) as u64 };
        if let Some(path) = scan_parts(p, st, &rows, &ranges, &m, &mut sc, budget, cap, opts.row_shortlist, &mut ex) {
            ex.path = path;
        }
    }
    if let Some(g) = graph.filter(|_| !matches!(ex.path, PlanPath::Parts | PlanPath::PartsProbe)) {
        let n = st.base.len().max(1);
        let unfiltered = q.filter.is_empty();
        let mut passing = if unfiltered { st.base.len() as u64 } else { est };
        // What scanning one passing row costs, in graph-walk distances: a walk's distance reads
        // a random f32 vector; the scan reads i8 codes in key order (and f32 for a few rows).
        let scan_cost = if sc.bound.is_some() && !st.base.codes.is_empty() { SCAN_COST_I8 } else { 1.0 };
        // An exact scan scores each passing row once, in memory order; the walk, see `walk`.
        let plan = |passing: u64| {
            let (ef, walk_cost) = walk(opts, want, passing, n);
            let exact = passing as usize <= opts.exact_threshold || (opts.cost_switch && !unfiltered && passing as f64 * scan_cost <= walk_cost);
            (ef, exact)
        };
        // Counting cannot change an exact verdict: fewer passing rows only make the walk dearer.
        let count = !unfiltered && est as usize <= opts.prefilter_max && !plan(est).1;
        if count {
            // Count what really passes: the cover over-estimates (time, kind, shape corners).
            let mut counted = Vec::new();
            let metas = st.base.metas();
            for r in &rows.base {
                for i in r.clone() {
                    ex.tested += 1;
                    if metas.get(i).is_some_and(|mm| m.quick(&mm)) {
                        counted.push(i as u32);
                    }
                }
            }
            passing = counted.len() as u64;
            listed = Some(counted);
        }
        let (ef, exact_cheaper) = plan(passing);
        if !exact_cheaper {
            g.change_expansion_search(ef);
            let bitmap = listed.as_deref().map(|rows| Bitmap::from_rows(st.base.len(), rows));
            let (keys, metas): (&[u64], _) = (&st.base.keys, st.base.metas());
            // Counted rows already passed `quick`; only a tile's footprint is left to test.
            let keep = |row: u64| -> bool {
                let i = row as usize;
                let counted = match &bitmap {
                    Some(b) if !b.get(i) => return false,
                    Some(_) => true,
                    None => false,
                };
                let (Some(meta), Some(&key)) = (metas.get(i), keys.get(i)) else { return false };
                if counted { !m.needs_footprint(&meta) || m.footprint_ok(key) } else { m.matches(key, &meta) }
            };
            let res = match sc.bound.as_ref().filter(|_| hnsw::codes(def.metric)) {
                Some(b) if unfiltered => g.search(&b.codes, want),
                Some(b) => g.filtered_search(&b.codes, want, keep),
                None if unfiltered => g.search(&qv, want),
                None => g.filtered_search(&qv, want, keep),
            }
            .map_err(|e| Error::Index(e.to_string()))?;
            for row in res.keys {
                sc.rescore([&st.base, &st.delta], 0, row as u32);
            }
            let mut n = ScanCounts::default();
            scan_exact([&st.base, &st.delta], 1, &rows.delta, &m, &mut sc, &mut n);
            n.add_to(&mut ex);
            ex.path = PlanPath::Hnsw;
            sc.settle([&st.base, &st.delta]);
            if sc.top.len() < q.k && (sc.top.len() as u64) < est {
                ex.path = PlanPath::HnswThenExact;
                sc.top = TopK::new(q.k);
            }
        }
    }
    match ex.path {
        PlanPath::Exact | PlanPath::HnswThenExact => {
            let mut n = ScanCounts::default();
            let segs = [&st.base, &st.delta];
            match &listed {
                Some(rows) => scan_rows(segs, rows, &m, &mut sc, &mut n),
                None => scan_exact(segs, 0, &rows.base, &m, &mut sc, &mut n),
            }
            scan_exact(segs, 1, &rows.delta, &m, &mut sc, &mut n);
            n.add_to(&mut ex);
        }
        _ => {}
    }
    sc.settle([&st.base, &st.delta]);
    ex.rescored = sc.rescored;
    let top = sc.top;
    match ex.path {
        PlanPath::Exact => counters.exact.fetch_add(1, Ordering::Relaxed),
        PlanPath::Parts | PlanPath::PartsProbe => counters.parts.fetch_add(1, Ordering::Relaxed),
        PlanPath::Hnsw => counters.hnsw.fetch_add(1, Ordering::Relaxed),
        _ => counters.fallback.fetch_add(1, Ordering::Relaxed),
    };
    let hits = top.into_sorted().into_iter().map(|s| (s, None)).collect();
    ex.micros = t0.elapsed().as_micros() as u64;
    Ok(SearchResult { hits: finish(hits, [&st.base, &st.delta], recs, &q.filter)?, explain: ex })
}

/// Bilinear point inside a tile footprint whose ring starts at the upper-left pixel corner
/// and runs UL, UR, LR, LL. `u` runs across columns, `v` down rows, both in [0, 1].
fn bilinear(c: &[[f64; 2]; 4], u: f64, v: f64) -> [f64; 2] {
    let top = [c[0][0] + (c[1][0] - c[0][0]) * u, c[0][1] + (c[1][1] - c[0][1]) * u];
    let bot = [c[3][0] + (c[2][0] - c[3][0]) * u, c[3][1] + (c[2][1] - c[3][1]) * u];
    [top[0] + (bot[0] - top[0]) * v, top[1] + (bot[1] - top[1]) * v]
}

/// The footprint of patch (row, col) of a `rows × cols` grid over a tile footprint.
pub fn patch_footprint(ring: &[[f64; 2]], rows: u16, cols: u16, row: u16, col: u16) -> Vec<[f64; 2]> {
    let corners: [[f64; 2]; 4] = match ring {
        [a, b, c, d, ..] if ring.len() == 5 => [*a, *b, *c, *d],
        _ => {
            let mut bb = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
            for [x, y] in ring {
                bb = [bb[0].min(*x), bb[1].min(*y), bb[2].max(*x), bb[3].max(*y)];
            }
            [[bb[0], bb[3]], [bb[2], bb[3]], [bb[2], bb[1]], [bb[0], bb[1]]]
        }
    };
    let (r, c) = (f64::from(rows.max(1)), f64::from(cols.max(1)));
    let (u0, u1) = (f64::from(col) / c, f64::from(col + 1) / c);
    let (v0, v1) = (f64::from(row) / r, f64::from(row + 1) / r);
    let p = |u, v| bilinear(&corners, u, v);
    vec![p(u0, v0), p(u1, v0), p(u1, v1), p(u0, v1), p(u0, v0)]
}

/// The region test of patch-level hits: the tile must match the whole filter, and a tile on
/// the region's edge contributes only the patches whose footprint touches every region.
/// A tile's footprint is read once per query.
struct PatchTest<'m, 'a> {
    m: &'m Matcher<'a>,
    rows: u16,
    cols: u16,
    /// Tiles tested so far: `None` when the tile fails, else its ring when it is on the edge.
    seen: HashMap<u64, Option<Option<Vec<[f64; 2]>>>>,
}

impl<'m, 'a> PatchTest<'m, 'a> {
    fn new(m: &'m Matcher<'a>, rows: u16, cols: u16) -> Self {
        PatchTest { m, rows, cols, seen: HashMap::new() }
    }

    /// The tile's verdict, and whether its patches must be tested one by one.
    fn tile(&mut self, key: u64, meta: &RowMeta) -> Option<&Option<Vec<[f64; 2]>>> {
        let m = self.m;
        if m.filter.regions.is_empty() {
            return if m.quick(meta) { Some(&None) } else { None };
        }
        self.seen
            .entry(key)
            .or_insert_with(|| {
                if !m.quick(meta) {
                    return None;
                }
                // A tile whose box lies inside every region is inside whole (its footprint
                // lies in its box): no need to read the footprint from the store.
                let b = meta.bbox;
                let inside = m.filter.regions.iter().all(|r| [(b[0], b[1]), (b[0], b[3]), (b[2], b[1]), (b[2], b[3])].iter().all(|&(x, y)| r.contains_point(x, y)) && !matches!(r, Region::Polygon(_)));
                if inside {
                    return Some(None);
                }
                let ring = footprint(m.recs, key)?;
                if !m.filter.regions.iter().all(|r| r.intersects_ring(&ring)) {
                    return None;
                }
                Some(Some(ring))
            })
            .as_ref()
    }

    /// Whether patch `p` of the tile counts.
    fn patch_ok(&mut self, key: u64, meta: &RowMeta, p: usize) -> bool {
        let (rows, cols) = (self.rows, self.cols);
        match self.tile(key, meta) {
            None => false,
            Some(None) => true,
            Some(Some(ring)) => {
                let pf = patch_footprint(ring, rows, cols, (p / usize::from(cols)) as u16, (p % usize::from(cols)) as u16);
                self.m.filter.regions.iter().all(|r| r.intersects_ring(&pf))
            }
        }
    }
}

/// Patch-level query: the best patches of the tiles that match. The cone partitions over
/// every patch ([`Parts`] with `per` = patches a grid) answer when the region holds enough
/// patches for them to pay, within a budget; otherwise, or when they give up, every patch
/// of every candidate tile is scored. Either way the ranking is exact on the stored codes.
#[allow(clippy::too_many_arguments)]
fn run_patch(def: &SpaceDef, st: &SpaceIndex, cand: &Rows, m: &Matcher<'_>, qv: &[f32], q: &Query, opts: &Options, rows: u16, cols: u16, ex: &mut Explain) -> Result<Vec<(Scored<()>, Option<PatchHit>)>> {
    let dim = def.dim as usize;
    let n = usize::from(rows) * usize::from(cols);
    let k = q.k;
    let mut top: TopK<u32> = TopK::new(k);
    let mut test = PatchTest::new(m, rows, cols);
    // Tiles not yet indexed first: their scores raise the k-th score the partitions must beat.
    let bound = Bound::new(qv);
    scan_patch_tiles(&st.delta, &cand.delta, &mut test, dim, n, qv, &bound, None, None, false, false, &mut top, ex);
    // What a path that gives up starts over from: its partial answer may hold base patches
    // the next path finds again.
    let delta_top = top.clone();
    let in_base = cand.in_base();
    // The patches the region can hold: those of the candidate tiles that pass the filter
    // (each tile tested once; the paths below reuse the verdicts). The key ranges over-count
    // tiles (measured on 10k tiles of 1–5 km at 0.1 % of them: 84 candidates for 11 that
    // pass), and an over-count sent the planner to the partitions, which then gave up.
    let tiles = if m.filter.is_empty() {
        in_base
    } else {
        let metas = st.base.metas();
        let mut tiles = 0;
        for i in cand.base.iter().flat_map(|r| r.clone()) {
            if let (Some(&key), Some(meta)) = (st.base.keys.get(i), metas.get(i)) {
                tiles += u64::from(test.tile(key, &meta).is_some());
            }
        }
        tiles
    };
    let items = tiles * n as u64;
    let indexed = !q.exact && k > 0;
    // The base's tile scan with tile bounds, and patch sketches where the CPU scores them fast.
    let sketch = SketchQuery::new(qv, &bound).filter(|_| !st.base.sketch.is_empty());
    // Costs in graph-walk distances, as at the image level: the tile scan visits every patch
    // of every candidate tile in memory order (most of them only as far as their tile's bound
    // or their sketch); the walk, see `walk`.
    let per_patch = match &sketch {
        Some(s) if s.fast() => PATCH_SCAN_COST_SKETCHED,
        Some(_) => PATCH_SCAN_COST_TILE_BOUNDS,
        None => PATCH_SCAN_COST,
    };
    // Without the cost switch (tests driving the graph and partitions on small data) the
    // scan is not priced: the graph answers above `exact_threshold`.
    let scan_cost = if opts.cost_switch { items as f64 * per_patch } else { f64::INFINITY };
    let want = (k * 3).max(40);
    let graph = st.hnsw.as_ref().filter(|g| indexed && g.size() == st.base.len() * n && items as usize > opts.exact_threshold);
    let walk_plan = graph.map(|_| walk(opts, want, items, st.base.len() * n));
    let min_fraction = if sketch.is_some() { PATCH_PARTS_MIN_FRACTION_SKETCHED } else { PATCH_PARTS_MIN_FRACTION };
    let parts = st.parts.as_ref().filter(|p| {
        opts.partitions && indexed && p.per() == n && p.rows_total() == st.base.len() * n && items >= PATCH_PARTS_MIN * (p.rows_total() / p.len().max(1)) as u64 && items as f64 >= min_fraction * p.rows_total() as f64
    });
    // A cap on the tiles visited (`Query::max_tiles`) replaces the planner's choice: the
    // tile scan, best mean patch first, answers alone.
    let cap = q.max_tiles.filter(|_| indexed && sketch.is_some());
    let mut done = false;
    if let Some(cap) = cap {
        if scan_patch_tiles(&st.base, &cand.base, &mut test, dim, n, qv, &bound, sketch.as_ref(), Some(cap), opts.tile_groups, opts.tile_shortlist, &mut top, ex) {
            ex.path = PlanPath::PatchProbe;
        }
        done = true;
    }
    if let (false, Some(p)) = (done, parts) {
        // A visited position costs a filter test and, when it passes, a score read out of
        // order; the partitions may spend what the tile scan would, or one graph walk.
        let alt = walk_plan.map_or(scan_cost, |(_, w)| scan_cost.min(PATCH_GRAPH_PREMIUM * w));
        let budget = (alt / ((1.0 + FILTER_COST) * SCAN_COST_I8)) as u64;
        done = scan_patch_parts(p, &mut test, qv, &bound, &mut top, budget, ex);
        if done {
            ex.path = PlanPath::PatchParts;
        } else {
            top = delta_top.clone();
        }
    }
    if let (false, Some(g), Some((ef, walk_cost))) = (done, graph, walk_plan) {
        if walk_cost < scan_cost {
            done = search_patch_graph(g, st, &mut test, qv, n, ef, want, in_base, &mut top, ex)?;
            if done {
                ex.path = PlanPath::PatchHnsw;
            } else {
                ex.path = PlanPath::HnswThenExact;
                top = delta_top.clone();
            }
        }
    }
    if !done {
        scan_patch_tiles(&st.base, &cand.base, &mut test, dim, n, qv, &bound, sketch.as_ref(), None, false, false, &mut top, ex);
    }
    let mut out = Vec::new();
    for s in top.into_sorted() {
        let ring = footprint(m.recs, s.key).unwrap_or_default();
        let (row, col) = ((s.extra as usize / usize::from(cols)) as u16, (s.extra as usize % usize::from(cols)) as u16);
        let fp = patch_footprint(&ring, rows, cols, row, col);
        out.push((Scored { score: s.score, key: s.key, extra: () }, Some(PatchHit { row, col, footprint: fp })));
    }
    Ok(out)
}

/// The patch tile scan's cost a patch of the candidate tiles, in the patch graph's walk
/// distances ([`walk`]), with sketches scored fast (AVX-512BW), with tile bounds alone, and
/// with neither (a version 3 snapshot). Measured on the peers' 10k-tile set (1.96M patches),
/// the scan forced and the graph walk (ef 384) on the same queries, p50: at 30 % of tiles the
/// scan took 5.7–6.5 ms (tile bounds alone 12.9) and the walk 10.6 ms (its estimate 37.4k
/// distances: ~0.28 µs each); at 50 % 8.7–9.1 ms (16.7) against 8.0 ms (17.4k, ~0.47 µs, mean
/// 10 ms against the scan's 9); at 100 % 12.2 ms (25.4) against 3.3 ms (6.1k, ~0.54 µs). A
/// patch costs 6–10 ns with sketches (~0.02 distances), 13–22 ns with tile bounds alone
/// (~0.04), ~58 ns with neither (10 % of tiles, before sketches: ~0.12). Set a little lower,
/// as `SCAN_COST_I8` is, so that a near-tie goes to the scan, whose answer is exact: with
/// sketches the planner now scans up to ~53 % of the patches there (38 % with tile bounds alone;
/// it took the walk from 16 % when it priced a patch at `SCAN_COST_I8`).
const PATCH_SCAN_COST_SKETCHED: f64 = 0.015;
/// See [`PATCH_SCAN_COST_SKETCHED`].
const PATCH_SCAN_COST_TILE_BOUNDS: f64 = 0.035;
/// See [`PATCH_SCAN_COST_SKETCHED`].
const PATCH_SCAN_COST: f64 = 0.1;

/// How many graph walks the patch partitions may cost before giving up. Less than the image
/// level's `GRAPH_PREMIUM`: patches carry more noise around their tile's content than images
/// do around a cluster, the cone bound is weaker, and measured on the peers' patch set (196k
/// patches) a budget of 4 walks let 3 of 50 unfiltered queries finish in the partitions at
/// 5–15 ms where the walk took ~1.3 ms.
const PATCH_GRAPH_PREMIUM: f64 = 1.0;

/// Patch partitions are tried when the candidate tiles hold at least this many average
/// partitions' worth of patches (below it the tile scan is short).
const PATCH_PARTS_MIN: u64 = 8;

/// Patch partitions are tried only when the region's tiles hold at least this fraction of all
/// patches. Every partition spans every region, so at a fraction f they visit about 1/f
/// positions for each one that passes the filter, and would have to prune more than 1 − f of
/// their positions to beat the tile scan. Measured on the peers' 10k-tile set at 1 % of tiles
/// (19.6k patches): trying them (bounds of 1,400 partitions, then positions up to the budget)
/// made queries 15–25 % slower than the tile scan alone.
const PATCH_PARTS_MIN_FRACTION: f64 = 0.05;

/// [`PATCH_PARTS_MIN_FRACTION`] where the tile scan has sketches and tile bounds: it is ~4×
/// cheaper a patch there (10k-tile set, 10 % of tiles: 11.4 → 2.8 ms), and merely computing
/// the partitions' bounds (1,400 × 512-d) cost 0.3 ms at 10 % before they gave up.
const PATCH_PARTS_MIN_FRACTION_SKETCHED: f64 = 0.2;

/// The patch graph's answer, added to `top` (which holds the delta's patches): the walk over
/// patch codes (`per` a grid, labelled `row × per + patch`) with the region test as predicate, each hit re-scored from its codes. False
/// when it came up short of k while the candidate tiles may hold more (the caller scans).
#[allow(clippy::too_many_arguments)]
fn search_patch_graph(g: &usearch::Index, st: &SpaceIndex, test: &mut PatchTest<'_, '_>, q: &[f32], per: usize, ef: usize, want: usize, in_base: u64, top: &mut TopK<u32>, ex: &mut Explain) -> Result<bool> {
    let dim = q.len();
    let mut codes = Vec::with_capacity(dim);
    scan::quantise(q, &mut codes);
    g.change_expansion_search(ef);
    let unfiltered = test.m.filter.is_empty();
    let metas = st.base.metas();
    let found = if unfiltered {
        g.search(&codes, want)
    } else {
        let cell = std::cell::RefCell::new(&mut *test);
        let keep = |item: u64| -> bool {
            let i = item as usize;
            let (row, p) = (i / per, i % per);
            let (Some(meta), Some(&key)) = (metas.get(row), st.base.keys.get(row)) else { return false };
            cell.try_borrow_mut().is_ok_and(|mut t| t.patch_ok(key, &meta, p))
        };
        g.filtered_search(&codes, want, keep)
    }
    .map_err(|e| Error::Index(e.to_string()))?;
    let mut hits = 0u64;
    for item in found.keys {
        let i = item as usize;
        let (row, p) = (i / per, i % per);
        let (Some(score), Some(&key)) = (codec::patch_dot(st.base.grid(row), dim, p, q), st.base.keys.get(row)) else { continue };
        hits += 1;
        top.push(Scored { score, key, extra: p as u32 });
    }
    ex.rescored += hits;
    Ok(top.len() >= top.capacity() || hits >= in_base * per as u64)
}

/// Score every patch of every tile of `seg` in `rows` that matches. A patch is first bounded
/// from its two-bit sketch (when `sketch` is given, the segment has sketches and the CPU
/// scores them fast: a quarter of the bytes of its codes, see [`sketch`]), then from the
/// query's i16 codes (an integer dot product, about half the work of the f32 one), and scored
/// exactly only when both bounds reach the k-th score, so the ranking stays exact on the
/// stored codes.
///
/// With sketches, tiles are visited best tile bound first ([`sketch::tile_bound`]), so the
/// k-th score rises at once, and the scan stops at the first tile whose bound is below it.
/// With a `cap` ([`Query::max_tiles`]) they are visited best mean patch first instead, at
/// most `cap` of them, skipping those whose bound is below the k-th score. Returns whether
/// the cap left out a tile whose bound reached the final k-th score (the answer is then
/// approximate).
#[allow(clippy::too_many_arguments)]
fn scan_patch_tiles(seg: &Segment, rows: &[Range<usize>], test: &mut PatchTest<'_, '_>, dim: usize, n: usize, q: &[f32], bound: &Bound, sketch: Option<&SketchQuery>, cap: Option<usize>, use_groups: bool, use_shortlist: bool, top: &mut TopK<u32>, ex: &mut Explain) -> bool {
    let sketch = sketch.filter(|_| !seg.sketch.is_empty());
    // A cap that leaves tiles out (an approximate answer already) may rank the patches of its
    // tiles most like the query by their four-bit codes (see `TileScan::score`): where it
    // holds at least `SHORTLIST_MIN_CAP` tiles. A cap of every tile the region holds reads
    // every patch's codes, as the exact scan does (`order` is known below).
    let mut tiles = TileScan { seg, dim, n, q, bound, stride: codec::patch_stride(dim), reach: Vec::with_capacity(n), shortlist: None, short: None, plain: 0, read: 0 };
    // With sketches: the matching tiles, each with the key they are visited by, its tile
    // bound and whether it is on the region's edge; without, each tile is scored as it is found.
    let mut order: Vec<(f32, f32, usize, bool)> = Vec::new();
    // The summaries side by side (gathered on first use): fetch a few tiles ahead, as the
    // region's rows skip tiles.
    let summary = |i: usize| seg.summary(i, n, dim);
    // Under a cap, a region that holds most tiles finds the tiles with the best mean patch
    // through the summaries' groups instead of scoring every summary.
    let in_region: usize = rows.iter().map(ExactSizeIterator::len).sum();
    let groups = match (cap, sketch) {
        (Some(c), Some(_)) if use_groups && by_groups(in_region, c.saturating_mul(GROUP_BEST), seg.len()) => seg.tile_groups(n, dim),
        _ => None,
    };
    let mut dropped = false;
    let mut grouped = false;
    if let (Some(g), Some(sq), Some(c)) = (groups, sketch, cap) {
        let budget = in_region / GROUP_GIVE_UP;
        let mut best = Vec::new();
        if let Some(left_out) = best_tiles_by_groups(g, rows, test, q, bound, c.saturating_mul(GROUP_BEST), budget, ex, &mut best) {
            for (i, edge) in best {
                let (mean, b) = summary(i).map_or((f32::INFINITY, f32::INFINITY), |sum| sketch::tile_score(bound, sq.norm(), sum));
                order.push((mean, b, i, edge));
            }
            (dropped, grouped) = (left_out, true);
        }
    }
    for r in rows.iter().filter(|_| !grouped) {
        for i in r.clone() {
            if sketch.is_some() && i + PREFETCH_TILES < r.end {
                scan::prefetch(summary(i + PREFETCH_TILES).unwrap_or(&[]));
            }
            let (Some(&key), Some(meta)) = (seg.keys.get(i), seg.meta(i)) else { continue };
            ex.tested += 1;
            // The tile's verdict once; a tile on the region's edge tests each patch that scores.
            let edge = match test.tile(key, &meta) {
                None => continue,
                Some(e) => e.is_some(),
            };
            ex.matched += 1;
            match sketch {
                Some(sq) => {
                    let (mean, b) = summary(i).map_or((f32::INFINITY, f32::INFINITY), |sum| sketch::tile_score(bound, sq.norm(), sum));
                    order.push((if cap.is_some() { mean } else { b }, b, i, edge));
                }
                None => tiles.score(i, key, &meta, edge, None, test, top),
            }
        }
    }
    if cap.is_some_and(|c| c >= SHORTLIST_MIN_CAP && c < order.len()) && use_shortlist {
        tiles.shortlist = Some(shortlist_len(top.capacity()));
    }
    // Under a cap only the first few tiles are visited: order those, and the rest only if
    // the scan gets there (tiles ruled out by their bound do not count against the cap).
    let best = |a: &(f32, f32, usize, bool), b: &(f32, f32, usize, bool)| b.0.total_cmp(&a.0);
    let mut sorted = match cap.map(|c| c.saturating_mul(CAP_SORTED)) {
        Some(m) if m < order.len() => {
            order.select_nth_unstable_by(m, best);
            m
        }
        _ => order.len(),
    };
    order[..sorted].sort_unstable_by(best);
    let mut left = cap.unwrap_or(usize::MAX);
    let (mut cut, mut capped) = (false, false);
    for j in 0..order.len() {
        if j == sorted {
            order[sorted..].sort_unstable_by(best);
            sorted = order.len();
        }
        let (_, b, i, edge) = order[j];
        if b < top.threshold() {
            if cap.is_none() {
                break;
            }
            continue;
        }
        // The cap counts once the top k is full: a region whose first tiles hold fewer than
        // k patches that pass is never answered short.
        if left == 0 && top.len() + tiles.short.as_ref().map_or(0, |s| s.top.len()) >= top.capacity() {
            let t = top.threshold();
            cut = order[j..].iter().any(|o| o.1 >= t);
            capped = true;
            break;
        }
        left = left.saturating_sub(1);
        let (Some(&key), Some(meta)) = (seg.keys.get(i), seg.meta(i)) else { continue };
        tiles.score(i, key, &meta, edge, sketch, test, top);
    }
    if let Some(short) = tiles.short.take() {
        tiles.rescore(short.top, top);
        cut = true;
    }
    ex.rescored += tiles.read;
    if dropped && !capped {
        // The cap was not reached within the best tiles the groups found: more than half of
        // them were ruled out by their bound, or they held fewer than k patches that pass (a
        // region whose tiles mostly lie across its edge). Scan the region's tiles one by one
        // instead: the same answer as without the groups, never short.
        *top = TopK::new(top.capacity());
        return scan_patch_tiles(seg, rows, test, dim, n, q, bound, sketch, cap, false, use_shortlist, top, ex);
    }
    cut || dropped
}

/// Whether a capped tile scan that wants the `m` best tiles by mean of a region of `inside`
/// tiles (of a segment of `len` tiles) should find them through the summaries' groups: the
/// groups visit about `m / share` tiles for the region's share of all tiles (times a margin,
/// as their bounds are loose), the pass over the region visits every tile in it.
fn by_groups(inside: usize, m: usize, len: usize) -> bool {
    let share = inside as f64 / len.max(1) as f64;
    inside >= crate::index::arena::GROUPS_MIN_TILES && (m as f64 * GROUP_VISIT_MARGIN) < share * inside as f64
}

/// Under a cap of `c` tiles, the group search finds the `GROUP_BEST × c` best tiles by mean.
const GROUP_BEST: usize = 2;

/// How many more tiles than `m / share` the group search is expected to visit.
const GROUP_VISIT_MARGIN: f64 = 4.0;

/// The group search gives up (and the region's tiles are scored one by one) once it has
/// tested more than this share of the region's tiles: the m-th best mean is then too low for
/// the groups' bounds to rule much out.
const GROUP_GIVE_UP: usize = 4;

/// The `m` tiles of `rows` that pass the filter with the best mean patch (the score of
/// their summary from the query's i16 codes, as [`sketch::tile_score`] gives it), found by
/// visiting the summaries' groups `g` best bound first until the next bound is below the
/// `m`-th mean; each is pushed to `found` with whether it is on the region's edge. Returns
/// whether tiles were left unvisited (the capped answer is then approximate), or `None`
/// when it would test more than `budget` tiles.
#[allow(clippy::too_many_arguments)]
fn best_tiles_by_groups(g: &Parts, rows: &[Range<usize>], test: &mut PatchTest<'_, '_>, q: &[f32], bound: &Bound, m: usize, budget: usize, ex: &mut Explain, found: &mut Vec<(usize, bool)>) -> Option<bool> {
    let mut best: TopK<u32> = TopK::new(m.max(1));
    let mut bounds = g.bounds_coded(bound);
    sort_best(&mut bounds, None);
    let inside = |i: usize| rows.get(rows.partition_point(|r| r.end <= i)).is_some_and(|r| r.contains(&i));
    let (mut left_out, mut visited) = (false, 0usize);
    let metas = g.metas();
    for (v, pb) in bounds.iter().enumerate() {
        let full = best.len() >= best.capacity();
        // The coded bound is never below the f32 one: once it falls below the m-th mean, so
        // does every later group's.
        if full && pb.bound < best.threshold() {
            left_out = bounds[v..].iter().any(|b| !g.positions(b.part as usize).is_empty());
            break;
        }
        // Once the m-th mean is known, give up as soon as the groups that can still reach it
        // hold more tiles than the budget has left.
        if full {
            let t = best.threshold();
            let reachable: usize = bounds[v..].iter().take_while(|b| b.bound >= t).map(|b| g.positions(b.part as usize).len()).sum();
            if visited + reachable > budget {
                return None;
            }
        }
        let pb = g.refine(pb, q);
        let reach = g.reaching(&pb, best.threshold());
        visited += reach.len();
        if visited > budget {
            return None;
        }
        for j in reach {
            let (Some(i), Some(key)) = (g.row(j).map(|r| r as usize), g.key(j)) else { continue };
            if !inside(i) {
                continue;
            }
            // The groups keep their tiles' filter fields in group order: read side by side.
            let Some(meta) = metas.get(j) else { continue };
            ex.tested += 1;
            let edge = match test.tile(key, &meta) {
                None => continue,
                Some(e) => e.is_some(),
            };
            ex.matched += 1;
            let Some((codes, scale, _)) = g.coded(j) else { continue };
            let mean = bound.upper(codes, scale, 0.0);
            if mean >= best.threshold() {
                best.push(Scored { score: mean, key: i as u64, extra: u32::from(edge) });
            }
        }
    }
    found.extend(best.into_sorted().into_iter().map(|s| (s.key as usize, s.extra != 0)));
    Some(left_out)
}

/// Under a cap of `c` tiles, the tile scan sorts the `CAP_SORTED × c` best tiles first.
const CAP_SORTED: usize = 4;

/// How many tiles ahead the tile scan fetches a tile's summary (measured on the peers' 10k
/// tiles, all of them: without it the pass over the summaries stalls on each one).
const PREFETCH_TILES: usize = 8;

/// The tile scan's state across tiles.
struct TileScan<'s> {
    seg: &'s Segment,
    dim: usize,
    n: usize,
    q: &'s [f32],
    bound: &'s Bound,
    stride: usize,
    /// The patches of the tile at hand to score.
    reach: Vec<usize>,
    /// Tiles left to scan without the sketches after one where they ruled out too little.
    plain: usize,
    /// Under a cap that may rank by the four-bit codes: the short list's length.
    shortlist: Option<usize>,
    /// The patches ranked by their four-bit estimates ([`Shortlist`]): from the first tile
    /// whose sketches let most of its patches through (the tiles most like the query, where
    /// each patch's codes would be read). Until then the sketches rule patches out exactly,
    /// reading less than the four-bit codes would (144 bytes a patch at 512-d, against 256).
    short: Option<Shortlist<'s>>,
    /// Patches whose codes were read.
    read: u64,
}

/// The best patches of a capped tile scan's tiles by their four-bit estimates
/// ([`crate::index::nibble`]): key the tile's position, extra the patch.
struct Shortlist<'s> {
    top: TopK<u32>,
    query: NibbleQuery,
    codes: &'s Nibbles,
    /// The estimates of the tile at hand.
    est: Vec<f32>,
}

impl<'s> Shortlist<'s> {
    /// An empty short list of `len` of the patches (`n` a tile, of `dim`) of `seg`, where the
    /// query (`bound`'s codes) and the segment's four-bit codes allow one (the codes made,
    /// `dim` a multiple of 128, AVX-512BW).
    fn new(seg: &'s Segment, bound: &Bound, n: usize, dim: usize, len: usize) -> Option<Self> {
        let query = NibbleQuery::new(&bound.codes, bound.code_scale).filter(NibbleQuery::fast)?;
        Some(Shortlist { top: TopK::new(len), query, codes: seg.nibbles(n, dim)?, est: Vec::with_capacity(n) })
    }
}

/// How many patches a capped tile scan short-lists by their four-bit estimates for `k`:
/// measured on the peers' 10k tiles (cap 20, 100 %), the best 128 of 3,920 hold the same top
/// 10 as the i8 scores, the best 64 lose 1 % of it.
fn shortlist_len(k: usize) -> usize {
    k.saturating_mul(SHORTLIST_PER_HIT).max(SHORTLIST_MIN)
}
const SHORTLIST_MIN: usize = 128;
/// A cap below this many tiles reads its tiles' i8 codes: re-reading a short list's
/// scattered codes costs about what the four-bit codes of a few tiles save (measured on the
/// peers' 10k tiles: caps 3, 5 and 10 as fast or faster without the short list, 15 and up
/// faster with it).
const SHORTLIST_MIN_CAP: usize = 12;
const SHORTLIST_PER_HIT: usize = 12;

impl TileScan<'_> {
    /// Offer the patches of tile `i` to `top`, bounding them from their sketches first when
    /// `sketch` is given and the top k is full.
    #[allow(clippy::too_many_arguments)]
    fn score(&mut self, i: usize, key: u64, meta: &RowMeta, edge: bool, sketch: Option<&SketchQuery>, test: &mut PatchTest<'_, '_>, top: &mut TopK<u32>) {
        let (n, stride) = (self.n, self.stride);
        let grid = self.seg.grid(i);
        if let Some(short) = self.short.as_mut() {
            let Some((codes, scales)) = short.codes.tile(i) else { return };
            short.est.clear();
            short.query.estimates(codes, scales, &mut short.est);
            for (p, &e) in short.est.iter().enumerate() {
                if e >= short.top.threshold() && (!edge || test.patch_ok(key, meta, p)) {
                    short.top.push(Scored { score: e, key: i as u64, extra: p as u32 });
                }
            }
            return;
        }
        let recs = sketch::split_row(self.seg.sketches(i), n, self.dim).map(|(r, _)| r);
        let t = top.threshold();
        self.reach.clear();
        match (sketch, recs) {
            (Some(sq), Some(recs)) if sq.fast() && self.plain == 0 && t > f32::NEG_INFINITY => {
                sq.reaching(recs, t, &mut self.reach);
                if self.reach.len() * SKETCH_GIVE_UP_DEN > n * SKETCH_GIVE_UP_NUM {
                    // Under a cap that may short-list, the rest of the tiles are ranked by
                    // their four-bit codes from here on (where they are made); else a few
                    // tiles go without the sketches.
                    self.short = self.shortlist.and_then(|len| Shortlist::new(self.seg, self.bound, n, self.dim, len));
                    if self.short.is_none() {
                        self.plain = SKETCH_REST_TILES;
                    }
                }
            }
            _ => {
                self.plain = self.plain.saturating_sub(1);
                self.reach.extend(0..n);
            }
        }
        self.read += self.reach.len() as u64;
        for &p in self.reach.iter().take(PREFETCH_PATCHES) {
            scan::prefetch(grid.get(p * stride..(p + 1) * stride).unwrap_or(&[]));
        }
        for (j, &p) in self.reach.iter().enumerate() {
            if let Some(&ahead) = self.reach.get(j + PREFETCH_PATCHES) {
                scan::prefetch(grid.get(ahead * stride..(ahead + 1) * stride).unwrap_or(&[]));
            }
            let Some((codes, scale)) = codec::patch_codes(grid, self.dim, p) else { break };
            let Some(s) = patch_score_reaching(self.bound, self.q, codes, scale, top.threshold()) else { continue };
            if edge && !test.patch_ok(key, meta, p) {
                continue;
            }
            top.push(Scored { score: s, key, extra: p as u32 });
        }
    }

    /// Offer the short-listed patches (key: a tile's position, extra: the patch) to `top`,
    /// scored on their i8 codes, in memory order and fetched a few ahead.
    fn rescore(&mut self, short: TopK<u32>, top: &mut TopK<u32>) {
        let mut picked: Vec<(usize, usize)> = short.into_sorted().into_iter().map(|s| (s.key as usize, s.extra as usize)).collect();
        picked.sort_unstable();
        let codes_of = |&(i, p): &(usize, usize)| self.seg.grid(i).get(p * self.stride..(p + 1) * self.stride).unwrap_or(&[]);
        for at in picked.iter().take(PREFETCH_PATCHES) {
            scan::prefetch(codes_of(at));
        }
        for (j, &(i, p)) in picked.iter().enumerate() {
            if let Some(ahead) = picked.get(j + PREFETCH_PATCHES) {
                scan::prefetch(codes_of(ahead));
            }
            let (Some(&key), Some((codes, scale))) = (self.seg.keys.get(i), codec::patch_codes(self.seg.grid(i), self.dim, p)) else { continue };
            self.read += 1;
            let s = codec::patch_score(self.q, codes, scale);
            if s >= top.threshold() {
                top.push(Scored { score: s, key, extra: p as u32 });
            }
        }
    }
}

/// A tile's sketches let more than NUM/DEN of its patches through: the region holds little
/// unlike the query's content, so the scan reads the next `SKETCH_REST_TILES` tiles' codes
/// directly, then tries the sketches again (the k-th score only rises).
const SKETCH_GIVE_UP_NUM: usize = 3;
const SKETCH_GIVE_UP_DEN: usize = 4;
const SKETCH_REST_TILES: usize = 8;

/// A patch's exact score on its codes ([`codec::patch_score`]) when it reaches `t`; `None`,
/// often without the f32 dot product, when it does not. The i16 bound decides first: the
/// codes are the patch, so its residual norm is 0.
#[inline]
fn patch_score_reaching(bound: &Bound, q: &[f32], codes: &[i8], scale: f32, t: f32) -> Option<f32> {
    if bound.upper(codes, scale, 0.0) < t {
        return None;
    }
    Some(codec::patch_score(q, codes, scale)).filter(|&s| s >= t)
}

/// How many patches ahead the tile scan prefetches a patch's codes (a grid is one stream,
/// but the hardware prefetcher stops at every 4 KB page, i.e. every 8 patches at 512-d).
const PREFETCH_PATCHES: usize = 16;

/// The exact scan of the patch partitions, best bound first until the next bound is below the
/// k-th score (see [`scan_parts`]). Returns false when the positions it would still visit
/// exceed `budget`; `top` then holds a partial answer the caller discards.
fn scan_patch_parts(parts: &Parts, test: &mut PatchTest<'_, '_>, q: &[f32], bound: &Bound, top: &mut TopK<u32>, budget: u64, ex: &mut Explain) -> bool {
    let per = parts.per();
    let bounds = parts.bounds(q);
    let metas = parts.metas();
    let (mut visited, mut scanned, mut matched) = (0u64, 0u64, 0u64);
    let mut passing: Vec<usize> = Vec::new();
    for (j, pb) in bounds.iter().enumerate() {
        let full = top.len() >= top.capacity();
        if full && pb.bound < top.threshold() {
            break;
        }
        // Checked after the 1st, 2nd, 4th, … partition once the top k is full (the image level
        // waits for the 4th): patch partitions either prune at once or not at all, and on the
        // peers' 10k-tile set, where they never do, each partition visited before giving up
        // costs ~1,400 positions.
        if full && scanned >= 1 && scanned.is_power_of_two() && over_budget(parts, &bounds[j..], q, top.threshold(), budget.saturating_sub(visited)) {
            return false;
        }
        let pos = parts.reaching(pb, top.threshold());
        visited += pos.len() as u64;
        if visited > budget {
            return false;
        }
        // Filter fields first (kind, time, the tile's box), then the codes of what passed.
        passing.clear();
        for j in pos {
            if metas.get(j).is_some_and(|mm| test.m.quick(&mm)) {
                passing.push(j);
            }
        }
        matched += passing.len() as u64;
        for (i, &j) in passing.iter().enumerate() {
            if let Some(&ahead) = passing.get(i + PREFETCH_ROWS) {
                parts.prefetch_codes(ahead);
            }
            let (Some((codes, scale, _)), Some(key), Some(item), Some(meta)) = (parts.coded(j), parts.key(j), parts.row(j), metas.get(j)) else { continue };
            let Some(s) = patch_score_reaching(bound, q, codes, scale, top.threshold()) else { continue };
            let p = item as usize % per;
            if !test.patch_ok(key, &meta, p) {
                continue;
            }
            top.push(Scored { score: s, key, extra: p as u32 });
        }
        scanned += 1;
    }
    ex.tested += visited;
    ex.matched += matched;
    ex.partitions = scanned;
    true
}

/// A top-k entry's `extra` for a hit that is not located by row: its record is read.
const NO_ROW: u32 = u32::MAX;

/// Where row `i` of segment `sn` (0 base, 1 delta) lies, as a top-k entry's `extra`: the row,
/// the segment in the top bit ([`NO_ROW`] for a row past 2³¹).
#[inline]
fn row_at(sn: u8, i: usize) -> u32 {
    match u32::try_from(i) {
        Ok(r) if r < 1 << 31 => r | (u32::from(sn.min(1)) << 31),
        _ => NO_ROW,
    }
}

/// The record id, position and time of the photo on row `at` of `segs` ([`row_at`]) with key
/// `key`, from the columns alone, where the id column holds its id ([`Segment::photo_id`]):
/// what its record gives, without reading it (a redb read, ~1.5 µs a hit from cold caches).
fn photo_from_columns(segs: [&Segment; 2], at: u32, key: u64) -> Option<(i64, f64, f64, Option<i64>)> {
    if at == NO_ROW {
        return None;
    }
    let seg = segs[(at >> 31) as usize];
    let i = (at & !(1 << 31)) as usize;
    let id = seg.photo_id(i)?;
    let meta = seg.meta(i).filter(|m| m.kind == Kind::Photo && seg.keys.get(i) == Some(&key))?;
    Some((id, meta.bbox[0], meta.bbox[1], meta.time))
}

fn finish(hits: Vec<(Scored<u32>, Option<PatchHit>)>, segs: [&Segment; 2], recs: &Records<'_>, filter: &Filter) -> Result<Vec<Hit>> {
    let circle = filter.regions.iter().find(|r| matches!(r, Region::Circle { .. }));
    let mut out = Vec::with_capacity(hits.len());
    // Patch hits often share a tile: each record is read and decoded once.
    let mut read: Vec<(u64, Record)> = Vec::new();
    for (s, patch) in hits {
        let from_columns = if patch.is_none() { photo_from_columns(segs, s.extra, s.key) } else { None };
        let (id, kind, (lon, lat), time, footprint) = match from_columns {
            Some((id, lon, lat, time)) => (RecordId::Int(id), Kind::Photo, (lon, lat), time, None),
            None => {
                let at = match read.iter().position(|(k, _)| *k == s.key) {
                    Some(at) => at,
                    None => {
                        let v = recs.get(s.key)?.ok_or_else(|| Error::Storage(format!("index names key {} with no record", s.key)))?;
                        read.push((s.key, codec::decode_record(v.value())?));
                        read.len() - 1
                    }
                };
                let rec = &read[at].1;
                let point = match &patch {
                    Some(p) => {
                        let n = (p.footprint.len().max(2) - 1) as f64;
                        let sx: f64 = p.footprint.iter().take(p.footprint.len().saturating_sub(1)).map(|c| c[0]).sum();
                        let sy: f64 = p.footprint.iter().take(p.footprint.len().saturating_sub(1)).map(|c| c[1]).sum();
                        (sx / n, sy / n)
                    }
                    None => rec.point(),
                };
                let footprint = match rec {
                    Record::Tile(t) => Some(t.footprint.clone()),
                    Record::Photo(_) => None,
                };
                (rec.id().clone(), rec.kind(), point, rec.time(), footprint)
            }
        };
        out.push(Hit {
            key: s.key,
            id,
            kind,
            score: s.score,
            lon,
            lat,
            geohash: hash::encode(lon, lat, 12),
            distance_km: circle.and_then(|c| c.distance_km(lon, lat)),
            time,
            footprint,
            patch,
        });
    }
    Ok(out)
}
