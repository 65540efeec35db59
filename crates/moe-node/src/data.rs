//! Datasets and tokenizers (moe-data): `Tokenizer`, `DatasetPrep` (a prepare job with progress) and
//! `Dataset` (a prepared dataset, memory-mapped).

use crate::args::{self, absent};
use crate::{guard, js_error};
use moe_data::dataset::Dataset as CoreDataset;
use moe_data::prepare::{prepare, PrepareOptions as CoreOptions, Progress};
use moe_data::source::Fields;
use moe_data::{DataError, Split, SplitFractions, Tok, TokenizerSpec};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A Hugging Face tokenizer (`tokenizer.json`).
#[napi(js_name = "Tokenizer")]
pub struct JsTokenizer {
    inner: Arc<Tok>,
}

#[napi]
impl JsTokenizer {
    /// One token per byte: `<|endoftext|>` (id 0) and the 256 byte symbols.
    #[napi(factory)]
    pub fn bytes(env: Env) -> Result<Self> {
        guard(Tok::bytes).map(|t| JsTokenizer { inner: Arc::new(t) }).map_err(|e| js_error(&env, e))
    }

    /// A `tokenizer.json`, or a folder holding one (GPT-2's, Qwen's, a dataset's, a checkpoint's).
    /// `eosToken`: its end-of-text token; absent, the first of <|endoftext|>, </s>,
    /// <|end_of_text|>, <eos>, <|im_end|> it has.
    #[napi(factory, ts_args_type = "path: string, eosToken?: string")]
    pub fn from_file(env: Env, path: Unknown, eos_token: Option<Unknown>) -> Result<Self> {
        let path = args::string("path", path).map_err(|e| js_error(&env, e))?;
        let eos = if absent(&eos_token) { None } else { Some(args::string("eosToken", eos_token.unwrap()).map_err(|e| js_error(&env, e))?) };
        guard(|| Tok::from_file(Path::new(&path), eos.as_deref())).map(|t| JsTokenizer { inner: Arc::new(t) }).map_err(|e| js_error(&env, e))
    }

    /// Token ids of `text` (no special tokens added).
    #[napi(ts_args_type = "text: string")]
    pub fn encode(&self, env: Env, text: Unknown) -> Result<Uint32Array> {
        let text = args::string("text", text).map_err(|e| js_error(&env, e))?;
        guard(|| self.inner.encode(&text)).map(Uint32Array::new).map_err(|e| js_error(&env, e))
    }

    #[napi(ts_args_type = "ids: Uint32Array")]
    pub fn decode(&self, env: Env, ids: Unknown) -> Result<String> {
        let ids = args::u32s("ids", ids).map_err(|e| js_error(&env, e))?;
        guard(|| self.inner.decode(&ids)).map_err(|e| js_error(&env, e))
    }

    /// Tokens, special tokens included: the model's `vocab_size`.
    #[napi(getter)]
    pub fn vocab_size(&self) -> u32 {
        self.inner.vocab_size() as u32
    }

    /// The end-of-text token, which separates documents.
    #[napi(getter)]
    pub fn eos_id(&self) -> u32 {
        self.inner.eos()
    }

    /// (V) bytes of text behind each token (end-of-text counts 1, other special tokens 0): what
    /// bits per byte divide by.
    #[napi]
    pub fn byte_lengths(&self) -> Uint32Array {
        Uint32Array::new(self.inner.byte_lens().to_vec())
    }

    /// The standard `tokenizer.json` text.
    #[napi]
    pub fn to_json(&self, env: Env) -> Result<String> {
        guard(|| self.inner.to_json()).map_err(|e| js_error(&env, e))
    }

    /// `tokenizer_config.json` for transformers' AutoTokenizer.
    #[napi]
    pub fn config_json(&self) -> String {
        self.inner.config_json()
    }
}

/// Options of a prepare job (see `moe data prepare`).
#[napi(object, object_from_js = false)]
pub struct PrepareOptions {
    /// `PATH` or `DOMAIN=PATH`: folders of domain folders, .jsonl / .jsonl.gz / .parquet files,
    /// corpus folders (MANIFEST.json)
    pub inputs: Vec<String>,
    /// the dataset folder to write
    pub out: String,
    /// "byte" (default), "bpe" (with vocabSize), or a tokenizer.json path
    pub tokenizer: Option<String>,
    pub vocab_size: Option<u32>,
    pub text_field: Option<String>,
    pub domain_field: Option<String>,
    pub id_field: Option<String>,
    pub split_field: Option<String>,
    /// fraction of documents held out for validation (default 0.05)
    pub validation: Option<f64>,
    /// fraction held out for test (default 0.05)
    pub test: Option<f64>,
    /// replace a dataset already at `out`
    pub force: Option<bool>,
    /// BPE: train on at most this many megabytes of training text
    pub bpe_sample_mb: Option<f64>,
}

/// The options object, every field checked (unknown keys refused).
fn prepare_options(options: Option<Unknown>) -> moe_core::Result<PrepareOptions> {
    use moe_core::MoeError;
    if absent(&options) {
        return Err(MoeError::InvalidConfig("options must be an object with inputs and out".into()));
    }
    let keys = ["inputs", "out", "tokenizer", "vocabSize", "textField", "domainField", "idField", "splitField", "validation", "test", "force", "bpeSampleMb"];
    let o = args::options("options", options, &keys)?;
    let inputs = match o.field("inputs", args::json)? {
        Some(serde_json::Value::Array(xs)) if xs.iter().all(|x| x.is_string()) => xs.into_iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => return Err(MoeError::InvalidConfig("options.inputs must be an array of strings".into())),
    };
    let out = o.field("out", args::string)?.ok_or_else(|| MoeError::InvalidConfig("options.out is required".into()))?;
    let s = |k: &str| o.field(k, args::string);
    Ok(PrepareOptions {
        inputs,
        out,
        tokenizer: s("tokenizer")?,
        vocab_size: o.field("vocabSize", |w, v| args::count(w, v, 1))?.map(|n| n as u32),
        text_field: s("textField")?,
        domain_field: s("domainField")?,
        id_field: s("idField")?,
        split_field: s("splitField")?,
        validation: o.field("validation", args::number)?,
        test: o.field("test", args::number)?,
        force: o.field("force", args::boolean)?,
        bpe_sample_mb: o.field("bpeSampleMb", args::number)?,
    })
}

fn core_options(o: PrepareOptions) -> moe_data::Result<CoreOptions> {
    let tokenizer = match (o.tokenizer.as_deref().unwrap_or("byte"), o.vocab_size) {
        ("byte", None) => TokenizerSpec::Byte,
        ("bpe", Some(n)) => TokenizerSpec::Bpe { vocab_size: n as usize },
        ("bpe", None) => return Err(DataError::Config("tokenizer \"bpe\" needs vocabSize".into())),
        (t, Some(_)) if t != "bpe" => return Err(DataError::Config(format!("vocabSize goes with tokenizer \"bpe\", not \"{t}\""))),
        (path, _) => TokenizerSpec::File { path: path.to_string() },
    };
    let d = Fields::default();
    let bpe_max_bytes = match o.bpe_sample_mb {
        Some(mb) if !(mb.is_finite() && mb > 0.0) => return Err(DataError::Config(format!("bpeSampleMb must be > 0, got {mb}"))),
        Some(mb) => Some((mb * 1e6) as u64),
        None => None,
    };
    Ok(CoreOptions {
        inputs: o.inputs,
        out: PathBuf::from(o.out),
        tokenizer,
        fields: Fields {
            text: o.text_field.unwrap_or(d.text),
            domain: o.domain_field.unwrap_or(d.domain),
            id: o.id_field.unwrap_or(d.id),
            split: o.split_field.unwrap_or(d.split),
        },
        splits: SplitFractions { validation: o.validation.unwrap_or(0.05), test: o.test.unwrap_or(0.05) },
        force: o.force.unwrap_or(false),
        bpe_max_bytes,
    })
}

/// Where a prepare job is: phase "scan" | "train" | "encode" | "done", bytes done and total.
#[napi(object)]
pub struct PrepareProgress {
    pub phase: String,
    pub done: f64,
    pub total: f64,
}

/// What a prepare job resolves to.
#[napi(object)]
pub struct PrepareResult {
    #[napi(ts_type = "DatasetManifest")]
    pub manifest: serde_json::Value,
    /// one line each: small domains, skipped files
    pub warnings: Vec<String>,
}

pub struct PrepareTask {
    opts: Option<CoreOptions>,
    progress: Arc<Progress>,
}

impl Task for PrepareTask {
    type Output = moe_data::Result<moe_data::Prepared>;
    type JsValue = PrepareResult;
    fn compute(&mut self) -> Result<Self::Output> {
        let opts = self.opts.take().expect("a prepare task runs once");
        // Every parallel loop of the job (ours and the tokenizer trainer's) on the addon's own pool.
        Ok(guard(|| moe_core::cpu::pool().install(|| prepare(&opts, &self.progress))))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<PrepareResult> {
        let p = out.map_err(|e| js_error(&env, e))?;
        Ok(PrepareResult { manifest: serde_json::to_value(&p.manifest).expect("the manifest serialises"), warnings: p.warnings })
    }
}

/// A prepare job: `run()` tokenises the inputs into a dataset folder; `progress` can be read while
/// it runs; `cancel()` stops it, leaving no dataset behind.
#[napi]
pub struct DatasetPrep {
    opts: std::sync::Mutex<Option<CoreOptions>>,
    progress: Arc<Progress>,
}

#[napi]
impl DatasetPrep {
    #[napi(constructor, ts_args_type = "options: PrepareOptions")]
    pub fn new(env: Env, options: Option<Unknown>) -> Result<Self> {
        let options = prepare_options(options).map_err(|e| js_error(&env, e))?;
        let opts = guard(|| core_options(options)).map_err(|e| js_error(&env, e))?;
        Ok(DatasetPrep { opts: std::sync::Mutex::new(Some(opts)), progress: Arc::default() })
    }

    /// Resolves to the manifest written and warnings. A job runs once.
    #[napi(ts_return_type = "Promise<PrepareResult>")]
    pub fn run(&self, env: Env) -> Result<AsyncTask<PrepareTask>> {
        let opts = self.opts.lock().ok().and_then(|mut o| o.take()).ok_or_else(|| js_error(&env, DataError::Config("this prepare job has already run".into())))?;
        Ok(AsyncTask::new(PrepareTask { opts: Some(opts), progress: self.progress.clone() }))
    }

    #[napi(getter)]
    pub fn progress(&self) -> PrepareProgress {
        let p = &self.progress;
        let phase = ["scan", "train", "encode", "done"][p.phase.load(Ordering::Relaxed).min(3) as usize];
        PrepareProgress { phase: phase.into(), done: p.done.load(Ordering::Relaxed) as f64, total: p.total.load(Ordering::Relaxed) as f64 }
    }

    #[napi]
    pub fn cancel(&self) {
        self.progress.cancel.store(true, Ordering::Relaxed);
    }
}

/// Type-only mirror of `moe_data::Manifest` (manifest.json of a dataset).
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct DatasetManifest {
    pub format: String,
    #[napi(ts_type = "{ file: string; kind: 'byte' | 'bpe' | 'file'; vocabSize: number; eosId: number; source?: string }")]
    pub tokenizer: serde_json::Value,
    #[napi(ts_type = "'uint16' | 'uint32'")]
    pub dtype: String,
    #[napi(ts_type = "{ validation: number; test: number }")]
    pub splits: serde_json::Value,
    #[napi(ts_type = "{ text: string; domain: string; id: string; split: string }")]
    pub fields: serde_json::Value,
    #[napi(ts_type = "Array<{ name: string } & Record<'train' | 'validation' | 'test', { bin: string; idx: string; tokens: number; documents: number; bytes: number; sha256Bin: string; sha256Idx: string }>>")]
    pub domains: serde_json::Value,
    #[napi(ts_type = "Array<{ path: string; documents: number; bytes: number; skipped: number }>")]
    pub sources: serde_json::Value,
    #[napi(ts_type = "{ binary: number; nonUtf8: number; examples: string[] }")]
    pub skipped: serde_json::Value,
}

fn split_of(env: &Env, s: &str) -> Result<Split> {
    Split::parse(s).ok_or_else(|| js_error(env, DataError::Config(format!("split must be train, validation or test, got \"{s}\""))))
}

/// A prepared dataset, its token files memory-mapped.
#[napi(js_name = "Dataset")]
pub struct JsDataset {
    inner: Arc<CoreDataset>,
}

#[napi]
impl JsDataset {
    /// Opens a dataset folder (manifest schema and file sizes checked; see `verify`).
    #[napi(factory, ts_args_type = "dir: string")]
    pub fn open(env: Env, dir: Unknown) -> Result<Self> {
        let dir = args::string("dir", dir).map_err(|e| js_error(&env, e))?;
        guard(|| CoreDataset::open(Path::new(&dir))).map(|d| JsDataset { inner: Arc::new(d) }).map_err(|e| js_error(&env, e))
    }

    #[napi(getter, ts_return_type = "DatasetManifest")]
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::to_value(&self.inner.manifest).expect("the manifest serialises")
    }

    /// Tokens of a domain's split.
    #[napi(ts_args_type = "domain: string, split: string")]
    pub fn tokens(&self, env: Env, domain: Unknown, split: Unknown) -> Result<f64> {
        let (domain, split) = (args::string("domain", domain), args::string("split", split));
        let (domain, split) = (domain.map_err(|e| js_error(&env, e))?, split.map_err(|e| js_error(&env, e))?);
        let split = split_of(&env, &split)?;
        let d = guard(|| self.inner.domain(&domain)).map_err(|e| js_error(&env, e))?;
        Ok(self.inner.tokens(d, split) as f64)
    }

    /// (starts.length, n) tokens: the window of n tokens at each start of a domain's split.
    #[napi(ts_args_type = "domain: string, split: string, starts: Float64Array, n: number")]
    pub fn gather(&self, env: Env, domain: Unknown, split: Unknown, starts: Unknown, n: Unknown) -> Result<Uint32Array> {
        let checked = (|| Ok((args::string("domain", domain)?, args::string("split", split)?, args::f64s("starts", starts)?, args::count("n", n, 0)?)))();
        let (domain, split, starts, n) = checked.map_err(|e: moe_core::MoeError| js_error(&env, e))?;
        let split = split_of(&env, &split)?;
        let len = starts.len().checked_mul(n).filter(|&l| (l as u128) * 4 <= moe_core::memory::budget());
        let Some(len) = len else {
            return Err(js_error(&env, moe_core::MoeError::OutOfMemory(format!("gather: {} windows of {n} tokens do not fit in memory", starts.len()))));
        };
        guard(|| {
            let d = self.inner.domain(&domain)?;
            let mut out: Vec<u32> = Vec::new();
            out.try_reserve_exact(len).map_err(|_| DataError::Internal(format!("gather: {len} tokens could not be allocated")))?;
            out.resize(len, 0);
            for (w, &at) in out.chunks_mut(n.max(1)).zip(starts.iter()) {
                if !(at >= 0.0 && at.fract() == 0.0) {
                    return Err(DataError::Config(format!("window start {at} is not a non-negative integer")));
                }
                self.inner.read(d, split, at as u64, &mut w[..n])?;
            }
            Ok(out)
        })
        .map(Uint32Array::new)
        .map_err(|e| js_error(&env, e))
    }

    /// Recomputes every file's sha256 against the manifest (CORPUS_CHECKSUM naming a file that differs).
    #[napi]
    pub fn verify(&self, env: Env) -> Result<()> {
        guard(|| self.inner.verify()).map_err(|e| js_error(&env, e))
    }
}
