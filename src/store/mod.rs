//! The store of record: redb tables, key codecs and record encodings.
pub mod record;
