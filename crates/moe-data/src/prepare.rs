//! `prepare`: inputs -> a dataset, tokenised once. Three passes over the inputs, none holding the
//! corpus in memory:
//!   1. scan: every document's domain, id and explicit split; the final splits (hash + guarantees);
//!   2. (BPE only) train the tokenizer on the training split's texts;
//!   3. encode: batches of documents tokenised in parallel (rayon), written in input order to one
//!      token file per domain and split, with its document index and sha256.
//! Everything is written into `<out>.partial-<pid>-<n>/` and switched in by one rename when complete,
//! so an interrupted prepare never leaves a dataset that looks complete.

use crate::dataset::{DomainEntry, Manifest, ShardEntry, SourceEntry, TokenizerEntry, DTYPE_U16, DTYPE_U32, FORMAT};
use crate::error::{io, DataError, Result};
use crate::source::{for_each_doc, input_bytes, parse_input, Doc, Fields, Input, Skipped};
use crate::split::{ensure_held_out, hash_position, hashed, Assigned, Split, SplitFractions};
use crate::tokenizer::{Tok, TokenizerSpec};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// `PATH` or `NAME=PATH` (see `source`)
    pub inputs: Vec<String>,
    pub out: PathBuf,
    pub tokenizer: TokenizerSpec,
    pub fields: Fields,
    pub splits: SplitFractions,
    /// replace a dataset already at `out`
    pub force: bool,
    /// BPE: train on at most this many bytes of training text (in input order); None = all
    pub bpe_max_bytes: Option<u64>,
}

/// Where a running prepare is, readable from another thread. `phase`: 0 scan, 1 train, 2 encode,
/// 3 done; `done` and `total` are bytes of the current phase.
#[derive(Default)]
pub struct Progress {
    pub phase: AtomicU8,
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub cancel: AtomicBool,
}

impl Progress {
    fn start(&self, phase: u8, total: u64) {
        self.phase.store(phase, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(DataError::Cancelled("prepare was cancelled".into()));
        }
        Ok(())
    }
}

/// Texts per encoding batch: enough to keep every core busy, little enough to bound memory.
const BATCH_BYTES: usize = 8 << 20;

/// Per domain, in first-seen order: the documents' splits in input order.
struct Plan {
    domains: Vec<String>,
    /// per domain: (id, assigned split, text bytes) in input order
    docs: Vec<Vec<(String, Assigned, u64)>>,
    /// per domain: text bytes per split (train, validation, test)
    bytes: Vec<[u64; 3]>,
    skipped: Skipped,
    sources: Vec<SourceEntry>,
    warnings: Vec<String>,
}

fn scan(inputs: &[Input], o: &PrepareOptions, p: &Progress) -> Result<Plan> {
    let total: u64 = inputs.iter().map(input_bytes).sum::<Result<u64>>()?;
    p.start(0, total);
    let mut plan = Plan { domains: Vec::new(), docs: Vec::new(), bytes: Vec::new(), skipped: Skipped::default(), sources: Vec::new(), warnings: Vec::new() };
    let mut index: HashMap<String, usize> = HashMap::new();
    for input in inputs {
        let (mut docs, mut bytes) = (0u64, 0u64);
        let skipped_before = plan.skipped.binary + plan.skipped.non_utf8;
        let mut seen: std::collections::HashSet<(usize, String)> = std::collections::HashSet::new();
        for_each_doc(input, &o.fields, &mut plan.skipped, &|n| p.add(n), &mut |d: Doc| {
            p.check()?;
            let di = *index.entry(d.domain.clone()).or_insert_with(|| {
                plan.domains.push(d.domain.clone());
                plan.docs.push(Vec::new());
                plan.bytes.push([0; 3]);
                plan.domains.len() - 1
            });
            if !seen.insert((di, d.id.clone())) {
                return Err(DataError::Format(format!("{}: document id \"{}\" appears twice in domain \"{}\"", input.path.display(), d.id, d.domain)));
            }
            let u = hash_position(&d.domain, &d.id);
            let split = d.split.unwrap_or_else(|| hashed(&d.domain, &d.id, o.splits));
            plan.docs[di].push((d.id, Assigned { split, explicit: d.split.is_some(), u }, d.text.len() as u64));
            docs += 1;
            bytes += d.text.len() as u64;
            Ok(())
        })?;
        let skipped = plan.skipped.binary + plan.skipped.non_utf8 - skipped_before;
        plan.sources.push(SourceEntry { path: input.path.display().to_string(), documents: docs, bytes, skipped });
    }
    for (di, docs) in plan.docs.iter_mut().enumerate() {
        let mut assigned: Vec<Assigned> = docs.iter().map(|(_, a, _)| a.clone()).collect();
        ensure_held_out(&mut assigned);
        for ((_, a, n), b) in docs.iter_mut().zip(assigned) {
            *a = b;
            plan.bytes[di][a.split as usize] += *n;
        }
        let count = |s: Split| docs.iter().filter(|(_, a, _)| a.split == s).count();
        if count(Split::Train) == 0 {
            return Err(DataError::Empty(format!("domain \"{}\" has no training document", plan.domains[di])));
        }
        if count(Split::Validation) == 0 || count(Split::Test) == 0 {
            plan.warnings.push(format!(
                "domain \"{}\" has {} document(s): too few for a validation and a test document (3 needed); its held-out figures will be missing",
                plan.domains[di],
                docs.len()
            ));
        }
    }
    if plan.domains.is_empty() {
        return Err(DataError::Empty(format!("no documents in {}", o.inputs.join(", "))));
    }
    Ok(plan)
}

/// Calls `f` on every document of the inputs with its final split.
fn each_with_split(inputs: &[Input], o: &PrepareOptions, plan: &Plan, p: &Progress, f: &mut dyn FnMut(usize, Split, Doc) -> Result<()>) -> Result<()> {
    let index: HashMap<&str, usize> = plan.domains.iter().enumerate().map(|(i, d)| (d.as_str(), i)).collect();
    let mut next = vec![0usize; plan.domains.len()];
    let mut skipped = Skipped::default();
    for input in inputs {
        for_each_doc(input, &o.fields, &mut skipped, &|_| {}, &mut |d: Doc| {
            p.check()?;
            let Some(&di) = index.get(d.domain.as_str()) else {
                return Err(DataError::Format(format!("{}: the input changed while it was being prepared", input.path.display())));
            };
            let Some((id, a, _)) = plan.docs[di].get(next[di]) else {
                return Err(DataError::Format(format!("{}: the input changed while it was being prepared", input.path.display())));
            };
            if id != &d.id {
                return Err(DataError::Format(format!("{}: the input changed while it was being prepared", input.path.display())));
            }
            next[di] += 1;
            let split = a.split;
            p.add(d.text.len() as u64);
            f(di, split, d)
        })?;
    }
    Ok(())
}

fn train_tokenizer(inputs: &[Input], o: &PrepareOptions, plan: &Plan, p: &Progress) -> Result<Tok> {
    match &o.tokenizer {
        TokenizerSpec::Byte => Tok::bytes(),
        TokenizerSpec::File { path } => Tok::from_file(Path::new(path), None),
        TokenizerSpec::Bpe { vocab_size } => {
            let train_bytes: u64 = plan.bytes.iter().map(|b| b[0]).sum();
            let cap = o.bpe_max_bytes.unwrap_or(u64::MAX);
            p.start(1, train_bytes.min(cap));
            // The trainer pulls texts from a channel fed by this thread's read of the inputs.
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(256);
            std::thread::scope(|s| {
                let reader = s.spawn(move || {
                    let mut taken = 0u64;
                    let r = each_with_split(inputs, o, plan, &Progress::default(), &mut |_, split, d| {
                        if split == Split::Train && taken < cap {
                            taken += d.text.len() as u64;
                            p.add(d.text.len() as u64);
                            // A closed channel means the trainer stopped: nothing more to send.
                            let _ = tx.send(d.text);
                        }
                        p.check()
                    });
                    drop(tx);
                    r
                });
                let tok = Tok::train_bpe(*vocab_size, rx.into_iter());
                reader.join().expect("the reader thread does not panic")?;
                tok
            })
        }
    }
}

/// One token file being written: tokens (u16 or u32 little-endian, end-of-text after each
/// document), the document index (u64 start offsets, then the end), and their hashes.
struct ShardWriter {
    bin: BufWriter<std::fs::File>,
    idx: BufWriter<std::fs::File>,
    bin_sha: Sha256,
    idx_sha: Sha256,
    wide: bool,
    tokens: u64,
    documents: u64,
    bytes: u64,
    rel: (String, String),
}

impl ShardWriter {
    fn create(dir: &Path, domain_dir: &str, split: Split, wide: bool) -> Result<Self> {
        let rel = (format!("{domain_dir}/{}.bin", split.name()), format!("{domain_dir}/{}.idx", split.name()));
        let open = |r: &str| -> Result<BufWriter<std::fs::File>> {
            let path = dir.join(r);
            Ok(BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).map_err(|e| io(&path, e))?))
        };
        Ok(ShardWriter { bin: open(&rel.0)?, idx: open(&rel.1)?, bin_sha: Sha256::new(), idx_sha: Sha256::new(), wide, tokens: 0, documents: 0, bytes: 0, rel })
    }

    fn put(w: &mut BufWriter<std::fs::File>, sha: &mut Sha256, bytes: &[u8]) -> std::io::Result<()> {
        sha.update(bytes);
        w.write_all(bytes)
    }

    fn document(&mut self, ids: &[u32], eos: u32, text_bytes: usize) -> std::io::Result<()> {
        Self::put(&mut self.idx, &mut self.idx_sha, &self.tokens.to_le_bytes())?;
        let mut buf = Vec::with_capacity((ids.len() + 1) * 4);
        for &t in ids.iter().chain(std::iter::once(&eos)) {
            if self.wide {
                buf.extend_from_slice(&t.to_le_bytes());
            } else {
                buf.extend_from_slice(&(t as u16).to_le_bytes());
            }
        }
        Self::put(&mut self.bin, &mut self.bin_sha, &buf)?;
        self.tokens += ids.len() as u64 + 1;
        self.documents += 1;
        self.bytes += text_bytes as u64;
        Ok(())
    }

    fn finish(mut self, dir: &Path) -> Result<ShardEntry> {
        let end = self.tokens.to_le_bytes();
        let (bin_path, idx_path) = (dir.join(&self.rel.0), dir.join(&self.rel.1));
        Self::put(&mut self.idx, &mut self.idx_sha, &end).map_err(|e| io(&idx_path, e))?;
        for (w, path) in [(self.bin, &bin_path), (self.idx, &idx_path)] {
            let f = w.into_inner().map_err(|e| io(path, e.into_error()))?;
            f.sync_all().map_err(|e| io(path, e))?;
        }
        Ok(ShardEntry {
            bin: self.rel.0,
            idx: self.rel.1,
            tokens: self.tokens,
            documents: self.documents,
            bytes: self.bytes,
            sha256_bin: format!("{:x}", self.bin_sha.finalize()),
            sha256_idx: format!("{:x}", self.idx_sha.finalize()),
        })
    }
}

/// A folder name for a domain: its name with anything outside [A-Za-z0-9._-] replaced, and the
/// domain's index appended when that changed it (two domains never share a folder).
fn domain_dir(name: &str, i: usize) -> String {
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if safe == name && !name.starts_with('.') && !name.is_empty() { safe } else { format!("{safe}-{i}") }
}

fn encode(inputs: &[Input], o: &PrepareOptions, plan: &Plan, tok: &Tok, dir: &Path, p: &Progress) -> Result<Vec<DomainEntry>> {
    let total: u64 = plan.bytes.iter().map(|b| b.iter().sum::<u64>()).sum();
    p.start(2, total);
    let wide = tok.vocab_size() > 1 << 16;
    let mut writers: Vec<[ShardWriter; 3]> = Vec::new();
    for (i, d) in plan.domains.iter().enumerate() {
        let name = domain_dir(d, i);
        std::fs::create_dir_all(dir.join(&name)).map_err(|e| io(&dir.join(&name), e))?;
        writers.push([ShardWriter::create(dir, &name, Split::Train, wide)?, ShardWriter::create(dir, &name, Split::Validation, wide)?, ShardWriter::create(dir, &name, Split::Test, wide)?]);
    }
    let mut batch: Vec<(usize, Split, String)> = Vec::new();
    let mut batch_bytes = 0usize;
    let eos = tok.eos();
    let flush = |batch: &mut Vec<(usize, Split, String)>, writers: &mut Vec<[ShardWriter; 3]>| -> Result<()> {
        let encoded: Vec<Result<Vec<u32>>> = batch.par_iter().map(|(_, _, text)| tok.encode(text)).collect();
        for ((di, split, text), ids) in batch.drain(..).zip(encoded) {
            let w = &mut writers[di][split as usize];
            let path = dir.join(&w.rel.0);
            w.document(&ids?, eos, text.len()).map_err(|e| io(&path, e))?;
        }
        Ok(())
    };
    each_with_split(inputs, o, plan, p, &mut |di, split, d| {
        batch_bytes += d.text.len();
        batch.push((di, split, d.text));
        if batch_bytes >= BATCH_BYTES {
            flush(&mut batch, &mut writers)?;
            batch_bytes = 0;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut writers)?;
    let mut out = Vec::new();
    for (name, [train, validation, test]) in plan.domains.iter().zip(writers) {
        out.push(DomainEntry { name: name.clone(), train: train.finish(dir)?, validation: validation.finish(dir)?, test: test.finish(dir)? });
    }
    Ok(out)
}

/// The summary `prepare` returns: the manifest written, and warnings for the user.
pub struct Prepared {
    pub manifest: Manifest,
    pub warnings: Vec<String>,
}

/// Removes `<out>.partial-<pid>-<n>` folders left by prepares that are no longer running (Linux: the
/// pid has no /proc entry), so that killed runs do not accumulate half-written datasets.
fn clean_stale_partials(out: &Path) {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else { return };
    let prefix = format!("{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }) else { return };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = n.strip_prefix(&prefix).and_then(|p| p.split('-').next()?.parse::<u32>().ok()) {
            if Path::new("/proc").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Prepares a dataset (see the module doc). Fails with DATASET_EXISTS when `out` holds one and
/// `force` is off; on any failure nothing is left at `out` that was not there before.
pub fn prepare(o: &PrepareOptions, p: &Progress) -> Result<Prepared> {
    o.splits.validate()?;
    if o.inputs.is_empty() {
        return Err(DataError::Config("prepare needs at least one input".into()));
    }
    if o.out.exists() && !o.force {
        return Err(DataError::Exists(format!("{} already exists; pass force (--force) to replace it", o.out.display())));
    }
    let inputs: Vec<Input> = o.inputs.iter().map(|s| parse_input(s)).collect::<Result<_>>()?;
    clean_stale_partials(&o.out);
    let plan = scan(&inputs, o, p)?;
    let tok = train_tokenizer(&inputs, o, &plan, p)?;
    // Unique per call: two prepares of one `out` in one process must not share a folder.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let partial = PathBuf::from(format!("{}.partial-{}-{}", o.out.display(), std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
    let result = (|| {
        let domains = encode(&inputs, o, &plan, &tok, &partial, p)?;
        let write = |name: &str, text: &str| -> Result<()> {
            let path = partial.join(name);
            std::fs::write(&path, text).map_err(|e| io(&path, e))
        };
        write("tokenizer.json", &tok.to_json()?)?;
        write("tokenizer_config.json", &tok.config_json())?;
        let manifest = Manifest {
            format: FORMAT.into(),
            tokenizer: TokenizerEntry {
                file: "tokenizer.json".into(),
                kind: match &o.tokenizer {
                    TokenizerSpec::Byte => "byte".into(),
                    TokenizerSpec::Bpe { .. } => "bpe".into(),
                    TokenizerSpec::File { .. } => "file".into(),
                },
                vocab_size: tok.vocab_size(),
                eos_id: tok.eos(),
                source: match &o.tokenizer {
                    TokenizerSpec::File { path } => Some(path.clone()),
                    _ => None,
                },
            },
            dtype: if tok.vocab_size() > 1 << 16 { DTYPE_U32.into() } else { DTYPE_U16.into() },
            splits: o.splits,
            fields: o.fields.clone(),
            domains,
            sources: plan.sources.clone(),
            skipped: plan.skipped.clone(),
        };
        write("manifest.json", &serde_json::to_string_pretty(&manifest).expect("the manifest serialises"))?;
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    // Switch the complete dataset in: one rename (after moving an old one aside when forced). A
    // dataset another prepare put there meanwhile is kept unless forced: it is as complete as ours.
    if o.out.exists() && !o.force {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(DataError::Exists(format!("{} was prepared by another process meanwhile", o.out.display())));
    }
    let old = PathBuf::from(format!("{}.old", partial.display()));
    if o.out.exists() {
        std::fs::rename(&o.out, &old).map_err(|e| io(&o.out, e))?;
    }
    if let Err(e) = std::fs::rename(&partial, &o.out) {
        let _ = std::fs::rename(&old, &o.out);
        let _ = std::fs::remove_dir_all(&partial);
        return Err(io(&o.out, e));
    }
    let _ = std::fs::remove_dir_all(&old);
    p.phase.store(3, Ordering::Relaxed);
    let mut warnings = plan.warnings;
    if plan.skipped.binary + plan.skipped.non_utf8 > 0 {
        warnings.push(format!(
            "skipped {} binary and {} non-UTF-8 file(s), e.g. {}",
            plan.skipped.binary,
            plan.skipped.non_utf8,
            plan.skipped.examples.join(", ")
        ));
    }
    Ok(Prepared { manifest, warnings })
}
