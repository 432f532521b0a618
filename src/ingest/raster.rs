//! Rasters → tiles, through GDAL.
//!
//! [`tile_raster`] cuts a GeoTIFF/COG (any CRS GDAL knows) into square pixel windows and
//! describes each as a [`Tile`]: a WGS84 footprint, a ground sample distance, a time and a
//! reference to its pixels. [`tiles_from_stac_item`] does the same for the image asset of a
//! STAC item. [`read_window_rgb`] reads a window back as 8-bit RGB for an image encoder.
//!
//! Nothing here writes to a database; these are pure functions of the files.
//!
//! Choices, stated once:
//! - **Partial edge tiles are dropped.** A window that would run off the right or bottom edge
//!   is not emitted: encoders want full `tile_px × tile_px` inputs, and padding would add fake
//!   nodata. A raster smaller than `tile_px` in either direction yields no tiles.
//! - **Footprint** = the window's four pixel corners (UL, UR, LR, LL, then UL again to close
//!   the ring) through the geotransform, then reprojected to EPSG:4326 in lon/lat order
//!   (GDAL's `OAMS_TRADITIONAL_GIS_ORDER`). Only corners are transformed, so edges are
//!   straight lines in lon/lat; at tile sizes this bends less than a pixel.
//! - **GSD** is the geometric mean of the x and y pixel sizes in metres. Projected units are
//!   converted with the CRS's linear unit; for a geographic CRS, degrees are converted on the
//!   WGS84 mean sphere (6,371,008.8 m) at the raster's centre latitude.
//! - **Nodata**: a pixel is nodata when every band that declares a nodata value holds it
//!   (or is NaN). When no band declares one, a pixel whose bands are all zero is nodata:
//!   the collar of Landsat and Sentinel-2 scenes is zeros with no nodata tag.
//! - **Time**: STAC `datetime`, else `TIFFTAG_DATETIME` / `ACQUISITIONDATETIME` /
//!   `ACQUISITION_DATE` metadata, else a `YYYYMMDD` date in the file name, else
//!   [`RasterOptions::time`]. Zone-less dates are taken as UTC.

use std::path::{Path, PathBuf};

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::{Dataset, Metadata};

use super::time::{date_in_name, parse_time};
use crate::{Error, PixelRef, RecordId, Result, Tile};

/// How to cut a raster into tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct RasterOptions {
    /// Tile edge in source pixels (224 matches CLIP ViT-B/16 input).
    pub tile_px: u32,
    /// Tiles whose nodata fraction is above this (0–1) are skipped.
    pub max_nodata: f64,
    /// Store each tile's pixels as PNG bytes ([`PixelRef::Stored`]) instead of a reference
    /// to the file window ([`PixelRef::File`]). Costs a read and a PNG encode per tile.
    pub store_pixels: bool,
    /// Acquisition time (µs since the epoch, UTC) used when neither the metadata nor the
    /// file name carries one.
    pub time: Option<i64>,
    /// Source name for the tiles; default: the file name.
    pub source: Option<String>,
}

impl Default for RasterOptions {
    fn default() -> Self {
        RasterOptions { tile_px: 224, max_nodata: 0.5, store_pixels: false, time: None, source: None }
    }
}

/// A tile together with the fraction of its pixels that are nodata.
#[derive(Debug, Clone, PartialEq)]
pub struct RasterTile {
    /// The tile record.
    pub tile: Tile,
    /// Fraction (0–1) of the window's pixels that are nodata.
    pub nodata_fraction: f64,
}

/// What [`tile_raster`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct RasterReport {
    /// Kept tiles, row-major from the top-left window.
    pub tiles: Vec<Tile>,
    /// Nodata fraction of each kept tile: `nodata_fractions[i]` belongs to `tiles[i]`.
    pub nodata_fractions: Vec<f64>,
    /// Full windows skipped because their nodata fraction exceeded `max_nodata`.
    pub skipped_nodata: usize,
    /// Ground sample distance in metres per pixel.
    pub gsd_m: f64,
    /// The raster's CRS, as `EPSG:n` when GDAL identifies a code, else its name or WKT.
    pub crs: String,
}

impl RasterReport {
    /// The kept tiles paired with their nodata fractions.
    pub fn into_raster_tiles(self) -> Vec<RasterTile> {
        self.tiles
            .into_iter()
            .zip(self.nodata_fractions)
            .map(|(tile, nodata_fraction)| RasterTile { tile, nodata_fraction })
            .collect()
    }
}

fn gdal_err(path: &Path, what: &str) -> impl Fn(gdal::errors::GdalError) -> Error {
    let at = path.display().to_string();
    let what = what.to_owned();
    move |e| Error::invalid(at.clone(), format!("{what}: {e}"))
}

/// Tile metadata that a STAC item supplies over the raster's own.
#[derive(Default)]
struct Overrides {
    id_prefix: Option<String>,
    time: Option<i64>,
    cloud_cover: Option<f32>,
    source: Option<String>,
}

/// Cut a GeoTIFF/COG into `tile_px × tile_px` tiles with WGS84 footprints.
///
/// Reads every band of every full window once (to measure nodata), plus a PNG encode per
/// tile when `store_pixels` is set. Tile ids are `"{file stem}/{x_off}_{y_off}"`, stable
/// for a given file name and `tile_px`. See the module docs for the choices made.
///
/// # Errors
/// [`Error::InvalidInput`] naming the file when GDAL cannot open it, it has no geotransform
/// or CRS, the geotransform is rotated, or a corner cannot be reprojected.
pub fn tile_raster(path: &Path, opts: &RasterOptions) -> Result<RasterReport> {
    tile_with(path, opts, &Overrides::default())
}

fn tile_with(path: &Path, opts: &RasterOptions, over: &Overrides) -> Result<RasterReport> {
    let at = path.display().to_string();
    if opts.tile_px == 0 {
        return Err(Error::invalid("tile_px", "must be at least 1"));
    }
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
    }
    let ds = Dataset::open(path).map_err(gdal_err(path, "cannot open raster"))?;
    let gt = ds.geo_transform().map_err(gdal_err(path, "no geotransform"))?;
    if gt[2] != 0.0 || gt[4] != 0.0 {
        return Err(Error::invalid(at, "rotated geotransforms are not supported; warp the raster first"));
    }
    let mut srs = ds.spatial_ref().map_err(gdal_err(path, "no CRS"))?;
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    let to_wgs84 = wgs84_transform(path, &srs)?;
    let (width, height) = ds.raster_size();
    let bands = ds.raster_count();
    if bands == 0 {
        return Err(Error::invalid(at, "raster has no bands"));
    }

    let crs = crs_name(&srs);
    let gsd_m = gsd_metres(path, &srs, &gt, &to_wgs84, width, height)?;

    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| at.clone());
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| name.clone());
    let time = over.time.or_else(|| metadata_time(&ds)).or_else(|| date_in_name(&name)).or(opts.time);
    let source = over.source.clone().or_else(|| opts.source.clone()).unwrap_or(name);
    let prefix = over.id_prefix.clone().unwrap_or(stem);

    let nodata: Vec<Option<f64>> = (1..=bands)
        .map(|b| ds.rasterband(b).map(|band| band.no_data_value()))
        .collect::<std::result::Result<_, _>>()
        .map_err(gdal_err(path, "cannot read band"))?;

    let t = opts.tile_px as usize;
    let (nx, ny) = (width / t, height / t);
    let mut report = RasterReport { tiles: Vec::new(), nodata_fractions: Vec::new(), skipped_nodata: 0, gsd_m, crs };
    let mut stretch = Stretch::new();
    for row in 0..ny {
        for col in 0..nx {
            let (x0, y0) = (col * t, row * t);
            let frac = nodata_fraction(&ds, &nodata, path, (x0, y0), t)?;
            if frac > opts.max_nodata {
                report.skipped_nodata += 1;
                continue;
            }
            let window = [as_u32(x0), as_u32(y0), opts.tile_px, opts.tile_px];
            let footprint = footprint(path, &gt, &to_wgs84, x0 as f64, y0 as f64, t as f64)?;
            let pixels = if opts.store_pixels {
                PixelRef::Stored(encode_png(path, &rgb_window(&ds, path, window, &mut stretch)?)?)
            } else {
                PixelRef::File { path: path.to_string_lossy().into_owned(), window }
            };
            report.tiles.push(Tile {
                id: RecordId::Str(format!("{prefix}/{x0}_{y0}")),
                footprint,
                source: source.clone(),
                gsd_m,
                time,
                cloud_cover: over.cloud_cover,
                pixels,
            });
            report.nodata_fractions.push(frac);
        }
    }
    Ok(report)
}

/// GDAL raster sizes fit in `i32`, so this never saturates for a real window.
fn as_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn wgs84_transform(path: &Path, srs: &SpatialRef) -> Result<CoordTransform> {
    let mut wgs84 = SpatialRef::from_epsg(4326).map_err(gdal_err(path, "cannot build EPSG:4326"))?;
    wgs84.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    CoordTransform::new(srs, &wgs84).map_err(gdal_err(path, "cannot transform the raster's CRS to WGS84"))
}

fn crs_name(srs: &SpatialRef) -> String {
    match (srs.auth_name(), srs.auth_code()) {
        (Some(a), Ok(c)) => format!("{a}:{c}"),
        _ => srs.name().or_else(|| srs.to_wkt().ok()).unwrap_or_default(),
    }
}

fn gsd_metres(
    path: &Path,
    srs: &SpatialRef,
    gt: &[f64; 6],
    to_wgs84: &CoordTransform,
    width: usize,
    height: usize,
) -> Result<f64> {
    let (dx, dy) = (gt[1].abs(), gt[5].abs());
    if srs.is_geographic() {
        const R: f64 = 6_371_008.8;
        let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
        let mut x = [gt[0] + cx * gt[1]];
        let mut y = [gt[3] + cy * gt[5]];
        to_wgs84.transform_coords(&mut x, &mut y, &mut []).map_err(gdal_err(path, "cannot reproject the centre"))?;
        let lat = y[0].to_radians();
        let deg = R * std::f64::consts::PI / 180.0;
        // angular_units: radians per CRS unit; degrees give 0.01745…
        let unit = srs.angular_units().to_degrees();
        let unit = if unit > 0.0 { unit } else { 1.0 };
        Ok(((dx * unit * deg * lat.cos()) * (dy * unit * deg)).sqrt())
    } else {
        let unit = srs.linear_units();
        let unit = if unit > 0.0 { unit } else { 1.0 };
        Ok((dx * dy).sqrt() * unit)
    }
}

fn footprint(path: &Path, gt: &[f64; 6], to_wgs84: &CoordTransform, x0: f64, y0: f64, t: f64) -> Result<Vec<[f64; 2]>> {
    let corners = [(x0, y0), (x0 + t, y0), (x0 + t, y0 + t), (x0, y0 + t)];
    let mut xs: Vec<f64> = corners.iter().map(|(px, py)| gt[0] + px * gt[1] + py * gt[2]).collect();
    let mut ys: Vec<f64> = corners.iter().map(|(px, py)| gt[3] + px * gt[4] + py * gt[5]).collect();
    to_wgs84
        .transform_coords(&mut xs, &mut ys, &mut [])
        .map_err(gdal_err(path, "cannot reproject a tile corner to WGS84"))?;
    let mut ring: Vec<[f64; 2]> = xs.iter().zip(&ys).map(|(x, y)| [*x, *y]).collect();
    if let Some(first) = ring.first().copied() {
        ring.push(first);
    }
    if ring.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::invalid(path.display().to_string(), "a tile corner reprojected to a non-finite coordinate"));
    }
    Ok(ring)
}

fn nodata_fraction(ds: &Dataset, nodata: &[Option<f64>], path: &Path, (x0, y0): (usize, usize), t: usize) -> Result<f64> {
    let n = t * t;
    let any_declared = nodata.iter().any(Option::is_some);
    // is_nodata[i] starts true and is cleared by any band that shows data at pixel i.
    let mut is_nodata = vec![true; n];
    for (b, nd) in nodata.iter().enumerate() {
        if any_declared && nd.is_none() {
            continue;
        }
        let band = ds.rasterband(b + 1).map_err(gdal_err(path, "cannot read band"))?;
        let buf = band
            .read_as::<f64>((x0 as isize, y0 as isize), (t, t), (t, t), None)
            .map_err(gdal_err(path, "cannot read window"))?;
        let fill = nd.unwrap_or(0.0);
        for (flag, v) in is_nodata.iter_mut().zip(buf.data()) {
            if !(v.is_nan() || *v == fill) {
                *flag = false;
            }
        }
    }
    Ok(is_nodata.iter().filter(|f| **f).count() as f64 / n as f64)
}

fn metadata_time(ds: &Dataset) -> Option<i64> {
    for key in ["TIFFTAG_DATETIME", "ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED"] {
        for domain in ["", "IMAGERY"] {
            if let Some(v) = ds.metadata_item(key, domain) {
                if let Ok(t) = parse_time(&v) {
                    return Some(t);
                }
            }
        }
    }
    None
}

fn encode_png(path: &Path, img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::invalid(path.display().to_string(), format!("cannot encode PNG: {e}")))?;
    Ok(out.into_inner())
}

/// Read a window `[x_off, y_off, width, height]` as 8-bit RGB, for an image encoder.
///
/// Bands: the first three as R, G, B; a one- or two-band raster gives grey from band 1.
/// Scaling: `Byte` bands are passed through unchanged. Other types are stretched linearly
/// per band so that the band's 2nd percentile maps to 0 and its 98th to 255 (clipped). The
/// percentiles are of the **whole band** (read decimated to at most 1024 px a side, nodata
/// and, when no nodata is declared, zeros excluded), not of the window, so neighbouring
/// tiles get the same colours. That costs one decimated read of each band per call.
/// Nodata pixels come out black.
///
/// # Errors
/// [`Error::InvalidInput`] naming the file when it cannot be opened or the window is not
/// inside the raster.
pub fn read_window_rgb(path: &Path, window: [u32; 4]) -> Result<image::RgbImage> {
    let ds = Dataset::open(path).map_err(gdal_err(path, "cannot open raster"))?;
    rgb_window(&ds, path, window, &mut Stretch::new())
}

/// Per-band `(2nd, 98th)` percentiles, computed on first use.
type Stretch = std::collections::HashMap<usize, (f64, f64)>;

/// Reads many windows of one raster as [`read_window_rgb`] does, with identical pixels, but
/// opens the file once and computes each band's stretch once instead of per window. Use it
/// when embedding many tiles of the same file. Not `Sync`: one per thread.
pub struct WindowReader {
    ds: Dataset,
    path: PathBuf,
    stretch: Stretch,
}

impl WindowReader {
    /// Open a raster for reading windows.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file when GDAL cannot open it.
    pub fn open(path: &Path) -> Result<Self> {
        let ds = Dataset::open(path).map_err(gdal_err(path, "cannot open raster"))?;
        Ok(WindowReader { ds, path: path.to_path_buf(), stretch: Stretch::new() })
    }

    /// The window `[x_off, y_off, width, height]` as 8-bit RGB (see [`read_window_rgb`]).
    ///
    /// # Errors
    /// As [`read_window_rgb`].
    pub fn read(&mut self, window: [u32; 4]) -> Result<image::RgbImage> {
        rgb_window(&self.ds, &self.path, window, &mut self.stretch)
    }
}

fn rgb_window(ds: &Dataset, path: &Path, window: [u32; 4], stretch: &mut Stretch) -> Result<image::RgbImage> {
    let at = path.display().to_string();
    let [x0, y0, w, h] = window;
    let (width, height) = ds.raster_size();
    if w == 0 || h == 0 || x0 as usize + w as usize > width || y0 as usize + h as usize > height {
        return Err(Error::invalid(at, format!("window {window:?} is not inside the {width}×{height} raster")));
    }
    let bands = ds.raster_count();
    let picks: [usize; 3] = if bands >= 3 { [1, 2, 3] } else { [1, 1, 1] };
    let n = w as usize * h as usize;
    let mut channels: Vec<Vec<u8>> = Vec::with_capacity(3);
    for (i, b) in picks.iter().enumerate() {
        if i > 0 && picks.get(i - 1) == Some(b) {
            if let Some(prev) = channels.last().cloned() {
                channels.push(prev);
                continue;
            }
        }
        let band = ds.rasterband(*b).map_err(gdal_err(path, "cannot read band"))?;
        let nd = band.no_data_value();
        let buf = band
            .read_as::<f64>((x0 as isize, y0 as isize), (w as usize, h as usize), (w as usize, h as usize), None)
            .map_err(gdal_err(path, "cannot read window"))?;
        let (lo, hi) = if band.band_type() == gdal::raster::GdalDataType::UInt8 {
            (0.0, 255.0)
        } else {
            match stretch.get(b) {
                Some(s) => *s,
                None => {
                    let s = band_percentiles(&band, nd, path)?;
                    stretch.insert(*b, s);
                    s
                }
            }
        };
        let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
        let ch: Vec<u8> = buf
            .data()
            .iter()
            .map(|v| {
                if v.is_nan() || Some(*v) == nd {
                    0
                } else {
                    // clamp keeps the cast in range
                    ((v - lo) * scale).round().clamp(0.0, 255.0) as u8
                }
            })
            .collect();
        channels.push(ch);
    }
    let mut rgb = Vec::with_capacity(n * 3);
    if let [r, g, b] = channels.as_slice() {
        for ((r, g), b) in r.iter().zip(g).zip(b) {
            rgb.extend_from_slice(&[*r, *g, *b]);
        }
    }
    image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| Error::invalid(at, "pixel buffer has the wrong size"))
}

fn band_percentiles(band: &gdal::raster::RasterBand<'_>, nd: Option<f64>, path: &Path) -> Result<(f64, f64)> {
    let (w, h) = band.size();
    let f = (1024.0 / w.max(h) as f64).min(1.0);
    let shape = (((w as f64 * f).round() as usize).max(1), ((h as f64 * f).round() as usize).max(1));
    let buf = band.read_as::<f64>((0, 0), (w, h), shape, None).map_err(gdal_err(path, "cannot read band"))?;
    let fill = nd.unwrap_or(0.0);
    let mut vals: Vec<f64> = buf.data().iter().copied().filter(|v| !v.is_nan() && *v != fill).collect();
    if vals.is_empty() {
        return Ok((0.0, 0.0));
    }
    vals.sort_by(f64::total_cmp);
    let at = |q: f64| vals.get(((vals.len() - 1) as f64 * q).round() as usize).copied().unwrap_or(0.0);
    Ok((at(0.02), at(0.98)))
}

/// An asset's key and JSON, in document order.
struct Assets(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Assets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Assets;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of STAC assets")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Assets, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(e);
                }
                Ok(Assets(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
struct StacItem {
    id: Option<String>,
    collection: Option<String>,
    #[serde(default)]
    properties: serde_json::Map<String, serde_json::Value>,
    assets: Assets,
}

/// Tile the image asset of a STAC item whose assets are local GeoTIFFs.
///
/// The asset is the one keyed `visual` or `rgb`, else the first (in document order) whose
/// `type` starts with `image/tiff`, else the first whose href ends in `.tif`/`.tiff`.
/// Relative hrefs resolve against the JSON file's folder; `file://` URLs are accepted;
/// remote (`http`, `s3`) hrefs are refused, since ingest never downloads. Tiles take the
/// item's `datetime` (or `start_datetime`), `eo:cloud_cover`, and ids
/// `"{item id}/{x_off}_{y_off}"`; their source is `opts.source`, else the item's collection,
/// else the file name. Everything else is as [`tile_raster`].
///
/// # Errors
/// [`Error::InvalidInput`] naming the JSON file for malformed JSON, a bad datetime, or no
/// usable asset; otherwise as [`tile_raster`].
pub fn tiles_from_stac_item(path: &Path, opts: &RasterOptions) -> Result<RasterReport> {
    let at = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let item: StacItem = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{at} line {}", e.line()), format!("not a STAC item: {e}")))?;
    let is_tiff_type = |a: &serde_json::Value| {
        a.get("type").and_then(|t| t.as_str()).is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("image/tiff"))
    };
    let href_of = |a: &serde_json::Value| a.get("href").and_then(|h| h.as_str()).map(str::to_owned);
    let assets = &item.assets.0;
    let chosen = assets
        .iter()
        .find(|(k, _)| k == "visual" || k == "rgb")
        .or_else(|| assets.iter().find(|(_, a)| is_tiff_type(a)))
        .or_else(|| {
            assets.iter().find(|(_, a)| {
                href_of(a).is_some_and(|h| {
                    let h = h.to_ascii_lowercase();
                    h.ends_with(".tif") || h.ends_with(".tiff")
                })
            })
        });
    let Some((key, asset)) = chosen else {
        return Err(Error::invalid(at, "no visual/rgb or image/tiff asset"));
    };
    let href = href_of(asset).ok_or_else(|| Error::invalid(at.clone(), format!("asset '{key}' has no href")))?;
    let raster = resolve_href(path, &href).map_err(|d| Error::invalid(at.clone(), format!("asset '{key}': {d}")))?;

    let prop_str = |k: &str| item.properties.get(k).and_then(|v| v.as_str());
    let time = match prop_str("datetime").or_else(|| prop_str("start_datetime")) {
        Some(s) => Some(parse_time(s).map_err(|d| Error::invalid(at.clone(), format!("properties.datetime: {d}")))?),
        None => None,
    };
    let cloud_cover = match item.properties.get("eo:cloud_cover") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(c) if (0.0..=100.0).contains(&c) => Some(c as f32),
            _ => return Err(Error::invalid(at, format!("eo:cloud_cover {v} is not a percentage"))),
        },
    };
    let over = Overrides {
        id_prefix: item.id.clone(),
        time,
        cloud_cover,
        source: if opts.source.is_some() { None } else { item.collection.clone() },
    };
    tile_with(&raster, opts, &over)
}

fn resolve_href(item_path: &Path, href: &str) -> std::result::Result<PathBuf, String> {
    if let Some(p) = href.strip_prefix("file://") {
        return Ok(PathBuf::from(p));
    }
    if href.contains("://") {
        return Err(format!("href '{href}' is remote; download the asset and point the href at the local file"));
    }
    let p = Path::new(href);
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(item_path.parent().unwrap_or_else(|| Path::new(".")).join(p))
    }
}
