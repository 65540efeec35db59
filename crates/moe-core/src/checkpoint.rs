//! Checkpoints in Hugging Face's layout: `config.json` + `model.safetensors` with the tensor names
//! `save_pretrained` writes for the architecture (loadable by its transformers class, e.g.
//! `MixtralForCausalLM.from_pretrained`); loading also reads what transformers writes (`crate::hf`:
//! shards, fused experts, bf16/f16). A training checkpoint adds
//! `training_state.safetensors`: AdamW moments, the step, and the trainer's own state (data
//! position, RNG, balancer) as an opaque JSON string. Every file is written to a temporary name and
//! renamed; both safetensors files carry one checkpoint id, so a torn write is detected on load.
//! Nonzero router selection biases (auxiliary-loss-free balancing) are saved under DeepSeek-V3's
//! name `model.layers.{l}.mlp.gate.e_score_correction_bias`: the four architectures have no such
//! tensor, so transformers ignores them (with a warning) and routes without them.

use crate::config::ModelConfig;
use crate::error::{MoeError, Result};
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

fn io(path: &Path, e: std::io::Error) -> MoeError {
    MoeError::Io(format!("{}: {e}", path.display()))
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> MoeError {
    MoeError::CheckpointCorrupt(format!("{}: {what}", path.display()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

fn serialize(tensors: Vec<(String, Vec<usize>, &[f32])>, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = tensors
        .into_iter()
        .map(|(name, shape, data)| TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(data)).map(|v| (name, v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| MoeError::Internal(e.to_string()))?;
    safetensors::serialize(views, Some(meta)).map_err(|e| MoeError::Internal(e.to_string()))
}

/// Saves the model (and, with `state`, the training state) into `dir`, creating it if needed.
/// router_bias (L_moe, E) is saved only when it is not all zero.
pub fn save(dir: &Path, cfg: &ModelConfig, store: &ParamStore, router_bias: &[f32], trainer: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("{nanos:x}-{:x}-{}", std::process::id(), store.opt.step);
    let meta = |extra: &[(&str, String)]| {
        let mut m: HashMap<String, String> = [("format".to_string(), "pt".to_string()), (ID_KEY.to_string(), id.clone())].into();
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        m
    };
    let state_path = dir.join(STATE_FILE);
    match trainer {
        Some(trainer) => {
            let n = store.params.len();
            let bytes = serialize(
                vec![("optimizer.exp_avg".into(), vec![n], &store.opt.m), ("optimizer.exp_avg_sq".into(), vec![n], &store.opt.v)],
                meta(&[("step", store.opt.step.to_string()), ("trainer_state", trainer.to_string())]),
            )?;
            write_atomic(&state_path, &bytes)?;
        }
        None if state_path.exists() => std::fs::remove_file(&state_path).map_err(|e| io(&state_path, e))?,
        None => {}
    }
    let cfg_json = serde_json::to_string_pretty(&cfg.to_hf_json()).map_err(|e| MoeError::Internal(e.to_string()))?;
    write_atomic(&dir.join(CONFIG_FILE), cfg_json.as_bytes())?;
    let mut tensors: Vec<_> = store.specs.iter().map(|s| (s.name.clone(), s.shape.clone(), &store.params[s.range()])).collect();
    if router_bias.iter().any(|&b| b != 0.0) {
        let e = cfg.num_experts;
        tensors.extend(cfg.moe_layers().into_iter().zip(router_bias.chunks(e)).map(|(l, b)| (bias_name(l), vec![e], b)));
    }
    write_atomic(&dir.join(MODEL_FILE), &serialize(tensors, meta(&[]))?)
}

/// Reads and validates the checkpoint in `dir` — ours, or any transformers wrote for one of the
/// architectures of `config` (weights as `crate::hf` reads them). Nothing is applied anywhere.
/// Errors: `CHECKPOINT_MISSING` (no folder, no config.json, no weights), `UNSUPPORTED_MODEL` (an
/// architecture, field or value this model does not implement, named), `CHECKPOINT_CORRUPT`
/// (anything unreadable or inconsistent, file and tensor named).
pub fn load(dir: &Path) -> Result<Loaded> {
    if !dir.is_dir() {
        return Err(MoeError::CheckpointMissing(format!("{}: no such folder", dir.display())));
    }
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&cfg_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MoeError::CheckpointMissing(format!("{}: does not exist", cfg_path.display())),
        _ => io(&cfg_path, e),
    })?;
    let cfg_json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| corrupt(&cfg_path, e))?;
    let cfg = ModelConfig::from_json(cfg_json).map_err(|e| match e {
        MoeError::Unsupported(m) => MoeError::Unsupported(format!("{}: {m}", cfg_path.display())),
        e => corrupt(&cfg_path, e),
    })?;
    let mut weights = Weights::open(dir)?;
    let specs = ModelParams::layout(&cfg).specs();
    let mut params = vec![0.0f32; specs.last().map_or(0, |s| s.offset + s.len())];
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

    let state_path = dir.join(STATE_FILE);
    let state = if state_path.exists() {
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
