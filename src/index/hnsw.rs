//! The HNSW graph of a space (usearch), built from the arena's base segment: a node per row
//! at the image level, a node per patch at the patch level (cos spaces).
//!
//! In `cos` spaces the graph holds the arena's i8 codes (per-row scale, so cosine on the codes
//! is cosine on the vectors up to rounding) and is searched with the query's codes: a quarter
//! of the bytes per distance, through usearch's `numkong` kernels. `ip` and `l2` spaces keep
//! f32 (a per-row scale would change their distances). Every candidate the graph returns is
//! re-scored in f32 from the arena.
//!
//! The graph's labels are **row numbers of the base segment it was built from**, not record
//! keys: a filter predicate then reads the row's filter fields (or a candidate bitmap) by
//! index instead of binary-searching a million keys at every node the walk touches, and a
//! hit is re-scored without a lookup. A graph is only ever paired with its own segment (the
//! manifest names both, and `LABELS` marks the labelling). A patch-level graph labels patch `p`
//! of row `r` as `r × per + p` (`per` patches a grid) and holds the patch's i8 codes.

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::arena::Segment;
use crate::{Error, Metric, Result};

/// Graph connectivity (M) of image-level graphs.
pub const CONNECTIVITY: usize = 16;
/// Graph connectivity (M) of patch-level graphs. Patches scatter around their tile's content
/// (on the peers' patch set, isotropic noise of norm ~0.7 in 512-d), so many patches are
/// nearly equidistant from a query and a sparser graph strands the walk: measured on 392k of
/// those patches (usearch over i8 codes, one thread, 50 unfiltered queries, the 40 hits
/// re-scored from the codes; ceiling 0.970 from the codes), recall@10 at ef 128 / 384 / 1024
/// was 0.780 / 0.864 / 0.940 (0.66 / 1.26 / 2.18 ms) with M 16 and 0.842 / 0.922 / 0.960
/// (0.82 / 1.49 / 2.43 ms) with M 32, which built in 57 s against 52 s.
pub const PATCH_CONNECTIVITY: usize = 32;
/// Candidate list size while building.
pub const EXPANSION_ADD: usize = 128;
/// How a space's graph is written down in the manifest: its labels are row numbers of the
/// base segment; `+i8` marks graphs over i8 codes (cos spaces). A manifest naming anything
/// else (an older graph) leaves the graph unused until the next checkpoint rebuilds it.
/// Patch-level graphs (always i8) are `item+i8`.
pub fn labels(metric: Metric, patch: bool) -> &'static str {
    match (patch, codes(metric)) {
        (true, _) => "item+i8",
        (false, true) => "row+i8",
        (false, false) => "row",
    }
}

/// Whether a space's graph holds i8 codes (cos spaces) rather than f32.
pub fn codes(metric: Metric) -> bool {
    metric == Metric::Cos
}

fn options(dim: usize, metric: Metric, connectivity: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: match metric {
            Metric::Cos => MetricKind::Cos,
            Metric::Ip => MetricKind::IP,
            Metric::L2 => MetricKind::L2sq,
        },
        quantization: if codes(metric) { ScalarKind::I8 } else { ScalarKind::F32 },
        connectivity,
        expansion_add: EXPANSION_ADD,
        expansion_search: 64,
        multi: false,
    }
}

fn ix(e: impl std::fmt::Display) -> Error {
    Error::Index(e.to_string())
}

/// Build a graph over every row of `seg` (label = row number), with `threads` threads.
pub fn build(seg: &Segment, dim: usize, metric: Metric, threads: usize) -> Result<Index> {
    build_with(seg.len(), dim, metric, CONNECTIVITY, threads, |i| match seg.coded(i).filter(|_| codes(metric)) {
        Some((c, _, _)) => Some(Item::I8(c)),
        None => Some(Item::F32(seg.vector(i))),
    })
}

/// Build a cosine graph over every patch of a patch-level segment (`per` patches a row; label
/// = `row × per + patch`), from the patches' i8 codes (cosine ignores their scale).
pub fn build_patches(seg: &Segment, dim: usize, per: usize, threads: usize) -> Result<Index> {
    let per = per.max(1);
    build_with(seg.len() * per, dim, Metric::Cos, PATCH_CONNECTIVITY, threads, |i| seg.patch_coded(i / per, i % per, dim).map(|(c, _)| Item::I8(c)))
}

/// One item's vector, as the graph holds it.
#[derive(Clone, Copy)]
enum Item<'a> {
    F32(&'a [f32]),
    I8(&'a [i8]),
}

impl Item<'_> {
    fn add(self, index: &Index, key: u64) -> std::result::Result<(), String> {
        match self {
            Item::F32(v) => index.add(key, v),
            Item::I8(v) => index.add(key, v),
        }
        .map_err(|e| e.to_string())
    }
    /// Whether a search for the item's own vector finds its key among the first few.
    fn finds_itself(self, index: &Index, key: u64) -> bool {
        match self {
            Item::F32(v) => index.search(v, SELF_CHECK_K),
            Item::I8(v) => index.search(v, SELF_CHECK_K),
        }
        .is_ok_and(|m| m.keys.contains(&key))
    }
}

/// Items added one at a time before the threads start: concurrent inserts into a nearly
/// empty graph race for its few upper-level nodes.
const SEQUENTIAL_SEED: usize = 1024;

/// The largest graph that gets the repair pass. Checking costs a search per item: at 100k
/// × 512-d (2 threads) the check took 9.1 s beside the inserts' 11.8 s, and found 2,418 items
/// that missed themselves, against 2,297 in a one-thread build of the same rows (so nearly
/// all were the walk's misses, not the race's strays); graph recall@10 was 0.996 with and
/// 0.995 without it. In small graphs one stray is a large share (a 245-row test graph lost
/// 3 of a query's 10 neighbours), and there the check costs little.
const REPAIR_MAX: usize = 65_536;

/// How many hits a self-search may look through for the item's own key (duplicates and
/// near-duplicates can outrank it).
const SELF_CHECK_K: usize = 4;

/// Add items `0..n` (`item(i)` gives item `i`'s vector, `None` skips it) with `threads`
/// threads, then repair what concurrent inserts stranded.
///
/// usearch 2.x releases a new node's lock between levels while it links it top-down, so a
/// concurrent insert can land on a node whose level-0 list is still empty and leave a node
/// stored but unreachable by any search (unum-cloud/USearch#735). A graph built with more
/// than one thread is therefore checked: every item searches for its own vector, and an item
/// not found is removed and added again, alone, which links it afresh (up to
/// [`REPAIR_MAX`] items, see there). Returns the graph.
fn build_with<'a, F>(n: usize, dim: usize, metric: Metric, m: usize, threads: usize, item: F) -> Result<Index>
where
    F: Fn(usize) -> Option<Item<'a>> + Sync,
{
    add_all(n, dim, metric, m, threads, item, true)
}

/// A graph build's work on one thread: given the index and the thread's number, it records
/// its findings or fails with a message.
type ThreadWork<'f> = dyn Fn(&Index, usize, &mut Vec<u64>) -> std::result::Result<(), String> + Sync + 'f;

/// [`build_with`], with the repair pass optional (tests measure what it repairs).
fn add_all<'a, F>(n: usize, dim: usize, metric: Metric, m: usize, threads: usize, item: F, repair: bool) -> Result<Index>
where
    F: Fn(usize) -> Option<Item<'a>> + Sync,
{
    let index = Index::new(&options(dim, metric, m)).map_err(ix)?;
    let threads = threads.max(1);
    index.reserve_capacity_and_threads(n.max(1), threads).map_err(ix)?;
    let seed = n.min(SEQUENTIAL_SEED);
    for i in 0..seed {
        if let Some(v) = item(i) {
            v.add(&index, i as u64).map_err(Error::Index)?;
        }
    }
    // Each thread takes every `threads`-th item and answers with its error or its findings.
    let on_threads = |f: &ThreadWork<'_>| -> Result<Vec<u64>> {
        let out: Vec<std::result::Result<Vec<u64>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let index = &index;
                    s.spawn(move || {
                        let mut found = Vec::new();
                        let mut i = seed + t;
                        while i < n {
                            f(index, i, &mut found)?;
                            i += threads;
                        }
                        Ok(found)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("graph build thread panicked".to_string()))).collect()
        });
        let mut all = Vec::new();
        for r in out {
            all.extend(r.map_err(Error::Index)?);
        }
        Ok(all)
    };
    on_threads(&|index, i, _| item(i).map_or(Ok(()), |v| v.add(index, i as u64)))?;
    if threads > 1 && n > seed && n <= REPAIR_MAX && repair {
        let stranded = on_threads(&|index, i, found| {
            if item(i).is_some_and(|v| !v.finds_itself(index, i as u64)) {
                found.push(i as u64);
            }
            Ok(())
        })?;
        relink(&index, &stranded, &item)?;
    }
    Ok(index)
}

/// Remove and add again, one at a time, the items a concurrent build stranded.
fn relink<'a>(index: &Index, keys: &[u64], item: &(impl Fn(usize) -> Option<Item<'a>> + Sync)) -> Result<()> {
    for &key in keys {
        if let Some(v) = item(key as usize) {
            index.remove(key).map_err(ix)?;
            v.add(index, key).map_err(Error::Index)?;
        }
    }
    Ok(())
}

/// Save a graph (via a temporary name and rename).
pub fn save(index: &Index, path: &Path) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let s = tmp.to_str().ok_or_else(|| Error::invalid(tmp.display().to_string(), "path is not UTF-8"))?;
    index.save(s).map_err(ix)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Memory-map a saved graph (read-only; opening costs milliseconds).
pub fn view(path: &Path, dim: usize, metric: Metric) -> Result<Index> {
    let s = path.to_str().ok_or_else(|| Error::invalid(path.display().to_string(), "path is not UTF-8"))?;
    // The file's header sets the connectivity (image and patch graphs differ).
    let index = Index::new(&options(dim, metric, CONNECTIVITY)).map_err(ix)?;
    index.view(s).map_err(|e| Error::Corrupt { path: path.into(), detail: e.to_string() })?;
    if index.dimensions() != dim {
        return Err(Error::Corrupt { path: path.into(), detail: format!("graph has {} dimensions, space has {dim}", index.dimensions()) });
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` points in `dim` dimensions around a few centres (clustered, like embeddings).
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<f32> = (0..8 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        (0..n).flat_map(|_| {
            let c = rng.random_range(0..8);
            (0..dim).map(|d| centres[c * dim + d] + rng.random_range(-0.2..0.2)).collect::<Vec<f32>>()
        }).collect()
    }

    fn unreachable(index: &Index, data: &[f32], dim: usize) -> usize {
        data.chunks(dim).enumerate().filter(|&(i, v)| !Item::F32(v).finds_itself(index, i as u64)).count()
    }

    /// Concurrent inserts strand nodes (unum-cloud/USearch#735); after the repair pass every
    /// item of a 4-thread build is found by a search for its own vector. Without the repair
    /// the same builds lose some (printed, not asserted: the race is timing-dependent).
    #[test]
    fn concurrent_build_leaves_every_item_reachable() {
        let (n, dim) = (4000, 6);
        let (mut before, mut after) = (0, 0);
        for seed in 0..12 {
            let data = clustered(n, dim, seed);
            let item = |i: usize| data.get(i * dim..(i + 1) * dim).map(Item::F32);
            let raw = add_all(n, dim, Metric::L2, CONNECTIVITY, 4, item, false).unwrap();
            before += unreachable(&raw, &data, dim);
            let fixed = build_with(n, dim, Metric::L2, CONNECTIVITY, 4, item).unwrap();
            assert_eq!(fixed.size(), n, "seed {seed}: relinking lost or duplicated items");
            after += unreachable(&fixed, &data, dim);
        }
        eprintln!("items not found by their own vector over 12 builds: {before} without the repair, {after} with it");
        assert_eq!(after, 0, "{after} items unreachable after the repair ({before} before it)");
    }
}
