//! Embeds the vendored map libraries (Leaflet, Leaflet.draw, Leaflet.heat), which
//! `tools/vendor-web.sh` unpacks from their npm packages into `vendor/web/`, into the binary
//! so the map page of `graftdb serve` needs no internet. Without them the binary still
//! builds; the page then says to run `tools/setup.sh`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let web = root.join("vendor").join("web");
    // Watch `vendor/` (tracked, so it always exists): watching a missing `vendor/web` would
    // mark the build script dirty on every cargo call; `vendor/web` appearing changes `vendor/`.
    println!("cargo:rerun-if-changed={}", root.join("vendor").display());
    println!("cargo:rerun-if-changed=build.rs");
    let mut files = Vec::new();
    walk(&web, &mut files);
    let mut src = String::from("/// Vendored web files: (path under /assets/, bytes).\npub static VENDORED: &[(&str, &[u8])] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f.strip_prefix(&web).expect("under vendor/web").to_string_lossy().replace('\\', "/");
        writeln!(src, "    ({rel:?}, include_bytes!({:?})),", f.display().to_string()).expect("write to string");
    }
    src.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("vendored.rs");
    std::fs::write(out, src).expect("write vendored.rs");
}
