//! Checkpoints in Hugging Face's layout: `config.json` + `model.safetensors` with the Qwen3-MoE
//! tensor names (loadable by `Qwen3MoeForCausalLM.from_pretrained`). A training checkpoint adds
//! `training_state.safetensors`: AdamW moments, the step, and the trainer's own state (data
//! position, RNG, balancer) as an opaque JSON string; the trainer adds its tokenizer files. The
//! folder is written whole and switched in atomically, with a sha256 per file checked on load
//! (`crate::folder`); both safetensors files also carry one checkpoint id, so files of two saves
//! never load together.
//! Nonzero router selection biases (auxiliary-loss-free balancing) are saved under DeepSeek-V3's
//! name `model.layers.{l}.mlp.gate.e_score_correction_bias`: Qwen3-MoE has no such tensor, so
//! transformers ignores them (with a warning) and routes without them.

use crate::config::ModelConfig;
use crate::error::{MoeError, Result};
use crate::folder::{Folder, Writer};
use crate::layout::{hf_tensors, Layout, ModelParams};
use crate::params::ParamStore;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "training_state.safetensors";
const ID_KEY: &str = "moe_trainer_checkpoint_id";

/// Optimiser state and the trainer's opaque state, as saved with a training checkpoint.
#[derive(Debug, Clone)]
pub struct TrainingState {
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// JSON written by the TypeScript trainer; the core never reads it.
    pub trainer: String,
}

/// A checkpoint read and fully validated, not yet applied to any model.
pub struct Loaded {
    pub cfg: ModelConfig,
    pub params: Vec<f32>,
    /// (L, E) the routers' selection biases, zero when the checkpoint has none
    pub router_bias: Vec<f32>,
    pub state: Option<TrainingState>,
}

fn bias_name(l: usize) -> String {
    format!("model.layers.{l}.mlp.gate.e_score_correction_bias")
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> MoeError {
    MoeError::CheckpointCorrupt(format!("{}: {what}", path.display()))
}

fn serialize(tensors: Vec<(String, Vec<usize>, &[f32])>, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = tensors
        .into_iter()
        .map(|(name, shape, data)| TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(data)).map(|v| (name, v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| MoeError::Internal(e.to_string()))?;
    safetensors::serialize(views, Some(meta)).map_err(|e| MoeError::Internal(e.to_string()))
}

/// Saves the model (and, with `trainer`, the training state) as the folder `dir`, with `files`
/// (name, bytes) beside them (the trainer's tokenizer). The folder is replaced whole, atomically:
/// a reader sees the previous save or this one, never a mix. router_bias (L, E) is saved only when
/// it is not all zero.
pub fn save(dir: &Path, cfg: &ModelConfig, store: &ParamStore, router_bias: &[f32], trainer: Option<&str>, files: &[(String, Vec<u8>)]) -> Result<()> {
    let mut out = Writer::begin(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("{nanos:x}-{:x}-{}", std::process::id(), store.opt.step);
    let meta = |extra: &[(&str, String)]| {
        let mut m: HashMap<String, String> = [("format".to_string(), "pt".to_string()), (ID_KEY.to_string(), id.clone())].into();
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        m
    };
    if let Some(trainer) = trainer {
        let n = store.params.len();
        let bytes = serialize(
            vec![("optimizer.exp_avg".into(), vec![n], &store.opt.m), ("optimizer.exp_avg_sq".into(), vec![n], &store.opt.v)],
            meta(&[("step", store.opt.step.to_string()), ("trainer_state", trainer.to_string())]),
        )?;
        out.file(STATE_FILE, &bytes)?;
    }
    let cfg_json = serde_json::to_string_pretty(&cfg.to_hf_json()).map_err(|e| MoeError::Internal(e.to_string()))?;
    out.file(CONFIG_FILE, cfg_json.as_bytes())?;
    let mut tensors: Vec<_> = store.specs.iter().map(|s| (s.name.clone(), s.shape.clone(), &store.params[s.range()])).collect();
    if router_bias.iter().any(|&b| b != 0.0) {
        let e = cfg.num_experts;
        tensors.extend(router_bias.chunks(e).enumerate().map(|(l, b)| (bias_name(l), vec![e], b)));
    }
    out.file(MODEL_FILE, &serialize(tensors, meta(&[]))?)?;
    for (name, bytes) in files {
        if [CONFIG_FILE, MODEL_FILE, STATE_FILE].contains(&name.as_str()) {
            return Err(MoeError::InvalidArgument(format!("files: {name} is written by the save itself")));
        }
        out.file(name, bytes)?;
    }
    out.commit(&id)
}

/// Reads tensor `name` with the expected shape as f32. BF16 and F16 tensors (how Hugging Face
/// usually ships Qwen3-MoE weights) are widened exactly; training continues in f32.
fn tensor(st: &SafeTensors, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|_| corrupt(path, format!("tensor {name} is missing")))?;
    if t.shape() != shape {
        return Err(MoeError::ShapeMismatch(format!("{}: tensor {name} has shape {:?}, the model needs {shape:?}", path.display(), t.shape())));
    }
    let data: Vec<f32> = match t.dtype() {
        Dtype::F32 => bytemuck::pod_collect_to_vec(t.data()),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(t.data()).into_iter().map(f32::from).collect(),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(t.data()).into_iter().map(f32::from).collect(),
        other => return Err(corrupt(path, format!("tensor {name} is {other:?}; F32, BF16 and F16 are supported"))),
    };
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(corrupt(path, format!("tensor {name}[{i}] is not finite")));
    }
    Ok(data)
}

fn metadata(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Reads and validates the checkpoint in `dir`: every file against the folder's manifest. A folder
/// replaced by another save while it was read is read again, so a reader gets one whole save.
/// Nothing is applied anywhere.
pub fn load(dir: &Path) -> Result<Loaded> {
    let mut attempts = 0;
    loop {
        let folder = Folder::open(dir)?;
        match load_from(&folder) {
            Err(e) if attempts < 8 && matches!(e, MoeError::CheckpointCorrupt(_)) && folder.id().is_some() && folder.replaced() => attempts += 1,
            r => return r,
        }
    }
}

fn load_from(folder: &Folder) -> Result<Loaded> {
    let dir = folder.dir.as_path();
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg_json: serde_json::Value = serde_json::from_slice(&folder.read(CONFIG_FILE)?).map_err(|e| corrupt(&cfg_path, e))?;
    let cfg = ModelConfig::from_json(cfg_json).map_err(|e| corrupt(&cfg_path, e))?;
    // Sizes from a file are checked like any other before a byte is allocated for them.
    crate::memory::check_model(&cfg).map_err(|e| match e {
        MoeError::InvalidConfig(m) => corrupt(&cfg_path, m),
        e => e,
    })?;
    let layout = hf_tensors(&ModelParams::layout(&cfg).specs());
    let len = layout.last().map_or(0, |s| s.offset + s.len());

    let model_path = dir.join(MODEL_FILE);
    let bytes = folder.read(MODEL_FILE)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&model_path, e))?;
    let mut params = crate::memory::zeros("checkpoint parameters", len)?;
    for s in &layout {
        params[s.range()].copy_from_slice(&tensor(&st, &model_path, &s.name, &s.shape)?);
    }
    let (nl, e) = (cfg.num_hidden_layers, cfg.num_experts);
    let biases: Vec<String> = (0..nl).map(bias_name).collect();
    let router_bias = match biases.iter().filter(|n| st.tensor(n).is_ok()).count() {
        0 => vec![0.0; nl * e],
        n if n == nl => biases.iter().map(|n| tensor(&st, &model_path, n, &[e])).collect::<Result<Vec<_>>>()?.concat(),
        n => return Err(corrupt(&model_path, format!("router biases for {n} of {nl} layers"))),
    };
    // A tied head may also be stored; anything else unknown means this is not our model.
    let known = |n: &str| (cfg.tie_word_embeddings && n == "lm_head.weight") || biases.iter().any(|b| b == n);
    if let Some(extra) = st.names().into_iter().find(|n| !known(n) && layout.iter().all(|s| s.name != *n)) {
        return Err(corrupt(&model_path, format!("unexpected tensor {extra}")));
    }
    let id = metadata(&bytes, &model_path)?.get(ID_KEY).cloned();
    if let (Some(m), Some(id)) = (folder.id(), &id) {
        if m != id {
            return Err(corrupt(&model_path, "belongs to another save than the folder's manifest"));
        }
    }
    // The other files the manifest lists (the trainer's tokenizer) are checked too.
    for name in folder.manifest.iter().flat_map(|m| m.files.keys()) {
        if ![CONFIG_FILE, MODEL_FILE, STATE_FILE].contains(&name.as_str()) {
            folder.read(name)?;
        }
    }

    let state_path = dir.join(STATE_FILE);
    let state = if folder.has(STATE_FILE) {
        let bytes = folder.read(STATE_FILE)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&state_path, e))?;
        let meta = metadata(&bytes, &state_path)?;
        if meta.get(ID_KEY) != id.as_ref() || id.is_none() {
            return Err(corrupt(&state_path, "belongs to another save than model.safetensors (interrupted write?)"));
        }
        let n = params.len();
        let step = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| corrupt(&state_path, "no step"))?;
        let trainer = meta.get("trainer_state").cloned().ok_or_else(|| corrupt(&state_path, "no trainer_state"))?;
        Some(TrainingState {
            step,
            m: tensor(&st, &state_path, "optimizer.exp_avg", &[n])?,
            v: tensor(&st, &state_path, "optimizer.exp_avg_sq", &[n])?,
            trainer,
        })
    } else {
        None
    };
    Ok(Loaded { cfg, params, router_bias, state })
}
