//! A prepared dataset: `manifest.json` (this module's `Manifest`), `tokenizer.json`, and per domain
//! and split a flat token file `<domain>/<split>.bin` (u16 or u32 little-endian; an end-of-text
//! token after every document) with its document index `<domain>/<split>.idx` (u64 start offsets,
//! then the end). Reading memory-maps the token files: resident memory does not grow with the
//! dataset, and a window of tokens is a copy of a few pages.

use crate::error::{io, DataError, Result};
use crate::source::{Fields, Skipped};
use crate::split::{Split, SplitFractions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "moe-trainer-dataset/1";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const DTYPE_U16: &str = "uint16";
pub const DTYPE_U32: &str = "uint32";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenizerEntry {
    pub file: String,
    /// byte | bpe | file
    pub kind: String,
    pub vocab_size: usize,
    pub eos_id: u32,
    /// the tokenizer.json it was loaded from (kind "file")
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One token file and its document index, with the checksums computed when it was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShardEntry {
    pub bin: String,
    pub idx: String,
    /// tokens, end-of-text separators included
    pub tokens: u64,
    pub documents: u64,
    /// UTF-8 bytes of the documents' text
    pub bytes: u64,
    pub sha256_bin: String,
    pub sha256_idx: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    pub name: String,
    pub train: ShardEntry,
    pub validation: ShardEntry,
    pub test: ShardEntry,
}

impl DomainEntry {
    pub fn shard(&self, split: Split) -> &ShardEntry {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    pub path: String,
    pub documents: u64,
    pub bytes: u64,
    pub skipped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub tokenizer: TokenizerEntry,
    /// uint16 when the vocabulary fits, else uint32
    pub dtype: String,
    pub splits: SplitFractions,
    pub fields: Fields,
    /// in the order the inputs first named them
    pub domains: Vec<DomainEntry>,
    pub sources: Vec<SourceEntry>,
    pub skipped: Skipped,
}

/// One memory-mapped token file (None when empty: a zero-length file cannot be mapped).
struct Shard {
    map: Option<memmap2::Mmap>,
    tokens: u64,
}

/// A dataset opened for reading.
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    wide: bool,
    /// per domain, per split
    shards: Vec<[Shard; 3]>,
}

impl Dataset {
    /// Opens `dir`: the manifest checked against its schema, every token and index file present
    /// with the size the manifest implies, the token files mapped. (Checksums: `verify`.)
    pub fn open(dir: &Path) -> Result<Dataset> {
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|e| io(&mpath, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| DataError::Format(format!("{}: {e}", mpath.display())))?;
        if manifest.format != FORMAT {
            return Err(DataError::Format(format!("{}: format \"{}\", expected \"{FORMAT}\"", mpath.display(), manifest.format)));
        }
        let wide = match manifest.dtype.as_str() {
            DTYPE_U16 => false,
            DTYPE_U32 => true,
            other => return Err(DataError::Format(format!("{}: dtype \"{other}\" is not uint16 or uint32", mpath.display()))),
        };
        let width = if wide { 4 } else { 2 };
        let mut shards = Vec::new();
        for d in &manifest.domains {
            let open = |e: &ShardEntry| -> Result<Shard> {
                for (rel, want) in [(&e.bin, e.tokens * width), (&e.idx, (e.documents + 1) * 8)] {
                    let path = dir.join(rel);
                    let len = std::fs::metadata(&path).map_err(|err| io(&path, err))?.len();
                    if len != want {
                        return Err(DataError::Checksum(format!("{}: {len} bytes, the manifest implies {want}", path.display())));
                    }
                }
                let path = dir.join(&e.bin);
                let map = if e.tokens == 0 {
                    None
                } else {
                    let f = std::fs::File::open(&path).map_err(|err| io(&path, err))?;
                    // SAFETY: the file is only read; a dataset is never modified after its rename.
                    Some(unsafe { memmap2::Mmap::map(&f) }.map_err(|err| io(&path, err))?)
                };
                Ok(Shard { map, tokens: e.tokens })
            };
            shards.push([open(&d.train)?, open(&d.validation)?, open(&d.test)?]);
        }
        Ok(Dataset { dir: dir.to_path_buf(), manifest, wide, shards })
    }

    /// The index of a domain by name.
    pub fn domain(&self, name: &str) -> Result<usize> {
        self.manifest.domains.iter().position(|d| d.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.manifest.domains.iter().map(|d| d.name.as_str()).collect();
            DataError::Config(format!("the dataset has no domain \"{name}\" (it has {})", names.join(", ")))
        })
    }

    pub fn tokens(&self, domain: usize, split: Split) -> u64 {
        self.shards[domain][split as usize].tokens
    }

    /// Copies tokens [at, at + out.len()) of a domain's split into `out`.
    pub fn read(&self, domain: usize, split: Split, at: u64, out: &mut [u32]) -> Result<()> {
        let shard = &self.shards[domain][split as usize];
        let end = at.checked_add(out.len() as u64).filter(|&e| e <= shard.tokens).ok_or_else(|| {
            DataError::Config(format!("tokens {at}..{} are outside {}'s {} split of {} tokens", at + out.len() as u64, self.manifest.domains[domain].name, split.name(), shard.tokens))
        })?;
        if out.is_empty() {
            return Ok(());
        }
        let map = shard.map.as_ref().expect("a non-empty shard is mapped");
        let width = if self.wide { 4 } else { 2 };
        let (start, stop) = ((at * width) as usize, (end * width) as usize);
        let bytes = &map[start..stop];
        if self.wide {
            out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        } else {
            out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = u16::from_le_bytes([b[0], b[1]]) as u32);
        }
        // A fault maps the page-cache folios around the window, often hundreds of kB: unmapped again
        // at once (the 2 MiB-aligned span that holds the window, the largest folio), the resident
        // memory stays that of the windows being read, not of every place ever sampled.
        #[cfg(unix)]
        {
            const SPAN: usize = 2 << 20;
            let (from, to) = (start / SPAN * SPAN, stop.div_ceil(SPAN).saturating_mul(SPAN).min(map.len()));
            // SAFETY: DONTNEED on a read-only shared file mapping only drops pages from this
            // process; a later read faults them in again from the file, unchanged.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
        }
        Ok(())
    }

    /// Recomputes every file's sha256 and compares it with the manifest (CORPUS_CHECKSUM naming
    /// the first file that differs).
    pub fn verify(&self) -> Result<()> {
        use sha2::Digest;
        for d in &self.manifest.domains {
            for e in [&d.train, &d.validation, &d.test] {
                for (rel, want) in [(&e.bin, &e.sha256_bin), (&e.idx, &e.sha256_idx)] {
                    let path = self.dir.join(rel);
                    let mut f = std::fs::File::open(&path).map_err(|err| io(&path, err))?;
                    let mut h = sha2::Sha256::new();
                    std::io::copy(&mut f, &mut h).map_err(|err| io(&path, err))?;
                    let got = format!("{:x}", h.finalize());
                    if &got != want {
                        return Err(DataError::Checksum(format!("{}: sha256 {got}, the manifest says {want}", path.display())));
                    }
                }
            }
        }
        Ok(())
    }
}
