//! moe-data: the datasets moe-trainer trains on. Users' documents — folders of text files per
//! domain, JSONL / JSONL.gz rows, Parquet, or the embedded corpus — are tokenised once with
//! Hugging Face `tokenizers` (`tokenizer`) into per-domain, per-split token files (`prepare`), which
//! training reads memory-mapped (`dataset`). Knows nothing about models or balance scopes.

pub mod dataset;
pub mod error;
mod fast;
pub mod prepare;
pub mod source;
pub mod split;
pub mod tokenizer;

pub use dataset::{Dataset, Manifest};
pub use error::{DataError, Result};
pub use prepare::{prepare, PrepareOptions, Prepared, Progress};
pub use split::{Split, SplitFractions};
pub use tokenizer::{Tok, TokenizerSpec};
