//! Derived indexes: the per-space vector arena and HNSW graph. Rebuildable from `store`.
pub mod arena;
pub mod hnsw;
pub mod scan;
