//! Reading precomputed embeddings from Parquet (Major TOM, Clay and the like).
//!
//! A file holds one row per record with the columns below. Names are matched exactly
//! (lower case); other columns are ignored and never read.
//!
//! | column      | required | Arrow types accepted |
//! |-------------|----------|----------------------|
//! | `id`        | yes      | utf8, large utf8, utf8 view → [`RecordId::Str`]; int64, int32 → [`RecordId::Int`] |
//! | `lon`,`lat` | yes      | float64, float32 (degrees WGS84) |
//! | `embedding` | yes      | list, large list or fixed-size list of float32 (float64 is converted) |
//! | `time`      | no       | timestamp of any unit, with or without a time zone (read as UTC); date32/date64; utf8 holding RFC 3339 (`2020-05-18T13:45:00Z`) or a date (`2020-05-18`) |
//! | `geometry`  | no       | WKB binary as GeoParquet writes it. A Polygon gives the footprint (exterior ring); a MultiPolygon of exactly one polygon is treated as that polygon; a Point is ignored; any other type is an error. When the file's `geo` metadata names another primary column, that column is used. |
//!
//! Every row is checked as it is read, and the first bad row stops reading with one
//! error that names the file and the row. Rows are numbered from 1, in file order,
//! across all row groups.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use geo_traits::{
    CoordTrait, GeometryTrait, GeometryType, LineStringTrait, MultiPolygonTrait, PolygonTrait,
};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::{Error, RecordId, Result};

/// One row of an embeddings file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRow {
    /// The record's id, integer or string as stored in the file.
    pub id: RecordId,
    /// Longitude in degrees, within [-180, 180].
    pub lon: f64,
    /// Latitude in degrees, within [-90, 90].
    pub lat: f64,
    /// Acquisition time, microseconds since the Unix epoch (UTC), when the file has one.
    pub time: Option<i64>,
    /// Footprint: the exterior ring of the `geometry` polygon as `[lon, lat]`, closed
    /// (first point == last point). `None` when there is no polygon geometry.
    pub footprint: Option<Vec<[f64; 2]>>,
    /// The embedding, all values finite, the same length on every row.
    pub embedding: Vec<f32>,
}

/// Arrow types of the columns found, decided once when the file is opened.
#[derive(Debug, Clone, Copy)]
struct Columns {
    id: usize,
    lon: usize,
    lat: usize,
    embedding: usize,
    time: Option<usize>,
    geometry: Option<usize>,
}

/// Reads [`VectorRow`]s from a Parquet file in batches.
///
/// [`open`](Self::open) reads only the footer and checks the schema, so a file with a
/// missing or mistyped column fails before any row is read. [`next_batch`](Self::next_batch)
/// then decodes row groups as needed, reading only the columns listed in the
/// [module docs](self); memory is bounded by one Parquet record batch plus the rows returned.
///
/// ```no_run
/// # fn main() -> graftdb::Result<()> {
/// use graftdb::io::parquet::ParquetVectorReader;
/// let mut r = ParquetVectorReader::open("embeddings.parquet".as_ref())?;
/// while let Some(rows) = r.next_batch(4096)? {
///     for row in rows {
///         println!("{} {} {} {}", row.id, row.lon, row.lat, row.embedding.len());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ParquetVectorReader {
    path: PathBuf,
    cols: Columns,
    num_rows: u64,
    dim: Option<usize>,
    reader: ParquetRecordBatchReader,
    /// The batch being handed out, and the next row in it.
    current: Option<(RecordBatch, usize)>,
    /// Rows of the file before `current`.
    rows_before: u64,
}

impl std::fmt::Debug for ParquetVectorReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetVectorReader")
            .field("path", &self.path)
            .field("num_rows", &self.num_rows)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

/// Rows decoded per Parquet record batch.
const DECODE_BATCH: usize = 4096;

const ID_TYPES: &str = "utf8, large utf8, int64 or int32";
const COORD_TYPES: &str = "float64 or float32";
const EMB_TYPES: &str = "a list, large list or fixed-size list of float32 or float64";
const TIME_TYPES: &str = "a timestamp, date32, date64, or utf8 (RFC 3339 or YYYY-MM-DD)";
const GEOM_TYPES: &str = "binary (WKB)";

impl ParquetVectorReader {
    /// Opens `path` and checks its schema. Reads only the file footer.
    ///
    /// Fails with [`Error::Io`] when the file cannot be opened, [`Error::Corrupt`] when it is
    /// not a readable Parquet file, and [`Error::InvalidInput`] when a required column is
    /// missing (the message lists the columns found) or has a type graftdb does not read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("not a readable Parquet file ({e})"),
        })?;
        let schema = builder.schema().clone();
        let at = path.display().to_string();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let find = |name: &str| names.iter().position(|n| *n == name);
        let require = |name: &str| {
            find(name).ok_or_else(|| {
                Error::invalid(
                    at.clone(),
                    format!(
                        "missing required column '{name}'; the file has columns: {}",
                        names.join(", ")
                    ),
                )
            })
        };
        // The fixed order of the projection: decide root indices in the file.
        let id = require("id")?;
        let lon = require("lon")?;
        let lat = require("lat")?;
        let embedding = require("embedding")?;
        let time = find("time");
        let geo_primary = primary_geometry_column(builder.metadata().file_metadata(), &at)?;
        let geometry = match &geo_primary {
            Some(name) => Some(find(name).ok_or_else(|| {
                Error::invalid(
                    at.clone(),
                    format!(
                        "the 'geo' metadata names geometry column '{name}', which the file lacks; \
                         the file has columns: {}",
                        names.join(", ")
                    ),
                )
            })?),
            None => find("geometry"),
        };

        let type_of = |i: usize| schema.fields().get(i).map(|f| f.data_type().clone());
        let check = |i: usize, ok: fn(&DataType) -> bool, expected: &str| -> Result<()> {
            let name = names.get(i).copied().unwrap_or("?");
            match type_of(i) {
                Some(t) if ok(&t) => Ok(()),
                Some(t) => Err(Error::invalid(
                    at.clone(),
                    format!("column '{name}' has type {t}; expected {expected}"),
                )),
                None => Err(Error::invalid(at.clone(), format!("column '{name}' not in schema"))),
            }
        };
        check(id, is_id_type, ID_TYPES)?;
        check(lon, is_coord_type, COORD_TYPES)?;
        check(lat, is_coord_type, COORD_TYPES)?;
        check(embedding, is_embedding_type, EMB_TYPES)?;
        if let Some(t) = time {
            check(t, is_time_type, TIME_TYPES)?;
        }
        if let Some(g) = geometry {
            check(g, is_geometry_type, GEOM_TYPES)?;
        }
        let dim = match type_of(embedding) {
            Some(DataType::FixedSizeList(_, n)) => {
                let n = usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::invalid(at.clone(), format!("column 'embedding' has fixed size {n}"))
                })?;
                Some(n)
            }
            _ => None,
        };

        // Project the used columns; the batch then holds them in file order.
        let mut used = vec![id, lon, lat, embedding];
        used.extend(time);
        used.extend(geometry);
        used.sort_unstable();
        used.dedup();
        let pos = |i: usize| used.iter().position(|u| *u == i).unwrap_or(0);
        let cols = Columns {
            id: pos(id),
            lon: pos(lon),
            lat: pos(lat),
            embedding: pos(embedding),
            time: time.map(pos),
            geometry: geometry.map(pos),
        };
        let used_names: Vec<&str> = used.iter().filter_map(|i| names.get(*i).copied()).collect();
        check_codecs(builder.metadata(), &used_names, &at)?;
        let num_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let mask = ProjectionMask::roots(builder.parquet_schema(), used.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(DECODE_BATCH)
            .build()
            .map_err(|e| Error::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
        Ok(ParquetVectorReader {
            path: path.to_path_buf(),
            cols,
            num_rows,
            dim,
            reader,
            current: None,
            rows_before: 0,
        })
    }

    /// The embedding dimension: known at open for a fixed-size list column, otherwise
    /// `None` until the first row has been read, then that row's length.
    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    /// Number of rows the file's footer declares.
    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }

    /// Reads up to `max_rows` checked rows; `Ok(None)` once the file is exhausted.
    ///
    /// A returned batch is never empty. On the first bad row the whole call fails with an
    /// error naming the file and the row (counted from 1); rows before it in the same
    /// call are not returned.
    pub fn next_batch(&mut self, max_rows: usize) -> Result<Option<Vec<VectorRow>>> {
        if max_rows == 0 {
            return Err(Error::invalid("max_rows", "must be at least 1"));
        }
        let mut out = Vec::with_capacity(max_rows.min(DECODE_BATCH));
        while out.len() < max_rows {
            let exhausted = match &self.current {
                Some((b, next)) => *next >= b.num_rows(),
                None => true,
            };
            if exhausted {
                if let Some((b, _)) = self.current.take() {
                    self.rows_before += b.num_rows() as u64;
                }
                match self.reader.next() {
                    None => break,
                    Some(Err(e)) => {
                        return Err(Error::Corrupt {
                            path: self.path.clone(),
                            detail: format!(
                                "reading from row {} (1-based) on: {e}",
                                self.rows_before + 1
                            ),
                        })
                    }
                    Some(Ok(b)) => self.current = Some((b, 0)),
                }
                continue;
            }
            let Some((batch, next)) = self.current.as_mut() else { break };
            let take = (max_rows - out.len()).min(batch.num_rows() - *next);
            let view = BatchView::new(batch, self.cols, &self.path)?;
            for i in *next..*next + take {
                let row_no = self.rows_before + i as u64 + 1;
                let at = || format!("{} row {row_no} (1-based)", self.path.display());
                let row = view.row(i, &at)?;
                match self.dim {
                    None => {
                        if row.embedding.is_empty() {
                            return Err(Error::invalid(at(), "embedding is empty"));
                        }
                        self.dim = Some(row.embedding.len());
                    }
                    Some(d) if d != row.embedding.len() => {
                        return Err(Error::invalid(
                            at(),
                            format!(
                                "embedding has {} values but earlier rows have {d}",
                                row.embedding.len()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
                out.push(row);
            }
            *next += take;
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }
}

/// Refuses, up front, columns compressed with a codec this build does not decode
/// (Brotli, LZO), rather than failing part-way through the file.
fn check_codecs(meta: &parquet::file::metadata::ParquetMetaData, used: &[&str], at: &str) -> Result<()> {
    use parquet::basic::Compression;
    for rg in meta.row_groups() {
        for c in rg.columns() {
            let root = c.column_path().parts().first().map(String::as_str).unwrap_or("");
            if !used.contains(&root) {
                continue;
            }
            let name = match c.compression() {
                Compression::BROTLI(_) => "Brotli",
                Compression::LZO => "LZO",
                _ => continue,
            };
            return Err(Error::invalid(
                at,
                format!(
                    "column '{root}' is compressed with {name}, which graftdb does not read; \
                     rewrite the file with zstd, snappy, gzip or lz4 compression"
                ),
            ));
        }
    }
    Ok(())
}

/// The primary geometry column named by GeoParquet `geo` metadata, if any. Rejects a
/// declared CRS that is known not to be longitude/latitude.
fn primary_geometry_column(
    meta: &parquet::file::metadata::FileMetaData,
    at: &str,
) -> Result<Option<String>> {
    let Some(geo) = meta
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "geo"))
        .and_then(|k| k.value.as_deref())
    else {
        return Ok(None);
    };
    let Ok(geo) = serde_json::from_str::<serde_json::Value>(geo) else {
        // Malformed metadata from another writer: fall back to the `geometry` column.
        return Ok(None);
    };
    let Some(primary) = geo.get("primary_column").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    if let Some(id) = geo
        .get("columns")
        .and_then(|c| c.get(primary))
        .and_then(|c| c.get("crs"))
        .and_then(|c| c.get("id"))
    {
        let authority = id.get("authority").and_then(|a| a.as_str()).unwrap_or("");
        let code = match id.get("code") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let lonlat = matches!(
            (authority.to_ascii_uppercase().as_str(), code.to_ascii_uppercase().as_str()),
            ("OGC", "CRS84") | ("EPSG", "4326") | ("OGC", "CRS84H")
        );
        if !lonlat {
            return Err(Error::invalid(
                at,
                format!(
                    "geometry column '{primary}' is in CRS {authority}:{code}; graftdb reads \
                     longitude/latitude (OGC:CRS84 or EPSG:4326) only"
                ),
            ));
        }
    }
    Ok(Some(primary.to_owned()))
}

fn is_id_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Int64 | DataType::Int32)
}
fn is_coord_type(t: &DataType) -> bool {
    matches!(t, DataType::Float64 | DataType::Float32)
}
fn is_embedding_type(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        _ => false,
    }
}
fn is_time_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}
fn is_geometry_type(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
}

/// Borrowed, typed views of one batch's columns.
struct BatchView<'a> {
    id: &'a ArrayRef,
    lon: &'a ArrayRef,
    lat: &'a ArrayRef,
    emb: &'a ArrayRef,
    time: Option<&'a ArrayRef>,
    geometry: Option<&'a ArrayRef>,
}

impl<'a> BatchView<'a> {
    fn new(b: &'a RecordBatch, c: Columns, path: &Path) -> Result<Self> {
        let col = |i: usize| {
            b.columns().get(i).ok_or_else(|| Error::Corrupt {
                path: path.to_path_buf(),
                detail: format!("record batch lacks projected column {i}"),
            })
        };
        Ok(BatchView {
            id: col(c.id)?,
            lon: col(c.lon)?,
            lat: col(c.lat)?,
            emb: col(c.embedding)?,
            time: c.time.map(col).transpose()?,
            geometry: c.geometry.map(col).transpose()?,
        })
    }

    fn row(&self, i: usize, at: &dyn Fn() -> String) -> Result<VectorRow> {
        let id = read_id(self.id, i).map_err(|d| Error::invalid(at(), d))?;
        let lon = read_coord(self.lon, i, "lon", 180.0).map_err(|d| Error::invalid(at(), d))?;
        let lat = read_coord(self.lat, i, "lat", 90.0).map_err(|d| Error::invalid(at(), d))?;
        let embedding = read_embedding(self.emb, i).map_err(|d| Error::invalid(at(), d))?;
        let time = match self.time {
            Some(t) => read_time(t, i).map_err(|d| Error::invalid(at(), d))?,
            None => None,
        };
        let footprint = match self.geometry {
            Some(g) => read_footprint(g, i).map_err(|d| Error::invalid(at(), d))?,
            None => None,
        };
        Ok(VectorRow { id, lon, lat, time, footprint, embedding })
    }
}

type Detail<T> = std::result::Result<T, String>;

fn bounds(a: &dyn Array, i: usize) -> Detail<()> {
    if i < a.len() {
        Ok(())
    } else {
        Err(format!("row index {i} past the end of a batch of {}", a.len()))
    }
}

fn read_id(a: &ArrayRef, i: usize) -> Detail<RecordId> {
    bounds(a.as_ref(), i)?;
    if a.is_null(i) {
        return Err("id is null".into());
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        Ok(RecordId::Str(s.value(i).to_owned()))
    } else if let Some(s) = a.as_string_opt::<i64>() {
        Ok(RecordId::Str(s.value(i).to_owned()))
    } else if let Some(s) = a.as_string_view_opt() {
        Ok(RecordId::Str(s.value(i).to_owned()))
    } else if let Some(p) = a.as_primitive_opt::<Int64Type>() {
        Ok(RecordId::Int(p.value(i)))
    } else if let Some(p) = a.as_primitive_opt::<Int32Type>() {
        Ok(RecordId::Int(i64::from(p.value(i))))
    } else {
        Err(format!("id has type {}; expected {ID_TYPES}", a.data_type()))
    }
}

fn read_coord(a: &ArrayRef, i: usize, name: &str, limit: f64) -> Detail<f64> {
    bounds(a.as_ref(), i)?;
    if a.is_null(i) {
        return Err(format!("{name} is null"));
    }
    let v = if let Some(p) = a.as_primitive_opt::<Float64Type>() {
        p.value(i)
    } else if let Some(p) = a.as_primitive_opt::<Float32Type>() {
        f64::from(p.value(i))
    } else {
        return Err(format!("{name} has type {}; expected {COORD_TYPES}", a.data_type()));
    };
    if !v.is_finite() {
        return Err(format!("{name} is {v}, not a finite number"));
    }
    if !(-limit..=limit).contains(&v) {
        return Err(format!("{name} {v} is outside [-{limit}, {limit}]"));
    }
    Ok(v)
}

fn read_embedding(a: &ArrayRef, i: usize) -> Detail<Vec<f32>> {
    bounds(a.as_ref(), i)?;
    if a.is_null(i) {
        return Err("embedding is null".into());
    }
    let (values, start, end): (&ArrayRef, usize, usize) = if let Some(l) = a.as_list_opt::<i32>() {
        let o = l.value_offsets();
        let (s, e) = (o.get(i).copied(), o.get(i + 1).copied());
        match (s.and_then(|s| usize::try_from(s).ok()), e.and_then(|e| usize::try_from(e).ok())) {
            (Some(s), Some(e)) => (l.values(), s, e),
            _ => return Err("embedding list offsets are damaged".into()),
        }
    } else if let Some(l) = a.as_list_opt::<i64>() {
        let o = l.value_offsets();
        let (s, e) = (o.get(i).copied(), o.get(i + 1).copied());
        match (s.and_then(|s| usize::try_from(s).ok()), e.and_then(|e| usize::try_from(e).ok())) {
            (Some(s), Some(e)) => (l.values(), s, e),
            _ => return Err("embedding list offsets are damaged".into()),
        }
    } else if let Some(l) = a.as_fixed_size_list_opt() {
        let n = usize::try_from(l.value_length()).unwrap_or(0);
        let s = usize::try_from(l.value_offset(i)).unwrap_or(0);
        (l.values(), s, s + n)
    } else {
        return Err(format!("embedding has type {}; expected {EMB_TYPES}", a.data_type()));
    };
    if start > end || end > values.len() {
        return Err("embedding list offsets are damaged".into());
    }
    if values.null_count() > 0 && (start..end).any(|j| values.is_null(j)) {
        return Err("embedding contains a null value".into());
    }
    let out: Vec<f32> = if let Some(p) = values.as_primitive_opt::<Float32Type>() {
        p.values().get(start..end).map(<[f32]>::to_vec).unwrap_or_default()
    } else if let Some(p) = values.as_primitive_opt::<Float64Type>() {
        // Narrowing is the point: graftdb stores f32. Out-of-range values become inf and
        // are rejected below.
        #[allow(clippy::cast_possible_truncation)]
        let v = p.values().get(start..end).map(|s| s.iter().map(|x| *x as f32).collect());
        v.unwrap_or_default()
    } else {
        return Err(format!("embedding values have type {}; expected float32 or float64", values.data_type()));
    };
    if let Some((j, v)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!(
            "embedding value {} (1-based) is {v}; values must be finite f32",
            j + 1
        ));
    }
    Ok(out)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

fn read_time(a: &ArrayRef, i: usize) -> Detail<Option<i64>> {
    bounds(a.as_ref(), i)?;
    if a.is_null(i) {
        return Ok(None);
    }
    let overflow = || format!("time is out of range (type {})", a.data_type());
    let micros = match a.data_type() {
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => a
                .as_primitive_opt::<TimestampSecondType>()
                .and_then(|p| p.value(i).checked_mul(1_000_000)),
            TimeUnit::Millisecond => a
                .as_primitive_opt::<TimestampMillisecondType>()
                .and_then(|p| p.value(i).checked_mul(1_000)),
            TimeUnit::Microsecond => a.as_primitive_opt::<TimestampMicrosecondType>().map(|p| p.value(i)),
            TimeUnit::Nanosecond => a
                .as_primitive_opt::<TimestampNanosecondType>()
                .map(|p| p.value(i).div_euclid(1_000)),
        }
        .ok_or_else(overflow)?,
        DataType::Date32 => a
            .as_primitive_opt::<Date32Type>()
            .and_then(|p| i64::from(p.value(i)).checked_mul(MICROS_PER_DAY))
            .ok_or_else(overflow)?,
        DataType::Date64 => a
            .as_primitive_opt::<Date64Type>()
            .and_then(|p| p.value(i).checked_mul(1_000))
            .ok_or_else(overflow)?,
        _ => {
            let s = if let Some(s) = a.as_string_opt::<i32>() {
                s.value(i)
            } else if let Some(s) = a.as_string_opt::<i64>() {
                s.value(i)
            } else if let Some(s) = a.as_string_view_opt() {
                s.value(i)
            } else {
                return Err(format!("time has type {}; expected {TIME_TYPES}", a.data_type()));
            };
            parse_time_str(s)?
        }
    };
    Ok(Some(micros))
}

/// Parses RFC 3339 (with an offset or `Z`) or a plain `YYYY-MM-DD` date (midnight UTC)
/// into microseconds since the epoch.
pub(crate) fn parse_time_str(s: &str) -> Detail<i64> {
    let t = s.trim();
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    if t.len() == 10 {
        if let Ok(d) = t.parse::<jiff::civil::Date>() {
            return d
                .to_zoned(jiff::tz::TimeZone::UTC)
                .map(|z| z.timestamp().as_microsecond())
                .map_err(|e| format!("time '{s}': {e}"));
        }
    }
    Err(format!(
        "time '{s}' is neither RFC 3339 with an offset (e.g. 2020-05-18T13:45:00Z) nor a date (YYYY-MM-DD)"
    ))
}

fn read_footprint(a: &ArrayRef, i: usize) -> Detail<Option<Vec<[f64; 2]>>> {
    bounds(a.as_ref(), i)?;
    if a.is_null(i) {
        return Ok(None);
    }
    let bytes: &[u8] = if let Some(b) = a.as_binary_opt::<i32>() {
        b.value(i)
    } else if let Some(b) = a.as_binary_opt::<i64>() {
        b.value(i)
    } else if let Some(b) = a.as_binary_view_opt() {
        b.value(i)
    } else {
        return Err(format!("geometry has type {}; expected {GEOM_TYPES}", a.data_type()));
    };
    let geom = wkb::reader::read_wkb(bytes).map_err(|e| format!("geometry is not valid WKB: {e}"))?;
    match geom.as_type() {
        GeometryType::Point(_) => Ok(None),
        GeometryType::Polygon(p) => polygon_ring(p),
        GeometryType::MultiPolygon(mp) if mp.num_polygons() == 1 => match mp.polygons().next() {
            Some(p) => polygon_ring(&p),
            None => Ok(None),
        },
        GeometryType::MultiPolygon(mp) => Err(format!(
            "geometry is a MultiPolygon of {} polygons; graftdb takes a Polygon footprint (or a Point, which is ignored)",
            mp.num_polygons()
        )),
        other => Err(format!(
            "geometry is a {}; graftdb takes a Polygon footprint (or a Point, which is ignored)",
            geometry_type_name(&other)
        )),
    }
}

fn geometry_type_name<P, LS, Y, MP, ML, MY, GC, R, T, L>(
    t: &GeometryType<'_, P, LS, Y, MP, ML, MY, GC, R, T, L>,
) -> &'static str
where
    P: geo_traits::PointTrait,
    LS: LineStringTrait,
    Y: PolygonTrait,
    MP: geo_traits::MultiPointTrait,
    ML: geo_traits::MultiLineStringTrait,
    MY: MultiPolygonTrait,
    GC: geo_traits::GeometryCollectionTrait,
    R: geo_traits::RectTrait,
    T: geo_traits::TriangleTrait,
    L: geo_traits::LineTrait,
{
    match t {
        GeometryType::Point(_) => "Point",
        GeometryType::LineString(_) => "LineString",
        GeometryType::Polygon(_) => "Polygon",
        GeometryType::MultiPoint(_) => "MultiPoint",
        GeometryType::MultiLineString(_) => "MultiLineString",
        GeometryType::MultiPolygon(_) => "MultiPolygon",
        GeometryType::GeometryCollection(_) => "GeometryCollection",
        GeometryType::Rect(_) => "Rect",
        GeometryType::Triangle(_) => "Triangle",
        GeometryType::Line(_) => "Line",
    }
}

/// The exterior ring of a polygon, checked and closed. An empty polygon gives `None`.
fn polygon_ring(p: &impl PolygonTrait<T = f64>) -> Detail<Option<Vec<[f64; 2]>>> {
    let Some(ext) = p.exterior() else { return Ok(None) };
    let mut ring: Vec<[f64; 2]> = ext.coords().map(|c| [c.x(), c.y()]).collect();
    if ring.is_empty() {
        return Ok(None);
    }
    for (k, [x, y]) in ring.iter().enumerate() {
        if !x.is_finite() || !y.is_finite() || !(-180.0..=180.0).contains(x) || !(-90.0..=90.0).contains(y) {
            return Err(format!(
                "geometry vertex {} (1-based) is ({x}, {y}), not a longitude/latitude",
                k + 1
            ));
        }
    }
    if ring.first() != ring.last() {
        if let Some(first) = ring.first().copied() {
            ring.push(first);
        }
    }
    if ring.len() < 4 {
        return Err(format!(
            "geometry polygon ring has {} points; a ring needs at least 4 (closed)",
            ring.len()
        ));
    }
    Ok(Some(ring))
}
