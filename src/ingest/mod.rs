//! Turning user files into records: rasters through GDAL, ground photos from YFCC/Flickr/CSV/JSONL/EXIF.

pub mod photos;
pub mod raster;
mod time;
