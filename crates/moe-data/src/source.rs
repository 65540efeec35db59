//! The inputs of `moe data prepare`, each read as a stream of documents (domain, id, text, split):
//!
//! - a folder whose sub-folders are domains, text files inside (recursively); a first-level
//!   `train` / `validation` (`valid`, `val`, `dev`) / `test` folder under a domain fixes the split;
//!   the id is the file's path inside its domain;
//! - JSONL or JSONL.gz files: one JSON object per line with a text field, an optional domain field
//!   (else the file's name), optional id and split fields;
//! - Parquet files with the same columns;
//! - a corpus folder (per-domain JSONL + MANIFEST.json, the embedded corpus): sha256 checked, the
//!   manifest's split membership kept.
//!
//! `NAME=PATH` gives every document of an input the domain NAME. Files are read in sorted order,
//! so a dataset is a pure function of its inputs. Binary and non-UTF-8 text files are skipped and
//! counted; malformed rows fail with the file, the line and the field.

use crate::error::{io, DataError, Result};
use crate::split::Split;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    Folder,
    Jsonl,
    Parquet,
    Corpus,
}

/// One input: a path, its kind, and the domain given to all its documents (`NAME=PATH`).
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub kind: InputKind,
    pub domain: Option<String>,
}

/// Names of the fields (JSONL keys, Parquet columns) documents are read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    pub text: String,
    pub domain: String,
    pub id: String,
    pub split: String,
}

impl Default for Fields {
    fn default() -> Self {
        Fields { text: "text".into(), domain: "domain".into(), id: "id".into(), split: "split".into() }
    }
}

/// One document as read.
pub struct Doc {
    pub domain: String,
    pub id: String,
    pub text: String,
    /// fixed by the input (folder, field, manifest); None = decided by the hash
    pub split: Option<Split>,
}

/// Files skipped because they are not UTF-8 text.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Skipped {
    pub binary: u64,
    pub non_utf8: u64,
    /// the first few skipped files
    pub examples: Vec<String>,
}

impl Skipped {
    fn add(&mut self, path: &Path, binary: bool) {
        if binary {
            self.binary += 1;
        } else {
            self.non_utf8 += 1;
        }
        if self.examples.len() < 5 {
            self.examples.push(path.display().to_string());
        }
    }
}

pub const MANIFEST: &str = "MANIFEST.json";

/// Parses `PATH` or `NAME=PATH` and finds the input's kind. Fails with CORPUS_MISSING for a path
/// that does not exist and INVALID_CONFIG for a file of another kind.
pub fn parse_input(spec: &str) -> Result<Input> {
    let (domain, path) = match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains(['/', '\\']) => (Some(name.to_string()), PathBuf::from(path)),
        _ => (None, PathBuf::from(spec)),
    };
    let meta = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let kind = if meta.is_dir() {
        if path.join(MANIFEST).exists() { InputKind::Corpus } else { InputKind::Folder }
    } else if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".ndjson") {
        InputKind::Jsonl
    } else if name.ends_with(".parquet") {
        InputKind::Parquet
    } else {
        return Err(DataError::Config(format!(
            "{}: not an input (a folder of domain folders, a corpus folder with {MANIFEST}, .jsonl, .jsonl.gz or .parquet)",
            path.display()
        )));
    };
    Ok(Input { path, kind, domain })
}

/// The name of a file without its data extensions (`legal.jsonl.gz` -> `legal`).
fn stem(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let mut s = name.as_str();
    for ext in [".gz", ".jsonl", ".ndjson", ".parquet"] {
        s = s.strip_suffix(ext).unwrap_or(s);
    }
    s.to_string()
}

/// Every file under `dir`, recursively, in sorted order; hidden entries left out.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for p in entries {
        if p.is_dir() {
            out.extend(files_under(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Reads every document of `input` into `f`, in order. `bytes_read` is advanced by the input
/// bytes consumed (for progress).
pub fn for_each_doc(input: &Input, fields: &Fields, skipped: &mut Skipped, bytes_read: &dyn Fn(u64), f: &mut dyn FnMut(Doc) -> Result<()>) -> Result<()> {
    match input.kind {
        InputKind::Folder => folder(input, skipped, bytes_read, f),
        InputKind::Jsonl => jsonl(&input.path, input.domain.as_deref(), fields, None, bytes_read, f),
        InputKind::Parquet => parquet(&input.path, input.domain.as_deref(), fields, bytes_read, f),
        InputKind::Corpus => corpus(input, fields, bytes_read, f),
    }
}

/// Total bytes of the files an input reads (for progress).
pub fn input_bytes(input: &Input) -> Result<u64> {
    let files = match input.kind {
        InputKind::Folder | InputKind::Corpus => files_under(&input.path)?,
        _ => vec![input.path.clone()],
    };
    Ok(files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum())
}

fn folder(input: &Input, skipped: &mut Skipped, bytes_read: &dyn Fn(u64), f: &mut dyn FnMut(Doc) -> Result<()>) -> Result<()> {
    let root = &input.path;
    let mut domains: Vec<PathBuf> = Vec::new();
    let mut loose: Vec<PathBuf> = Vec::new();
    for p in files_under_shallow(root)? {
        if p.is_dir() { domains.push(p) } else { loose.push(p) }
    }
    if let Some(p) = loose.first() {
        return Err(DataError::Format(format!(
            "{}: files directly in the input folder have no domain; put each domain's files in a sub-folder named after it",
            p.display()
        )));
    }
    for dir in domains {
        let domain = input.domain.clone().unwrap_or_else(|| dir.file_name().unwrap().to_string_lossy().to_string());
        for file in files_under(&dir)? {
            let rel = file.strip_prefix(&dir).unwrap();
            let split = rel.components().next().filter(|_| rel.components().count() > 1).and_then(|c| Split::parse(&c.as_os_str().to_string_lossy()));
            let bytes = std::fs::read(&file).map_err(|e| io(&file, e))?;
            bytes_read(bytes.len() as u64);
            if bytes.contains(&0) {
                skipped.add(&file, true);
                continue;
            }
            let Ok(text) = String::from_utf8(bytes) else {
                skipped.add(&file, false);
                continue;
            };
            f(Doc { domain: domain.clone(), id: rel.to_string_lossy().replace('\\', "/"), text, split })?;
        }
    }
    Ok(())
}

/// The entries directly in `dir`, sorted, hidden ones left out.
fn files_under_shallow(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    v.sort();
    Ok(v)
}

/// Counts the bytes read through it.
struct Counting<'a, R> {
    inner: R,
    report: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.report)(n as u64);
        Ok(n)
    }
}

/// A string field of a row, or an error naming file, line and field.
fn str_field<'v>(obj: &'v serde_json::Map<String, serde_json::Value>, name: &str, at: &str, required: bool) -> Result<Option<&'v str>> {
    match obj.get(name) {
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        None | Some(serde_json::Value::Null) if !required => Ok(None),
        None | Some(serde_json::Value::Null) => Err(DataError::Format(format!("{at}: field \"{name}\" is missing"))),
        Some(other) => Err(DataError::Format(format!("{at}: field \"{name}\" is not a string (got {})", kind_of(other)))),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn split_field(value: Option<&str>, at: &str, field: &str) -> Result<Option<Split>> {
    value
        .map(|v| Split::parse(v).ok_or_else(|| DataError::Format(format!("{at}: field \"{field}\" is \"{v}\", not train, validation or test"))))
        .transpose()
}

/// JSONL (or JSONL.gz) rows. `only`: ids per split from a corpus manifest (then the manifest decides).
fn jsonl(
    path: &Path,
    domain: Option<&str>,
    fields: &Fields,
    only: Option<&std::collections::HashMap<String, Split>>,
    bytes_read: &dyn Fn(u64),
    f: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let counting = Counting { inner: file, report: bytes_read };
    let reader: Box<dyn BufRead> = if path.to_string_lossy().to_lowercase().ends_with(".gz") {
        Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(counting)))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, counting))
    };
    let file_domain = stem(path);
    let name = path.display().to_string();
    for (i, line) in reader.split(b'\n').enumerate() {
        let at = format!("{name}:{}", i + 1);
        let line = line.map_err(|e| DataError::Format(format!("{at}: {e}")))?;
        let line = String::from_utf8(line).map_err(|_| DataError::Format(format!("{at}: not UTF-8")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| DataError::Format(format!("{at}: not JSON ({e})")))?;
        let serde_json::Value::Object(obj) = value else {
            return Err(DataError::Format(format!("{at}: a row must be a JSON object, got {}", kind_of(&value))));
        };
        let text = str_field(&obj, &fields.text, &at, true)?.unwrap().to_string();
        let row_domain = str_field(&obj, &fields.domain, &at, false)?;
        let id = match obj.get(&fields.id) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            None | Some(serde_json::Value::Null) => format!("{}:{}", stem(path), i + 1),
            Some(other) => return Err(DataError::Format(format!("{at}: field \"{}\" is not a string or number (got {})", fields.id, kind_of(other)))),
        };
        let split = match only {
            Some(ids) => Some(*ids.get(&id).ok_or_else(|| DataError::Format(format!("{at}: document \"{id}\" is in no split of the manifest")))?),
            None => split_field(str_field(&obj, &fields.split, &at, false)?, &at, &fields.split)?,
        };
        let domain = domain.or(row_domain).unwrap_or(&file_domain).to_string();
        f(Doc { domain, id, text, split })?;
    }
    Ok(())
}

fn parquet(path: &Path, domain: Option<&str>, fields: &Fields, bytes_read: &dyn Fn(u64), f: &mut dyn FnMut(Doc) -> Result<()>) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let name = path.display().to_string();
    let bad = |e: parquet::errors::ParquetError| DataError::Format(format!("{name}: {e}"));
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let schema = reader.metadata().file_metadata().schema();
    let wanted = [&fields.text, &fields.domain, &fields.id, &fields.split];
    let columns: Vec<_> = schema.get_fields().iter().filter(|c| wanted.contains(&&c.name().to_string())).cloned().collect();
    if !columns.iter().any(|c| c.name() == fields.text) {
        return Err(DataError::Format(format!("{name}: no column \"{}\" (columns: {})", fields.text, schema.get_fields().iter().map(|c| c.name()).collect::<Vec<_>>().join(", "))));
    }
    let projection = parquet::schema::types::Type::group_type_builder(schema.name()).with_fields(columns).build().map_err(bad)?;
    let file_domain = stem(path);
    let rows = reader.metadata().file_metadata().num_rows().max(1) as u64;
    for (i, row) in reader.get_row_iter(Some(projection)).map_err(bad)?.enumerate() {
        let at = format!("{name}: row {}", i + 1);
        let row = row.map_err(|e| DataError::Format(format!("{at}: {e}")))?;
        bytes_read(size / rows);
        let (mut text, mut row_domain, mut id, mut split) = (None, None, None, None);
        for (col, value) in row.get_column_iter() {
            let s = match value {
                Field::Str(s) => Some(s.clone()),
                Field::Null => None,
                Field::Int(v) => Some(v.to_string()),
                Field::Long(v) => Some(v.to_string()),
                other => return Err(DataError::Format(format!("{at}: column \"{col}\" is not a string (got {other})"))),
            };
            if col == &fields.text {
                text = s;
            } else if col == &fields.domain {
                row_domain = s;
            } else if col == &fields.id {
                id = s;
            } else if col == &fields.split {
                split = s;
            }
        }
        let text = text.ok_or_else(|| DataError::Format(format!("{at}: column \"{}\" is null", fields.text)))?;
        let split = split_field(split.as_deref(), &at, &fields.split)?;
        let domain = domain.map(str::to_string).or(row_domain).unwrap_or_else(|| file_domain.clone());
        f(Doc { domain, id: id.unwrap_or_else(|| format!("{}#{}", stem(path), i + 1)), text, split })?;
    }
    Ok(())
}

/// The embedded corpus format: MANIFEST.json with, per domain, its JSONL file, sha256 and the
/// document ids of each split.
fn corpus(input: &Input, fields: &Fields, bytes_read: &dyn Fn(u64), f: &mut dyn FnMut(Doc) -> Result<()>) -> Result<()> {
    use sha2::Digest;
    let mpath = input.path.join(MANIFEST);
    let text = std::fs::read_to_string(&mpath).map_err(|e| io(&mpath, e))?;
    let m: serde_json::Value = serde_json::from_str(&text).map_err(|e| DataError::Format(format!("{}: not JSON ({e})", mpath.display())))?;
    let at = |what: &str| DataError::Format(format!("{}: {what}", mpath.display()));
    if m.get("format").and_then(|v| v.as_str()) != Some("moe-trainer-corpus/1") {
        return Err(at("\"format\" must be \"moe-trainer-corpus/1\""));
    }
    let domains = m.get("domains").and_then(|d| d.as_object()).ok_or_else(|| at("\"domains\" must be an object"))?;
    for (domain, dm) in domains {
        let file = dm.get("file").and_then(|v| v.as_str()).ok_or_else(|| at(&format!("domains.{domain}.file must be a string")))?;
        let want = dm.get("sha256").and_then(|v| v.as_str());
        let mut ids = std::collections::HashMap::new();
        let docs = dm.get("docs").and_then(|v| v.as_object()).ok_or_else(|| at(&format!("domains.{domain}.docs must be an object of splits")))?;
        for (split, list) in docs {
            let s = Split::parse(split).ok_or_else(|| at(&format!("domains.{domain}.docs.{split} is not a split")))?;
            for id in list.as_array().ok_or_else(|| at(&format!("domains.{domain}.docs.{split} must be an array")))? {
                ids.insert(id.as_str().ok_or_else(|| at(&format!("domains.{domain}.docs.{split} holds a non-string id")))?.to_string(), s);
            }
        }
        let path = input.path.join(file);
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        if let Some(want) = want {
            let got = format!("{:x}", sha2::Sha256::digest(&bytes));
            if got != want {
                return Err(DataError::Checksum(format!("{}: sha256 {got}, the manifest says {want}; rebuild the corpus", path.display())));
            }
        }
        let name = input.domain.clone().unwrap_or_else(|| domain.clone());
        jsonl(&path, Some(&name), &Fields { id: "id".into(), ..fields.clone() }, Some(&ids), bytes_read, f)?;
    }
    Ok(())
}
