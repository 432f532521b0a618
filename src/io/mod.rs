//! Reading and writing exchange formats: Parquet/GeoParquet, .npy and JSON vector files.
//!
//! - [`parquet`]: precomputed embeddings in, one checked [`parquet::VectorRow`] at a time.
//! - [`geoparquet`]: records and their vectors out, as GeoParquet 1.1 for LanceDB,
//!   DuckDB, Sedona and GDAL.
//! - [`vecfile`]: query vectors from `.npy` or JSON files (or JSON on stdin).

pub mod geoparquet;
pub mod parquet;
pub mod vecfile;
