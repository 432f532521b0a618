//! The map page end to end in a real browser: `graftdb serve` on a real database (RMNP
//! tiles through GDAL, embedded with the tiny bundle), Debian's headless `chromium` driven
//! by playwright-core (`tools/web-e2e/e2e.mjs`) with background networking, component
//! updates and sync off. It loads the page, waits for the database's own imagery as the
//! basemap, draws a box, submits a text query and checks that result features are on the
//! map and in the list, that a result clicks through to its tile image, that a drawn
//! polygon works as well as a box, that a patch-level
//! query draws a heat layer, and that no request left the server. The screenshot is kept at
//! `target/web-e2e/map.png`. `tools/setup.sh` installs chromium and playwright-core; this
//! test fails (it does not skip) when they are missing.

#[path = "support/http.rs"]
mod http;

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_graftdb");

fn graftdb(args: &[&str]) {
    let o = Command::new(BIN).args(args).output().expect("run graftdb");
    assert!(o.status.success(), "graftdb {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn map_page_draw_box_text_query_shows_features() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: run tools/setup.sh (it installs Debian's chromium)");
    let driver = root.join("tools/web-e2e");
    assert!(driver.join("node_modules/playwright-core").is_dir(), "playwright-core is missing: run tools/setup.sh (npm ci in tools/web-e2e)");
    let rmnp = root.join("data/rmnp/rmnp-rgb.tif");
    let tiny = root.join("data/bundles/tiny");
    assert!(rmnp.is_file() && tiny.join("bundle.json").is_file(), "test imagery or the tiny bundle is missing: run tools/setup.sh");

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let d = db.to_str().unwrap();
    graftdb(&["create", d]);
    graftdb(&["ingest", "raster", d, rmnp.to_str().unwrap(), "--tile-px", "112"]);
    graftdb(&["embed", d, "--model", tiny.to_str().unwrap(), "--space", "tiny", "--what", "tiles,patches", "--device", "cpu"]);

    let mut srv = http::Server::start(BIN, &db, &["--model", tiny.to_str().unwrap()]);
    let out_dir = root.join("target/web-e2e");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("map.png");
    let _ = std::fs::remove_file(&shot);
    let o = Command::new("node")
        .arg(driver.join("e2e.mjs"))
        .arg(format!("http://{}/", srv.addr))
        .arg(&shot)
        .arg("a lake")
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (tools/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "the browser check failed: {}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("e2e.mjs prints what it saw as JSON");
    assert_eq!(seen["list_items"], 8, "{seen}");
    assert_eq!(seen["map_features"], 8, "{seen}");
    assert!(seen["basemap_images"].as_u64().unwrap_or(0) > 0, "the basemap shows the database's tiles: {seen}");
    assert_eq!(seen["request"]["bbox"].as_array().map(Vec::len), Some(4), "{seen}");
    assert!(seen["popup_link"].as_str().is_some_and(|l| l.starts_with("/tiles/") && l.ends_with(".png")), "{seen}");
    assert_eq!(seen["polygon_type"], "Polygon", "a drawn polygon is sent as GeoJSON: {seen}");
    assert!(seen["polygon_items"].as_u64().unwrap_or(0) > 0, "results inside the drawn polygon: {seen}");
    assert_eq!(seen["patch_items"], 8, "patch-level results listed: {seen}");
    assert_eq!(seen["heat_layer"], 1, "a heat layer for patch-level results: {seen}");
    assert!(seen["requests_outside"].as_array().is_some_and(Vec::is_empty), "{seen}");
    let png = image::open(&shot).expect("a screenshot");
    assert_eq!((png.width(), png.height()), (1280, 800));
    assert!(srv.alive());
}
