//! Geography: integer geohashes (z-order keys), regions, and covers of regions by key ranges.
pub mod hash;
pub mod region;

pub use region::{Filter, Region};
