//! The store of record: redb tables, key codecs and record encodings.
//!
//! This is the only module that names redb tables. Everything else in graftdb is derived
//! from what these tables hold and can be rebuilt from them.
//!
//! Byte order: keys are big-endian where they must sort (`ids`), vectors are little-endian.
//! The full layout is written down in `schema/storage.md`.

pub mod codec;
pub mod record;

use redb::TableDefinition;

/// The newest on-disk format this build writes and reads. Version 1 databases are migrated
/// to it on open (see `schema/storage.md`, version history).
pub const FORMAT_VERSION: u32 = 2;

/// `meta`: format version and counters. Keys: `format_version` (u32 LE).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `spaces`: space name → [`record::SpaceDef`] (bincode).
pub(crate) const SPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("spaces");
/// `records`: record key → [`record::Record`] (version byte + bincode).
pub(crate) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// `ids`: kind byte + id bytes → record key. See [`codec::id_key`].
pub(crate) const IDS: TableDefinition<&[u8], u64> = TableDefinition::new("ids");
/// `vector_chunks`: (space number, last sequence in the chunk) → a chunk of consecutive
/// vector entries (see [`codec::push_chunk_entry`]). Append-only: a space's vectors get
/// sequence numbers 1, 2, 3, … in commit order, and each chunk holds the run ending at its
/// key, so this table is also the log derived indexes replay.
pub(crate) const VECTOR_CHUNKS: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("vector_chunks");
/// Format version 1's `vectors`: (space number, record key) → 48-byte header + payload.
/// Read only by the migration to version 2, which deletes it.
pub(crate) const V1_VECTORS: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("vectors");
/// Format version 1's `vector_log`: (space number, sequence) → record key.
/// Read only by the migration to version 2, which deletes it.
pub(crate) const V1_VECTOR_LOG: TableDefinition<(u16, u64), u64> = TableDefinition::new("vector_log");

/// Target size of a `vector_chunks` value. redb stores a value larger than a page in a leaf
/// rounded up to a power of two pages, so chunks stay a little under 1 MiB (room for the
/// leaf's own header) rather than just over it.
pub const CHUNK_TARGET_BYTES: usize = (1 << 20) - 8192;

/// Bits of a record key taken by the geohash of its position; the rest is a per-cell sequence.
pub const KEY_GEO_BITS: u32 = 40;
/// Records one 40-bit geohash cell (about 38 m × 19 m at the equator) can hold.
pub const KEY_SEQ_MAX: u64 = (1 << (64 - KEY_GEO_BITS)) - 1;

/// The geohash cell part of a record key.
pub fn key_cell(key: u64) -> u64 {
    key >> (64 - KEY_GEO_BITS)
}
