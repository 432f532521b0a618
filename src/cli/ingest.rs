//! `ingest raster` and `ingest photos`: one write transaction per input file, so a file is
//! either wholly in the database or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use graftdb::ingest::photos::{read_photos, BadRow, OnError, PhotoFormat, PhotoOptions};
use graftdb::ingest::raster::{tile_raster, tiles_from_stac_item, RasterOptions};
use graftdb::{Db, Record};

use super::args::{self, OnErrorArg, PhotoFormatArg, PhotosArgs, RasterArgs};
use super::retry_locked;

/// Bad rows printed per file; the rest are counted.
const SHOW_BAD: usize = 20;

/// GSDs within this relative difference are the same (rounding in metadata, geographic CRSs).
const GSD_TOLERANCE: f64 = 0.01;

/// An absolute path, so that pixel references and photo paths stay valid from any directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make the path absolute", p.display()))
}

fn is_stac(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Checked options of `ingest raster`.
fn raster_options(a: &RasterArgs) -> Result<RasterOptions> {
    if a.tile_px < 16 {
        bail!("--tile-px {}: tiles must be at least 16 pixels a side", a.tile_px);
    }
    if !(0.0..=1.0).contains(&a.max_nodata) {
        bail!("--max-nodata {}: a fraction between 0 and 1", a.max_nodata);
    }
    if let Some(g) = a.gsd {
        if !(g.is_finite() && g > 0.0) {
            bail!("--gsd {g}: metres per pixel, above 0");
        }
    }
    Ok(RasterOptions {
        tile_px: a.tile_px,
        max_nodata: a.max_nodata,
        store_pixels: a.store_pixels,
        time: a.time.as_deref().map(|t| args::parse_time("--time", t, false)).transpose()?,
        source: a.source.clone(),
    })
}

/// `graftdb ingest raster`.
pub fn raster(a: &RasterArgs, out: &mut dyn Write) -> Result<()> {
    let opts = raster_options(a)?;
    let db = Db::open(&a.db)?;
    let (mut written, mut skipped) = (0usize, 0usize);
    for (i, file) in a.files.iter().enumerate() {
        let path = absolute(file)?;
        let report = if is_stac(&path) { tiles_from_stac_item(&path, &opts)? } else { tile_raster(&path, &opts)? };
        if let Some(want) = a.gsd {
            if (report.gsd_m - want).abs() > GSD_TOLERANCE * want.max(report.gsd_m) {
                bail!(
                    "{}: GSD is {:.3} m but --gsd asks for {want} m; graftdb does not resample, so warp it first \
                     (gdalwarp -tr <pixel size in the CRS's units> -r average IN OUT) or drop --gsd{}",
                    file.display(),
                    report.gsd_m,
                    committed_note(i)
                );
            }
        }
        let n = report.tiles.len();
        let mut w = retry_locked(|| db.begin_write())?;
        for tile in report.tiles {
            let at = format!("{} tile {}", file.display(), tile.id);
            w.insert_at(&at, Record::Tile(tile)).map_err(|e| nothing_written(e, file, i))?;
        }
        w.commit()?;
        written += n;
        skipped += report.skipped_nodata;
        writeln!(
            out,
            "{}: {n} tiles written, {} skipped (nodata above {}), {} px, GSD {:.2} m, {}",
            file.display(),
            report.skipped_nodata,
            a.max_nodata,
            a.tile_px,
            report.gsd_m,
            report.crs
        )?;
    }
    if a.files.len() > 1 {
        writeln!(out, "total: {written} tiles written, {skipped} skipped, from {} files", a.files.len())?;
    }
    Ok(())
}

/// An error that stopped a file, saying that none of that file was written.
fn nothing_written(e: impl std::fmt::Display, file: &Path, done: usize) -> anyhow::Error {
    let e = e.to_string();
    let hint = if e.contains("duplicate id") { " (was it ingested already?)" } else { "" };
    anyhow::anyhow!("{e}{hint}; nothing from {} was written{}", file.display(), committed_note(done))
}

/// " (the N files before it were committed)" when some were.
fn committed_note(done: usize) -> String {
    match done {
        0 => String::new(),
        1 => " (the file before it was committed)".into(),
        n => format!(" (the {n} files before it were committed)"),
    }
}

fn photo_format(f: PhotoFormatArg) -> PhotoFormat {
    match f {
        PhotoFormatArg::Auto => PhotoFormat::Auto,
        PhotoFormatArg::Yfcc => PhotoFormat::Yfcc,
        PhotoFormatArg::FlickrJson => PhotoFormat::FlickrJson,
        PhotoFormatArg::Csv => PhotoFormat::Csv,
        PhotoFormatArg::Jsonl => PhotoFormat::Jsonl,
        PhotoFormatArg::Exif => PhotoFormat::Exif,
    }
}

fn is_jpeg_input(p: &Path, f: PhotoFormatArg) -> bool {
    f == PhotoFormatArg::Exif || p.is_dir() || p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
}

/// Print bad rows to stderr, at most [`SHOW_BAD`] of them, then a count of the rest.
fn report_bad(file: &Path, bad: &[BadRow]) {
    for b in bad.iter().take(SHOW_BAD) {
        eprintln!("{}: {}", b.at, b.reason);
    }
    if bad.len() > SHOW_BAD {
        eprintln!("{}: {} more bad rows not shown", file.display(), bad.len() - SHOW_BAD);
    }
}

/// `graftdb ingest photos`.
pub fn photos(a: &PhotosArgs, out: &mut dyn Write) -> Result<()> {
    let on_error = match a.on_error {
        OnErrorArg::Skip => OnError::Skip,
        OnErrorArg::Fail => OnError::Fail,
    };
    let images_dir = a.images.as_deref().map(absolute).transpose()?;
    if let Some(d) = &images_dir {
        if !d.is_dir() {
            bail!("--images {}: not a folder", d.display());
        }
    }
    let opts = PhotoOptions { format: photo_format(a.format), min_accuracy: a.min_accuracy, on_error, images_dir };
    let db = Db::open(&a.db)?;
    let (mut written, mut bad_total) = (0usize, 0usize);
    for (i, file) in a.files.iter().enumerate() {
        // JPEG paths become the photos' image paths: keep them valid from any directory.
        let path = if is_jpeg_input(file, a.format) { absolute(file)? } else { file.clone() };
        let report = read_photos(&path, &opts).map_err(|e| nothing_written(e, file, i))?;
        let mut bad = report.bad;
        let mut w = retry_locked(|| db.begin_write())?;
        let mut n = 0usize;
        for p in report.photos {
            let at = format!("{}: photo {}", file.display(), p.id);
            match w.insert_at(&at, Record::Photo(p)) {
                Ok(_) => n += 1,
                // A refused record leaves the transaction as it was: skip it like a bad row.
                Err(graftdb::Error::DuplicateId { id, .. }) if on_error == OnError::Skip => {
                    bad.push(BadRow { at, reason: format!("id {id} is already in the database") });
                }
                Err(graftdb::Error::InvalidInput { detail, .. }) if on_error == OnError::Skip => bad.push(BadRow { at, reason: detail }),
                Err(e) => return Err(nothing_written(e, file, i)),
            }
        }
        w.commit()?;
        report_bad(file, &bad);
        written += n;
        bad_total += bad.len();
        writeln!(
            out,
            "{}: {n} photos written, {} bad rows skipped, {} filtered (videos, no geotag{})",
            file.display(),
            bad.len(),
            report.filtered,
            if a.min_accuracy.is_some() { ", below --min-accuracy" } else { "" }
        )?;
    }
    if a.files.len() > 1 {
        writeln!(out, "total: {written} photos written, {bad_total} bad rows skipped, from {} files", a.files.len())?;
    }
    Ok(())
}
