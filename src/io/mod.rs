//! Reading and writing exchange formats: Parquet/GeoParquet, .npy and JSON vector files.
