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
    /// k nearest neighbours of a vector inside space/time filters.
    Query(QueryArgs),
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
    /// Print the plan to stderr.
    #[arg(long)]
    pub explain: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
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

/// Parse an RFC 3339 timestamp or a date into microseconds since the epoch. A date as an
/// upper bound means the end of that day, so both bounds include whole days.
pub fn parse_time(flag: &str, s: &str, end_of_day: bool) -> Result<i64> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    match s.parse::<jiff::civil::Date>() {
        Ok(d) => {
            let start = d.to_zoned(jiff::tz::TimeZone::UTC).map_err(|e| anyhow::anyhow!("{flag} '{s}': {e}"))?.timestamp().as_microsecond();
            Ok(if end_of_day { start + 86_400_000_000 - 1 } else { start })
        }
        Err(_) => bail!("{flag} '{s}': not an RFC 3339 timestamp (2021-06-01T00:00:00Z) or a date (2021-06-01)"),
    }
}
