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

/// The newest on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `meta`: format version and counters. Keys: `format_version` (u32 LE).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `spaces`: space name → [`record::SpaceDef`] (bincode).
pub(crate) const SPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("spaces");
/// `records`: record key → [`record::Record`] (version byte + bincode).
pub(crate) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// `ids`: kind byte + id bytes → record key. See [`codec::id_key`].
pub(crate) const IDS: TableDefinition<&[u8], u64> = TableDefinition::new("ids");
/// `vectors`: (space number, record key) → encoded vector or patch grid.
pub(crate) const VECTORS: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("vectors");
/// `vector_log`: (space number, sequence) → record key, one entry per vector put, in commit order.
/// Derived indexes remember the last sequence they reflect and replay the rest.
pub(crate) const VECTOR_LOG: TableDefinition<(u16, u64), u64> = TableDefinition::new("vector_log");

/// Bits of a record key taken by the geohash of its position; the rest is a per-cell sequence.
pub const KEY_GEO_BITS: u32 = 40;
/// Records one 40-bit geohash cell (about 38 m × 19 m at the equator) can hold.
pub const KEY_SEQ_MAX: u64 = (1 << (64 - KEY_GEO_BITS)) - 1;

/// The geohash cell part of a record key.
pub fn key_cell(key: u64) -> u64 {
    key >> (64 - KEY_GEO_BITS)
}
