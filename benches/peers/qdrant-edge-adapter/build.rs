//! Records, for the adapter's mode line, the qdrant-edge version in Cargo.lock and the rustc
//! that builds the crate (it needs nightly).
fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let v = std::process::Command::new(rustc).arg("-V").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).unwrap_or_default();
    println!("cargo:rustc-env=QEDGE_RUSTC_VERSION={}", v.trim());
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let ver = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"qdrant-edge\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string)))
        .unwrap_or_else(|| "?".into());
    println!("cargo:rustc-env=QEDGE_CRATE_VERSION={ver}");
    println!("cargo:rerun-if-changed=Cargo.lock");
}
