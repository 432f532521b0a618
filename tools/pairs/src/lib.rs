//! Building GRAFT pair datasets from a graftdb database (see `schema/pairs.md`).
//!
//! * [`assign`]: the GRAFT tile-centre rule as a pure function.
//! * [`build`]: `graft-pairs build` (database → WebDataset shards + manifest).
//! * [`stats`]: `graft-pairs stats` (counts, histogram, GeoJSON coverage).

pub mod assign;
pub mod build;
pub mod stats;
