//! graftdb: an embedded spatial + vector database for satellite tiles and geotagged ground photos.
#![warn(missing_docs)]

pub mod error;
pub mod store;
pub mod io;
pub mod embed;
pub mod ingest;

pub use error::{Error, Result};
pub use store::record::{Kind, Level, Metric, Photo, PixelRef, Record, RecordId, SpaceDef, Tile};
pub mod geo;
pub mod index;
pub mod db;
pub mod maint;
pub mod query;
pub mod spec;
pub mod json;
pub mod serve;

pub use db::{Db, Options, WriteTxn};
pub use maint::{DbStats, JoinPair, JoinStats};
pub use geo::{Filter, Region};
pub use query::{Explain, Hit, PlanPath, Query, SearchResult};
