//! Records as stored: tiles, ground photos, their ids, and embedding spaces.

use serde::{Deserialize, Serialize};

/// A record's id exactly as it was ingested: an integer or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordId {
    /// An integer id (e.g. a Flickr photo id).
    Int(i64),
    /// A string id.
    Str(String),
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordId::Int(i) => write!(f, "{i}"),
            RecordId::Str(s) => f.write_str(s),
        }
    }
}

impl From<i64> for RecordId {
    fn from(v: i64) -> Self {
        RecordId::Int(v)
    }
}
impl From<&str> for RecordId {
    fn from(v: &str) -> Self {
        RecordId::Str(v.to_owned())
    }
}
impl From<String> for RecordId {
    fn from(v: String) -> Self {
        RecordId::Str(v)
    }
}

impl RecordId {
    /// The id as a JSON value: a number for integers, a string otherwise.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            RecordId::Int(i) => serde_json::Value::from(*i),
            RecordId::Str(s) => serde_json::Value::from(s.as_str()),
        }
    }
}

/// Which kind of record: a satellite tile or a ground photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A satellite image tile with a footprint polygon.
    Tile,
    /// A geotagged ground photo (a point).
    Photo,
}

impl Kind {
    /// Lower-case name, as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tile => "tile",
            Kind::Photo => "photo",
        }
    }
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Kind::Tile => 0,
            Kind::Photo => 1,
        }
    }
    pub(crate) fn from_u8(v: u8) -> Option<Kind> {
        match v {
            0 => Some(Kind::Tile),
            1 => Some(Kind::Photo),
            _ => None,
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tile" => Ok(Kind::Tile),
            "photo" => Ok(Kind::Photo),
            _ => Err(format!("'{s}' is not a kind (tile|photo)")),
        }
    }
}

/// Where a tile's pixels live.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum PixelRef {
    /// No pixels are kept (e.g. vectors ingested from Parquet).
    #[default]
    None,
    /// A window of a raster file on disk: column, row, width, height in pixels.
    File {
        /// Path of the raster, as given at ingest.
        path: String,
        /// `[x_off, y_off, width, height]` in source pixels.
        window: [u32; 4],
    },
    /// Encoded image bytes (PNG) stored in the database.
    Stored(Vec<u8>),
}

/// A satellite tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    /// Id as ingested.
    pub id: RecordId,
    /// Footprint ring in WGS84 (lon, lat), closed (first == last). Exterior ring only.
    pub footprint: Vec<[f64; 2]>,
    /// Source name, e.g. `naip`, `sentinel-2`, or the file name of a GeoTIFF.
    pub source: String,
    /// Ground sample distance in metres per pixel (0 when unknown).
    pub gsd_m: f64,
    /// Acquisition time, microseconds since the Unix epoch (UTC).
    pub time: Option<i64>,
    /// Cloud cover in percent, when known.
    pub cloud_cover: Option<f32>,
    /// Where the pixels are.
    pub pixels: PixelRef,
}

/// A geotagged ground photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Photo {
    /// Id as ingested.
    pub id: RecordId,
    /// Longitude, degrees WGS84.
    pub lon: f64,
    /// Latitude, degrees WGS84.
    pub lat: f64,
    /// Geotag accuracy (Flickr's 1–16), when known.
    pub accuracy: Option<u8>,
    /// When the photo was taken, microseconds since the Unix epoch (UTC).
    pub time: Option<i64>,
    /// Source name, e.g. `yfcc100m`, `flickr`, `exif`.
    pub source: String,
    /// Licence name or URL.
    pub license: Option<String>,
    /// URL or local path of the image.
    pub url: Option<String>,
    /// Owner, when known.
    pub user: Option<String>,
}

/// A stored record: a tile or a photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A satellite tile.
    Tile(Tile),
    /// A ground photo.
    Photo(Photo),
}

impl Record {
    /// The record's id.
    pub fn id(&self) -> &RecordId {
        match self {
            Record::Tile(t) => &t.id,
            Record::Photo(p) => &p.id,
        }
    }
    /// Tile or photo.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Tile(_) => Kind::Tile,
            Record::Photo(_) => Kind::Photo,
        }
    }
    /// Time, microseconds since the epoch.
    pub fn time(&self) -> Option<i64> {
        match self {
            Record::Tile(t) => t.time,
            Record::Photo(p) => p.time,
        }
    }
    /// Bounding box `[west, south, east, north]` of the footprint or point.
    pub fn bbox(&self) -> [f64; 4] {
        match self {
            Record::Photo(p) => [p.lon, p.lat, p.lon, p.lat],
            Record::Tile(t) => {
                let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
                for [x, y] in &t.footprint {
                    b[0] = b[0].min(*x);
                    b[1] = b[1].min(*y);
                    b[2] = b[2].max(*x);
                    b[3] = b[3].max(*y);
                }
                b
            }
        }
    }
    /// The representative point: the photo's position or the centre of the tile's bbox.
    pub fn point(&self) -> (f64, f64) {
        match self {
            Record::Photo(p) => (p.lon, p.lat),
            Record::Tile(_) => {
                let b = self.bbox();
                ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
            }
        }
    }
}

/// Distance function of a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Cosine similarity (vectors are normalised at the door; score = cosine).
    Cos,
    /// Inner product (score = dot product).
    Ip,
    /// Euclidean distance (score = −L2²; higher is more similar).
    L2,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cos" => Ok(Metric::Cos),
            "ip" => Ok(Metric::Ip),
            "l2" => Ok(Metric::L2),
            _ => Err(format!("'{s}' is not a metric (cos|ip|l2)")),
        }
    }
}

impl Metric {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cos => "cos",
            Metric::Ip => "ip",
            Metric::L2 => "l2",
        }
    }
}

/// Image-level (one vector per record) or patch-level (a grid per tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// One vector per record.
    Image,
    /// A `rows × cols` grid of vectors per tile.
    Patch {
        /// Grid rows.
        rows: u16,
        /// Grid columns.
        cols: u16,
    },
}

/// A named embedding space: vectors of one model, never mixed with another's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceDef {
    /// Name, unique in the database.
    pub name: String,
    /// Internal number used in keys.
    pub number: u16,
    /// Vector dimension.
    pub dim: u32,
    /// Distance function.
    pub metric: Metric,
    /// Image or patch level.
    pub level: Level,
}
