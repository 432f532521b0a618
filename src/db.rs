//! [`Db`], the one entry type, and its write transaction [`WriteTxn`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::geo::hash;
use crate::geo::region::validate_point;
use crate::index::arena::{self, NewRow, RowMeta, Segment, SegmentBuilder};
use crate::index::parts::Parts;
use crate::index::{hnsw, scan};
use crate::query::{self, PlanCounters, Query, SearchResult};
use crate::store::{codec, CHUNK_TARGET_BYTES, FORMAT_VERSION, IDS, KEY_GEO_BITS, KEY_SEQ_MAX, META, RECORDS, SPACES, V1_VECTORS, V1_VECTOR_LOG, VECTOR_CHUNKS};
use crate::{Error, Kind, Level, Metric, Record, RecordId, Result, SpaceDef};

/// The redb file inside a database directory.
pub const REDB_FILE: &str = "graftdb.redb";
/// The folder of derived index files inside a database directory.
pub const INDEX_DIR: &str = "index";

/// Tuning knobs. The defaults are the measured ones (see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct Options {
    /// Candidates at or below which a filtered query scans exactly.
    pub exact_threshold: usize,
    /// Cover estimates at or below which the planner first counts the rows that really pass
    /// the filter (a pass over the candidates' filter fields, no vectors), marking them in a
    /// bitmap the graph walk then tests in O(1). Above it the graph tests rows lazily.
    pub prefilter_max: usize,
    /// Choose the exact scan whenever it is expected to compute fewer distances than the
    /// filtered graph walk (`ef / selectivity × M` nodes), not only below `exact_threshold`
    /// (at the patch level: whenever the tile scan is expected to cost less than the walk).
    /// Tests turn it off to drive the graph path (and the patch partitions) on small data.
    pub cost_switch: bool,
    /// Spaces with fewer vectors than this get no HNSW graph (an exact scan is as fast).
    pub hnsw_min_rows: usize,
    /// Rows that may wait in the in-memory delta before the arena is rebuilt.
    pub delta_max: usize,
    /// Threads for building graphs.
    pub threads: usize,
    /// Beam width of a graph search with no filter; filtered searches widen it by
    /// 1/√selectivity. Candidates are re-scored exactly, so this trades time for recall only.
    pub ef_search: usize,
    /// Write derived index files (turn off for read-only media).
    pub persist_index: bool,
    /// Build cone partitions (`index::parts`) for image-level cosine spaces that get a graph,
    /// and let the planner scan them exactly when their bounds prune enough.
    pub partitions: bool,
    /// After open, fault the mapped snapshot and partitions files into the process in a
    /// background thread (Linux 5.14+, `MADV_POPULATE_READ`), so the first queries of a fresh
    /// process do not pay a page fault per 4 KB page they touch. Open itself does not wait.
    /// The populated file pages count in the process's RSS (they are the page cache's).
    pub prefault: bool,
    /// Let a capped tile scan (`Query::max_tiles`) over a region of most of a patch space's
    /// tiles (2,048 or more) find its best tiles through the tile summaries grouped by
    /// content (cone partitions of the tiles' mean patches, made in memory after open or
    /// checkpoint) instead of scoring every tile's summary: the same tiles and answer (where
    /// the groups would visit more than a quarter of the region, or their best tiles do not
    /// fill the cap, the summaries are all scored as before). Tests turn it off to compare.
    pub tile_groups: bool,
    /// Let a capped tile scan (12 tiles or more) that leaves tiles out rank its tiles'
    /// patches by four-bit copies of their codes (`dim / 2 + 4` bytes a patch, 512-d: 260,
    /// held in memory: made on a background thread after open, the scans before it finishes
    /// reading the i8 codes as without it; a segment of up to 50k patches, or a checkpoint's
    /// held in memory, has them made by the first such scan) and read the i8 codes of a
    /// short list of the best only (128, or 12 a hit): about half the bytes a visited tile.
    /// Only for a `dim` that is a multiple of 128, on a CPU with AVX-512BW. Off: no copy
    /// is made (tests turn it off to compare).
    pub tile_shortlist: bool,
    /// Let a capped partition scan (`Query::max_partitions`, image level) rank the rows it
    /// visits by two-bit codes of their residuals from their partition's centroid (`dim / 4 +
    /// 4` bytes a row, 512-d: 132, held in memory: made on a background thread after open,
    /// the scans before it finishes reading the i8 codes as without it; partitions of up to
    /// 50k rows, or a checkpoint's held in memory, have them made by the first such scan) and
    /// read the i8 codes of a short list of the best only: about a third of the bytes a
    /// visited row. Only for a `dim` that is a multiple of 256, on a CPU with AVX-512BW. Off:
    /// no copy is made (tests turn it off to compare).
    pub row_shortlist: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            exact_threshold: 20_000,
            prefilter_max: 400_000,
            cost_switch: true,
            hnsw_min_rows: 20_000,
            delta_max: 50_000,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ef_search: 384,
            persist_index: true,
            partitions: true,
            prefault: true,
            tile_groups: true,
            tile_shortlist: true,
            row_shortlist: true,
        }
    }
}

/// The in-memory index state of one space.
pub(crate) struct SpaceIndex {
    pub base: Segment,
    pub delta: Segment,
    pub hnsw: Option<usearch::Index>,
    /// Cone partitions of the base rows (image-level cosine spaces with a graph).
    pub parts: Option<Parts>,
    /// Last vector sequence (`vector_chunks`) reflected by base + delta.
    pub applied: u64,
    /// Largest half-width or half-height of any tile footprint, degrees.
    pub max_half_extent: f64,
    /// The snapshot or partitions file is of an older format and was upgraded in memory on
    /// load; the next checkpoint writes it again in the current format.
    pub old_format: bool,
    /// Patch partitions were built for this snapshot and dropped because they do not prune
    /// on its own patches ([`Parts::prune_their_own_items`]); not built again until the next
    /// snapshot.
    pub parts_declined: bool,
}

pub(crate) struct SpaceHandle {
    pub def: SpaceDef,
    pub state: RwLock<SpaceIndex>,
}

impl SpaceHandle {
    fn stride(&self) -> usize {
        stride(&self.def)
    }
    fn is_patch(&self) -> bool {
        matches!(self.def.level, Level::Patch { .. })
    }
    /// Partition items per row: 1, or the patches of a grid.
    fn per(&self) -> usize {
        per(&self.def)
    }
}

/// Vectors per row of a space: 1 at the image level, the patches of a grid at the patch level.
pub(crate) fn per(def: &SpaceDef) -> usize {
    match def.level {
        Level::Image => 1,
        Level::Patch { rows, cols } => usize::from(rows) * usize::from(cols),
    }
}

/// Whether an image-level space keeps two-bit sketches of its rows' codes: where the exact
/// scan bounds scores from codes (`cos`, `ip`; `l2` rows are scored in f32).
pub(crate) fn row_sketches(def: &SpaceDef) -> bool {
    matches!(def.level, Level::Image) && matches!(def.metric, Metric::Cos | Metric::Ip)
}

/// Bytes of one vector payload in a space: `dim` f32, or the i8 patch grid.
pub(crate) fn payload_bytes(def: &SpaceDef) -> usize {
    match def.level {
        Level::Image => def.dim as usize * 4,
        Level::Patch { .. } => stride(def),
    }
}

fn stride(def: &SpaceDef) -> usize {
    match def.level {
        Level::Image => def.dim as usize,
        Level::Patch { .. } => per(def) * codec::patch_stride(def.dim as usize),
    }
}

fn half_extent(seg: &Segment) -> f64 {
    seg.bbox.chunks_exact(4).fold(0f64, |m, b| m.max((b[2] - b[0]) / 2.0).max((b[3] - b[1]) / 2.0))
}

/// An embedded graftdb database: a directory holding one redb file (the store of record)
/// and derived index files.
///
/// One process may write at a time (others get [`Error::Locked`]); any number of readers
/// proceed during writes and see each commit when it lands.
///
/// ```
/// use graftdb::{Db, Kind, Metric, Level, Photo, Record, RecordId, Query, Filter, Region};
/// let dir = tempfile::tempdir()?;
/// let db = Db::create(dir.path().join("demo.graftdb"))?;
/// db.create_space("clip", 3, Metric::Cos, Level::Image)?;
/// let mut w = db.begin_write()?;
/// for (i, (lon, lat)) in [(2.35, 48.85), (-0.12, 51.5), (13.4, 52.5)].into_iter().enumerate() {
///     let photo = Photo { id: RecordId::Int(i as i64), lon, lat, accuracy: Some(16), time: None,
///         source: "doc".into(), license: None, url: None, user: None };
///     let key = w.insert(Record::Photo(photo))?;
///     w.put_vector("clip", key, &[1.0, i as f32, 0.0])?;
/// }
/// w.commit()?;
/// let q = Query::new("clip", vec![1.0, 0.0, 0.0], 2)
///     .filter(Filter { regions: vec![Region::bbox(-5.0, 45.0, 10.0, 55.0)?], ..Default::default() });
/// let res = db.search(&q)?;
/// assert_eq!(res.hits.len(), 2);
/// assert_eq!(res.hits[0].id, RecordId::Int(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Db {
    dir: PathBuf,
    redb: Store,
    /// Held for the life of a read-write handle: one writer per database, across processes.
    _writer_lock: Option<std::fs::File>,
    spaces: RwLock<HashMap<String, Arc<SpaceHandle>>>,
    counters: PlanCounters,
    opts: Options,
    /// Commits made through this handle (a read-write handle is the only writer).
    commits: AtomicU64,
    /// The read view searches share until the next commit ([`Db::view`]).
    view: Mutex<Option<Arc<ReadView>>>,
}

/// A redb read snapshot with the tables a search reads, shared by searches while nothing
/// has been committed. Beginning a read transaction costs redb two `fcntl` calls (it
/// registers readers across processes) and opening a table a B-tree lookup: measured at
/// 100k, ~14 µs of a ~30 µs selective query before views were shared.
pub(crate) struct ReadView {
    /// [`Db::commits`] when the snapshot began; its contents are at least that new.
    commits: u64,
    records: redb::ReadOnlyTable<u64, &'static [u8]>,
    chunks: redb::ReadOnlyTable<(u16, u64), &'static [u8]>,
}

/// The redb handle: read-write, or read-only (which never blocks a writer in another process).
pub(crate) enum Store {
    ReadWrite(redb::Database),
    ReadOnly(redb::ReadOnlyDatabase),
}

impl Store {
    pub(crate) fn begin_read(&self) -> std::result::Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Store::ReadWrite(d) => d.begin_read(),
            Store::ReadOnly(d) => d.begin_read(),
        }
    }
}

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    b
}

/// The lock file that makes a read-write handle exclusive. Fails at once when held.
fn writer_lock(dir: &Path) -> Result<std::fs::File> {
    let p = dir.join("writer.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| Error::io(&p, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.into() }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&p, e)),
    }
}

fn map_open_err(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked { path: path.into() },
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Error::io(path, io),
        other => Error::Corrupt { path: path.into(), detail: other.to_string() },
    }
}

impl Db {
    /// Create a new database directory (it must not already hold a database).
    pub fn create(dir: impl AsRef<Path>) -> Result<Db> {
        Self::create_with(dir, Options::default())
    }

    /// [`Db::create`] with options.
    pub fn create_with(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        let file = dir.join(REDB_FILE);
        if file.exists() {
            return Err(Error::invalid(dir.display().to_string(), "a graftdb database already exists here"));
        }
        std::fs::create_dir_all(dir.join(INDEX_DIR)).map_err(|e| Error::io(&dir, e))?;
        let lock = writer_lock(&dir)?;
        let redb = builder().create(&file).map_err(|e| map_open_err(&file, e))?;
        let w = redb.begin_write()?;
        {
            let mut meta = w.open_table(META)?;
            meta.insert("format_version", FORMAT_VERSION.to_le_bytes().as_slice())?;
            w.open_table(SPACES)?;
            w.open_table(RECORDS)?;
            w.open_table(IDS)?;
            w.open_table(VECTOR_CHUNKS)?;
        }
        w.commit()?;
        Ok(Db { dir, redb: Store::ReadWrite(redb), _writer_lock: Some(lock), spaces: RwLock::new(HashMap::new()), counters: PlanCounters::default(), opts, commits: AtomicU64::new(0), view: Mutex::new(None) })
    }

    /// Open an existing database directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Db> {
        Self::open_with(dir, Options::default())
    }

    /// Open an existing database for reading only. It never takes the write lock, so it
    /// opens and reads while another process writes, and sees each commit as it lands.
    /// Writes through it return an error.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Db> {
        Self::open_inner(dir.as_ref(), Options::default(), true)
    }

    /// [`Db::open_read_only`] with options (`persist_index: false` writes nothing at all
    /// into the database directory).
    pub fn open_read_only_with(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        Self::open_inner(dir.as_ref(), opts, true)
    }

    /// [`Db::open`] with options.
    pub fn open_with(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        Self::open_inner(dir.as_ref(), opts, false)
    }

    fn open_inner(dir: &Path, opts: Options, read_only: bool) -> Result<Db> {
        let dir = dir.to_path_buf();
        let file = dir.join(REDB_FILE);
        if !file.is_file() {
            return Err(Error::invalid(dir.display().to_string(), format!("not a graftdb database (no {REDB_FILE} inside)")));
        }
        let (redb, lock) = if read_only {
            let ro = match builder().open_read_only(&file) {
                // After a crash the file needs repair, which only a writer may do: repair
                // (taking the writer lock, failing at once if a writer is busy), then read.
                Err(redb::DatabaseError::RepairAborted) => {
                    let lock = writer_lock(&dir)?;
                    drop(builder().open(&file).map_err(|e| map_open_err(&file, e))?);
                    drop(lock);
                    builder().open_read_only(&file)
                }
                other => other,
            };
            (Store::ReadOnly(ro.map_err(|e| map_open_err(&file, e))?), None)
        } else {
            // Take our lock first: redb's own open would wait, not fail, on a busy writer.
            let lock = writer_lock(&dir)?;
            (Store::ReadWrite(builder().open(&file).map_err(|e| map_open_err(&file, e))?), Some(lock))
        };
        let version = read_version(&redb, &file)?;
        if version > FORMAT_VERSION {
            return Err(Error::FormatTooNew { path: file, found: version, supported: FORMAT_VERSION });
        }
        let redb = if version < FORMAT_VERSION {
            match redb {
                Store::ReadWrite(d) => {
                    migrate(&d, &file)?;
                    Store::ReadWrite(d)
                }
                // A read-only handle cannot write: upgrade through a brief read-write open,
                // as repair does (failing with `Locked` if a writer is busy), then read.
                Store::ReadOnly(ro) => {
                    drop(ro);
                    let lock = writer_lock(&dir)?;
                    let d = builder().open(&file).map_err(|e| map_open_err(&file, e))?;
                    migrate(&d, &file)?;
                    drop(d);
                    drop(lock);
                    Store::ReadOnly(builder().open_read_only(&file).map_err(|e| map_open_err(&file, e))?)
                }
            }
        } else {
            redb
        };
        let db = Db { dir, redb, _writer_lock: lock, spaces: RwLock::new(HashMap::new()), counters: PlanCounters::default(), opts, commits: AtomicU64::new(0), view: Mutex::new(None) };
        let r = db.redb.begin_read().map_err(|e| Error::Corrupt { path: file.clone(), detail: e.to_string() })?;
        let defs: Vec<SpaceDef> = {
            let t = r.open_table(SPACES)?;
            let mut v = Vec::new();
            for e in t.iter()? {
                let (_, val) = e?;
                v.push(decode_space(val.value())?);
            }
            v
        };
        drop(r);
        for def in defs {
            let handle = db.load_space(def);
            db.refresh(&handle)?;
            db.spaces_write()?.insert(handle.def.name.clone(), handle);
        }
        Ok(db)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// How many queries took each plan since this handle was opened.
    pub fn counters(&self) -> &PlanCounters {
        &self.counters
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn spaces_write(&self) -> Result<std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<SpaceHandle>>>> {
        self.spaces.write().map_err(|_| Error::Index("space table lock poisoned".into()))
    }

    fn load_space(&self, def: SpaceDef) -> Arc<SpaceHandle> {
        let st = stride(&def);
        let patch = matches!(def.level, Level::Patch { .. });
        let mut idx = SpaceIndex { base: Segment::empty(st), delta: Segment::empty(st), hnsw: None, parts: None, applied: 0, max_half_extent: 0.0, old_format: false, parts_declined: false };
        // A missing or damaged snapshot is not an error: the arena is rebuilt from redb.
        if let Ok(m) = self.read_manifest(def.number) {
            if let Ok((seg, seq, old_seg)) = arena::read_snapshot(&self.dir.join(INDEX_DIR).join(&m.arena), st, patch) {
                if seq == m.seq {
                    // A graph labelled some other way is left unused; the snapshot still serves.
                    let usable = m.hnsw.as_ref().filter(|_| m.labels.as_deref() == Some(hnsw::labels(def.metric, patch)));
                    let graph = usable.and_then(|h| hnsw::view(&self.dir.join(INDEX_DIR).join(h), def.dim as usize, def.metric).ok());
                    let graph_ok = usable.is_none() || graph.as_ref().is_some_and(|g| g.size() == seg.len() * per(&def));
                    if graph_ok {
                        // Partitions that fail to load are rebuilt at the next checkpoint.
                        let parts = m.parts.as_ref().and_then(|p| Parts::load(&self.dir.join(INDEX_DIR).join(p), def.dim as usize, &seg, per(&def)).ok());
                        idx.old_format = old_seg || parts.as_ref().is_some_and(|p| p.1);
                        idx.parts = parts.map(|p| p.0);
                        idx.parts_declined = m.parts_declined;
                        if self.opts.prefault {
                            arena::prefault(seg.maps().into_iter().chain(idx.parts.iter().flat_map(Parts::maps)).collect());
                            if patch {
                                seg.summaries_in_background(per(&def), def.dim as usize);
                                if self.opts.tile_shortlist {
                                    seg.nibbles_in_background(per(&def), def.dim as usize);
                                }
                            } else {
                                idx.parts.iter().for_each(Parts::key_order_in_background);
                                if self.opts.row_shortlist {
                                    idx.parts.iter().for_each(Parts::residuals_in_background);
                                }
                            }
                        }
                        idx.max_half_extent = half_extent(&seg);
                        idx.base = seg;
                        idx.hnsw = graph;
                        idx.applied = seq;
                    }
                }
            }
        }
        Arc::new(SpaceHandle { def, state: RwLock::new(idx) })
    }

    fn manifest_path(&self, number: u16) -> PathBuf {
        self.dir.join(INDEX_DIR).join(format!("space-{number}.json"))
    }

    fn read_manifest(&self, number: u16) -> Result<Manifest> {
        let p = self.manifest_path(number);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt { path: p, detail: e.to_string() })
    }

    /// Create an embedding space, or return the existing one if it has the same shape.
    pub fn create_space(&self, name: &str, dim: u32, metric: Metric, level: Level) -> Result<SpaceDef> {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::invalid("--space", format!("'{name}': a space name is 1–64 characters of letters, digits, '-', '_' or '.'")));
        }
        if dim == 0 || dim > 65_536 {
            return Err(Error::invalid("dim", format!("{dim} is not a dimension in 1..=65536")));
        }
        let w = self.try_write()?;
        let def = {
            let mut t = w.open_table(SPACES)?;
            let existing = t.get(name)?.map(|v| decode_space(v.value())).transpose()?;
            if let Some(old) = existing {
                if old.dim != dim || old.metric != metric || old.level != level {
                    return Err(Error::invalid(
                        "--space",
                        format!("space '{name}' exists with dim {} metric {} level {:?}; asked for dim {dim} metric {} level {level:?}", old.dim, old.metric.as_str(), old.level, metric.as_str()),
                    ));
                }
                old
            } else {
                let mut max = 0u16;
                for e in t.iter()? {
                    max = max.max(decode_space(e?.1.value())?.number);
                }
                let def = SpaceDef { name: name.into(), number: max + 1, dim, metric, level };
                let bytes = bincode::serde::encode_to_vec(&def, bincode::config::standard()).map_err(|e| Error::Storage(e.to_string()))?;
                t.insert(name, bytes.as_slice())?;
                def
            }
        };
        w.commit()?;
        self.committed();
        let mut spaces = self.spaces_write()?;
        if !spaces.contains_key(name) {
            spaces.insert(name.into(), self.load_space(def.clone()));
        }
        Ok(def)
    }

    /// The spaces of the database.
    pub fn spaces(&self) -> Result<Vec<SpaceDef>> {
        self.sync_spaces()?;
        let s = self.spaces.read().map_err(|_| Error::Index("lock poisoned".into()))?;
        let mut v: Vec<SpaceDef> = s.values().map(|h| h.def.clone()).collect();
        v.sort_by_key(|d| d.number);
        Ok(v)
    }

    /// Pick up spaces created by another process since open.
    fn sync_spaces(&self) -> Result<()> {
        let r = self.redb.begin_read()?;
        let t = r.open_table(SPACES)?;
        let known = self.spaces.read().map_err(|_| Error::Index("lock poisoned".into()))?.len();
        if t.len()? as usize == known {
            return Ok(());
        }
        let mut spaces = self.spaces_write()?;
        for e in t.iter()? {
            let def = decode_space(e?.1.value())?;
            if !spaces.contains_key(&def.name) {
                spaces.insert(def.name.clone(), self.load_space(def));
            }
        }
        Ok(())
    }

    pub(crate) fn handle(&self, name: &str) -> Result<Arc<SpaceHandle>> {
        if let Some(h) = self.spaces.read().map_err(|_| Error::Index("lock poisoned".into()))?.get(name) {
            return Ok(h.clone());
        }
        self.sync_spaces()?;
        self.spaces
            .read()
            .map_err(|_| Error::Index("lock poisoned".into()))?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownSpace(name.into()))
    }

    /// The definition of a space.
    pub fn space(&self, name: &str) -> Result<SpaceDef> {
        Ok(self.handle(name)?.def.clone())
    }

    fn try_write(&self) -> Result<redb::WriteTransaction> {
        let Store::ReadWrite(d) = &self.redb else {
            return Err(Error::invalid(self.dir.display().to_string(), "the database was opened read-only"));
        };
        // A shared view would keep the pages this transaction replaces from being reused.
        self.drop_view();
        // Another process opening the file holds the write lock for a moment; a real
        // writer holds it for its whole transaction. Wait out the first, not the second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            match d.try_begin_write() {
                Ok(w) => return Ok(w),
                Err(redb::TransactionError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(redb::TransactionError::WouldBlock) => return Err(Error::Locked { path: self.dir.clone() }),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Begin the one write transaction. A second concurrent writer, in this process or
    /// another, gets [`Error::Locked`] at once.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        Ok(WriteTxn { db: self, txn: self.try_write()?, next_in_cell: HashMap::new(), chunks: HashMap::new(), put: std::collections::HashSet::new(), caught_up: std::collections::HashSet::new(), metas: HashMap::new() })
    }

    /// Look a record up by id; `kind` narrows the search when ids are shared.
    pub fn get(&self, kind: Option<Kind>, id: &RecordId) -> Result<Option<(u64, Record)>> {
        let r = self.redb.begin_read()?;
        let ids = r.open_table(IDS)?;
        let recs = r.open_table(RECORDS)?;
        for k in [Kind::Tile, Kind::Photo] {
            if kind.is_some_and(|x| x != k) {
                continue;
            }
            if let Some(key) = ids.get(codec::id_key(k, id).as_slice())? {
                let key = key.value();
                if let Some(v) = recs.get(key)? {
                    return Ok(Some((key, codec::decode_record(v.value())?)));
                }
            }
        }
        Ok(None)
    }

    /// A record by its internal key.
    pub fn record(&self, key: u64) -> Result<Option<Record>> {
        let r = self.redb.begin_read()?;
        let recs = r.open_table(RECORDS)?;
        recs.get(key)?.map(|v| codec::decode_record(v.value())).transpose()
    }

    /// The stored vector of a record: in an image-level space its `dim` f32; in a patch space
    /// its grid dequantised (`rows × cols × dim` f32). Answered from the space's arena, which
    /// is first brought up to the latest commit.
    pub fn vector(&self, space: &str, key: u64) -> Result<Option<Vec<f32>>> {
        let h = self.handle(space)?;
        self.refresh(&h)?;
        let s = h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?;
        let Some((seg, i)) = [&s.base, &s.delta].into_iter().find_map(|seg| seg.find(key).map(|i| (seg, i))) else {
            return Ok(None);
        };
        if let Level::Patch { rows, cols } = h.def.level {
            let dim = h.def.dim as usize;
            let grid = seg.grid(i);
            let mut out = Vec::with_capacity(usize::from(rows) * usize::from(cols) * dim);
            for p in 0..usize::from(rows) * usize::from(cols) {
                out.extend(codec::patch_decode(grid, dim, p).ok_or_else(|| Error::Index(format!("space '{space}': key {key}: short patch grid")))?);
            }
            return Ok(Some(out));
        }
        Ok(Some(seg.vector(i).to_vec()))
    }

    /// True when `key` has a vector in the space as of the latest commit (from the arena).
    fn has_vector(&self, h: &SpaceHandle, key: u64) -> Result<bool> {
        let s = h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?;
        Ok(s.base.find(key).is_some() || s.delta.find(key).is_some())
    }

    /// Run a query. Never returns fewer than `min(k, matches)` hits.
    pub fn search(&self, q: &Query) -> Result<SearchResult> {
        let h = self.handle(&q.space)?;
        let view = self.view()?;
        let last = self.refresh_in(&h, &view)?;
        let state = h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?;
        if state.applied > last {
            // The index caught up past the view (a commit landed meanwhile): read records at
            // least as new as the index, so every hit has its record.
            let r = self.redb.begin_read()?;
            return query::run(&h.def, &state, q, &r.open_table(RECORDS)?, &self.opts, &self.counters);
        }
        query::run(&h.def, &state, q, &view.records, &self.opts, &self.counters)
    }

    /// The shared read view: the cached one while no commit has landed through this handle
    /// since it began, else a new one. A read-only handle cannot see another process's
    /// commits coming, so it takes a new view every time.
    fn view(&self) -> Result<Arc<ReadView>> {
        let shared = matches!(self.redb, Store::ReadWrite(_));
        // Read before the snapshot begins: the snapshot holds every commit counted here.
        let commits = self.commits.load(Ordering::Acquire);
        if shared {
            if let Some(v) = self.view.lock().map_err(|_| Error::Index("lock poisoned".into()))?.as_ref().filter(|v| v.commits == commits) {
                return Ok(v.clone());
            }
        }
        let r = self.redb.begin_read()?;
        let v = Arc::new(ReadView { commits, records: r.open_table(RECORDS)?, chunks: r.open_table(VECTOR_CHUNKS)? });
        if shared {
            *self.view.lock().map_err(|_| Error::Index("lock poisoned".into()))? = Some(v.clone());
        }
        Ok(v)
    }

    /// Count a commit through this handle; the shared view is now stale.
    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Release);
        self.drop_view();
    }

    fn drop_view(&self) {
        if let Ok(mut v) = self.view.lock() {
            *v = None;
        }
    }

    /// Bring a space's in-memory index up to the latest commit.
    pub(crate) fn refresh(&self, h: &SpaceHandle) -> Result<()> {
        self.refresh_in(h, &*self.view()?).map(|_| ())
    }

    /// Bring a space's in-memory index up to `view` at least (a rebuild may bring it further);
    /// returns the space's last sequence in `view`.
    fn refresh_in(&self, h: &SpaceHandle, view: &ReadView) -> Result<u64> {
        let num = h.def.number;
        let last = last_chunk_seq(&view.chunks, num)?;
        {
            let s = h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?;
            if s.applied >= last {
                return Ok(last);
            }
        }
        let mut s = h.state.write().map_err(|_| Error::Index("lock poisoned".into()))?;
        if s.applied >= last {
            return Ok(last);
        }
        let lag = (last - s.applied) as usize;
        if s.delta.len() + lag <= self.opts.delta_max {
            let t = &view.chunks;
            let payload = payload_bytes(&h.def);
            let mut rows = Vec::with_capacity(lag);
            let from = s.applied;
            let mut applied = from;
            // The first chunk whose last sequence is past `from` holds `from + 1`.
            for e in t.range((num, from + 1)..=(num, u64::MAX))? {
                let (k, v) = e?;
                for (seq, key, entry) in chunk_rows(k.value().1, v.value(), payload)? {
                    if seq > from {
                        rows.push(new_row(h, key, entry)?);
                    }
                }
                applied = k.value().1;
            }
            let patch = h.is_patch();
            let delta = arena::merge_rows(&s.delta, rows, patch);
            s.max_half_extent = s.max_half_extent.max(half_extent(&delta));
            s.delta = delta;
            s.applied = applied;
            return Ok(last);
        }
        self.rebuild(h, &mut s)?;
        Ok(last)
    }

    /// Rebuild a space's arena from redb in one sequential scan of its chunks (commit order),
    /// sorted by key at the end; then its graph; then persist.
    fn rebuild(&self, h: &SpaceHandle, s: &mut SpaceIndex) -> Result<()> {
        let num = h.def.number;
        let r = self.redb.begin_read()?;
        let t = r.open_table(VECTOR_CHUNKS)?;
        let last = last_chunk_seq(&t, num)?;
        let payload = payload_bytes(&h.def);
        let patch = h.is_patch();
        // Sequences are dense, so `last` is the row count; bounded by what the table can hold.
        let per_chunk = ChunkBuf::new(payload, 1).per_chunk as u64;
        let cap = last.min(t.len()?.saturating_mul(per_chunk)) as usize;
        let mut b = SegmentBuilder::new(h.stride(), cap, patch);
        let mut buf = Vec::new();
        for e in t.range((num, 0)..=(num, u64::MAX))? {
            let (k, v) = e?;
            for (_, key, entry) in chunk_rows(k.value().1, v.value(), payload)? {
                let (meta, p) = codec::decode_vector_value(entry)?;
                if patch {
                    b.push(key, meta, &[], p);
                } else {
                    codec::decode_f32_into(p, &mut buf);
                    b.push(key, meta, &buf, &[]);
                }
            }
        }
        drop((t, r));
        let seg = b.finish_sorted();
        self.install(h, s, seg, last)
    }

    /// Build the sketches `seg` lacks, as its space keeps them: patch sketches and tile
    /// summaries at the patch level, row sketches in image-level `cos`/`ip` spaces.
    fn build_sketches(&self, h: &SpaceHandle, seg: &mut Segment) {
        if h.is_patch() {
            seg.build_sketches(h.per(), h.def.dim as usize, self.opts.threads);
        } else if row_sketches(&h.def) {
            seg.build_row_sketches(self.opts.threads);
        }
    }

    fn install(&self, h: &SpaceHandle, s: &mut SpaceIndex, mut seg: Segment, seq: u64) -> Result<()> {
        self.build_sketches(h, &mut seg);
        self.fill_ids(h, &mut seg)?;
        let graph = match (self.wants_graph(h, seg.len()), h.is_patch()) {
            (false, _) => None,
            (true, false) => Some(hnsw::build(&seg, h.def.dim as usize, h.def.metric, self.opts.threads)?),
            (true, true) => Some(hnsw::build_patches(&seg, h.def.dim as usize, h.per(), self.opts.threads)?),
        };
        let (parts, declined) = if self.wants_parts(h, seg.len()) { self.build_parts(h, &seg) } else { (None, false) };
        if self.opts.persist_index {
            // Best effort: a failure here leaves the database correct, only slower to open.
            let _ = self.persist(h.def.number, &seg, graph.as_ref(), parts.as_ref(), declined, seq, h.is_patch(), h.def.metric);
        }
        s.max_half_extent = half_extent(&seg);
        // As after open: the first capped tile scan should not pay for the summaries' groups.
        if h.is_patch() && self.opts.prefault {
            seg.summaries_in_background(h.per(), h.def.dim as usize);
        }
        s.base = seg;
        s.delta = Segment::empty(h.stride());
        s.hnsw = graph;
        s.parts = parts;
        s.parts_declined = declined;
        s.applied = seq;
        Ok(())
    }

    /// Fill the record-id column of an image-level segment that lacks it, reading each row's
    /// record in key order (one read a row): a query's hits on those rows are then
    /// answered from the columns (`query::finish`). A record that is missing or does not
    /// decode gets `NO_ID`, so its hit reads it and reports what is wrong, as before.
    fn fill_ids(&self, h: &SpaceHandle, seg: &mut Segment) -> Result<()> {
        if h.is_patch() || seg.is_empty() || seg.ids.len() == seg.len() {
            return Ok(());
        }
        let r = self.redb.begin_read()?;
        let t = r.open_table(RECORDS)?;
        let mut ids = Vec::with_capacity(seg.len());
        for &key in seg.keys.iter() {
            let rec = t.get(key)?;
            ids.push(match rec.map(|v| codec::decode_record(v.value())) {
                Some(Ok(rec)) => column_id(&rec),
                _ => arena::NO_ID,
            });
        }
        seg.ids = arena::Col::Owned(ids);
        Ok(())
    }

    /// Whether a base segment of `rows` rows gets a graph: enough vectors, and at the patch
    /// level a cosine space (its graph holds the patches' i8 codes, whose scale cosine ignores).
    fn wants_graph(&self, h: &SpaceHandle, rows: usize) -> bool {
        rows * h.per() >= self.opts.hnsw_min_rows && (!h.is_patch() || h.def.metric == Metric::Cos)
    }

    /// Whether a base segment of `rows` rows gets cone partitions: cosine spaces with as many
    /// vectors as a graph needs (at the patch level, counting every patch).
    fn wants_parts(&self, h: &SpaceHandle, rows: usize) -> bool {
        self.opts.partitions && h.def.metric == Metric::Cos && rows * h.per() >= self.opts.hnsw_min_rows
    }

    /// The partitions of `seg`, and whether patch partitions were built and dropped because
    /// they do not prune on their own patches (image-level partitions are always kept: at 1M
    /// they answer from 10 % of the rows up).
    fn build_parts(&self, h: &SpaceHandle, seg: &Segment) -> (Option<Parts>, bool) {
        let dim = h.def.dim as usize;
        if h.is_patch() {
            // Over many patches the build is a quarter of the checkpoint (112 s of ~430 on
            // 1.96M patches): check partitions of every 8th tile first (~1/30 of the work; the
            // share a query visits depends on how the patches cluster, not on how many).
            if seg.len() * h.per() >= PARTS_SAMPLE_MIN {
                let sample = seg.every(PARTS_SAMPLE_STEP, true);
                if Parts::build_patches(&sample, dim, h.per(), self.opts.threads).is_some_and(|p| !p.prune_their_own_items()) {
                    return (None, true);
                }
            }
            match Parts::build_patches(seg, dim, h.per(), self.opts.threads) {
                Some(p) if !p.prune_their_own_items() => (None, true),
                p => (p, false),
            }
        } else {
            let parts = Parts::build(seg, dim, self.opts.threads);
            // As after open: the first filtered partition scan should not pay for the key order.
            if self.opts.prefault {
                parts.iter().for_each(Parts::key_order_in_background);
            }
            (parts, false)
        }
    }

    /// Build the partitions of an installed base that lacks them (a database checkpointed by
    /// a graftdb without partitions), leaving the snapshot and graph as they are.
    fn install_parts(&self, h: &SpaceHandle, s: &mut SpaceIndex) -> Result<()> {
        let (parts, declined) = self.build_parts(h, &s.base);
        if self.opts.persist_index && (declined || parts.is_some()) {
            if let Ok(mut m) = self.read_manifest(h.def.number) {
                // The manifest names a saved partitions file, or says they were declined.
                let mut changed = declined;
                if let Some(p) = &parts {
                    let name = parts_file(h.def.number, m.seq);
                    if p.save(&self.dir.join(INDEX_DIR).join(&name)).is_ok() {
                        m.parts = Some(name);
                        changed = true;
                    }
                }
                if changed {
                    m.parts_declined = declined;
                    let _ = self.write_manifest(h.def.number, &m);
                }
            }
        }
        s.parts = parts;
        s.parts_declined = declined;
        Ok(())
    }

    /// Write the snapshot and partitions that were read in an older format again, in the
    /// current one, under the names the manifest already gives them (temporary file, fsync,
    /// rename: a reader that mapped the old file keeps it until it lets go).
    fn rewrite_format(&self, h: &SpaceHandle, s: &mut SpaceIndex) -> Result<()> {
        // Version 3 snapshots hold no patch sketches, version 4 image-level ones no row
        // sketches, version 5 no record ids.
        self.build_sketches(h, &mut s.base);
        self.fill_ids(h, &mut s.base)?;
        if self.opts.persist_index {
            let m = self.read_manifest(h.def.number)?;
            let dir = self.dir.join(INDEX_DIR);
            arena::write_snapshot(&dir.join(&m.arena), &s.base, m.seq, h.is_patch())?;
            if let (Some(p), Some(name)) = (&s.parts, &m.parts) {
                p.save(&dir.join(name))?;
            }
        }
        s.old_format = false;
        Ok(())
    }

    /// Replace a space's manifest atomically (temporary file, fsync, rename).
    fn write_manifest(&self, num: u16, m: &Manifest) -> Result<()> {
        let p = self.manifest_path(num);
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::to_vec_pretty(m).map_err(|e| Error::Index(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))
    }

    #[allow(clippy::too_many_arguments)]
    fn persist(&self, num: u16, seg: &Segment, graph: Option<&usearch::Index>, parts: Option<&Parts>, parts_declined: bool, seq: u64, patch: bool, def_metric: Metric) -> Result<()> {
        let dir = self.dir.join(INDEX_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let old = self.read_manifest(num).ok();
        let arena_name = format!("space-{num}-{seq}.arena");
        arena::write_snapshot(&dir.join(&arena_name), seg, seq, patch)?;
        let hnsw_name = match graph {
            Some(g) => {
                let n = format!("space-{num}-{seq}.hnsw");
                hnsw::save(g, &dir.join(&n))?;
                Some(n)
            }
            None => None,
        };
        let parts_name = match parts {
            Some(p) => {
                let n = parts_file(num, seq);
                p.save(&dir.join(&n))?;
                Some(n)
            }
            None => None,
        };
        let labels = hnsw_name.as_ref().map(|_| hnsw::labels(def_metric, patch).to_string());
        let m = Manifest { seq, arena: arena_name, hnsw: hnsw_name, labels, parts: parts_name, parts_declined };
        self.write_manifest(num, &m)?;
        if let Some(o) = old {
            if o.arena != m.arena {
                let _ = std::fs::remove_file(dir.join(o.arena));
            }
            if let Some(hn) = o.hnsw.filter(|hn| Some(hn) != m.hnsw.as_ref()) {
                let _ = std::fs::remove_file(dir.join(hn));
            }
            if let Some(pn) = o.parts.filter(|pn| Some(pn) != m.parts.as_ref()) {
                let _ = std::fs::remove_file(dir.join(pn));
            }
        }
        Ok(())
    }

    /// Fold every space's delta into a new snapshot and graph, so the next open is fast
    /// and queries use the graph for everything. Ingest commands call this at the end.
    pub fn checkpoint(&self) -> Result<()> {
        for def in self.spaces()? {
            let h = self.handle(&def.name)?;
            self.refresh(&h)?;
            let mut s = h.state.write().map_err(|_| Error::Index("lock poisoned".into()))?;
            let want_graph = self.wants_graph(&h, s.base.len() + s.delta.len());
            if s.delta.is_empty() && (s.hnsw.is_some() || !want_graph) && self.read_manifest(def.number).is_ok_and(|m| m.seq == s.applied) {
                if s.old_format {
                    self.rewrite_format(&h, &mut s)?;
                }
                if s.parts.is_none() && !s.parts_declined && self.wants_parts(&h, s.base.len()) {
                    self.install_parts(&h, &mut s)?;
                }
                continue;
            }
            if !s.base.sketch.is_empty() {
                // The delta's sketches only: the merge copies the base's with their rows.
                self.build_sketches(&h, &mut s.delta);
            }
            if s.base.ids.len() == s.base.len() {
                // Likewise the delta's record ids only.
                self.fill_ids(&h, &mut s.delta)?;
            }
            let merged = arena::merge(&s.base, &s.delta, h.is_patch());
            let seq = s.applied;
            self.install(&h, &mut s, merged, seq)?;
        }
        Ok(())
    }

    pub(crate) fn redb(&self) -> &Store {
        &self.redb
    }

    pub(crate) fn space_state(&self, name: &str) -> Result<Arc<SpaceHandle>> {
        let h = self.handle(name)?;
        self.refresh(&h)?;
        Ok(h)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    seq: u64,
    arena: String,
    hnsw: Option<String>,
    /// How the graph labels its nodes and what it holds (`hnsw::labels`); absent in manifests written before
    /// graphs were labelled by row, whose graphs are ignored and rebuilt at the next checkpoint.
    #[serde(default)]
    labels: Option<String>,
    /// The cone partitions file (`index::parts`); absent when the space has none.
    #[serde(default)]
    parts: Option<String>,
    /// Patch partitions were built for this snapshot and dropped: they do not prune on its
    /// own patches (`Parts::prune_their_own_items`). Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    parts_declined: bool,
}

/// A record's value in an image-level segment's id column: a photo's integer id, or
/// `NO_ID` (read the record) for a tile, a string id, or a time the time column cannot hold.
pub(crate) fn column_id(rec: &Record) -> i64 {
    match rec {
        Record::Photo(p) if p.time != Some(arena::NO_TIME) => match p.id {
            RecordId::Int(i) => i,
            RecordId::Str(_) => arena::NO_ID,
        },
        _ => arena::NO_ID,
    }
}

/// Patch spaces with at least this many patches check partitions built over every
/// `PARTS_SAMPLE_STEP`-th tile before building them over all (see `Db::build_parts`).
const PARTS_SAMPLE_MIN: usize = 800_000;
const PARTS_SAMPLE_STEP: usize = 8;

/// The name of space `num`'s partitions file for the snapshot of sequence `seq`.
fn parts_file(num: u16, seq: u64) -> String {
    format!("space-{num}-{seq}.parts")
}

/// The `format_version` in `meta`.
fn read_version(store: &Store, file: &Path) -> Result<u32> {
    let corrupt = |detail: String| Error::Corrupt { path: file.into(), detail };
    let r = store.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let meta = r.open_table(META).map_err(|e| corrupt(e.to_string()))?;
    let v = meta.get("format_version").map_err(|e| corrupt(e.to_string()))?.ok_or_else(|| corrupt("no format version".into()))?;
    let b: [u8; 4] = v.value().try_into().map_err(|_| corrupt("bad format version".into()))?;
    Ok(u32::from_le_bytes(b))
}

/// Upgrade a format-version-1 database to the current version in one write transaction:
/// each space's `vector_log` is walked in sequence order and its vectors are written to
/// `vector_chunks` under the same sequence numbers (so arena snapshots stay valid), then
/// `vectors` and `vector_log` are deleted and `format_version` is bumped. Nothing changes
/// unless all of it commits; a log entry without a vector, or a vector without a log entry,
/// stops the upgrade with `Error::Corrupt`.
fn migrate(d: &redb::Database, file: &Path) -> Result<()> {
    let w = d.begin_write()?;
    // Read again under the write lock: another process may have upgraded it meanwhile.
    let from = {
        let meta = w.open_table(META)?;
        let v = meta.get("format_version")?.map(|v| v.value().to_vec()).unwrap_or_default();
        <[u8; 4]>::try_from(v.as_slice()).map(u32::from_le_bytes).map_err(|_| Error::Corrupt { path: file.into(), detail: "bad format version".into() })?
    };
    if from == FORMAT_VERSION {
        return Ok(());
    }
    if from != 1 {
        return Err(Error::Corrupt { path: file.into(), detail: format!("format version {from} is unknown (this graftdb reads 1 and {FORMAT_VERSION})") });
    }
    let corrupt = |detail: String| Error::Corrupt { path: file.into(), detail: format!("upgrading format 1 to {FORMAT_VERSION}: {detail}") };
    {
        let defs: Vec<SpaceDef> = {
            let t = w.open_table(SPACES)?;
            let mut v = Vec::new();
            for e in t.iter()? {
                v.push(decode_space(e?.1.value())?);
            }
            v
        };
        let vt = w.open_table(V1_VECTORS)?;
        let log = w.open_table(V1_VECTOR_LOG)?;
        let mut chunks = w.open_table(VECTOR_CHUNKS)?;
        for def in &defs {
            let num = def.number;
            let payload = payload_bytes(def);
            let mut buf = ChunkBuf::new(payload, 1);
            let mut moved = 0u64;
            for e in log.range((num, 0)..=(num, u64::MAX))? {
                let (k, v) = e?;
                let (seq, key) = (k.value().1, v.value());
                if buf.count > 0 && seq != buf.next_seq {
                    buf.write(&mut chunks, num)?;
                }
                buf.next_seq = seq;
                let val = vt.get((num, key))?.ok_or_else(|| corrupt(format!("space {}: vector_log sequence {seq} names key {key}, which has no vector", def.name)))?;
                let val = val.value();
                if val.len() != codec::VECTOR_HEADER + payload {
                    return Err(corrupt(format!("space {}: key {key}: vector value of {} bytes, expected {}", def.name, val.len(), codec::VECTOR_HEADER + payload)));
                }
                buf.bytes.extend_from_slice(&key.to_le_bytes());
                buf.bytes.extend_from_slice(val);
                buf.count += 1;
                buf.next_seq += 1;
                moved += 1;
                if buf.count >= buf.per_chunk {
                    buf.write(&mut chunks, num)?;
                }
            }
            buf.write(&mut chunks, num)?;
            let stored = vt.range((num, 0)..=(num, u64::MAX))?.count() as u64;
            if stored != moved {
                return Err(corrupt(format!("space {}: {stored} vectors but {moved} vector_log entries", def.name)));
            }
        }
    }
    w.delete_table(V1_VECTORS)?;
    w.delete_table(V1_VECTOR_LOG)?;
    w.open_table(META)?.insert("format_version", FORMAT_VERSION.to_le_bytes().as_slice())?;
    w.commit()?;
    Ok(())
}

/// Vector entries of one space waiting to be written as a `vector_chunks` value.
struct ChunkBuf {
    /// Payload bytes per entry.
    payload: usize,
    /// Entries per full chunk.
    per_chunk: usize,
    bytes: Vec<u8>,
    count: usize,
    /// Sequence number of the next entry pushed.
    next_seq: u64,
}

impl ChunkBuf {
    fn new(payload: usize, next_seq: u64) -> Self {
        let per_chunk = (CHUNK_TARGET_BYTES / (codec::CHUNK_ENTRY_HEAD + payload)).max(1);
        ChunkBuf { payload, per_chunk, bytes: Vec::new(), count: 0, next_seq }
    }

    /// Write the buffered entries as one chunk keyed by their last sequence, and empty it.
    fn write(&mut self, t: &mut redb::Table<(u16, u64), &'static [u8]>, num: u16) -> Result<()> {
        if self.count > 0 {
            t.insert((num, self.next_seq - 1), self.bytes.as_slice())?;
            self.bytes.clear();
            self.count = 0;
        }
        Ok(())
    }
}

/// The last vector sequence of a space (0 when it has none): the key of its last chunk.
fn last_chunk_seq(t: &impl ReadableTable<(u16, u64), &'static [u8]>, num: u16) -> Result<u64> {
    Ok(t.range((num, 0)..=(num, u64::MAX))?.next_back().transpose()?.map_or(0, |(k, _)| k.value().1))
}

/// The entries of one chunk with their sequence numbers: `(seq, record key, header + payload)`.
/// `last` is the chunk's key; fails when the chunk is malformed or claims sequences below 1.
pub(crate) fn chunk_rows(last: u64, bytes: &[u8], payload: usize) -> Result<impl Iterator<Item = (u64, u64, &[u8])> + '_> {
    let n = (bytes.len() / (codec::CHUNK_ENTRY_HEAD + payload)) as u64;
    if n > last {
        return Err(Error::Storage(format!("vector chunk ending at sequence {last} holds {n} entries")));
    }
    let first = last + 1 - n;
    Ok(codec::chunk_entries(bytes, payload)?.enumerate().map(move |(i, (k, e))| (first + i as u64, k, e)))
}

fn decode_space(bytes: &[u8]) -> Result<SpaceDef> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(d, _)| d)
        .map_err(|e| Error::Storage(format!("corrupt space definition: {e}")))
}

fn new_row(h: &SpaceHandle, key: u64, value: &[u8]) -> Result<NewRow> {
    let (meta, payload) = codec::decode_vector_value(value)?;
    if h.is_patch() {
        Ok(NewRow { key, meta, f32s: vec![], bytes: payload.to_vec() })
    } else {
        let mut v = Vec::new();
        codec::decode_f32_into(payload, &mut v);
        Ok(NewRow { key, meta, f32s: v, bytes: vec![] })
    }
}

/// The next free key in the geohash cell of `(lon, lat)`: the cell's last key in `recs` (or in
/// this transaction's cache) plus one. `at` names the input in the error when the cell is full.
fn next_key(recs: &impl ReadableTable<u64, &'static [u8]>, cache: &mut HashMap<u64, u64>, at: &str, lon: f64, lat: f64) -> Result<u64> {
    let shift = 64 - KEY_GEO_BITS;
    let cell = hash::zorder(lon, lat) >> shift;
    let next = match cache.get(&cell) {
        Some(n) => *n,
        None => {
            let lo = cell << shift;
            recs.range(lo..=(lo | KEY_SEQ_MAX))?.next_back().transpose()?.map_or(0, |(k, _)| (k.value() & KEY_SEQ_MAX) + 1)
        }
    };
    if next > KEY_SEQ_MAX {
        return Err(Error::invalid(at, format!("more than {KEY_SEQ_MAX} records at geohash {}", hash::encode(lon, lat, 8))));
    }
    cache.insert(cell, next + 1);
    Ok((cell << shift) | next)
}

/// Validate a record's coordinates, times and footprint. `at` names the input.
pub fn validate_record(at: &str, rec: &Record) -> Result<()> {
    match rec {
        Record::Photo(p) => validate_point(at, p.lon, p.lat)?,
        Record::Tile(t) => {
            if t.footprint.len() < 4 {
                return Err(Error::invalid(at, "a tile footprint needs at least 4 positions (a closed ring)"));
            }
            if t.footprint.first() != t.footprint.last() {
                return Err(Error::invalid(at, "the tile footprint does not close (first and last positions differ)"));
            }
            for [x, y] in &t.footprint {
                validate_point(at, *x, *y)?;
            }
            if !t.gsd_m.is_finite() || t.gsd_m < 0.0 {
                return Err(Error::invalid(at, format!("ground sample distance {} is not a non-negative number", t.gsd_m)));
            }
        }
    }
    if let Record::Photo(p) = rec {
        if let Some(a) = p.accuracy {
            if a > 16 {
                return Err(Error::invalid(at, format!("accuracy {a} is outside 1–16")));
            }
        }
    }
    Ok(())
}

/// The single write transaction. Nothing is visible to readers until [`WriteTxn::commit`];
/// dropping it without commit discards everything.
///
/// Vectors are buffered per space and go to `vector_chunks` as values of about 1 MiB of
/// consecutive entries (when a buffer fills, and at commit), all inside the transaction.
pub struct WriteTxn<'db> {
    db: &'db Db,
    txn: redb::WriteTransaction,
    next_in_cell: HashMap<u64, u64>,
    /// Per space number: entries not yet written as a chunk, and the next sequence.
    chunks: HashMap<u16, ChunkBuf>,
    /// (space number, key) of every vector put in this transaction.
    put: std::collections::HashSet<(u16, u64)>,
    /// Spaces whose arena was brought up to the last commit for the duplicate-vector check.
    caught_up: std::collections::HashSet<u16>,
    metas: HashMap<u64, RowMeta>,
}

impl WriteTxn<'_> {
    /// Insert a record; returns its key. Refuses a duplicate id of the same kind.
    pub fn insert(&mut self, rec: Record) -> Result<u64> {
        self.insert_at(&format!("record {}", rec.id()), rec)
    }

    /// [`WriteTxn::insert`], naming the input (`file row N`) in any error.
    pub fn insert_at(&mut self, at: &str, rec: Record) -> Result<u64> {
        validate_record(at, &rec)?;
        let idk = codec::id_key(rec.kind(), rec.id());
        let mut ids = self.txn.open_table(IDS)?;
        if ids.get(idk.as_slice())?.is_some() {
            return Err(Error::DuplicateId { at: at.into(), id: rec.id().to_string() });
        }
        let (lon, lat) = rec.point();
        let mut recs = self.txn.open_table(RECORDS)?;
        let key = next_key(&recs, &mut self.next_in_cell, at, lon, lat)?;
        recs.insert(key, codec::encode_record(&rec)?.as_slice())?;
        ids.insert(idk.as_slice(), key)?;
        self.metas.insert(key, RowMeta { kind: rec.kind(), time: rec.time(), bbox: rec.bbox() });
        Ok(key)
    }

    /// Insert many records, each with its vector in an image-level space, opening each table
    /// once. `at` names the input; errors name `"{at} row N"`, where `rows[0]` is row
    /// `first_row` (1-based). All rows are checked
    /// before the first is written, so a bad row leaves this transaction as it was.
    /// Returns the new keys in input order. This is the bulk-ingest path.
    pub fn insert_batch(&mut self, at: &str, first_row: u64, space: &str, rows: &[(Record, Vec<f32>)]) -> Result<Vec<u64>> {
        let h = self.db.handle(space)?;
        if !matches!(h.def.level, Level::Image) {
            return Err(Error::invalid(at, format!("space '{space}' holds patch grids, not image vectors")));
        }
        let row_at = |i: usize| format!("{at} row {}", first_row + i as u64);
        let mut vectors = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        for (i, (rec, v)) in rows.iter().enumerate() {
            validate_record(&row_at(i), rec)?;
            vectors.push(check_vector(&row_at(i), &h.def, v)?);
            if !seen.insert((rec.kind(), rec.id())) {
                return Err(Error::DuplicateId { at: row_at(i), id: rec.id().to_string() });
            }
        }
        let num = h.def.number;
        let idks: Vec<Vec<u8>> = rows.iter().map(|(rec, _)| codec::id_key(rec.kind(), rec.id())).collect();
        // `ids` in id order, `records` and vectors in key order: neighbouring inserts land on
        // the same B-tree pages.
        let mut by_id: Vec<usize> = (0..rows.len()).collect();
        by_id.sort_unstable_by(|&a, &b| idks[a].cmp(&idks[b]));
        let mut ids = self.txn.open_table(IDS)?;
        for &i in &by_id {
            if ids.get(idks[i].as_slice())?.is_some() {
                return Err(Error::DuplicateId { at: row_at(i), id: rows[i].0.id().to_string() });
            }
        }
        let mut recs = self.txn.open_table(RECORDS)?;
        let mut keys = Vec::with_capacity(rows.len());
        for (i, (rec, _)) in rows.iter().enumerate() {
            let (lon, lat) = rec.point();
            keys.push(next_key(&recs, &mut self.next_in_cell, &row_at(i), lon, lat)?);
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by_key(|&i| keys[i]);
        let mut enc = Vec::new();
        for &i in &order {
            enc.clear();
            codec::encode_record_into(&rows[i].0, &mut enc)?;
            recs.insert(keys[i], enc.as_slice())?;
        }
        for &i in &by_id {
            ids.insert(idks[i].as_slice(), keys[i])?;
        }
        drop((ids, recs));
        self.chunk_buf(&h)?;
        let mut t = None;
        for &i in &order {
            let rec = &rows[i].0;
            let meta = RowMeta { kind: rec.kind(), time: rec.time(), bbox: rec.bbox() };
            self.put.insert((num, keys[i]));
            let Some(buf) = self.chunks.get_mut(&num) else { return Err(Error::Index(format!("no chunk buffer for space '{space}'"))) };
            codec::push_chunk_entry_f32(&mut buf.bytes, keys[i], &meta, &vectors[i]);
            buf.count += 1;
            buf.next_seq += 1;
            if buf.count >= buf.per_chunk {
                let t = match &mut t {
                    Some(t) => t,
                    None => t.insert(self.txn.open_table(VECTOR_CHUNKS)?),
                };
                buf.write(t, num)?;
            }
        }
        Ok(keys)
    }

    /// The chunk buffer of a space, created on first use with the sequence after the space's
    /// last chunk.
    fn chunk_buf(&mut self, h: &SpaceHandle) -> Result<&mut ChunkBuf> {
        let num = h.def.number;
        Ok(match self.chunks.entry(num) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let next = last_chunk_seq(&self.txn.open_table(VECTOR_CHUNKS)?, num)? + 1;
                e.insert(ChunkBuf::new(payload_bytes(&h.def), next))
            }
        })
    }

    fn meta_of(&mut self, key: u64) -> Result<RowMeta> {
        if let Some(m) = self.metas.get(&key) {
            return Ok(*m);
        }
        let recs = self.txn.open_table(RECORDS)?;
        let rec = recs.get(key)?.ok_or_else(|| Error::NotFound(format!("key {key}")))?;
        let rec = codec::decode_record(rec.value())?;
        let m = RowMeta { kind: rec.kind(), time: rec.time(), bbox: rec.bbox() };
        self.metas.insert(key, m);
        Ok(m)
    }

    fn put_raw(&mut self, at: &str, h: &SpaceHandle, key: u64, payload: &[u8]) -> Result<()> {
        let meta = self.meta_of(key)?;
        let num = h.def.number;
        // Committed vectors are in the arena once it has caught up with the last commit,
        // which nothing else can move while this transaction holds the writer.
        if !self.caught_up.contains(&num) {
            self.db.refresh(h)?;
            self.caught_up.insert(num);
        }
        if self.put.contains(&(num, key)) || self.db.has_vector(h, key)? {
            return Err(Error::invalid(at, format!("already has a vector in space '{}'", h.def.name)));
        }
        self.chunk_buf(h)?;
        let Some(buf) = self.chunks.get_mut(&num) else { return Err(Error::Index(format!("no chunk buffer for space '{}'", h.def.name))) };
        if payload.len() != buf.payload {
            return Err(Error::invalid(at, format!("vector payload of {} bytes, space '{}' stores {}", payload.len(), h.def.name, buf.payload)));
        }
        codec::push_chunk_entry(&mut buf.bytes, key, &meta, payload);
        buf.count += 1;
        buf.next_seq += 1;
        if buf.count >= buf.per_chunk {
            buf.write(&mut self.txn.open_table(VECTOR_CHUNKS)?, num)?;
        }
        self.put.insert((num, key));
        Ok(())
    }

    /// Store a record's image-level vector in a space. Cosine spaces store it normalised.
    pub fn put_vector(&mut self, space: &str, key: u64, v: &[f32]) -> Result<()> {
        self.put_vector_at(&format!("key {key}"), space, key, v)
    }

    /// [`WriteTxn::put_vector`], naming the input in any error.
    pub fn put_vector_at(&mut self, at: &str, space: &str, key: u64, v: &[f32]) -> Result<()> {
        let h = self.db.handle(space)?;
        if !matches!(h.def.level, Level::Image) {
            return Err(Error::invalid(at, format!("space '{space}' holds patch grids, not image vectors")));
        }
        let v = check_vector(at, &h.def, v)?;
        self.put_raw(at, &h, key, &codec::encode_f32(&v))
    }

    /// Store a tile's patch grid (`rows × cols × dim` f32, row-major) in a patch space.
    pub fn put_patches(&mut self, space: &str, key: u64, grid: &[f32]) -> Result<()> {
        let at = format!("key {key}");
        let h = self.db.handle(space)?;
        let Level::Patch { rows, cols } = h.def.level else {
            return Err(Error::invalid(&at, format!("space '{space}' is image-level, not patch-level")));
        };
        let dim = h.def.dim as usize;
        let n = usize::from(rows) * usize::from(cols);
        if grid.len() != n * dim {
            return Err(Error::invalid(&at, format!("patch grid has {} values, space '{space}' needs {rows}×{cols}×{dim} = {}", grid.len(), n * dim)));
        }
        let mut g = Vec::with_capacity(grid.len());
        for p in grid.chunks_exact(dim) {
            g.extend(check_vector(&at, &h.def, p)?);
        }
        if self.meta_of(key)?.kind != Kind::Tile {
            return Err(Error::invalid(&at, "patch grids belong to tiles, not photos"));
        }
        self.put_raw(&at, &h, key, &codec::encode_patch_grid(&g, dim))
    }

    /// Make everything durable and visible, atomically.
    pub fn commit(mut self) -> Result<()> {
        {
            let mut t = self.txn.open_table(VECTOR_CHUNKS)?;
            for (num, buf) in self.chunks.iter_mut() {
                buf.write(&mut t, *num)?;
            }
        }
        self.txn.commit()?;
        self.db.committed();
        Ok(())
    }

    /// Discard everything.
    pub fn abort(self) -> Result<()> {
        self.txn.abort()?;
        Ok(())
    }
}

fn check_vector(at: &str, def: &SpaceDef, v: &[f32]) -> Result<Vec<f32>> {
    if v.len() != def.dim as usize {
        return Err(Error::invalid(at, format!("vector has {} dimensions, space '{}' has {}", v.len(), def.name, def.dim)));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(at, format!("vector value {} is {} (NaN or infinite)", i, v.get(i).copied().unwrap_or(f32::NAN))));
    }
    let mut v = v.to_vec();
    if def.metric == Metric::Cos && !scan::normalise(&mut v) {
        return Err(Error::invalid(at, "a zero vector has no direction (cosine space)"));
    }
    Ok(v)
}
