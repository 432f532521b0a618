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

/// Graph connectivity (M).
pub const CONNECTIVITY: usize = 16;
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

fn options(dim: usize, metric: Metric) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: match metric {
            Metric::Cos => MetricKind::Cos,
            Metric::Ip => MetricKind::IP,
            Metric::L2 => MetricKind::L2sq,
        },
        quantization: if codes(metric) { ScalarKind::I8 } else { ScalarKind::F32 },
        connectivity: CONNECTIVITY,
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
    build_with(seg.len(), dim, metric, threads, |index, i| {
        match seg.coded(i).filter(|_| codes(metric)) {
            Some((c, _, _)) => index.add(i as u64, c),
            None => index.add(i as u64, seg.vector(i)),
        }
        .map_err(|e| e.to_string())
    })
}

/// Build a cosine graph over every patch of a patch-level segment (`per` patches a row; label
/// = `row × per + patch`), from the patches' i8 codes (cosine ignores their scale).
pub fn build_patches(seg: &Segment, dim: usize, per: usize, threads: usize) -> Result<Index> {
    build_with(seg.len() * per, dim, Metric::Cos, threads, |index, i| match seg.patch_coded(i / per.max(1), i % per.max(1), dim) {
        Some((c, _)) => index.add(i as u64, c).map_err(|e| e.to_string()),
        None => Ok(()),
    })
}

/// Add items `0..n` with `add`, from `threads` threads.
fn build_with<F>(n: usize, dim: usize, metric: Metric, threads: usize, add: F) -> Result<Index>
where
    F: Fn(&Index, usize) -> std::result::Result<(), String> + Sync,
{
    let index = Index::new(&options(dim, metric)).map_err(ix)?;
    let threads = threads.max(1);
    index.reserve_capacity_and_threads(n.max(1), threads).map_err(ix)?;
    let err = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (index, err, add) = (&index, &err, &add);
            s.spawn(move || {
                let mut i = t;
                while i < n {
                    if let Err(e) = add(index, i) {
                        if let Ok(mut g) = err.lock() {
                            *g = Some(e);
                        }
                        return;
                    }
                    i += threads;
                }
            });
        }
    });
    if let Some(e) = err.into_inner().ok().flatten() {
        return Err(Error::Index(e));
    }
    Ok(index)
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
    let index = Index::new(&options(dim, metric)).map_err(ix)?;
    index.view(s).map_err(|e| Error::Corrupt { path: path.into(), detail: e.to_string() })?;
    if index.dimensions() != dim {
        return Err(Error::Corrupt { path: path.into(), detail: format!("graph has {} dimensions, space has {dim}", index.dimensions()) });
    }
    Ok(index)
}
