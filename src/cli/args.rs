//! Raw command-line flags (clap derive) and the parsers that check them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use graftdb::{Kind, Metric};

/// graftdb: search satellite tiles and ground photos by space, time and embedding.
#[derive(Parser, Debug)]
#[command(name = "graftdb", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an empty database directory.
    Create {
        /// Database directory.
        db: PathBuf,
    },
    /// Bring data in.
    #[command(subcommand)]
    Ingest(IngestCmd),
    /// k nearest neighbours of a vector, a text or a stored record inside space/time filters.
    Query(QueryArgs),
    /// Compute embeddings for tiles, tile patches and photos that lack them (resumable).
    Embed(EmbedArgs),
    /// Zero-shot classification of tiles against text labels, with area per label.
    Classify(ClassifyArgs),
    /// Which photos fall in which tiles (JSON lines).
    Join {
        /// Database directory.
        db: PathBuf,
        /// Write pairs here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Counts, sizes and index state (JSON).
    Stats {
        /// Database directory.
        db: PathBuf,
    },
    /// Check redb, the vector index and the R-tree against each other.
    Check {
        /// Database directory.
        db: PathBuf,
    },
    /// Serve the JSON API and the map page over HTTP (see schema/http.md).
    Serve(ServeArgs),
    /// Export records and vectors as GeoParquet 1.1 (for LanceDB, DuckDB, Sedona).
    Export {
        /// Database directory.
        db: PathBuf,
        /// Output .parquet file.
        out: PathBuf,
    },
}

/// `ingest` subcommands.
#[derive(Subcommand, Debug)]
pub enum IngestCmd {
    /// Precomputed embeddings from Parquet: id, lon, lat, embedding [, time, geometry].
    Vectors {
        /// Database directory.
        db: PathBuf,
        /// Parquet file.
        file: PathBuf,
        /// Embedding space to put the vectors in (created if missing).
        #[arg(long)]
        space: String,
        /// Record kind of the rows.
        #[arg(long, default_value = "photo", value_parser = parse_kind)]
        kind: Kind,
        /// Metric of a new space.
        #[arg(long, default_value = "cos", value_parser = parse_metric)]
        metric: Metric,
        /// Rows decoded at a time.
        #[arg(long, default_value_t = 8192)]
        batch: usize,
    },
    /// GeoTIFF/COG rasters (any CRS) or STAC item JSON files, cut into tiles.
    Raster(RasterArgs),
    /// Geotagged photos: YFCC100M TSV, Flickr JSON, CSV, JSONL, or JPEGs with EXIF GPS.
    Photos(PhotosArgs),
}

/// Flags of `ingest raster`.
#[derive(clap::Args, Debug)]
pub struct RasterArgs {
    /// Database directory.
    pub db: PathBuf,
    /// GeoTIFF/COG files, or STAC item .json files whose assets are local GeoTIFFs.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Tile edge in source pixels; partial tiles at the right and bottom edges are dropped.
    #[arg(long, default_value_t = 224)]
    pub tile_px: u32,
    /// Expected ground sample distance, metres per pixel. A raster whose GSD differs by
    /// more than 1% is refused (graftdb does not resample; use gdalwarp -tr first).
    #[arg(long)]
    pub gsd: Option<f64>,
    /// Store each tile's pixels as PNG in the database instead of a reference to the file.
    #[arg(long)]
    pub store_pixels: bool,
    /// Skip tiles whose nodata fraction is above this (0–1).
    #[arg(long, default_value_t = 0.5)]
    pub max_nodata: f64,
    /// Acquisition time when neither the metadata nor the file name has one.
    #[arg(long)]
    pub time: Option<String>,
    /// Source name for the tiles (default: the file name, or the STAC collection).
    #[arg(long)]
    pub source: Option<String>,
}

/// Photo metadata formats.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhotoFormatArg {
    /// By extension, then by the first line.
    Auto,
    /// YFCC100M tab-separated metadata.
    Yfcc,
    /// A Flickr photos.search JSON response.
    FlickrJson,
    /// CSV with a header (id, latitude, longitude, ...).
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// JPEGs (a file or a folder) with EXIF GPS tags.
    Exif,
}

/// What to do with a bad photo row.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnErrorArg {
    /// Report it on stderr and go on.
    Skip,
    /// Stop: nothing from that file is committed.
    Fail,
}

/// Flags of `ingest photos`.
#[derive(clap::Args, Debug)]
pub struct PhotosArgs {
    /// Database directory.
    pub db: PathBuf,
    /// Metadata files, JPEGs, or folders of JPEGs.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: PhotoFormatArg,
    /// Folder of downloaded images: photo URLs are replaced by files found here.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Keep only photos with a geotag accuracy of at least N (Flickr 1–16, 16 = street).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub min_accuracy: Option<u8>,
    /// Skip bad rows (reported on stderr) or fail on the first one.
    #[arg(long, value_enum, default_value = "skip")]
    pub on_error: OnErrorArg,
}

/// Where inference runs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// CUDA when it works, else CPU.
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA or an error.
    Cuda,
}

/// Flags of `embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Database directory.
    pub db: PathBuf,
    /// Model bundle folder (schema/bundle.md).
    #[arg(long)]
    pub model: PathBuf,
    /// Image-level space for tile and photo vectors (created from the bundle if missing).
    #[arg(long)]
    pub space: String,
    /// Patch-level space for tile patch grids (default: SPACE-patch).
    #[arg(long)]
    pub patch_space: Option<String>,
    /// What to embed, comma-separated: tiles, patches, photos.
    #[arg(long, default_value = "tiles,photos")]
    pub what: String,
    /// Where inference runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Images per inference run (and per commit).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Folder to look for photo images in when their URL is not a local file.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Threads decoding and resizing images while inference runs (default: half the cores).
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// Embed at most N records this run (the rest stay for the next run).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Flags of `serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Database directory (opened read-only: ingest and embed keep working beside it).
    pub db: PathBuf,
    /// Model bundle whose text encoder embeds `text` queries.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Write nothing into the database directory, not even rebuilt index snapshots.
    #[arg(long)]
    pub read_only: bool,
}

/// Flags of `classify`.
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// Database directory.
    pub db: PathBuf,
    /// Image-level space holding the tiles' vectors.
    #[arg(long)]
    pub space: String,
    /// Model bundle whose text encoder embeds the labels (the one that filled the space).
    #[arg(long)]
    pub model: PathBuf,
    /// Labels, comma-separated.
    #[arg(long)]
    pub labels: String,
    /// Prompt template; {} is replaced by each label.
    #[arg(long, default_value = "a satellite photo of {}.")]
    pub template: String,
    /// Softmax temperature applied to cosine similarities (CLIP's logit scale).
    #[arg(long, default_value_t = 100.0)]
    pub temperature: f32,
    /// Region and time filters.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format (json also carries the summary; csv and geojson print it on stderr).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// A JSON array.
    Json,
    /// An RFC 7946 FeatureCollection.
    Geojson,
    /// CSV with a header.
    Csv,
}

/// Query level.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelArg {
    /// Whole records.
    Image,
    /// Patches of tiles.
    Patch,
}

/// Flags of `query`.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Database directory.
    pub db: PathBuf,
    /// Embedding space.
    #[arg(long)]
    pub space: String,
    /// Query vector: a JSON array or .npy file, or - for JSON on stdin.
    #[arg(long)]
    pub vector: Option<String>,
    /// Many queries: a [Q,D] .npy or JSON array; one JSON line of hits per query.
    #[arg(long)]
    pub vectors: Option<String>,
    /// Query by text, embedded with the text encoder of --model.
    #[arg(long)]
    pub text: Option<String>,
    /// Model bundle for --text (the one that filled the space).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Query by the stored vector of a tile or photo id (the record itself is left out).
    #[arg(long, allow_hyphen_values = true)]
    pub like: Option<String>,
    /// Region and time filters.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only tiles or only photos.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<Kind>,
    /// image or patch.
    #[arg(long, value_enum, default_value = "image")]
    pub level: LevelArg,
    /// Results wanted.
    #[arg(short, default_value_t = 10)]
    pub k: usize,
    /// Scan exactly, never the graph.
    #[arg(long)]
    pub exact: bool,
    /// Patch level: answer from at most N tiles, those whose mean patch scores best
    /// (approximate; faster over many tiles).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tiles: Option<u64>,
    /// Image level: answer from at most N content partitions, those that can hold the best
    /// rows (approximate; faster from about 1 % of the rows up).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_partitions: Option<u64>,
    /// Print the plan to stderr.
    #[arg(long)]
    pub explain: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Region and time filters shared by `query` and `classify`.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// W,S,E,N in degrees; W > E crosses the antimeridian.
    #[arg(long, allow_hyphen_values = true)]
    pub bbox: Option<String>,
    /// LAT,LON centre for --radius-km.
    #[arg(long, allow_hyphen_values = true)]
    pub near: Option<String>,
    /// Great-circle radius around --near, km.
    #[arg(long)]
    pub radius_km: Option<f64>,
    /// Polygon as WKT or GeoJSON text, or a file holding either.
    #[arg(long)]
    pub polygon: Option<String>,
    /// Geohash prefix.
    #[arg(long)]
    pub geohash: Option<String>,
    /// Earliest time (RFC 3339 or YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Latest time (RFC 3339 or YYYY-MM-DD, the whole day), inclusive.
    #[arg(long)]
    pub to: Option<String>,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}
fn parse_metric(s: &str) -> Result<Metric, String> {
    s.parse()
}

/// Parse `n` comma-separated numbers for flag `flag`.
pub fn parse_floats(flag: &str, s: &str, n: usize) -> Result<Vec<f64>> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} '{s}': {e}"))?;
    if v.len() != n {
        bail!("{flag} '{s}': expected {n} comma-separated numbers, got {}", v.len());
    }
    Ok(v)
}

/// Parse an RFC 3339 timestamp or a date into microseconds since the epoch (see
/// [`graftdb::spec::parse_time`]).
pub fn parse_time(flag: &str, s: &str, end_of_day: bool) -> Result<i64> {
    Ok(graftdb::spec::parse_time(flag, s, end_of_day)?)
}
