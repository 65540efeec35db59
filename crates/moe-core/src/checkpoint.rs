//! Checkpoints in Hugging Face's layout: `config.json` + `model.safetensors` with the tensor names
//! `save_pretrained` writes for the architecture (loadable by its transformers class, e.g.
//! `MixtralForCausalLM.from_pretrained`); loading also reads what transformers writes (`crate::hf`:
//! shards, fused experts, bf16/f16). A training checkpoint adds
//! `training_state.safetensors`: AdamW moments, the step, and the trainer's own state (data
//! position, RNG, balancer) as an opaque JSON string; the trainer adds its tokenizer files. The
//! folder is written whole and switched in atomically, with a sha256 per file checked on load
//! (`crate::folder`); both safetensors files also carry one checkpoint id, so files of two saves
//! never load together.
//! Nonzero router selection biases (auxiliary-loss-free balancing) are saved under DeepSeek-V3's
//! name `model.layers.{l}.mlp.gate.e_score_correction_bias`: the four architectures have no such
//! tensor, so transformers ignores them (with a warning) and routes without them.

use crate::config::ModelConfig;
use crate::error::{MoeError, Result};
use crate::folder::{Folder, Writer};
use crate::hf::Weights;
use crate::layout::{Layout, ModelParams};
use crate::params::ParamStore;
use safetensors::tensor::{Dtype, TensorView};
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
    /// (L_moe, E), a row per layer with experts: the routers' selection biases, zero when the checkpoint has none
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
/// a reader sees the previous save or this one, never a mix. router_bias (L_moe, E) is saved only when
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
        tensors.extend(cfg.moe_layers().into_iter().zip(router_bias.chunks(e)).map(|(l, b)| (bias_name(l), vec![e], b)));
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

/// Reads and validates the checkpoint in `dir` — ours, or any transformers wrote for one of the
/// architectures of `config` (weights as `crate::hf` reads them). Every file our manifest lists is
/// checked against it first; a folder replaced by another save while it was read is read again,
/// so a reader gets one whole save. Nothing is applied anywhere.
/// Errors: `CHECKPOINT_MISSING` (no folder, no config.json, no weights), `UNSUPPORTED_MODEL` (an
/// architecture, field or value this model does not implement, named), `CHECKPOINT_CORRUPT`
/// (anything unreadable, damaged or inconsistent, file and tensor named).
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

/// The model configuration of the checkpoint in `dir` (its `config.json`), checked as `load`
/// checks it, without reading any weights. Errors as `load`.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    config_of(&Folder::open(dir)?)
}

fn config_of(folder: &Folder) -> Result<ModelConfig> {
    let cfg_path = folder.dir.join(CONFIG_FILE);
    let cfg_json: serde_json::Value = serde_json::from_slice(&folder.read(CONFIG_FILE)?).map_err(|e| corrupt(&cfg_path, e))?;
    let cfg = ModelConfig::from_json(cfg_json).map_err(|e| match e {
        MoeError::Unsupported(m) => MoeError::Unsupported(format!("{}: {m}", cfg_path.display())),
        // a field of a newer or other architecture: not ours to guess its meaning
        MoeError::InvalidConfig(m) if m.contains("unknown field") => MoeError::Unsupported(format!("{}: {m}", cfg_path.display())),
        e => corrupt(&cfg_path, e),
    })?;
    // Sizes from a file are checked like any other before a byte is allocated for them.
    crate::memory::check_model(&cfg).map_err(|e| match e {
        MoeError::InvalidConfig(m) => corrupt(&cfg_path, m),
        e => e,
    })?;
    Ok(cfg)
}

fn load_from(folder: &Folder) -> Result<Loaded> {
    let dir = folder.dir.as_path();
    folder.verify()?;
    let cfg = config_of(folder)?;
    let mut weights = Weights::open(dir)?;
    let specs = ModelParams::layout(&cfg).specs();
    let mut params = crate::memory::zeros("checkpoint parameters", specs.last().map_or(0, |s| s.offset + s.len()))?;
    weights.read_params(&specs, &mut params)?;
    let (nl, e) = (cfg.moe_layers().len(), cfg.num_experts);
    let biases: Vec<String> = cfg.moe_layers().into_iter().map(bias_name).collect();
    let router_bias = match biases.iter().filter(|n| weights.has(n)).count() {
        0 => vec![0.0; nl * e],
        n if n == nl => biases.iter().map(|n| weights.read(n, &[e])).collect::<Result<Vec<_>>>()?.concat(),
        n => return Err(corrupt(dir, format!("router biases for {n} of {nl} MoE layers"))),
    };
    // A tied head may also be stored, and old files keep the rotary inverse frequencies (derived
    // from rope_theta); anything else unread means this is not the model config.json describes.
    let ignored = |n: &str| (cfg.tie_word_embeddings && n == "lm_head.weight") || n.ends_with("rotary_emb.inv_freq");
    if let Some((extra, path)) = weights.unread(ignored) {
        return Err(corrupt(path, format!("unexpected tensor {extra}")));
    }
    let id = weights.metadata(ID_KEY);
    if let (Some(m), Some(id)) = (folder.id(), &id) {
        if m != id {
            return Err(corrupt(&dir.join(MODEL_FILE), "belongs to another save than the folder's manifest"));
        }
    }

    let state_path = dir.join(STATE_FILE);
    let state = if folder.has(STATE_FILE) {
        let mut st = Weights::file(&state_path)?;
        if st.metadata(ID_KEY) != id || id.is_none() {
            return Err(corrupt(&state_path, "belongs to another save than model.safetensors (interrupted write?)"));
        }
        let n = params.len();
        let step = st.metadata("step").and_then(|s| s.parse().ok()).ok_or_else(|| corrupt(&state_path, "no step"))?;
        let trainer = st.metadata("trainer_state").ok_or_else(|| corrupt(&state_path, "no trainer_state"))?;
        Some(TrainingState { step, m: st.read("optimizer.exp_avg", &[n])?, v: st.read("optimizer.exp_avg_sq", &[n])?, trainer })
    } else {
        None
    };
    Ok(Loaded { cfg, params, router_bias, state })
}
