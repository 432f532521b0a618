//! Export to GeoParquet 1.1, for scale-out in LanceDB, DuckDB, Apache Sedona or GDAL.
//!
//! One row per record, with these columns:
//!
//! | column       | type                                   | notes |
//! |--------------|----------------------------------------|-------|
//! | `id`         | utf8, not null                         | integers as their decimal string |
//! | `id_int`     | int64, nullable                        | the integer id, null for string ids, so the type survives |
//! | `kind`       | utf8, not null                         | `tile` or `photo` |
//! | `time`       | timestamp(µs, UTC), nullable           | |
//! | `geometry`   | binary (little-endian WKB), not null   | Point or Polygon, lon/lat (OGC:CRS84) |
//! | `bbox`       | struct<xmin, ymin, xmax, ymax: double> | the GeoParquet 1.1 covering column |
//! | `emb_<space>`| fixed_size_list<float32>[dim], nullable| one per space, null where the record has no vector |
//! | `properties` | utf8 (JSON), nullable                  | the record's other attributes |
//!
//! The file metadata key `geo` holds the GeoParquet metadata: version 1.1.0, primary
//! column `geometry`, WKB encoding, the geometry types actually written, the overall
//! bbox and the `bbox` covering. `crs` is omitted, which GeoParquet defines as OGC:CRS84.
//!
//! The file is written to `<path>.partial` and renamed to `path` by
//! [`GeoParquetWriter::finish`], so a reader never sees a half-written export; a writer
//! dropped without `finish` removes its partial file.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::{Error, Kind, RecordId, Result};

/// The geometry of an exported record, in degrees longitude/latitude.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportGeom {
    /// A photo's position: `(lon, lat)`.
    Point(f64, f64),
    /// A tile's footprint: the exterior ring as `[lon, lat]`. Closed or not; the writer
    /// closes it.
    Polygon(Vec<[f64; 2]>),
}

/// One record to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    /// The record's id.
    pub id: RecordId,
    /// Tile or photo.
    pub kind: Kind,
    /// Microseconds since the Unix epoch (UTC).
    pub time: Option<i64>,
    /// Point or footprint.
    pub geometry: ExportGeom,
    /// One entry per space given to [`GeoParquetWriter::create`], in the same order:
    /// the record's vector in that space, or `None`.
    pub space_vectors: Vec<Option<Vec<f32>>>,
    /// Other attributes, written as a JSON string in `properties` (`Null` writes null).
    pub extra: serde_json::Value,
}

/// Writes [`ExportRow`]s as a GeoParquet 1.1 file. See the [module docs](self) for the
/// columns.
///
/// Rows are buffered into row groups of about 128 MiB of vectors (at least 1,024 rows)
/// and compressed with zstd; memory use is about one row group.
///
/// ```no_run
/// # fn main() -> graftdb::Result<()> {
/// use graftdb::io::geoparquet::{ExportGeom, ExportRow, GeoParquetWriter};
/// use graftdb::{Kind, RecordId};
/// let mut w = GeoParquetWriter::create("out.parquet".as_ref(), &[("clip".to_string(), 512)])?;
/// w.write_batch(&[ExportRow {
///     id: RecordId::Int(7),
///     kind: Kind::Photo,
///     time: None,
///     geometry: ExportGeom::Point(-122.4, 37.8),
///     space_vectors: vec![Some(vec![0.0; 512])],
///     extra: serde_json::json!({"source": "flickr"}),
/// }])?;
/// let rows = w.finish()?;
/// assert_eq!(rows, 1);
/// # Ok(()) }
/// ```
pub struct GeoParquetWriter {
    path: PathBuf,
    partial: PathBuf,
    schema: SchemaRef,
    spaces: Vec<(String, usize)>,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
    bbox: Option<[f64; 4]>,
    types: BTreeSet<&'static str>,
}

impl std::fmt::Debug for GeoParquetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoParquetWriter")
            .field("path", &self.path)
            .field("spaces", &self.spaces)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

const FIXED_COLUMNS: [&str; 7] = ["id", "id_int", "kind", "time", "geometry", "bbox", "properties"];

/// Target bytes of vectors per row group.
const ROW_GROUP_BYTES: usize = 128 << 20;

fn bbox_fields() -> Fields {
    Fields::from(vec![
        Field::new("xmin", DataType::Float64, false),
        Field::new("ymin", DataType::Float64, false),
        Field::new("xmax", DataType::Float64, false),
        Field::new("ymax", DataType::Float64, false),
    ])
}

impl GeoParquetWriter {
    /// Creates the export at `path` with one embedding column per space.
    ///
    /// `space_columns` lists `(space name, dimension)`; the column for space `clip` is
    /// named `emb_clip`. Space names must be unique and non-empty, dimensions at least 1.
    pub fn create(path: &Path, space_columns: &[(String, usize)]) -> Result<Self> {
        let at = path.display().to_string();
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("id_int", DataType::Int64, true),
            Field::new("kind", DataType::Utf8, false),
            Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("geometry", DataType::Binary, false),
            Field::new("bbox", DataType::Struct(bbox_fields()), false),
        ];
        let mut seen = BTreeSet::new();
        let mut bytes_per_row = 64usize;
        for (space, dim) in space_columns {
            let col = format!("emb_{space}");
            if space.is_empty() || FIXED_COLUMNS.contains(&col.as_str()) || !seen.insert(col.clone()) {
                return Err(Error::invalid(
                    at,
                    format!("space name '{space}' is empty or repeated"),
                ));
            }
            let Some(d) = i32::try_from(*dim).ok().filter(|d| *d > 0) else {
                return Err(Error::invalid(at, format!("space '{space}' has dimension {dim}")));
            };
            bytes_per_row = bytes_per_row.saturating_add(dim.saturating_mul(4));
            fields.push(Field::new(
                col,
                DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), d),
                true,
            ));
        }
        fields.push(Field::new("properties", DataType::Utf8, true));
        let schema = Arc::new(Schema::new(fields));

        let partial = partial_path(path);
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some((ROW_GROUP_BYTES / bytes_per_row).max(1024)))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            Error::Storage(format!("{at}: starting the Parquet writer: {e}"))
        })?;
        Ok(GeoParquetWriter {
            path: path.to_path_buf(),
            partial,
            schema,
            spaces: space_columns.to_vec(),
            writer: Some(writer),
            rows: 0,
            bbox: None,
            types: BTreeSet::new(),
        })
    }

    /// Checks and appends `rows`. On a bad row nothing from this call is written and the
    /// error names the file and the row, counted from 1 across all calls.
    pub fn write_batch(&mut self, rows: &[ExportRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let mut id = StringBuilder::new();
        let mut id_int = Int64Builder::with_capacity(n);
        let mut kind = StringBuilder::new();
        let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut geometry = BinaryBuilder::new();
        let mut bb: [Float64Builder; 4] = std::array::from_fn(|_| Float64Builder::with_capacity(n));
        let mut embs: Vec<FixedSizeListBuilder<Float32Builder>> = self
            .spaces
            .iter()
            .map(|(_, d)| {
                let d32 = i32::try_from(*d).unwrap_or(i32::MAX);
                FixedSizeListBuilder::with_capacity(Float32Builder::with_capacity(n * d), d32, n)
                    .with_field(Arc::new(Field::new_list_field(DataType::Float32, true)))
            })
            .collect();
        let mut props = StringBuilder::new();
        let mut batch_bbox = self.bbox;
        let mut batch_types = BTreeSet::new();

        for (k, row) in rows.iter().enumerate() {
            let at = || format!("{} row {} (1-based)", self.path.display(), self.rows + k as u64 + 1);
            let (wkb, b, ty) = encode_geometry(&row.geometry).map_err(|d| Error::invalid(at(), d))?;
            if row.space_vectors.len() != self.spaces.len() {
                return Err(Error::invalid(
                    at(),
                    format!(
                        "has {} space vectors; the export has {} space columns",
                        row.space_vectors.len(),
                        self.spaces.len()
                    ),
                ));
            }
            for (((space, dim), v), builder) in self.spaces.iter().zip(&row.space_vectors).zip(&mut embs) {
                match v {
                    Some(v) => {
                        if v.len() != *dim {
                            return Err(Error::invalid(
                                at(),
                                format!("vector for space '{space}' has {} values, expected {dim}", v.len()),
                            ));
                        }
                        if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                            return Err(Error::invalid(
                                at(),
                                format!("vector for space '{space}' value {} (1-based) is not finite", j + 1),
                            ));
                        }
                        builder.values().append_slice(v);
                        builder.append(true);
                    }
                    None => {
                        builder.values().append_nulls(*dim);
                        builder.append(false);
                    }
                }
            }
            id.append_value(row.id.to_string());
            match row.id {
                RecordId::Int(i) => id_int.append_value(i),
                RecordId::Str(_) => id_int.append_null(),
            }
            kind.append_value(row.kind.as_str());
            time.append_option(row.time);
            geometry.append_value(&wkb);
            for (builder, v) in bb.iter_mut().zip(b) {
                builder.append_value(v);
            }
            match &row.extra {
                serde_json::Value::Null => props.append_null(),
                v => props.append_value(v.to_string()),
            }
            batch_bbox = Some(match batch_bbox {
                None => b,
                Some(o) => [o[0].min(b[0]), o[1].min(b[1]), o[2].max(b[2]), o[3].max(b[3])],
            });
            batch_types.insert(ty);
        }

        let [xmin, ymin, xmax, ymax] = bb;
        let bbox_cols: Vec<ArrayRef> = [xmin, ymin, xmax, ymax]
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let bbox = StructArray::try_new(bbox_fields(), bbox_cols, None)
            .map_err(|e| Error::Storage(format!("{}: building bbox column: {e}", self.path.display())))?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(id_int.finish()),
            Arc::new(kind.finish()),
            Arc::new(time.finish()),
            Arc::new(geometry.finish()),
            Arc::new(bbox),
        ];
        columns.extend(embs.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(props.finish()));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Storage(format!("{}: building batch: {e}", self.path.display())))?;
        let writer = self.writer.as_mut().ok_or_else(|| {
            Error::Storage(format!("{}: writer already failed", self.path.display()))
        })?;
        if let Err(e) = writer.write(&batch) {
            // A failed write may leave the file inconsistent: refuse further writes.
            self.writer = None;
            return Err(parquet_error(&self.partial, e));
        }
        self.rows += n as u64;
        self.bbox = batch_bbox;
        self.types.extend(batch_types);
        Ok(())
    }

    /// Writes the footer with the `geo` metadata, syncs, renames the file into place and
    /// returns the number of rows written.
    pub fn finish(mut self) -> Result<u64> {
        let mut writer = self.writer.take().ok_or_else(|| {
            Error::Storage(format!("{}: an earlier write failed; the export is incomplete", self.path.display()))
        })?;
        writer.append_key_value_metadata(KeyValue::new("geo".to_owned(), self.geo_metadata().to_string()));
        let file = writer.into_inner().map_err(|e| parquet_error(&self.partial, e))?;
        file.sync_all().map_err(|e| Error::io(&self.partial, e))?;
        drop(file);
        std::fs::rename(&self.partial, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.rows)
    }

    /// The GeoParquet 1.1 `geo` metadata for what has been written so far.
    fn geo_metadata(&self) -> serde_json::Value {
        let mut col = serde_json::json!({
            "encoding": "WKB",
            "geometry_types": self.types.iter().collect::<Vec<_>>(),
            "covering": {"bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }},
        });
        if let (Some(b), Some(obj)) = (self.bbox, col.as_object_mut()) {
            obj.insert("bbox".into(), serde_json::json!(b));
        }
        serde_json::json!({
            "version": "1.1.0",
            "primary_column": "geometry",
            "columns": {"geometry": col},
        })
    }
}

impl Drop for GeoParquetWriter {
    fn drop(&mut self) {
        if self.writer.is_some() || self.partial.exists() {
            // Not finished (or finish failed before the rename): remove the partial file.
            self.writer = None;
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => Error::io(path, *io),
            Err(other) => Error::Storage(format!("{}: {other}", path.display())),
        },
        other => Error::Storage(format!("{}: writing Parquet: {other}", path.display())),
    }
}

fn check_lon_lat(x: f64, y: f64) -> std::result::Result<(), String> {
    if !x.is_finite() || !y.is_finite() || !(-180.0..=180.0).contains(&x) || !(-90.0..=90.0).contains(&y) {
        return Err(format!("({x}, {y}) is not a longitude/latitude"));
    }
    Ok(())
}

/// WKB, bbox and GeoParquet type name of a geometry, after checking its coordinates.
fn encode_geometry(g: &ExportGeom) -> std::result::Result<(Vec<u8>, [f64; 4], &'static str), String> {
    let opts = wkb::writer::WriteOptions { endianness: wkb::Endianness::LittleEndian };
    let mut buf = Vec::new();
    match g {
        ExportGeom::Point(x, y) => {
            check_lon_lat(*x, *y).map_err(|e| format!("point {e}"))?;
            wkb::writer::write_point(&mut buf, &geo::Point::new(*x, *y), &opts)
                .map_err(|e| format!("encoding point: {e}"))?;
            Ok((buf, [*x, *y, *x, *y], "Point"))
        }
        ExportGeom::Polygon(ring) => {
            let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
            for (k, [x, y]) in ring.iter().enumerate() {
                check_lon_lat(*x, *y).map_err(|e| format!("footprint vertex {} (1-based) {e}", k + 1))?;
                b = [b[0].min(*x), b[1].min(*y), b[2].max(*x), b[3].max(*y)];
            }
            // geo's Polygon closes an open ring.
            let poly = geo::Polygon::new(
                geo::LineString::from(ring.iter().map(|[x, y]| (*x, *y)).collect::<Vec<_>>()),
                vec![],
            );
            if poly.exterior().0.len() < 4 {
                return Err(format!(
                    "footprint ring has {} points once closed; a polygon needs at least 4",
                    poly.exterior().0.len()
                ));
            }
            wkb::writer::write_polygon(&mut buf, &poly, &opts).map_err(|e| format!("encoding footprint: {e}"))?;
            Ok((buf, b, "Polygon"))
        }
    }
}
