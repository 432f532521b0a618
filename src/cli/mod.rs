//! The `graftdb` command line: raw flags (clap) → checked values → library calls.
//! Nothing here reaches below the public API of the library.

pub mod args;
mod classify;
mod embed;
mod ingest;
pub mod output;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use args::{Cli, Command, FilterArgs, IngestCmd, QueryArgs};
use graftdb::io::geoparquet::{ExportGeom, ExportRow, GeoParquetWriter};
use graftdb::io::parquet::ParquetVectorReader;
use graftdb::spec::{self, FilterSpec};
use graftdb::{Db, Filter, Kind, Level, Metric, Photo, PixelRef, Query, Record, Tile};

/// How long a write waits for another process's write lock before giving up.
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Run `f` again while the database is locked by another process, for up to [`WRITE_WAIT`].
/// Any process opening the database (even `graftdb query` or `stats`) holds the write lock
/// for a moment, so a long `embed` or `ingest` must not give up at the first refusal.
pub(crate) fn retry_locked<T>(mut f: impl FnMut() -> graftdb::Result<T>) -> graftdb::Result<T> {
    let t0 = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match f() {
            Err(graftdb::Error::Locked { .. }) if t0.elapsed() < WRITE_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Create { db } => {
            Db::create(&db)?;
            writeln!(out, "created {}", db.display())?;
        }
        Command::Ingest(IngestCmd::Vectors { db, file, space, kind, metric, batch }) => ingest_vectors(&db, &file, &space, kind, metric, batch, out)?,
        Command::Ingest(IngestCmd::Raster(a)) => ingest::raster(&a, out)?,
        Command::Ingest(IngestCmd::Photos(a)) => ingest::photos(&a, out)?,
        Command::Query(q) => query(&q, out)?,
        Command::Embed(a) => embed::run(&a, out)?,
        Command::Classify(a) => classify::run(&a, out)?,
        Command::Join { db, out: path } => join(&db, path.as_deref(), out)?,
        Command::Stats { db } => {
            let db = Db::open_read_only(&db)?;
            let s = db.stats()?;
            writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        }
        Command::Check { db } => {
            let d = Db::open_read_only(&db)?;
            let problems = d.check()?;
            if problems.is_empty() {
                writeln!(out, "{}: ok", db.display())?;
            } else {
                for p in &problems {
                    writeln!(out, "{p}")?;
                }
                bail!("{}: {} problem(s) found", db.display(), problems.len());
            }
        }
        Command::Export { db, out: path } => export(&db, &path, out)?,
        Command::Serve(a) => serve(a, out)?,
    }
    Ok(())
}

fn ingest_vectors(db: &Path, file: &Path, space: &str, kind: Kind, metric: Metric, batch: usize, out: &mut dyn Write) -> Result<()> {
    let db = Db::open(db)?;
    let mut reader = ParquetVectorReader::open(file)?;
    let dim = reader.dim().with_context(|| format!("{}: the file has no rows", file.display()))?;
    let dim32 = u32::try_from(dim).context("dimension too large")?;
    db.create_space(space, dim32, metric, Level::Image)?;
    let t0 = std::time::Instant::now();
    let source = file.file_name().map_or_else(|| "parquet".to_string(), |s| s.to_string_lossy().into_owned());
    // One transaction for the whole file: a bad row anywhere leaves the database as it was.
    let mut w = db.begin_write()?;
    let mut n = 0u64;
    while let Some(rows) = reader.next_batch(batch.max(1))? {
        let recs: Vec<(Record, Vec<f32>)> = rows
            .into_iter()
            .map(|row| {
                let rec = match kind {
                    Kind::Photo => Record::Photo(Photo { id: row.id, lon: row.lon, lat: row.lat, accuracy: None, time: row.time, source: source.clone(), license: None, url: None, user: None }),
                    Kind::Tile => Record::Tile(Tile {
                        id: row.id,
                        footprint: row.footprint.unwrap_or_else(|| vec![[row.lon, row.lat]; 5]),
                        source: source.clone(),
                        gsd_m: 0.0,
                        time: row.time,
                        cloud_cover: None,
                        pixels: PixelRef::None,
                    }),
                };
                (rec, row.embedding)
            })
            .collect();
        w.insert_batch(&file.display().to_string(), n + 1, space, &recs)?;
        n += recs.len() as u64;
    }
    w.commit()?;
    let ingest_s = t0.elapsed().as_secs_f64();
    db.checkpoint()?;
    writeln!(
        out,
        "ingested {n} {}s into space '{space}' (dim {dim}, {}) in {:.2}s ({:.0} records/s); index built in {:.2}s",
        kind.as_str(),
        metric.as_str(),
        ingest_s,
        n as f64 / ingest_s.max(1e-9),
        t0.elapsed().as_secs_f64() - ingest_s
    )?;
    Ok(())
}

pub(crate) fn build_filter(q: &FilterArgs, kind: Option<Kind>) -> Result<Filter> {
    let mut spec = FilterSpec { kind, geohash: q.geohash.clone(), from: q.from.clone(), to: q.to.clone(), radius_km: q.radius_km, ..Default::default() };
    if let Some(b) = &q.bbox {
        let v = args::parse_floats("--bbox", b, 4)?;
        spec.bbox = Some([v[0], v[1], v[2], v[3]]);
    }
    if let Some(n) = &q.near {
        let v = args::parse_floats("--near", n, 2)?;
        spec.near = Some([v[0], v[1]]);
    }
    if let Some(p) = &q.polygon {
        let path = Path::new(p);
        spec.polygon = Some(if path.is_file() {
            (p.clone(), std::fs::read_to_string(path).with_context(|| format!("{p}: cannot read"))?)
        } else {
            ("--polygon".to_string(), p.clone())
        });
    }
    Ok(spec.build()?)
}

/// The query vectors of `query`: exactly one of --vector, --vectors, --text, --like.
/// Returns `(vectors, record key to leave out)`.
fn query_vectors(q: &QueryArgs, db: &Db, def: &graftdb::SpaceDef) -> Result<(Vec<Vec<f32>>, Option<u64>)> {
    let given = [q.vector.is_some(), q.vectors.is_some(), q.text.is_some(), q.like.is_some()].iter().filter(|x| **x).count();
    if given != 1 {
        bail!("give exactly one of --vector FILE|-, --vectors FILE, --text \"...\" (with --model) or --like ID");
    }
    if q.model.is_some() && q.text.is_none() {
        bail!("--model is used with --text only");
    }
    if let Some(text) = &q.text {
        let Some(model) = &q.model else { bail!("--text needs --model BUNDLE (the bundle that filled space '{}')", q.space) };
        let v = embed::text_vectors(model, def, &[text.as_str()])?;
        return Ok((v, None));
    }
    if let Some(like) = &q.like {
        let (v, key) = spec::like_vector(db, def, like)?;
        return Ok((vec![v], Some(key)));
    }
    let (rows, dim, data) = match (&q.vector, &q.vectors) {
        (Some(v), None) if v == "-" => graftdb::io::vecfile::read_vectors_reader("<stdin>", std::io::stdin().lock())?,
        (Some(v), None) | (None, Some(v)) => graftdb::io::vecfile::read_vectors(Path::new(v))?,
        _ => bail!("give exactly one of --vector FILE|- or --vectors FILE"),
    };
    if q.vector.is_some() && rows != 1 {
        bail!("--vector holds {rows} vectors; use --vectors for a batch");
    }
    let mut out = Vec::with_capacity(rows);
    for i in 0..rows {
        out.push(data.get(i * dim..(i + 1) * dim).context("vector file shorter than its shape")?.to_vec());
    }
    Ok((out, None))
}

fn query(q: &QueryArgs, out: &mut dyn Write) -> Result<()> {
    let db = Db::open_read_only(&q.db)?;
    let def = db.space(&q.space)?;
    let filter = build_filter(&q.filter, q.kind)?;
    spec::check_level(&def, q.level == args::LevelArg::Patch)?;
    if q.max_tiles.is_some() && q.level != args::LevelArg::Patch {
        bail!("--max-tiles applies to --level patch only");
    }
    if q.max_partitions.is_some() && q.level == args::LevelArg::Patch {
        bail!("--max-partitions applies to --level image only (patch level: --max-tiles)");
    }
    if q.k == 0 {
        bail!("-k must be at least 1");
    }
    let (vectors, leave_out) = query_vectors(q, &db, &def)?;
    let batch = q.vectors.is_some();
    for v in vectors {
        let query = Query::new(&q.space, v, q.k).filter(filter.clone()).exact(q.exact).max_tiles(q.max_tiles.map(|n| n as usize)).max_partitions(q.max_partitions.map(|n| usize::try_from(n).unwrap_or(usize::MAX)));
        let res = spec::search_leaving_out(&db, query, leave_out)?;
        if batch {
            writeln!(out, "{}", serde_json::to_string(&output::hits_json(&res.hits))?)?;
        } else {
            output::print(out, q.format, &res.hits)?;
        }
        if q.explain {
            eprintln!("{}", output::explain_line(&res.explain));
        }
    }
    Ok(())
}

fn serve(a: args::ServeArgs, out: &mut dyn Write) -> Result<()> {
    let opts = graftdb::serve::ServeOptions { model: a.model, addr: a.addr, read_only: a.read_only, ..graftdb::serve::ServeOptions::new(a.db) };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    graftdb::serve::serve(
        opts,
        |addr| {
            // One line a script can wait for; stdout is flushed so a pipe sees it at once.
            let _ = writeln!(out, "graftdb serve: listening on http://{addr}/");
            let _ = out.flush();
        },
        shutdown,
    )?;
    Ok(())
}

fn join(db: &Path, path: Option<&Path>, out: &mut dyn Write) -> Result<()> {
    let db = Db::open_read_only(db)?;
    let mut file: Box<dyn Write> = match path {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?)),
        None => Box::new(std::io::sink()),
    };
    let to_stdout = path.is_none();
    let st = db.join(|pair| {
        let line = serde_json::json!({
            "photo_id": pair.photo.id().to_json(),
            "tile_id": pair.tile.id().to_json(),
            "photo_lon": pair.photo.point().0,
            "photo_lat": pair.photo.point().1,
        });
        if to_stdout {
            writeln!(out, "{line}").map_err(|e| graftdb::Error::io("<stdout>", e))?;
        } else {
            writeln!(file, "{line}").map_err(|e| graftdb::Error::io("join output", e))?;
        }
        Ok(())
    })?;
    file.flush()?;
    eprintln!("{} tiles, {} photos, {} pairs, {} photos in no tile", st.tiles, st.photos, st.pairs, st.unmatched_photos);
    Ok(())
}

fn export(db: &Path, path: &Path, out: &mut dyn Write) -> Result<()> {
    let db = Db::open_read_only(db)?;
    let spaces: Vec<_> = db.spaces()?.into_iter().filter(|s| matches!(s.level, Level::Image)).collect();
    let cols: Vec<(String, usize)> = spaces.iter().map(|s| (s.name.clone(), s.dim as usize)).collect();
    let mut w = GeoParquetWriter::create(path, &cols)?;
    let mut buf = Vec::new();
    db.for_each_record(|key, rec| {
        let mut vs = Vec::with_capacity(spaces.len());
        for s in &spaces {
            vs.push(db.vector(&s.name, key)?);
        }
        let (geometry, extra) = match &rec {
            Record::Photo(p) => (ExportGeom::Point(p.lon, p.lat), serde_json::json!({"source": p.source, "accuracy": p.accuracy, "license": p.license, "url": p.url, "user": p.user})),
            Record::Tile(t) => (ExportGeom::Polygon(t.footprint.clone()), serde_json::json!({"source": t.source, "gsd_m": t.gsd_m, "cloud_cover": t.cloud_cover})),
        };
        buf.push(ExportRow { id: rec.id().clone(), kind: rec.kind(), time: rec.time(), geometry, space_vectors: vs, extra });
        if buf.len() >= 4096 {
            w.write_batch(&buf)?;
            buf.clear();
        }
        Ok(())
    })?;
    w.write_batch(&buf)?;
    let n = w.finish()?;
    writeln!(out, "exported {n} records to {} (GeoParquet 1.1)", path.display())?;
    Ok(())
}
