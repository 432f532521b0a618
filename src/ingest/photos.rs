//! Ground photos → [`Photo`] records, from YFCC100M TSV, Flickr `photos.search` JSON, CSV,
//! JSONL, or JPEG EXIF.
//!
//! [`read_photos`] reads one file (or, for EXIF, a file or a folder of JPEGs) and returns the
//! photos plus the rows it refused. Nothing is written to a database.
//!
//! Rules common to every format:
//! - A row is **bad** (reported in [`PhotoReport::bad`], or the error with [`OnError::Fail`])
//!   when its id is missing or repeats an earlier id in the same file, its latitude or
//!   longitude is missing, not a number, NaN/infinite, out of range, or exactly 0,0 (Flickr's
//!   "no geotag"), its date does not parse, or its accuracy is not 0–16.
//! - A row is **filtered** (only counted) when it is a video (YFCC marker 1, Flickr
//!   `media: video`), has no geotag at all (YFCC rows with empty longitude and latitude), or
//!   is below [`PhotoOptions::min_accuracy`] (unknown accuracy counts as below).
//! - Dates without a zone are taken as UTC; see the crate's time parsing.
//! - Integer ids become [`RecordId::Int`], anything else [`RecordId::Str`].
//! - Accuracy 0 means "unknown" on Flickr and is stored as `None`.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::time::parse_time;
use crate::{Error, Photo, RecordId, Result};

/// Input format for [`read_photos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PhotoFormat {
    /// Pick by extension, then by sniffing the first line (see [`read_photos`]).
    #[default]
    Auto,
    /// YFCC100M metadata, tab-separated, 22–25 columns (with or without a row id).
    Yfcc,
    /// A Flickr `photos.search` response: `{"photos":{"photo":[...]}}` (or a bare array).
    FlickrJson,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line, with the CSV field names.
    Jsonl,
    /// A JPEG, or a folder of JPEGs, with EXIF GPS tags.
    Exif,
}

/// What to do with a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Record it in [`PhotoReport::bad`] and go on.
    #[default]
    Skip,
    /// Stop at the first bad row with an [`Error::InvalidInput`] naming file and line.
    Fail,
}

/// How to read photos.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhotoOptions {
    /// Input format.
    pub format: PhotoFormat,
    /// Keep only photos whose geotag accuracy is at least this (Flickr 1–16; 16 is street
    /// level, GRAFT used ≥ 15). Photos of unknown accuracy are filtered out when set.
    pub min_accuracy: Option<u8>,
    /// Skip or fail on bad rows.
    pub on_error: OnError,
    /// A folder of downloaded images. A photo's URL or path is replaced by a file in this
    /// folder when one exists: the relative path joined to it, else the URL's base name,
    /// else `{id}.jpg`.
    pub images_dir: Option<PathBuf>,
}

/// A row that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// Where: `"{file} line {n}"` (1-based), or the JPEG's path for EXIF.
    pub at: String,
    /// Why, in one sentence.
    pub reason: String,
}

/// What [`read_photos`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PhotoReport {
    /// Good photos, in file order.
    pub photos: Vec<Photo>,
    /// Refused rows (always empty with [`OnError::Fail`], which returns an error instead).
    pub bad: Vec<BadRow>,
    /// Rows dropped on purpose: videos, rows with no geotag, and rows below `min_accuracy`.
    pub filtered: usize,
}

/// Read geotagged photos from a file.
///
/// With [`PhotoFormat::Auto`]: a folder or `.jpg`/`.jpeg` is EXIF; `.csv` is CSV;
/// `.jsonl`/`.ndjson` is JSONL; `.json` is Flickr JSON; otherwise the first line decides:
/// 21+ tabs is YFCC, `{` on a line that is a whole JSON object is JSONL, `{`/`[` otherwise
/// is Flickr JSON, anything else CSV. Reads the file once, streaming for TSV/CSV/JSONL and
/// whole for JSON; memory is the returned photos.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::InvalidInput`] naming the file for a
/// file-level problem (unparseable JSON, a CSV without id/latitude/longitude columns), and,
/// with [`OnError::Fail`], naming file and line of the first bad row.
pub fn read_photos(path: &Path, opts: &PhotoOptions) -> Result<PhotoReport> {
    let format = match opts.format {
        PhotoFormat::Auto => detect(path)?,
        f => f,
    };
    let mut sink = Sink::new(opts);
    match format {
        PhotoFormat::Yfcc => read_yfcc(path, &mut sink)?,
        PhotoFormat::FlickrJson => read_flickr(path, &mut sink)?,
        PhotoFormat::Csv => read_csv(path, &mut sink)?,
        PhotoFormat::Jsonl => read_jsonl(path, &mut sink)?,
        PhotoFormat::Exif => read_exif(path, &mut sink)?,
        PhotoFormat::Auto => return Err(Error::invalid(path.display().to_string(), "cannot tell the photo format")),
    }
    Ok(sink.report)
}

fn detect(path: &Path) -> Result<PhotoFormat> {
    if path.is_dir() {
        return Ok(PhotoFormat::Exif);
    }
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => return Ok(PhotoFormat::Exif),
        "csv" => return Ok(PhotoFormat::Csv),
        "jsonl" | "ndjson" => return Ok(PhotoFormat::Jsonl),
        "json" => return Ok(PhotoFormat::FlickrJson),
        _ => {}
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut first = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    loop {
        first.clear();
        let n = reader.read_until(b'\n', &mut first).map_err(|e| Error::io(path, e))?;
        if n == 0 || !String::from_utf8_lossy(&first).trim().is_empty() {
            break;
        }
    }
    let line = String::from_utf8_lossy(&first);
    let t = line.trim();
    Ok(if line.matches('\t').count() >= 21 {
        PhotoFormat::Yfcc
    } else if t.starts_with('{') && serde_json::from_str::<Value>(t).is_ok_and(|v| v.is_object()) {
        PhotoFormat::Jsonl
    } else if t.starts_with('{') || t.starts_with('[') {
        PhotoFormat::FlickrJson
    } else {
        PhotoFormat::Csv
    })
}

/// Collects photos, bad rows and filtered counts, and enforces unique ids.
struct Sink<'o> {
    opts: &'o PhotoOptions,
    report: PhotoReport,
    seen: HashMap<RecordId, String>,
}

/// The outcome of parsing one row.
enum Row {
    Keep(Photo),
    Filtered,
}

impl<'o> Sink<'o> {
    fn new(opts: &'o PhotoOptions) -> Self {
        Sink { opts, report: PhotoReport::default(), seen: HashMap::new() }
    }

    /// Take one parsed row. `Err` only under [`OnError::Fail`].
    fn take(&mut self, at: String, row: std::result::Result<Row, String>) -> Result<()> {
        let row = row.and_then(|r| match r {
            Row::Keep(p) => match self.seen.get(&p.id) {
                Some(first) => Err(format!("duplicate id {} (first at {first})", p.id)),
                None => Ok(Row::Keep(p)),
            },
            f => Ok(f),
        });
        match row {
            Ok(Row::Filtered) => self.report.filtered += 1,
            Ok(Row::Keep(mut p)) => {
                self.seen.insert(p.id.clone(), at);
                let below = self.opts.min_accuracy.is_some_and(|min| p.accuracy.is_none_or(|a| a < min));
                if below {
                    self.report.filtered += 1;
                } else {
                    p.url = self.localise(&p.id, p.url.take());
                    self.report.photos.push(p);
                }
            }
            Err(reason) => match self.opts.on_error {
                OnError::Fail => return Err(Error::invalid(at, reason)),
                OnError::Skip => self.report.bad.push(BadRow { at, reason }),
            },
        }
        Ok(())
    }

    fn localise(&self, id: &RecordId, url: Option<String>) -> Option<String> {
        let Some(dir) = &self.opts.images_dir else { return url };
        let mut candidates = Vec::new();
        if let Some(u) = &url {
            let is_url = u.contains("://");
            if !is_url && !Path::new(u).is_absolute() {
                candidates.push(dir.join(u));
            }
            let base = u.split(['?', '#']).next().unwrap_or(u).rsplit(['/', '\\']).next().unwrap_or(u);
            if !base.is_empty() {
                candidates.push(dir.join(base));
            }
        }
        candidates.push(dir.join(format!("{id}.jpg")));
        candidates.into_iter().find(|c| c.is_file()).map(|c| c.to_string_lossy().into_owned()).or(url)
    }
}

fn line_at(path: &Path, line: u64) -> String {
    format!("{} line {line}", path.display())
}

fn parse_id(s: &str) -> std::result::Result<RecordId, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("missing id".into());
    }
    Ok(s.parse::<i64>().map(RecordId::Int).unwrap_or_else(|_| RecordId::Str(s.to_owned())))
}

fn parse_coord(name: &str, s: Option<&str>) -> std::result::Result<f64, String> {
    let s = s.map(str::trim).filter(|s| !s.is_empty()).ok_or_else(|| format!("missing {name}"))?;
    let v: f64 = s.parse().map_err(|_| format!("{name} '{s}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{name} is {s}"));
    }
    Ok(v)
}

/// Checks a position; `Err` names what is wrong.
fn check_position(lat: f64, lon: f64) -> std::result::Result<(), String> {
    if !(-90.0..=90.0).contains(&lat) {
        return Err(format!("latitude {lat} is outside -90..90"));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(format!("longitude {lon} is outside -180..180"));
    }
    if lat == 0.0 && lon == 0.0 {
        return Err("position 0,0 means no geotag".into());
    }
    Ok(())
}

fn parse_accuracy(s: Option<&str>) -> std::result::Result<Option<u8>, String> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => match s.parse::<u8>() {
            Ok(0) => Ok(None),
            Ok(a) if a <= 16 => Ok(Some(a)),
            _ => Err(format!("accuracy '{s}' is not 0–16")),
        },
    }
}

fn parse_opt_time(s: Option<&str>) -> std::result::Result<Option<i64>, String> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse_time(s).map(Some),
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

// ---------------------------------------------------------------- YFCC100M

/// Where the fields of a YFCC row are. The last 20 columns are the same in every variant;
/// the leading ones are `[id, user]`, `[row, id, user]`, `[id, nsid, nickname]`,
/// `[row, id, nsid, nickname]` or `[row, id, hash, nsid, nickname]`.
fn yfcc_row(cols: &[&str]) -> std::result::Result<Row, String> {
    let n = cols.len();
    if !(22..=25).contains(&n) {
        return Err(format!("expected 22–25 tab-separated columns, found {n}"));
    }
    let back = |k: usize| cols.get(n - k).copied();
    let lead = n - 20;
    let col = |i: usize| cols.get(i).copied().unwrap_or("");
    let (id_col, user_col) = match lead {
        2 => (0, 1),
        3 if col(1).contains('@') => (0, 1),
        3 => (1, 2),
        4 => (1, 2),
        _ => (1, 3),
    };
    if back(1).map(str::trim) == Some("1") {
        return Ok(Row::Filtered); // video
    }
    let id = parse_id(col(id_col))?;
    let (lon_s, lat_s) = (back(13).unwrap_or("").trim(), back(12).unwrap_or("").trim());
    if lon_s.is_empty() && lat_s.is_empty() {
        return Ok(Row::Filtered); // not geotagged
    }
    let lon = parse_coord("longitude", Some(lon_s))?;
    let lat = parse_coord("latitude", Some(lat_s))?;
    check_position(lat, lon)?;
    Ok(Row::Keep(Photo {
        id,
        lon,
        lat,
        accuracy: parse_accuracy(back(11))?,
        time: parse_opt_time(back(20))?,
        source: "yfcc100m".into(),
        license: non_empty(back(8)),
        url: non_empty(back(9)),
        user: non_empty(Some(col(user_col))),
    }))
}

/// Call `f(line_no, line)` for every non-blank line (1-based numbers, line ending removed).
/// Invalid UTF-8 is replaced, so a bad byte becomes a bad row rather than an I/O error.
fn for_each_line(path: &Path, mut f: impl FnMut(u64, &str) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(|e| Error::io(path, e))? == 0 {
            return Ok(());
        }
        line_no += 1;
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty() {
            f(line_no, line)?;
        }
    }
}

fn read_yfcc(path: &Path, sink: &mut Sink<'_>) -> Result<()> {
    for_each_line(path, |line_no, line| {
        let cols: Vec<&str> = line.split('\t').collect();
        sink.take(line_at(path, line_no), yfcc_row(&cols))
    })
}

// ---------------------------------------------------------------- JSON objects (Flickr, JSONL)

fn json_str(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// First of `keys` present in the object (case-sensitive, as the formats spell them).
fn field<'v>(obj: &'v serde_json::Map<String, Value>, keys: &[&str]) -> Option<&'v Value> {
    keys.iter().find_map(|k| obj.get(*k)).filter(|v| !v.is_null())
}

const ID_KEYS: &[&str] = &["id", "photo_id"];
const LAT_KEYS: &[&str] = &["latitude", "lat"];
const LON_KEYS: &[&str] = &["longitude", "lon", "lng", "long"];
const TIME_KEYS: &[&str] = &["datetaken", "date_taken", "taken", "time", "datetime"];
const URL_KEYS: &[&str] =
    &["url", "path", "file", "url_o", "url_l", "url_c", "url_z", "url_m", "url_n", "url_q", "url_s", "url_t", "url_sq"];
const USER_KEYS: &[&str] = &["user", "owner", "ownername"];

fn json_photo(v: &Value, source: &str) -> std::result::Result<Row, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    if field(obj, &["media"]).and_then(Value::as_str) == Some("video") {
        return Ok(Row::Filtered);
    }
    let id = parse_id(&json_str(field(obj, ID_KEYS)).unwrap_or_default())?;
    let lat = parse_coord("latitude", json_str(field(obj, LAT_KEYS)).as_deref())?;
    let lon = parse_coord("longitude", json_str(field(obj, LON_KEYS)).as_deref())?;
    check_position(lat, lon)?;
    Ok(Row::Keep(Photo {
        id,
        lon,
        lat,
        accuracy: parse_accuracy(json_str(field(obj, &["accuracy"])).as_deref())?,
        time: parse_opt_time(json_str(field(obj, TIME_KEYS)).as_deref())?,
        source: source.into(),
        license: non_empty(json_str(field(obj, &["license"])).as_deref()),
        url: non_empty(json_str(field(obj, URL_KEYS)).as_deref()),
        user: non_empty(json_str(field(obj, USER_KEYS)).as_deref()),
    }))
}

fn read_flickr(path: &Path, sink: &mut Sink<'_>) -> Result<()> {
    let at = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(line_at(path, e.line() as u64), format!("not valid JSON: {e}")))?;
    if doc.get("stat").and_then(Value::as_str) == Some("fail") {
        let msg = doc.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(Error::invalid(at, format!("Flickr returned an error response: {msg}")));
    }
    let (photos, depth) = match &doc {
        Value::Array(a) => (a, 1),
        _ => match doc.get("photos").and_then(|p| p.get("photo")).and_then(Value::as_array) {
            Some(a) => (a, 3),
            None => return Err(Error::invalid(at, "expected {\"photos\":{\"photo\":[...]}} or an array of photos")),
        },
    };
    let lines = object_lines(&text, depth);
    for (i, v) in photos.iter().enumerate() {
        let where_ = match lines.get(i) {
            Some(l) if lines.len() == photos.len() => line_at(path, *l),
            _ => format!("{at} photo {}", i + 1),
        };
        sink.take(where_, json_photo(v, "flickr"))?;
    }
    Ok(())
}

/// 1-based line numbers of the objects that open at container depth `depth` inside an
/// array (the photo objects of a Flickr response), in document order.
fn object_lines(text: &str, depth: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack: Vec<u8> = Vec::new();
    let (mut in_str, mut escaped, mut line) = (false, false, 1u64);
    for b in text.bytes() {
        if b == b'\n' {
            line += 1;
        }
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                if b == b'{' && stack.len() == depth && stack.last() == Some(&b'[') {
                    out.push(line);
                }
                stack.push(b);
            }
            b'}' | b']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    out
}

fn read_jsonl(path: &Path, sink: &mut Sink<'_>) -> Result<()> {
    for_each_line(path, |line_no, line| {
        let row = serde_json::from_str::<Value>(line.trim())
            .map_err(|e| format!("not valid JSON: {e}"))
            .and_then(|v| json_photo(&v, "jsonl"));
        sink.take(line_at(path, line_no), row)
    })
}

// ---------------------------------------------------------------- CSV

fn read_csv(path: &Path, sink: &mut Sink<'_>) -> Result<()> {
    let at = path.display().to_string();
    let mut rdr = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_path(path).map_err(|e| {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => Error::io(path, io),
            k => Error::invalid(at.clone(), format!("{k:?}")),
        }
    })?;
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::invalid(line_at(path, 1), format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let find = |keys: &[&str]| keys.iter().find_map(|k| headers.iter().position(|h| h == k));
    let need = |keys: &[&str], what: &str| {
        find(keys).ok_or_else(|| {
            Error::invalid(line_at(path, 1), format!("no {what} column (one of {}) in the header", keys.join(", ")))
        })
    };
    let id_c = need(ID_KEYS, "id")?;
    let lat_c = need(LAT_KEYS, "latitude")?;
    let lon_c = need(LON_KEYS, "longitude")?;
    let (time_c, acc_c) = (find(TIME_KEYS), find(&["accuracy"]));
    let (url_c, lic_c, user_c) = (find(URL_KEYS), find(&["license", "licence"]), find(USER_KEYS));
    for rec in rdr.records() {
        let (where_, row) = match rec {
            Err(e) => {
                let l = e.position().map_or(0, csv::Position::line);
                (line_at(path, l), Err(format!("unreadable CSV row: {e}")))
            }
            Ok(r) => {
                let l = r.position().map_or(0, csv::Position::line);
                let get = |c: Option<usize>| c.and_then(|c| r.get(c));
                let row = (|| {
                    let id = parse_id(get(Some(id_c)).unwrap_or(""))?;
                    let lat = parse_coord("latitude", get(Some(lat_c)))?;
                    let lon = parse_coord("longitude", get(Some(lon_c)))?;
                    check_position(lat, lon)?;
                    Ok(Row::Keep(Photo {
                        id,
                        lon,
                        lat,
                        accuracy: parse_accuracy(get(acc_c))?,
                        time: parse_opt_time(get(time_c))?,
                        source: "csv".into(),
                        license: non_empty(get(lic_c)),
                        url: non_empty(get(url_c)),
                        user: non_empty(get(user_c)),
                    }))
                })();
                (line_at(path, l), row)
            }
        };
        sink.take(where_, row)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- EXIF

fn read_exif(path: &Path, sink: &mut Sink<'_>) -> Result<()> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| matches!(e.to_string_lossy().to_ascii_lowercase().as_str(), "jpg" | "jpeg"))
            })
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        let row = exif_photo(&f)?;
        sink.take(f.display().to_string(), row)?;
    }
    Ok(())
}

/// GPS degrees from three EXIF rationals (degrees, minutes, seconds) and a N/S/E/W ref.
fn gps_degrees(exif: &exif::Exif, tag: exif::Tag, ref_tag: exif::Tag, neg: u8) -> std::result::Result<f64, String> {
    let field = exif.get_field(tag, exif::In::PRIMARY).ok_or_else(|| format!("no {tag} in EXIF"))?;
    let exif::Value::Rational(r) = &field.value else {
        return Err(format!("{tag} is not three rationals"));
    };
    let part = |i: usize| r.get(i).filter(|q| q.denom != 0).map(exif::Rational::to_f64);
    let (Some(d), Some(m), Some(s)) = (part(0), part(1), part(2).or(Some(0.0))) else {
        return Err(format!("{tag} has a missing or zero-denominator part"));
    };
    let mut v = d + m / 60.0 + s / 3600.0;
    if let Some(f) = exif.get_field(ref_tag, exif::In::PRIMARY) {
        if let exif::Value::Ascii(a) = &f.value {
            if a.first().and_then(|s| s.first()).map(u8::to_ascii_uppercase) == Some(neg) {
                v = -v;
            }
        }
    }
    Ok(v)
}

fn exif_ascii(exif: &exif::Exif, tag: exif::Tag) -> Option<String> {
    match &exif.get_field(tag, exif::In::PRIMARY)?.value {
        exif::Value::Ascii(a) => a.first().map(|s| String::from_utf8_lossy(s).trim_end_matches('\0').trim().to_owned()),
        _ => None,
    }
}

/// `Err` only for I/O; EXIF problems are a bad row.
fn exif_photo(path: &Path) -> Result<std::result::Result<Row, String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let exif = match exif::Reader::new().read_from_container(&mut reader) {
        Ok(e) => e,
        Err(exif::Error::Io(e)) => return Err(Error::io(path, e)),
        Err(e) => return Ok(Err(format!("no readable EXIF: {e}"))),
    };
    Ok((|| {
        let lat = gps_degrees(&exif, exif::Tag::GPSLatitude, exif::Tag::GPSLatitudeRef, b'S')?;
        let lon = gps_degrees(&exif, exif::Tag::GPSLongitude, exif::Tag::GPSLongitudeRef, b'W')?;
        if !lat.is_finite() || !lon.is_finite() {
            return Err("GPS position is not finite".to_owned());
        }
        check_position(lat, lon)?;
        // DateTimeOriginal is local time; OffsetTimeOriginal (EXIF 2.31) gives its zone.
        let time = match exif_ascii(&exif, exif::Tag::DateTimeOriginal).filter(|s| !s.is_empty()) {
            None => None,
            Some(dt) => {
                let off = exif_ascii(&exif, exif::Tag::OffsetTimeOriginal).unwrap_or_default();
                let with_off = if off.is_empty() { dt.clone() } else { format!("{dt}{off}") };
                Some(parse_time(&with_off).or_else(|_| parse_time(&dt)).map_err(|e| format!("DateTimeOriginal: {e}"))?)
            }
        };
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Row::Keep(Photo {
            id: RecordId::Str(id),
            lon,
            lat,
            accuracy: None,
            time,
            source: "exif".into(),
            license: None,
            url: Some(path.to_string_lossy().into_owned()),
            user: exif_ascii(&exif, exif::Tag::Artist).filter(|s| !s.is_empty()),
        }))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_lines_finds_photo_objects_only() {
        let text = "{\"photos\":{\"page\":1,\n\"photo\":[\n{\"id\":\"1\",\"t\":\"{[\\\"\"},\n{\"id\":\"2\",\"o\":{\"x\":[{}]}}\n]}}";
        assert_eq!(object_lines(text, 3), vec![3, 4]);
        assert_eq!(object_lines("[{},\n{}]", 1), vec![1, 2]);
    }

    #[test]
    fn yfcc_layouts_pick_the_id_column() {
        let tail = ["2012-02-16 09:56:37.0", "1329386197", "Canon", "t", "d", "a,b", "", "-122.4", "37.7", "16"]
            .into_iter()
            .chain(["http://www.flickr.com/photos/u/42/", "http://f/42.jpg", "CC", "http://cc", "1", "2", "s", "so", "jpg", "0"])
            .collect::<Vec<_>>();
        for lead in [vec!["42", "alice"], vec!["7", "42", "alice"], vec!["42", "1@N00", "alice"], vec!["7", "42", "h", "1@N00", "alice"]] {
            let cols: Vec<&str> = lead.iter().copied().chain(tail.iter().copied()).collect();
            let Ok(Row::Keep(p)) = yfcc_row(&cols) else { panic!("row with lead {lead:?} refused") };
            assert_eq!(p.id, RecordId::Int(42), "lead {lead:?}");
            assert_eq!((p.lat, p.lon, p.accuracy), (37.7, -122.4, Some(16)));
        }
    }
}
