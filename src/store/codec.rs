//! Encodings of records, ids and vectors as stored in redb.

use super::record::{Kind, Record, RecordId};
use crate::{Error, Result};

const RECORD_ENCODING: u8 = 1;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encode a record: one version byte, then bincode (standard config).
pub fn encode_record(r: &Record) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_record_into(r, &mut out)?;
    Ok(out)
}

/// [`encode_record`], appended to `out` (a buffer reused across records).
pub fn encode_record_into(r: &Record, out: &mut Vec<u8>) -> Result<()> {
    out.push(RECORD_ENCODING);
    bincode::serde::encode_into_std_write(r, out, bincode_config()).map_err(|e| Error::Storage(format!("encoding record {}: {e}", r.id())))?;
    Ok(())
}

/// Decode a record written by [`encode_record`].
pub fn decode_record(bytes: &[u8]) -> Result<Record> {
    match bytes.split_first() {
        Some((&RECORD_ENCODING, rest)) => bincode::serde::decode_from_slice(rest, bincode_config())
            .map(|(r, _)| r)
            .map_err(|e| Error::Storage(format!("corrupt record: {e}"))),
        Some((v, _)) => Err(Error::Storage(format!("record encoding {v} is unknown to this graftdb"))),
        None => Err(Error::Storage("empty record".into())),
    }
}

/// The `ids` table key: kind byte, id type byte (`i` or `s`), then the big-endian integer
/// (sign bit flipped so it sorts) or the UTF-8 string.
pub fn id_key(kind: Kind, id: &RecordId) -> Vec<u8> {
    let mut k = vec![kind.to_u8()];
    match id {
        RecordId::Int(i) => {
            k.push(b'i');
            k.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        RecordId::Str(s) => {
            k.push(b's');
            k.extend_from_slice(s.as_bytes());
        }
    }
    k
}

/// Encode an image-level vector: `dim` little-endian f32.
pub fn encode_f32(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decode little-endian f32s into `out` (cleared first).
pub fn decode_f32_into(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
}

/// Bytes per patch in the i8 grid encoding: a little-endian f32 scale, then `dim` i8 codes.
pub fn patch_stride(dim: usize) -> usize {
    4 + dim
}

/// Quantise a patch grid (`patches × dim` f32, row-major) to symmetric i8 with one scale per patch.
/// Each value is reconstructed as `code × scale`, with `scale = max|x| / 127`.
pub fn encode_patch_grid(grid: &[f32], dim: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(grid.len() / dim.max(1) * patch_stride(dim));
    for patch in grid.chunks_exact(dim.max(1)) {
        let max = patch.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend(patch.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}

/// Patch `p` of an encoded grid as its i8 codes and scale. Returns `None` past the end.
pub fn patch_codes(grid: &[u8], dim: usize, p: usize) -> Option<(&[i8], f32)> {
    let stride = patch_stride(dim);
    let rec = grid.get(p * stride..(p + 1) * stride)?;
    let (scale, codes) = rec.split_at(4);
    // The codes are i8 values stored as bytes.
    Some((bytemuck::cast_slice(codes), f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]])))
}

/// Dot product of a query with patch `p` of an encoded grid. Returns `None` past the end.
pub fn patch_dot(grid: &[u8], dim: usize, p: usize, q: &[f32]) -> Option<f32> {
    let (codes, scale) = patch_codes(grid, dim, p)?;
    Some(patch_score(q, codes, scale))
}

/// Dot product of a query with a patch given as its codes and scale (from a grid, or the
/// partitions' copy): the score every patch-level path ranks by.
#[inline]
pub fn patch_score(q: &[f32], codes: &[i8], scale: f32) -> f32 {
    crate::index::scan::dot_f32_i8(q, codes) * scale
}

/// Decode patch `p` back to f32 (for checks and tests).
pub fn patch_decode(grid: &[u8], dim: usize, p: usize) -> Option<Vec<f32>> {
    let (codes, scale) = patch_codes(grid, dim, p)?;
    Some(codes.iter().map(|&c| f32::from(c) * scale).collect())
}

/// Bytes of the header in front of every vector payload.
pub const VECTOR_HEADER: usize = 48;

/// The 48-byte vector header: the record fields the planner filters on (kind u8, has-time
/// u8, 6 zero bytes, time i64 LE, bbox w,s,e,n as f64 LE), appended to `out`. The header
/// lets the derived arena be rebuilt from the vector table alone in one sequential scan.
pub fn push_vector_header(out: &mut Vec<u8>, meta: &crate::index::arena::RowMeta) {
    out.push(meta.kind.to_u8());
    out.push(u8::from(meta.time.is_some()));
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&meta.time.unwrap_or(0).to_le_bytes());
    for v in meta.bbox {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A format-version-1 `vectors` value: the 48-byte header, then the payload.
pub fn encode_vector_value(meta: &crate::index::arena::RowMeta, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(VECTOR_HEADER + payload.len());
    push_vector_header(&mut out, meta);
    out.extend_from_slice(payload);
    out
}

/// Bytes in front of each payload in a `vector_chunks` entry: record key u64 LE + header.
pub const CHUNK_ENTRY_HEAD: usize = 8 + VECTOR_HEADER;

/// Append one `vector_chunks` entry: record key u64 LE, the 48-byte header
/// ([`push_vector_header`]), then the payload. Every entry of a space has the same length,
/// `CHUNK_ENTRY_HEAD` + the space's payload bytes, so a chunk is entries back to back.
pub fn push_chunk_entry(out: &mut Vec<u8>, key: u64, meta: &crate::index::arena::RowMeta, payload: &[u8]) {
    out.extend_from_slice(&key.to_le_bytes());
    push_vector_header(out, meta);
    out.extend_from_slice(payload);
}

/// [`push_chunk_entry`] for an image-level vector, written as f32 LE straight into `out`.
pub fn push_chunk_entry_f32(out: &mut Vec<u8>, key: u64, meta: &crate::index::arena::RowMeta, v: &[f32]) {
    out.extend_from_slice(&key.to_le_bytes());
    push_vector_header(out, meta);
    out.reserve(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// The entries of a `vector_chunks` value whose entries carry `payload` bytes each, as
/// (record key, header + payload). Fails on an empty chunk or one that is not whole entries.
pub fn chunk_entries(bytes: &[u8], payload: usize) -> Result<impl Iterator<Item = (u64, &[u8])> + '_> {
    let size = CHUNK_ENTRY_HEAD + payload;
    if bytes.is_empty() || !bytes.len().is_multiple_of(size) {
        return Err(Error::Storage(format!("corrupt vector chunk: {} bytes is not a whole number of {size}-byte entries", bytes.len())));
    }
    Ok(bytes.chunks_exact(size).map(|e| {
        let (k, rest) = e.split_at(8);
        (u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]), rest)
    }))
}

/// Split a header + payload (a chunk entry after its key, or a version-1 `vectors` value)
/// into its header fields and payload.
pub fn decode_vector_value(bytes: &[u8]) -> Result<(crate::index::arena::RowMeta, &[u8])> {
    let bad = || Error::Storage("corrupt vector value".into());
    if bytes.len() < VECTOR_HEADER {
        return Err(bad());
    }
    let (h, payload) = bytes.split_at(VECTOR_HEADER);
    let f = |o: usize| -> Result<[u8; 8]> { h.get(o..o + 8).and_then(|b| b.try_into().ok()).ok_or_else(bad) };
    let kind = Kind::from_u8(h[0]).ok_or_else(bad)?;
    let time = (h[1] == 1).then_some(i64::from_le_bytes(f(8)?));
    let mut bbox = [0f64; 4];
    for (i, b) in bbox.iter_mut().enumerate() {
        *b = f64::from_le_bytes(f(16 + 8 * i)?);
    }
    Ok((crate::index::arena::RowMeta { kind, time, bbox }, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::Photo;

    #[test]
    fn record_round_trip() {
        let r = Record::Photo(Photo {
            id: RecordId::Int(-5),
            lon: 1.5,
            lat: -2.25,
            accuracy: Some(16),
            time: Some(1_600_000_000_000_000),
            source: "yfcc100m".into(),
            license: None,
            url: Some("x.jpg".into()),
            user: None,
        });
        assert_eq!(decode_record(&encode_record(&r).unwrap()).unwrap(), r);
        assert!(decode_record(&[9, 1, 2]).is_err());
        assert!(decode_record(&[1, 255, 255]).is_err());
    }

    #[test]
    fn int_ids_sort_numerically() {
        let a = id_key(Kind::Photo, &RecordId::Int(-3));
        let b = id_key(Kind::Photo, &RecordId::Int(2));
        assert!(a < b);
    }

    #[test]
    fn patch_i8_error_is_small() {
        // Measured bound: symmetric i8 with a per-patch scale loses at most scale/2 per value.
        let dim = 512;
        let grid: Vec<f32> = (0..dim * 3).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1).collect();
        let enc = encode_patch_grid(&grid, dim);
        assert_eq!(enc.len(), 3 * patch_stride(dim));
        for p in 0..3 {
            let dec = patch_decode(&enc, dim, p).unwrap();
            let orig = &grid[p * dim..(p + 1) * dim];
            let max = orig.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (a, b) in dec.iter().zip(orig) {
                assert!((a - b).abs() <= max / 127.0 / 2.0 + 1e-7);
            }
            let q: Vec<f32> = orig.to_vec();
            let exact: f32 = orig.iter().map(|x| x * x).sum();
            let approx = patch_dot(&enc, dim, p, &q).unwrap();
            assert!((exact - approx).abs() / exact < 0.01, "{exact} {approx}");
        }
    }
}
