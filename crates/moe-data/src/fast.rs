//! A faster path to the same token ids for the common byte-level BPE tokenizers (ours, GPT-2's):
//! no normalizer, a `ByteLevel` pre-tokenizer with GPT-2's split pattern, a BPE model. Hugging
//! Face's pipeline tracks alignments through every step and allocates a string per token, which
//! costs about 1 µs per word here (about 3 MB/s per core); preparing a corpus needs only the ids.
//!
//! The path: split the text with GPT-2's pattern, map each piece's bytes to the byte-level
//! alphabet, and ask the tokenizer's own BPE model for the ids of each distinct piece once
//! (a cache keyed by the piece). The pattern's `\s+(?!\S)` has no equivalent in the `regex`
//! crate; it is the plain `\s+` alternative given back its last character when a non-space
//! follows, which is what the look-ahead does. Texts holding an added token (e.g.
//! `<|endoftext|>`) take Hugging Face's own path, and `Tok`'s tests check that both paths agree.

use std::collections::HashMap;
use std::sync::RwLock;
use tokenizers::{Model, ModelWrapper, Tokenizer};

/// GPT-2's pre-tokenization pattern without the look-ahead alternative (see the module doc).
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Distinct pieces cached at most; beyond it the cache starts afresh.
const CACHE_MAX: usize = 1 << 20;

pub struct FastByteLevel {
    split: regex::Regex,
    /// the byte-level alphabet: byte -> char (GPT-2's bytes_to_unicode)
    byte_char: [char; 256],
    /// added tokens (special tokens) whose presence sends a text to the full pipeline
    added: Vec<String>,
    cache: RwLock<HashMap<String, Box<[u32]>>>,
}

/// GPT-2's byte -> char table: printable Latin-1 bytes map to themselves, the others to
/// U+0100 upwards in byte order. `Tok`'s tests check it against `ByteLevel::alphabet()`.
pub fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

impl FastByteLevel {
    /// The fast path for `tok`, or None when its pipeline is not plain byte-level BPE.
    pub fn for_tokenizer(tok: &Tokenizer) -> Option<FastByteLevel> {
        let json: serde_json::Value = serde_json::from_str(&tok.to_string(false).ok()?).ok()?;
        let pre = &json["pre_tokenizer"];
        let model = &json["model"];
        let plain = json["normalizer"].is_null()
            && pre["type"] == "ByteLevel"
            && pre["add_prefix_space"] == false
            && pre["use_regex"] != false
            && model["type"] == "BPE"
            && model["dropout"].is_null()
            && [&model["continuing_subword_prefix"], &model["end_of_word_suffix"]].iter().all(|v| v.is_null() || *v == "")
            && model["byte_fallback"] != true;
        if !plain || !matches!(tok.get_model(), ModelWrapper::BPE(_)) {
            return None;
        }
        let added = tok.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        Some(FastByteLevel { split: regex::Regex::new(PATTERN).ok()?, byte_char: bytes_to_unicode(), added, cache: RwLock::default() })
    }

    /// Ids of `text` as the full pipeline gives them, or None when the text holds an added token.
    pub fn encode(&self, tok: &Tokenizer, text: &str) -> Option<tokenizers::Result<Vec<u32>>> {
        if self.added.iter().any(|a| text.contains(a.as_str())) {
            return None;
        }
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut word = String::new();
        let mut at = 0;
        while at < text.len() {
            let m = self.split.find_at(text, at).expect("the pattern matches every character");
            let mut end = m.end();
            // `\s+(?!\S)`: a run of spaces followed by a non-space gives back its last character.
            let piece = &text[at..end];
            if end < text.len() && piece.chars().all(char::is_whitespace) && piece.chars().count() > 1 {
                if !text[end..].starts_with(char::is_whitespace) {
                    end -= piece.chars().next_back().map_or(0, char::len_utf8);
                }
            }
            word.clear();
            word.extend(text[at..end].bytes().map(|b| self.byte_char[b as usize]));
            // (The read guard is dropped before the write below: one statement each.)
            let hit = self.cache.read().expect("no panic holds the cache lock").get(&word).map(|c| ids.extend_from_slice(c)).is_some();
            if !hit {
                let piece_ids: Box<[u32]> = match tok.get_model().tokenize(&word) {
                    Ok(tokens) => tokens.iter().map(|t| t.id).collect(),
                    Err(e) => return Some(Err(e)),
                };
                ids.extend_from_slice(&piece_ids);
                let mut cache = self.cache.write().expect("no panic holds the cache lock");
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(word.clone(), piece_ids);
            }
            at = end;
        }
        Some(Ok(ids))
    }
}
