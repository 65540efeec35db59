//! Tokenizers, all through Hugging Face `tokenizers`: the byte tokenizer (one token per byte, the
//! default), a byte-level BPE trained on the training split, or any `tokenizer.json` (GPT-2's,
//! Qwen's, ...). Ours are byte-level BPE models with the end-of-text token `<|endoftext|>` (id 0),
//! saved as a standard `tokenizer.json` that `transformers.AutoTokenizer` loads and encodes alike.
//! The end-of-text token separates documents in a dataset.

use crate::error::{io, DataError, Result};
use crate::fast::FastByteLevel;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

/// The end-of-text token of the tokenizers we make.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Names under which a loaded tokenizer's end-of-text token is looked for, in this order.
const EOS_NAMES: &[&str] = &[END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>"];

/// What to tokenise with.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSpec {
    /// One token per byte (256 tokens + end-of-text).
    Byte,
    /// A byte-level BPE of `vocab_size` tokens (end-of-text included) trained on the training split.
    Bpe { vocab_size: usize },
    /// A `tokenizer.json`, or a folder holding one.
    File { path: String },
}

pub struct Tok {
    inner: Tokenizer,
    /// the same ids faster, for plain byte-level BPE (see `fast`)
    fast: Option<FastByteLevel>,
    eos: u32,
    /// bytes of text behind each token id (end-of-text counts as the one separator byte; other
    /// special tokens as 0)
    byte_lens: Vec<u32>,
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Format(format!("{what}: {e}"))
}

/// A byte-level BPE trainer: `vocab_size` tokens = end-of-text, the 256 byte symbols, then merges.
fn byte_level(vocab_size: usize, texts: impl Iterator<Item = String> + Send) -> Result<Tok> {
    if vocab_size < 257 {
        return Err(DataError::Config(format!("a byte-level vocabulary needs at least 257 tokens (256 bytes + end-of-text), got {vocab_size}")));
    }
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    tok.train(&mut trainer, texts).map_err(|e| tk_err("training the BPE", e))?;
    Tok::new(tok, None)
}

impl Tok {
    /// One token per byte: end-of-text (0) and the 256 byte symbols, no merges.
    pub fn bytes() -> Result<Tok> {
        byte_level(257, std::iter::empty())
    }

    /// A byte-level BPE of `vocab_size` tokens learned from `texts` (pairs seen at least twice).
    pub fn train_bpe(vocab_size: usize, texts: impl Iterator<Item = String> + Send) -> Result<Tok> {
        byte_level(vocab_size, texts)
    }

    /// A `tokenizer.json` (or a folder holding one). `eos`: the name of its end-of-text token;
    /// absent, the first of <|endoftext|>, </s>, <|end_of_text|>, <eos>, <|im_end|> it has.
    pub fn from_file(path: &Path, eos: Option<&str>) -> Result<Tok> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
        let inner: Tokenizer = text.parse().map_err(|e| tk_err(&file.display().to_string(), e))?;
        Tok::new(inner, eos).map_err(|e| DataError::Format(format!("{}: {e}", file.display())))
    }

    /// From the text of a `tokenizer.json`.
    pub fn from_json(text: &str) -> Result<Tok> {
        Tok::new(text.parse().map_err(|e| tk_err("tokenizer.json", e))?, None)
    }

    fn new(inner: Tokenizer, eos: Option<&str>) -> Result<Tok> {
        let names: Vec<&str> = eos.map_or(EOS_NAMES.to_vec(), |e| vec![e]);
        let eos = names
            .iter()
            .find_map(|n| inner.token_to_id(n))
            .ok_or_else(|| DataError::Format(format!("the tokenizer has no end-of-text token (looked for {})", names.join(", "))))?;
        let byte_level = inner.get_decoder().is_some_and(|d| serde_json::to_string(d).is_ok_and(|s| s.contains("\"ByteLevel\"")));
        let specials: std::collections::HashSet<u32> =
            inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        let n = inner.get_vocab_size(true);
        let byte_lens = (0..n as u32)
            .map(|id| match inner.id_to_token(id) {
                _ if id == eos => 1,
                _ if specials.contains(&id) => 0,
                None => 0,
                // Byte-level symbols stand for one byte each.
                Some(t) if byte_level => t.chars().count() as u32,
                // Byte fallback (<0xAB>) is one byte; SentencePiece marks a space with U+2581.
                Some(t) if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') => 1,
                Some(t) => t.replace('\u{2581}', " ").len() as u32,
            })
            .collect();
        Ok(Tok { fast: FastByteLevel::for_tokenizer(&inner), inner, eos, byte_lens })
    }

    /// Token ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.fast.as_ref().and_then(|f| f.encode(&self.inner, text)) {
            return ids.map_err(|e| tk_err("encoding", e));
        }
        self.encode_pipeline(text)
    }

    /// Token ids through Hugging Face's whole pipeline (what `encode` must equal).
    pub fn encode_pipeline(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode_fast(text, false).map_err(|e| tk_err("encoding", e))?.get_ids().to_vec())
    }

    /// Whether `encode` takes the fast path (see `fast`).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size()) {
            return Err(DataError::Config(format!("token id {bad} is outside the vocabulary of {}", self.vocab_size())));
        }
        self.inner.decode(ids, false).map_err(|e| tk_err("decoding", e))
    }

    /// Tokens, special tokens included (the model's vocab_size).
    pub fn vocab_size(&self) -> usize {
        self.byte_lens.len()
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn eos_name(&self) -> String {
        self.inner.id_to_token(self.eos).unwrap_or_default()
    }

    /// Bytes of text behind each token id (see `Tok`).
    pub fn byte_lens(&self) -> &[u32] {
        &self.byte_lens
    }

    /// The standard `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| tk_err("serialising the tokenizer", e))
    }

    /// `tokenizer_config.json` for `transformers.AutoTokenizer` (a fast tokenizer from tokenizer.json
    /// with its end-of-text token).
    pub fn config_json(&self) -> String {
        let eos = self.eos_name();
        serde_json::to_string_pretty(&serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": eos,
            "pad_token": eos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
        }))
        .expect("a JSON literal serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_has_one_token_per_byte() {
        let t = Tok::bytes().unwrap();
        assert_eq!(t.vocab_size(), 257);
        assert_eq!(t.eos(), 0);
        let text = "héllo\n\t{}";
        let ids = t.encode(text).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(t.decode(&ids).unwrap(), text);
        assert!(ids.iter().all(|&i| t.byte_lens()[i as usize] == 1));
        let again = Tok::from_json(&t.to_json().unwrap()).unwrap();
        assert_eq!(again.encode(text).unwrap(), ids);
    }

    /// The fast path gives exactly the pipeline's ids: spaces before words, digits and punctuation,
    /// runs of spaces and newlines before text and at the end, contractions, non-Latin scripts,
    /// and a text holding the end-of-text token (which takes the pipeline).
    #[test]
    fn fast_path_equals_the_pipeline() {
        let texts: Vec<String> = (0..40).map(|i| format!("The  cat's {i} hats,\n\n  they're   [{i}]  ")).collect();
        let bpe = Tok::train_bpe(400, texts.clone().into_iter()).unwrap();
        let tricky = [
            "  leading and trailing  ", "a\n\nb\n \n c", "tab\tand\r\nCRLF", "x   \t  y", "don't we'll I'd 've 'S",
            "3.14159 + 2e10 = 1_000", "naïve café — «guillemets» 日本語のテキスト 한국어 Ελληνικά", "emoji 🙂🙂 and ZWJ 👩\u{200d}💻",
            "\u{00a0}nbsp\u{2003}em space\u{3000}ideographic", "end<|endoftext|>start", "", " ", "\n",
        ];
        for t in [Tok::bytes().unwrap(), bpe] {
            assert!(t.has_fast_path());
            for s in texts.iter().map(String::as_str).chain(tricky) {
                assert_eq!(t.encode(s).unwrap(), t.encode_pipeline(s).unwrap(), "{s:?}");
            }
        }
        let table = crate::fast::bytes_to_unicode();
        let alphabet = ByteLevel::alphabet();
        assert!(table.iter().all(|c| alphabet.contains(c)) && alphabet.len() == 256);
    }

    #[test]
    fn bpe_merges_frequent_pairs_and_round_trips() {
        let texts: Vec<String> = (0..50).map(|i| format!("the cat sat on the mat {i} the the")).collect();
        let t = Tok::train_bpe(300, texts.clone().into_iter()).unwrap();
        assert!(t.vocab_size() > 257 && t.vocab_size() <= 300);
        let ids = t.encode("the cat sat").unwrap();
        assert!(ids.len() < "the cat sat".len());
        assert_eq!(t.decode(&ids).unwrap(), "the cat sat");
        let bytes: u32 = ids.iter().map(|&i| t.byte_lens()[i as usize]).sum();
        assert_eq!(bytes as usize, "the cat sat".len());
        assert_eq!(Tok::train_bpe(100, texts.into_iter()).err().map(|e| e.code()), Some("INVALID_CONFIG"));
    }
}
