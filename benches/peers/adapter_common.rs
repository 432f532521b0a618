//! What the Rust peer adapters share (graftdb-adapter and qdrant-edge-adapter, two crates of
//! their own, each including this file by path): reading the dataset's `.npy` files and the
//! figures every adapter reports, as common.py does for the Python ones.

use std::path::Path;

use anyhow::{Context, Result};

/// A whole `.npy` array: its shape and its values in C order.
pub fn npy<T: npyz::Deserialize>(path: &Path) -> Result<(Vec<u64>, Vec<T>)> {
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f))?;
    let shape = npy.shape().to_vec();
    Ok((shape, npy.into_vec()?))
}

/// A kB figure of /proc/self/status (e.g. `VmHWM:`, the peak RSS); 0 where unreadable.
pub fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Bytes of the files under `p`, recursively (entries that cannot be read count 0).
pub fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    total
}
