//! Weights as Hugging Face transformers writes them, read into our flat parameter buffer.
//!
//! Files: one `model.safetensors`, or the shards that `model.safetensors.index.json` maps tensor
//! names to (how `save_pretrained` writes anything larger than its shard size). Each file is
//! memory-mapped; a tensor is widened from f32, bf16 or f16 straight into its place in the buffer,
//! and its pages are then released from the mapping, so a load peaks at about the buffer plus one
//! tensor rather than the buffer plus the files.
//!
//! Expert banks are found under either layout transformers uses: one tensor per expert
//! (`mlp.experts.{e}.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.{e}.w1.weight`), as
//! `save_pretrained` writes them, or fused as transformers 5 holds them in memory
//! (`mlp.experts.gate_up_proj` (E, 2F, C): each expert's gate rows then its up rows;
//! `mlp.experts.down_proj` (E, C, F)). Mixtral's `block_sparse_moe.` is also found as `mlp.`, its
//! in-memory name since transformers 5.
//!
//! Errors: a folder or file that is not there is `CHECKPOINT_MISSING`; a file that cannot be parsed,
//! a tensor missing, of another shape, of an unsupported dtype, not finite, or not ours is
//! `CHECKPOINT_CORRUPT` (`SHAPE_MISMATCH` for a shape); each names the file and the tensor.

use crate::error::{MoeError, Result};
use crate::layout::ParamSpec;
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

fn missing(path: &Path, what: &str) -> MoeError {
    MoeError::CheckpointMissing(format!("{}: {what}", path.display()))
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> MoeError {
    MoeError::CheckpointCorrupt(format!("{}: {what}", path.display()))
}

fn io(path: &Path, e: std::io::Error) -> MoeError {
    match e.kind() {
        std::io::ErrorKind::NotFound => missing(path, "does not exist"),
        _ => MoeError::Io(format!("{}: {e}", path.display())),
    }
}

/// One memory-mapped safetensors file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Bytes before the data: the 8-byte length and the JSON header.
    data_start: usize,
    meta: Metadata,
}

impl Shard {
    fn open(path: PathBuf) -> Result<Shard> {
        let file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
        // SAFETY: the file is mapped read-only and only read; a checkpoint changed on disk while it
        // is read is the caller's race (saves replace files by rename, never in place).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io(&path, e))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| corrupt(&path, e))?;
        Ok(Shard { path, map, data_start: 8 + n, meta })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }
}

/// The weights of a checkpoint folder, any tensor readable by name.
pub struct Weights {
    shards: Vec<Shard>,
    /// tensor name -> index into `shards`
    place: HashMap<String, usize>,
    /// names read so far, to find the ones nobody asked for
    read: BTreeSet<String>,
}

impl Weights {
    /// Opens `dir`'s `model.safetensors`, or the shards its `model.safetensors.index.json` lists.
    pub fn open(dir: &Path) -> Result<Weights> {
        if !dir.is_dir() {
            return Err(missing(dir, "no such folder"));
        }
        let (single, index) = (dir.join(SINGLE_FILE), dir.join(INDEX_FILE));
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read(&index).map_err(|e| io(&index, e))?;
            let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| corrupt(&index, e))?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| corrupt(&index, "no weight_map object"))?;
            let mut files = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().filter(|f| !f.contains('/') && !f.contains('\\')).ok_or_else(|| corrupt(&index, format!("weight_map[{name}] is not a file name")))?;
                files.insert(file.to_string());
            }
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(missing(dir, &format!("neither {SINGLE_FILE} nor {INDEX_FILE}")));
        };
        Self::files(files)
    }

    /// One safetensors file (e.g. a training state).
    pub fn file(path: &Path) -> Result<Weights> {
        Self::files(vec![path.to_path_buf()])
    }

    fn files(files: Vec<PathBuf>) -> Result<Weights> {
        let shards = files.into_iter().map(Shard::open).collect::<Result<Vec<_>>>()?;
        let mut place = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            for name in s.meta.tensors().into_keys() {
                if let Some(j) = place.insert(name.clone(), i) {
                    return Err(corrupt(&s.path, format!("tensor {name} is also in {}", shards[j].path.display())));
                }
            }
        }
        Ok(Weights { shards, place, read: BTreeSet::new() })
    }

    /// The safetensors metadata value `key` of the first file that has it.
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.shards.iter().find_map(|s| s.meta.metadata().as_ref().and_then(|m| m.get(key).cloned()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.place.contains_key(name)
    }

    fn find(&self, name: &str) -> Option<(&Shard, &TensorInfo)> {
        let s = &self.shards[*self.place.get(name)?];
        Some((s, s.info(name)?))
    }

    /// The path of the file holding `name` (for messages).
    fn path_of(&self, name: &str) -> &Path {
        self.find(name).map_or_else(|| self.shards[0].path.as_path(), |(s, _)| s.path.as_path())
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.find(name).map(|(_, i)| i.shape.as_slice())
    }

    /// Tensor `name`, which must have `shape`, widened to f32 into `out`: out.len() values from
    /// value `first` on (the whole tensor, or a part of a fused bank). Their pages are released
    /// from the mapping afterwards.
    fn read_at(&mut self, name: &str, shape: &[usize], first: usize, out: &mut [f32]) -> Result<()> {
        let (shard, info) = self.find(name).ok_or_else(|| corrupt(&self.shards[0].path, format!("tensor {name} is missing")))?;
        let path = &shard.path;
        if info.shape != shape {
            return Err(MoeError::ShapeMismatch(format!("{}: tensor {name} has shape {:?}, the model needs {shape:?}", path.display(), info.shape)));
        }
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            other => return Err(corrupt(path, format!("tensor {name} is {other:?}; F32, BF16 and F16 are supported"))),
        };
        assert!(first + out.len() <= shape.iter().product(), "{name}: reading past the tensor");
        let start = shard.data_start + info.data_offsets.0 + first * width;
        let bytes = &shard.map[start..start + out.len() * width];
        match info.dtype {
            Dtype::F32 => out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::BF16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            _ => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        }
        // SAFETY: DONTNEED on a read-only shared file mapping only drops pages from this process;
        // a later read of the range faults them in again from the file, unchanged.
        let _ = unsafe { shard.map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, bytes.len()) };
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            return Err(corrupt(path, format!("tensor {name}[{}] is not finite", first + i)));
        }
        self.read.insert(name.to_string());
        Ok(())
    }

    /// Tensor `name` of `shape` as f32.
    pub fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; shape.iter().product()];
        self.read_at(name, shape, 0, &mut out)?;
        Ok(out)
    }

    /// The first of `names` the checkpoint has (the others are aliases of it).
    fn first_of(&self, names: &[String]) -> Option<String> {
        names.iter().find(|n| self.has(n)).cloned()
    }

    /// Fills `params` (the flat buffer of `specs`, banks unexpanded) from the checkpoint; see the
    /// module header for the names and layouts looked for.
    pub fn read_params(&mut self, specs: &[ParamSpec], params: &mut [f32]) -> Result<()> {
        for s in specs {
            let out = &mut params[s.range()];
            if !s.name.contains("{e}") {
                let name = self.first_of(&aliases(&s.name)).unwrap_or_else(|| s.name.clone());
                self.read_at(&name, &s.shape, 0, out)?;
                continue;
            }
            let per_expert: Vec<ParamSpec> = s.hf_tensors();
            if self.first_of(&aliases(&per_expert[0].name)).is_some() {
                for (t, dst) in per_expert.iter().zip(out.chunks_mut(s.len() / s.shape[0])) {
                    let name = self.first_of(&aliases(&t.name)).unwrap_or_else(|| t.name.clone());
                    self.read_at(&name, &t.shape, 0, dst)?;
                }
            } else {
                self.read_fused(s, out)?;
            }
        }
        Ok(())
    }

    /// A bank (E, ..) from transformers 5's fused tensors: gate_proj and up_proj (E, F, C) are
    /// the first and last F rows of each expert's `gate_up_proj` (E, 2F, C); down_proj (E, C, F) is
    /// `down_proj` itself. Mixtral's w1 / w3 / w2 are gate / up / down.
    fn read_fused(&mut self, s: &ParamSpec, out: &mut [f32]) -> Result<()> {
        let (prefix, kind) = s.name.split_once("{e}.").ok_or_else(|| MoeError::Internal(format!("bank name {}", s.name)))?;
        let (e, f, c) = (s.shape[0], s.shape[1], s.shape[2]);
        let fused_name = |t: &str| aliases(&format!("{prefix}{t}"));
        let (half, fused) = match kind {
            "gate_proj.weight" | "w1.weight" => (Some(0), fused_name("gate_up_proj")),
            "up_proj.weight" | "w3.weight" => (Some(1), fused_name("gate_up_proj")),
            _ => (None, fused_name("down_proj")),
        };
        let Some(name) = self.first_of(&fused) else {
            let per_expert = s.name.replace("{e}", "0");
            return Err(corrupt(self.path_of(&per_expert), format!("neither {per_expert} (one tensor per expert) nor {} (fused) is there", fused[0])));
        };
        match half {
            None => self.read_at(&name, &s.shape, 0, out),
            Some(h) => {
                let shape = [e, 2 * f, c];
                if self.shape(&name) != Some(&shape[..]) {
                    let got = self.shape(&name).map(<[usize]>::to_vec);
                    return Err(MoeError::ShapeMismatch(format!("{}: tensor {name} has shape {got:?}, the model needs {shape:?}", self.path_of(&name).display())));
                }
                for (i, dst) in out.chunks_mut(f * c).enumerate() {
                    self.read_at(&name, &shape, (i * 2 + h) * f * c, dst)?;
                }
                Ok(())
            }
        }
    }

    /// Tensors in the files that no read asked for, except `allowed` ones.
    pub fn unread(&self, allowed: impl Fn(&str) -> bool) -> Option<(String, &Path)> {
        let mut names: Vec<&String> = self.place.keys().filter(|n| !self.read.contains(*n) && !allowed(n)).collect();
        names.sort();
        names.first().map(|n| ((*n).clone(), self.path_of(n)))
    }
}

/// `name` and the other names transformers gives the same tensor: Mixtral's `block_sparse_moe.` is
/// `mlp.` in memory since transformers 5.
fn aliases(name: &str) -> Vec<String> {
    let mut out = vec![name.to_string()];
    if name.contains(".block_sparse_moe.") {
        out.push(name.replace(".block_sparse_moe.", ".mlp."));
    }
    out
}
