//! Derived indexes: the per-space vector arena, HNSW graph and cone partitions. Rebuildable from `store`.
pub mod arena;
pub mod hnsw;
pub mod nibble;
pub mod parts;
pub mod resid;
pub mod scan;
pub mod sketch;
