//! Turning user files into records: rasters through GDAL, ground photos from YFCC/Flickr/CSV/JSONL/EXIF.
