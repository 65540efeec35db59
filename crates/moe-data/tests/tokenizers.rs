//! Our tokenizers against Hugging Face transformers (no Python here: the fixture was written by
//! scripts/make_tokenizer_fixture.py with the pinned transformers): the tokenizer.json files we write
//! (byte, and a BPE trained on the embedded corpus slice) load in `AutoTokenizer` and encode exactly
//! as it does; GPT-2's tokenizer.json and one in Qwen2's pipeline layout load here and encode as
//! transformers does; and what we write today is byte for byte the fixture.

use moe_data::prepare::{prepare, PrepareOptions, Progress};
use moe_data::source::Fields;
use moe_data::{SplitFractions, Tok, TokenizerSpec};
use std::io::Read;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

/// A fixture's tokenizer.json text (gunzipped when stored as .gz).
fn tokenizer_json(name: &str) -> String {
    let dir = fixtures().join(name);
    let plain = dir.join("tokenizer.json");
    if plain.exists() {
        return std::fs::read_to_string(plain).unwrap();
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join("tokenizer.json.gz")).unwrap()).read_to_string(&mut text).unwrap();
    text
}

#[test]
fn every_tokenizer_encodes_as_transformers_does() {
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
    let texts: Vec<&str> = expected["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for (name, fast) in [("byte", true), ("bpe", true), ("gpt2", true), ("qwen2", false)] {
        let tok = Tok::from_json(&tokenizer_json(name)).unwrap();
        assert_eq!(tok.has_fast_path(), fast, "{name}");
        for (i, text) in texts.iter().enumerate() {
            let want: Vec<u32> = expected["ids"][name][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text).unwrap(), want, "{name}: {text:?}");
            assert_eq!(tok.encode_pipeline(text).unwrap(), want, "{name} (pipeline): {text:?}");
            assert_eq!(tok.decode(&want).unwrap(), *text, "{name}: decode");
        }
        eprintln!("{name}: {} texts encode as transformers {} does", texts.len(), expected["versions"]["transformers"]);
    }
}

#[test]
fn what_we_write_is_the_fixture() {
    assert_eq!(Tok::bytes().unwrap().to_json().unwrap(), tokenizer_json("byte"), "the byte tokenizer changed: regenerate the fixture");
    // The BPE of the fixture: 1,024 tokens trained on the embedded slice's training documents.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let o = PrepareOptions {
        inputs: vec![data.display().to_string()],
        out: out.clone(),
        tokenizer: TokenizerSpec::Bpe { vocab_size: 1024 },
        fields: Fields::default(),
        splits: SplitFractions::default(),
        force: false,
        bpe_max_bytes: None,
    };
    prepare(&o, &Progress::default()).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap(), tokenizer_json("bpe"), "BPE training changed: regenerate the fixture");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(config["eos_token"], "<|endoftext|>");
}

/// The fast path and Hugging Face's pipeline agree on every document of the embedded slice.
#[test]
fn fast_path_equals_the_pipeline_on_the_corpus() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let docs: Vec<String> = ["en", "es", "tex", "legal", "code"]
        .iter()
        .flat_map(|d| std::fs::read_to_string(data.join(format!("{d}.jsonl"))).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    for name in ["byte", "bpe", "gpt2"] {
        let tok = Tok::from_json(&tokenizer_json(name)).unwrap();
        for d in &docs {
            assert_eq!(tok.encode(d).unwrap(), tok.encode_pipeline(d).unwrap(), "{name}: a document of {} bytes", d.len());
        }
    }
    eprintln!("{} documents: fast path == pipeline for byte, bpe and gpt2", docs.len());
}
