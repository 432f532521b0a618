//! The index files of a checkpointed database, for tests that damage them.

use std::path::{Path, PathBuf};

/// The files of the database at `db` (its `index/` folder) with extension `ext`, sorted.
pub fn index_files(db: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(db.join("index")).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == ext)).collect();
    v.sort();
    v
}

/// Flip the bits `mask` of the byte `from_end` bytes before the end of the database's one
/// arena snapshot (where its last sections lie: the sketches, then, at the image level, the
/// record ids).
#[allow(dead_code)]
pub fn flip_arena_byte(db: &Path, from_end: usize, mask: u8) {
    let arena = index_files(db, "arena");
    assert_eq!(arena.len(), 1, "{arena:?}");
    let mut bytes = std::fs::read(&arena[0]).unwrap();
    let at = bytes.len() - from_end;
    bytes[at] ^= mask;
    std::fs::write(&arena[0], &bytes).unwrap();
}
