//! The CLIP byte-pair-encoding tokenizer, identical in output to OpenCLIP's
//! `SimpleTokenizer` (`open_clip.tokenize`) with its default `clean='lower'`.
//!
//! It reads the real vocabulary file, `bpe_simple_vocab_16e6.txt.gz` (MIT, shipped in
//! every model bundle and in the `open-clip-torch` wheel): 48,894 merges, which give
//! 49,408 token ids with `<start_of_text>` = 49406 and `<end_of_text>` = 49407.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use regex::Regex;

use super::clean::clean_lower;
use crate::{Error, Result};

/// Context length of every CLIP text encoder.
pub const CONTEXT_LENGTH: usize = 77;
/// Id of `<start_of_text>`.
pub const START_ID: i64 = 49406;
/// Id of `<end_of_text>`.
pub const END_ID: i64 = 49407;
/// File name of the vocabulary inside a bundle and inside the open_clip package.
pub const VOCAB_FILE: &str = "bpe_simple_vocab_16e6.txt.gz";

/// Number of merges CLIP uses: lines `1..=48894` of the vocabulary file.
const N_MERGES: usize = 49152 - 256 - 2;

/// CLIP's BPE tokenizer.
///
/// Build it once ([`ClipTokenizer::from_file`], about 60 ms) and share it; encoding
/// takes microseconds per word and never fails. `encode` output matches
/// `open_clip.tokenize(text)[0]` id for id, except on text that ftfy would treat as
/// mojibake (see the `clean` module).
#[derive(Debug)]
pub struct ClipTokenizer {
    byte_encoder: [char; 256],
    encoder: HashMap<String, u32>,
    /// Merge rank keyed by `"first second"` (symbols never contain a space).
    ranks: HashMap<String, u32>,
    pattern: Regex,
}

/// OpenAI's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> ([char; 256], Vec<u32>) {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = ['\0'; 256];
    for (&b, &c) in bs.iter().zip(&cs) {
        if let (Some(slot), Some(ch)) = (usize::try_from(b).ok().and_then(|i| table.get_mut(i)), char::from_u32(c)) {
            *slot = ch;
        }
    }
    // Vocabulary order is the order of `bs`, which is the insertion order of the dict.
    let order = bs.iter().map(|&b| usize::try_from(b).ok().and_then(|i| table.get(i)).map_or(0, |&c| u32::from(c))).collect();
    (table, order)
}

impl ClipTokenizer {
    /// Loads the gzipped vocabulary file (`bpe_simple_vocab_16e6.txt.gz`).
    ///
    /// # Errors
    /// `Io` when the file cannot be read; `Corrupt` when it is not a gzipped CLIP
    /// vocabulary.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::io(
                    path,
                    std::io::Error::new(
                        e.kind(),
                        format!("{e}; the CLIP vocabulary ships in every model bundle (run tools/setup.sh)"),
                    ),
                )
            } else {
                Error::io(path, e)
            }
        })?;
        Self::from_gz_bytes(&bytes).map_err(|detail| Error::Corrupt { path: path.to_path_buf(), detail })
    }

    /// Builds the tokenizer from the bytes of the gzipped vocabulary file.
    ///
    /// # Errors
    /// A description of what is wrong with the bytes.
    pub fn from_gz_bytes(gz: &[u8]) -> std::result::Result<Self, String> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .map_err(|e| format!("not a gzipped UTF-8 CLIP vocabulary: {e}"))?;
        Self::from_merges_text(&text)
    }

    fn from_merges_text(text: &str) -> std::result::Result<Self, String> {
        // Python: text.split('\n')[1:49152-256-2+1]
        let merges: Vec<(&str, &str)> = text
            .split('\n')
            .skip(1)
            .take(N_MERGES)
            .enumerate()
            .map(|(i, line)| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a, b)),
                    _ => Err(format!("line {}: expected two symbols, found {line:?}", i + 2)),
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        if merges.len() != N_MERGES {
            return Err(format!("{} merges, CLIP needs {N_MERGES}", merges.len()));
        }
        let (byte_encoder, order) = bytes_to_unicode();
        let mut vocab: Vec<String> = Vec::with_capacity(49408);
        for &c in &order {
            vocab.push(char::from_u32(c).map(String::from).unwrap_or_default());
        }
        for &c in &order {
            vocab.push(char::from_u32(c).map(|ch| format!("{ch}</w>")).unwrap_or_default());
        }
        let mut ranks = HashMap::with_capacity(N_MERGES);
        for (rank, (a, b)) in merges.iter().enumerate() {
            vocab.push(format!("{a}{b}"));
            ranks.insert(format!("{a} {b}"), u32::try_from(rank).unwrap_or(u32::MAX));
        }
        vocab.push("<start_of_text>".into());
        vocab.push("<end_of_text>".into());
        // Later duplicates win, as in Python's dict(zip(vocab, range)).
        let encoder: HashMap<String, u32> =
            vocab.into_iter().enumerate().map(|(i, v)| (v, u32::try_from(i).unwrap_or(u32::MAX))).collect();
        if encoder.get("<end_of_text>").map(|&id| i64::from(id)) != Some(END_ID) {
            return Err("vocabulary does not put <end_of_text> at id 49407".into());
        }
        let pattern = Regex::new(
            r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| format!("internal: token pattern: {e}"))?;
        Ok(Self { byte_encoder, encoder, ranks, pattern })
    }

    /// Token ids of `text` without start/end tokens and without truncation
    /// (OpenCLIP's `SimpleTokenizer.encode`).
    #[must_use]
    pub fn encode_ids(&self, text: &str) -> Vec<u32> {
        let cleaned = clean_lower(text);
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&cleaned) {
            let piece = m.as_str();
            if piece == "<start_of_text>" || piece == "<end_of_text>" {
                ids.extend(self.encoder.get(piece).copied());
                continue;
            }
            let symbols: Vec<String> = piece
                .bytes()
                .filter_map(|b| self.byte_encoder.get(usize::from(b)).map(|c| c.to_string()))
                .collect();
            for sym in self.bpe(symbols) {
                // Every BPE output symbol is in the vocabulary: single bytes and merges are.
                ids.extend(self.encoder.get(&sym).copied());
            }
        }
        ids
    }

    /// Encodes `text` into exactly [`CONTEXT_LENGTH`] ids: `<start_of_text>`, the tokens,
    /// `<end_of_text>`, then zeros. Longer text is cut with `<end_of_text>` forced into
    /// the last position, as `open_clip.tokenize` does.
    #[must_use]
    pub fn encode(&self, text: &str) -> [i64; CONTEXT_LENGTH] {
        let mut out = [0i64; CONTEXT_LENGTH];
        let ids = self.encode_ids(text);
        let body = ids.iter().take(CONTEXT_LENGTH - 2).map(|&id| i64::from(id));
        let mut n = 0;
        for (slot, id) in out.iter_mut().zip(std::iter::once(START_ID).chain(body).chain(std::iter::once(END_ID))) {
            *slot = id;
            n += 1;
        }
        // ids.len() > 75: the cut sequence is start + 75 tokens + end; Python keeps 76
        // tokens then overwrites the last with end, which is the same thing.
        debug_assert!(n <= CONTEXT_LENGTH);
        out
    }

    /// [`encode`](Self::encode) for several texts.
    #[must_use]
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<[i64; CONTEXT_LENGTH]> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    fn rank(&self, a: &str, b: &str) -> Option<u32> {
        let mut key = String::with_capacity(a.len() + b.len() + 1);
        key.push_str(a);
        key.push(' ');
        key.push_str(b);
        self.ranks.get(&key).copied()
    }

    /// OpenAI's BPE on one pre-token (already mapped to byte characters).
    fn bpe(&self, mut word: Vec<String>) -> Vec<String> {
        match word.last_mut() {
            Some(last) => last.push_str("</w>"),
            None => return word,
        }
        while word.len() > 1 {
            // The lowest-ranked adjacent pair; ties cannot occur (ranks are unique).
            let best = word
                .windows(2)
                .filter_map(|w| match w {
                    [a, b] => self.rank(a, b).map(|r| (r, a.clone(), b.clone())),
                    _ => None,
                })
                .min_by_key(|(r, _, _)| *r);
            let Some((_, first, second)) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                let here = word.get(i);
                let next = word.get(i + 1);
                if here == Some(&first) && next == Some(&second) {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.extend(here.cloned());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_unicode_is_a_bijection_onto_printables() {
        let (table, order) = bytes_to_unicode();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[usize::from(b' ')], '\u{120}');
        assert_eq!(order.len(), 256);
        assert_eq!(order[0], u32::from('!'));
    }

    #[test]
    fn rejects_a_file_that_is_not_a_vocabulary() {
        assert!(ClipTokenizer::from_gz_bytes(b"not gzip").is_err());
    }
}
