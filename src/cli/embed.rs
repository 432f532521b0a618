//! `embed`: compute image-level vectors for tiles and photos, and patch grids for tiles,
//! for the records that lack them in the target spaces.
//!
//! Shape of the pipeline: the records to embed are listed first (one read transaction, a
//! vector lookup per record), cut into batches, and prepared (read, decoded, resized,
//! normalised) by worker threads that run ahead of inference through a bounded channel,
//! so the CPU work overlaps the model. The main thread runs the model on each batch and
//! commits its vectors in one write transaction: an interrupted run keeps every finished
//! batch, and the next run picks up what is missing.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use graftdb::embed::{Bundle, Device, EncoderOptions, ImageEncoder, Preprocessor, SessionOptions};
use graftdb::ingest::raster::WindowReader;
use graftdb::{Db, Kind, Level, Metric, PixelRef, Record, RecordId, SpaceDef};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::ArrayView4;

use super::args::{DeviceArg, EmbedArgs};
use super::retry_locked;

/// Failures printed one by one; the rest are counted.
const SHOW_FAILED: usize = 20;
/// Rasters kept open per worker.
const OPEN_RASTERS: usize = 8;

/// Which records to embed.
#[derive(Debug, Clone, Copy, Default)]
struct What {
    tiles: bool,
    patches: bool,
    photos: bool,
}

fn parse_what(s: &str) -> Result<What> {
    let mut w = What::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "tiles" | "tile" => w.tiles = true,
            "patches" | "patch" => w.patches = true,
            "photos" | "photo" => w.photos = true,
            other => bail!("--what '{other}': expected a comma-separated list of tiles, patches, photos"),
        }
    }
    if !(w.tiles || w.patches || w.photos) {
        bail!("--what '{s}': name at least one of tiles, patches, photos");
    }
    Ok(w)
}

pub(super) fn device(d: DeviceArg) -> Device {
    match d {
        DeviceArg::Auto => Device::Auto,
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::Cuda,
    }
}

/// Embed texts with a bundle's text encoder (on CPU: one query is milliseconds), checked
/// against the space they will be compared with.
pub(super) fn text_vectors(model: &Path, def: &SpaceDef, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    Ok(graftdb::spec::text_encoder(model, def)?.embed(texts)?)
}

/// Where a record's pixels come from.
#[derive(Debug)]
enum Source {
    /// A window of a raster file.
    Window { path: PathBuf, window: [u32; 4] },
    /// PNG bytes stored with the tile (read back by key, not held in memory).
    Stored,
    /// An image file (a photo).
    File(PathBuf),
}

/// One record to embed.
#[derive(Debug)]
struct Job {
    key: u64,
    id: RecordId,
    kind: Kind,
    /// Needs an image-level vector.
    image: bool,
    /// Needs a patch grid.
    patches: bool,
    source: Source,
}

impl Job {
    fn raster(&self) -> Option<&Path> {
        match &self.source {
            Source::Window { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// A batch ready for the model.
struct Prepared {
    /// Jobs whose pixels are in `pixels`, in order.
    ok: Vec<usize>,
    /// `ok.len() × 3 × S × S` normalised values.
    pixels: Vec<f32>,
    /// Jobs that could not be read, and why.
    failed: Vec<(usize, String)>,
}

/// A photo's image on this machine: its URL when that is a local file, else (with
/// `--images`) the URL's relative path, its base name, or `{id}.jpg` in that folder.
fn photo_image(url: Option<&str>, id: &RecordId, images: Option<&Path>) -> Option<PathBuf> {
    let url = url.map(|u| u.strip_prefix("file://").unwrap_or(u));
    let local = url.filter(|u| !u.contains("://"));
    if let Some(p) = local.map(Path::new).filter(|p| p.is_file()) {
        return Some(p.to_path_buf());
    }
    let dir = images?;
    let mut candidates = Vec::new();
    if let Some(rel) = local.filter(|u| Path::new(u).is_relative()) {
        candidates.push(dir.join(rel));
    }
    if let Some(base) = url.and_then(|u| u.split(['?', '#']).next()).and_then(|u| u.rsplit('/').next()).filter(|b| !b.is_empty()) {
        candidates.push(dir.join(base));
    }
    candidates.push(dir.join(format!("{id}.jpg")));
    candidates.into_iter().find(|c| c.is_file())
}

/// Open rasters of one worker, most recent last.
struct Rasters(Vec<(PathBuf, WindowReader)>);

impl Rasters {
    fn get(&mut self, path: &Path) -> graftdb::Result<&mut WindowReader> {
        let i = match self.0.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                if self.0.len() >= OPEN_RASTERS {
                    self.0.remove(0);
                }
                self.0.push((path.to_path_buf(), WindowReader::open(path)?));
                self.0.len() - 1
            }
        };
        // position() found it or we just pushed it, so the index is in range.
        Ok(&mut self.0[i].1)
    }
}

fn load(db: &Db, job: &Job, rasters: &mut Rasters) -> std::result::Result<image::DynamicImage, String> {
    match &job.source {
        Source::Window { path, window } => Ok(image::DynamicImage::ImageRgb8(rasters.get(path).and_then(|r| r.read(*window)).map_err(|e| e.to_string())?)),
        Source::Stored => match db.record(job.key).map_err(|e| e.to_string())? {
            Some(Record::Tile(t)) => match t.pixels {
                PixelRef::Stored(bytes) => image::load_from_memory(&bytes).map_err(|e| format!("stored pixels: {e}")),
                _ => Err("the tile's stored pixels are gone".into()),
            },
            _ => Err("the record is gone".into()),
        },
        Source::File(p) => graftdb::embed::open_image(p).map_err(|e| e.to_string()),
    }
}

fn prepare(db: &Db, jobs: &[Job], range: std::ops::Range<usize>, pre: &Preprocessor, rasters: &mut Rasters) -> Prepared {
    let mut p = Prepared { ok: Vec::with_capacity(range.len()), pixels: Vec::new(), failed: Vec::new() };
    for i in range {
        let Some(job) = jobs.get(i) else { continue };
        match load(db, job, rasters).and_then(|img| pre.tensor(&img).map_err(|e| e.to_string())) {
            Ok(t) => {
                p.pixels.extend_from_slice(&t);
                p.ok.push(i);
            }
            Err(e) => p.failed.push((i, e)),
        }
    }
    p
}

/// Counts for the summary.
#[derive(Default)]
struct Tally {
    images: usize,
    tile_vectors: usize,
    patch_grids: usize,
    photo_vectors: usize,
    failed: usize,
    wait: Duration,
    infer: Duration,
    write: Duration,
}

/// `graftdb embed`.
#[allow(clippy::too_many_lines)]
pub fn run(a: &EmbedArgs, out: &mut dyn Write) -> Result<()> {
    let what = parse_what(&a.what)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.decode_threads == Some(0) {
        bail!("--decode-threads must be at least 1");
    }
    let bundle = Bundle::open(&a.model)?;
    let m = bundle.manifest().clone();
    if what.patches && m.image_model.patches.is_none() {
        bail!("--what patches: bundle {} has no patch output; leave patches out or use a bundle with one", a.model.display());
    }
    let images_dir = a.images.clone();
    if let Some(d) = &images_dir {
        if !d.is_dir() {
            bail!("--images {}: not a folder", d.display());
        }
    }
    let db = Db::open(&a.db)?;
    let dim = u32::try_from(m.dim).context("bundle dimension too large")?;
    let mismatch = |space: &str| format!("bundle {} (dim {}) does not fit space '{space}'", a.model.display(), m.dim);
    let image_space = if what.tiles || what.photos {
        Some(retry_locked(|| db.create_space(&a.space, dim, Metric::Cos, Level::Image)).with_context(|| mismatch(&a.space))?.name)
    } else {
        None
    };
    let patch_space = if what.patches {
        let name = a.patch_space.clone().unwrap_or_else(|| format!("{}-patch", a.space));
        let [rows, cols] = m.patch_grid;
        let level = Level::Patch { rows: u16::try_from(rows).context("patch grid too large")?, cols: u16::try_from(cols).context("patch grid too large")? };
        Some(retry_locked(|| db.create_space(&name, dim, Metric::Cos, level)).with_context(|| mismatch(&name))?.name)
    } else {
        None
    };

    // List the work: records lacking a vector or grid in the spaces asked for.
    let (mut already, mut no_pixels, mut no_image) = (0usize, 0usize, 0usize);
    let mut jobs: Vec<Job> = Vec::new();
    db.for_each_record(|key, rec| {
        let lacks = |space: &Option<String>| -> graftdb::Result<bool> {
            match space {
                Some(s) => Ok(db.vector(s, key)?.is_none()),
                None => Ok(false),
            }
        };
        match rec {
            Record::Tile(t) => {
                if !(what.tiles || what.patches) {
                    return Ok(());
                }
                let image = what.tiles && lacks(&image_space)?;
                let patches = what.patches && lacks(&patch_space)?;
                if !(image || patches) {
                    already += 1;
                    return Ok(());
                }
                let source = match t.pixels {
                    PixelRef::None => {
                        no_pixels += 1;
                        return Ok(());
                    }
                    PixelRef::File { path, window } => Source::Window { path: PathBuf::from(path), window },
                    PixelRef::Stored(_) => Source::Stored,
                };
                jobs.push(Job { key, id: t.id, kind: Kind::Tile, image, patches, source });
            }
            Record::Photo(p) => {
                if !what.photos {
                    return Ok(());
                }
                if !lacks(&image_space)? {
                    already += 1;
                    return Ok(());
                }
                match photo_image(p.url.as_deref(), &p.id, images_dir.as_deref()) {
                    Some(path) => jobs.push(Job { key, id: p.id, kind: Kind::Photo, image: true, patches: false, source: Source::File(path) }),
                    None => no_image += 1,
                }
            }
        }
        Ok(())
    })?;
    let waiting = jobs.len();
    if let Some(limit) = a.limit {
        jobs.truncate(limit);
    }
    // Tiles of one raster together, so each worker opens a file and computes its stretch once.
    jobs.sort_by(|x, y| x.raster().cmp(&y.raster()));
    let mut skipped = Vec::new();
    if no_pixels > 0 {
        skipped.push(format!("{no_pixels} tiles without pixels"));
    }
    if no_image > 0 {
        skipped.push(format!("{no_image} photos without a local image{}", if images_dir.is_none() { " (try --images DIR)" } else { "" }));
    }
    let skipped = if skipped.is_empty() { String::new() } else { format!("; skipped {}", skipped.join(", ")) };
    if jobs.is_empty() {
        writeln!(out, "embedded 0 images: nothing to do ({already} records already embedded{skipped})")?;
        return Ok(());
    }

    let opts = EncoderOptions {
        session: SessionOptions { device: device(a.device), threads: None, ..SessionOptions::default() },
        batch_size: a.batch,
        normalize: true,
        patches: what.patches,
        ..EncoderOptions::default()
    };
    let t_load = Instant::now();
    let encoder = ImageEncoder::open(&bundle, &opts)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let size = m.image_size as usize;
    let threads = a.decode_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)));
    let batches = jobs.len().div_ceil(a.batch);

    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(jobs.len() as u64);
        let style = ProgressStyle::with_template("{spinner} embedding [{bar:40}] {pos}/{len} {rate} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} images/s", s.per_sec());
            })
            .progress_chars("=> ");
        b.set_style(style);
        b
    } else {
        ProgressBar::hidden()
    };

    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel::<Prepared>(threads + 1);
    let mut tally = Tally::default();
    let jobs_ref = &jobs;
    let db_ref = &db;
    let res: Result<()> = std::thread::scope(|s| {
        let rx = rx;
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            let pre = Preprocessor::new(m.image_size, m.mean, m.std).map(|p| p.with_resample(opts.resample));
            s.spawn(move || {
                let Ok(pre) = pre else { return };
                let mut rasters = Rasters(Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        break;
                    }
                    let range = b * a.batch..((b + 1) * a.batch).min(jobs_ref.len());
                    if tx.send(prepare(db_ref, jobs_ref, range, &pre, &mut rasters)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut run_batches = || -> Result<()> {
            loop {
                let tw = Instant::now();
                let Ok(p) = rx.recv() else { break };
                tally.wait += tw.elapsed();
                for (i, why) in &p.failed {
                    tally.failed += 1;
                    if tally.failed <= SHOW_FAILED {
                        let j = &jobs[*i];
                        bar.suspend(|| eprintln!("{} {}: cannot read its pixels, skipped: {why}", j.kind.as_str(), j.id));
                    }
                }
                let n = p.ok.len();
                if n > 0 {
                    let ti = Instant::now();
                    let view = ArrayView4::from_shape((n, 3, size, size), &p.pixels).context("internal: batch shape")?;
                    let emb = encoder.embed_pixels(view)?;
                    tally.infer += ti.elapsed();
                    tally.images += n;
                    let tw = Instant::now();
                    let mut w = retry_locked(|| db.begin_write())?;
                    for (slot, i) in p.ok.iter().enumerate() {
                        let job = &jobs[*i];
                        let at = format!("{} {}", job.kind.as_str(), job.id);
                        if job.image {
                            let (Some(space), Some(v)) = (&image_space, emb.embeddings.get(slot)) else { bail!("internal: no embedding for {at}") };
                            w.put_vector_at(&at, space, job.key, v)?;
                            match job.kind {
                                Kind::Tile => tally.tile_vectors += 1,
                                Kind::Photo => tally.photo_vectors += 1,
                            }
                        }
                        if job.patches {
                            let (Some(space), Some(g)) = (&patch_space, emb.patches.as_ref().and_then(|g| g.get(slot))) else {
                                bail!("internal: no patch grid for {at}")
                            };
                            w.put_patches(space, job.key, &g.data)?;
                            tally.patch_grids += 1;
                        }
                    }
                    w.commit()?;
                    tally.write += tw.elapsed();
                }
                bar.inc((n + p.failed.len()) as u64);
            }
            Ok(())
        };
        let r = run_batches();
        // Stop the workers and unblock any waiting to send, before the scope joins them.
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        r
    });
    bar.finish_and_clear();
    res?;
    let wall = t0.elapsed().as_secs_f64();
    if tally.failed > SHOW_FAILED {
        eprintln!("{} more records could not be read", tally.failed - SHOW_FAILED);
    }
    let t_ck = Instant::now();
    db.checkpoint()?;
    let ck_s = t_ck.elapsed().as_secs_f64();

    let mut made = Vec::new();
    if what.tiles {
        made.push(format!("{} tile vectors", tally.tile_vectors));
    }
    if what.patches {
        made.push(format!("{} patch grids", tally.patch_grids));
    }
    if what.photos {
        made.push(format!("{} photo vectors", tally.photo_vectors));
    }
    writeln!(
        out,
        "embedded {} images ({}) in {wall:.2}s: {:.1} images/s on {}, batch {}, {threads} decode thread{}",
        tally.images,
        made.join(", "),
        tally.images as f64 / wall.max(1e-9),
        encoder.provider(),
        a.batch,
        if threads == 1 { "" } else { "s" }
    )?;
    writeln!(
        out,
        "time: inference {:.2}s, waiting for pixels {:.2}s, writes {:.2}s; model load {load_s:.2}s, index {ck_s:.2}s",
        tally.infer.as_secs_f64(),
        tally.wait.as_secs_f64(),
        tally.write.as_secs_f64()
    )?;
    let left = waiting - tally.images - tally.failed;
    writeln!(
        out,
        "{already} records were already embedded{skipped}{}{}",
        if tally.failed > 0 { format!("; {} unreadable", tally.failed) } else { String::new() },
        if left > 0 { format!("; {left} left for the next run") } else { String::new() }
    )?;
    Ok(())
}
