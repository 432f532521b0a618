//! `graftdb serve`: a JSON API over one open [`Db`] and a map page for analysts.
//!
//! - [`request`]: the `POST /query` body and its checks (shared with the CLI via
//!   [`crate::spec`]).
//! - [`error`]: [`ApiError`], the one JSON error shape, naming the field.
//! - [`routes`]: the handlers: `/query`, `/tiles`, `/stats`, `/healthz`, `/openapi.json`, `/`.
//! - [`openapi`]: the OpenAPI 3.1 document served at `/openapi.json`.
//! - [`assets`]: the map page and the vendored Leaflet files compiled into the binary.
//! - [`pixels`]: tile windows as PNG, with raster files kept open between requests.
//!
//! The database is opened read-only (no writer lock), so `graftdb ingest` and `embed` in
//! another process keep working while it serves; every query first brings the in-memory
//! index up to the latest commit ([`Db::search`]). Queries run on tokio's blocking pool,
//! at most [`Limits::concurrent`] at a time, each bounded by [`Limits::query_time`].

pub mod assets;
pub mod error;
pub mod openapi;
pub mod pixels;
pub mod request;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::ApiError;

use crate::embed::TextEncoder;
use crate::{Db, Error, Options, Result};

/// What the server accepts at most. Requests beyond a limit get a 4xx naming the field.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request body bytes (413 above).
    pub body_bytes: usize,
    /// Largest `k`.
    pub max_k: usize,
    /// Most vertices of a `polygon` (all rings together).
    pub polygon_vertices: usize,
    /// Most characters of a `text`.
    pub text_chars: usize,
    /// Wall time one query may take, waiting included (503 above).
    pub query_time: Duration,
    /// Queries running at once; more wait (within `query_time`).
    pub concurrent: usize,
    /// Most tile footprints one `GET /tiles` returns.
    pub tile_list: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            body_bytes: 1 << 20,
            max_k: 1000,
            polygon_vertices: 10_000,
            text_chars: 1000,
            query_time: Duration::from_secs(10),
            concurrent: 2 * cores,
            tile_list: 500,
        }
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Database directory.
    pub db: PathBuf,
    /// Model bundle whose text encoder embeds `text` queries (none: `text` is refused).
    pub model: Option<PathBuf>,
    /// Address to bind; loopback by default.
    pub addr: SocketAddr,
    /// Write nothing into the database directory (not even rebuilt index snapshots).
    pub read_only: bool,
    /// Limits in force.
    pub limits: Limits,
}

impl ServeOptions {
    /// Defaults for a database: `127.0.0.1:8080`, no model.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        ServeOptions { db: db.into(), model: None, addr: SocketAddr::from(([127, 0, 0, 1], 8080)), read_only: false, limits: Limits::default() }
    }
}

/// The state every handler shares: one open database, read by all requests at once.
pub struct AppState {
    /// The database, opened read-only.
    pub db: Db,
    /// The text encoder and the dimension of its vectors.
    pub text: Option<(TextEncoder, usize)>,
    /// Limits in force.
    pub limits: Limits,
    /// Bounds the queries running at once.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Raster files kept open for tile images.
    pub pixels: pixels::Pixels,
}

impl AppState {
    /// Open the database (read-only) and the model.
    pub fn open(opts: &ServeOptions) -> Result<AppState> {
        let db = Db::open_read_only_with(&opts.db, Options { persist_index: !opts.read_only, ..Options::default() })?;
        let text = match &opts.model {
            Some(m) => {
                let bundle = crate::embed::Bundle::open(m)?;
                let dim = bundle.manifest().dim;
                Some((crate::spec::open_text_encoder(&bundle)?, dim))
            }
            None => None,
        };
        Ok(AppState { db, text, pixels: pixels::Pixels::default(), permits: Arc::new(tokio::sync::Semaphore::new(opts.limits.concurrent.max(1))), limits: opts.limits.clone() })
    }
}

/// Open everything, bind, and serve until `shutdown` completes. `on_bound` hears the
/// address actually bound (port 0 picks a free one) before the first request is taken.
pub fn serve(opts: ServeOptions, on_bound: impl FnOnce(SocketAddr), shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let state = Arc::new(AppState::open(&opts)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::io("tokio runtime", e))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr).await.map_err(|e| Error::invalid("--addr", format!("{}: {e}", opts.addr)))?;
        let bound = listener.local_addr().map_err(|e| Error::io("listener", e))?;
        on_bound(bound);
        axum::serve(listener, routes::router(state)).with_graceful_shutdown(shutdown).await.map_err(|e| Error::io("server", e))
    })
}
