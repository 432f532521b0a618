//! The HNSW graph of an image-level space (usearch), built from the arena's base segment.
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
//! manifest names both, and `LABELS` marks the labelling).

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
pub fn labels(metric: Metric) -> &'static str {
    if codes(metric) {
        "row+i8"
    } else {
        "row"
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
    let index = Index::new(&options(dim, metric)).map_err(ix)?;
    let threads = threads.max(1);
    index.reserve_capacity_and_threads(seg.len().max(1), threads).map_err(ix)?;
    let n = seg.len();
    let err = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (index, err) = (&index, &err);
            s.spawn(move || {
                let mut i = t;
                while i < n {
                    let added = match seg.coded(i).filter(|_| codes(metric)) {
                        Some((c, _, _)) => index.add(i as u64, c),
                        None => index.add(i as u64, seg.vector(i)),
                    };
                    if let Err(e) = added {
                        if let Ok(mut g) = err.lock() {
                            *g = Some(e.to_string());
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
