//! The HNSW graph of an image-level space (usearch), built from the arena's base segment.
//!
//! Vectors are held in the graph as f32: without usearch's `numkong` kernels (left out to
//! keep clean builds short), f32 builds 4.9× faster than f16 here (1,263 vs 260 adds/s on one
//! core at 5k × 512-d). Every candidate the graph returns is re-scored from the arena.
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
/// How graph labels are written down in the manifest: row numbers of the base segment.
pub const LABELS: &str = "row";

fn options(dim: usize, metric: Metric) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: match metric {
            Metric::Cos | Metric::Ip => MetricKind::IP,
            Metric::L2 => MetricKind::L2sq,
        },
        quantization: ScalarKind::F32,
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
                    if let Err(e) = index.add(i as u64, seg.vector(i)) {
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
