//! `MoeModel`: the Qwen3-MoE language model.

use crate::args::{self, absent};
use crate::{guard, js_error, shared, shared_methods, task, with, CoreTask, Info, ParameterInfo, Shared};
use moe_core::generate::{generate, GenerateOptions};
use moe_core::{MoeError, ModelConfig, ModelStats, Precision, Recompute};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::PathBuf;

type Core = moe_core::Model;

/// Type-only mirror of `moe_core::ModelConfig`: Hugging Face Qwen3MoeConfig field names.
#[napi(object, object_from_js = false, object_to_js = false, js_name = "ModelConfig")]
pub struct ModelConfigInput {
    #[napi(js_name = "vocab_size")]
    pub vocab_size: u32,
    #[napi(js_name = "hidden_size")]
    pub hidden_size: u32,
    #[napi(js_name = "num_hidden_layers")]
    pub num_hidden_layers: u32,
    #[napi(js_name = "num_attention_heads")]
    pub num_attention_heads: u32,
    #[napi(js_name = "num_key_value_heads")]
    pub num_key_value_heads: u32,
    #[napi(js_name = "head_dim")]
    pub head_dim: u32,
    #[napi(js_name = "moe_intermediate_size")]
    pub moe_intermediate_size: u32,
    #[napi(js_name = "num_experts")]
    pub num_experts: u32,
    #[napi(js_name = "num_experts_per_tok")]
    pub num_experts_per_tok: u32,
    #[napi(js_name = "norm_topk_prob")]
    pub norm_topk_prob: Option<bool>,
    #[napi(js_name = "rms_norm_eps")]
    pub rms_norm_eps: Option<f64>,
    #[napi(js_name = "rope_theta")]
    pub rope_theta: Option<f64>,
    #[napi(js_name = "max_position_embeddings")]
    pub max_position_embeddings: Option<u32>,
    #[napi(js_name = "tie_word_embeddings")]
    pub tie_word_embeddings: Option<bool>,
    #[napi(js_name = "initializer_range")]
    pub initializer_range: Option<f64>,
    pub seed: Option<u32>,
    /// "qwen3_moe" (default), "qwen2_moe", "olmoe" or "mixtral": which transformers class the
    /// checkpoints are written for, and its attention's q/k norm
    #[napi(js_name = "model_type", ts_type = "'qwen3_moe' | 'qwen2_moe' | 'olmoe' | 'mixtral'")]
    pub model_type: Option<String>,
    /// F of the dense MLP of layers without experts
    #[napi(js_name = "intermediate_size")]
    pub intermediate_size: Option<u32>,
    /// F of a shared expert beside the routed ones, gated by sigmoid(x · w) (Qwen2-MoE); 0 = none
    #[napi(js_name = "shared_expert_intermediate_size")]
    pub shared_expert_intermediate_size: Option<u32>,
    /// biases on the q, k and v projections (Qwen2-MoE)
    #[napi(js_name = "qkv_bias")]
    pub qkv_bias: Option<bool>,
    /// layers with a dense MLP (of `intermediate_size`) instead of experts
    #[napi(js_name = "mlp_only_layers")]
    pub mlp_only_layers: Option<Vec<u32>>,
    /// experts in layers l with (l + 1) % decoder_sparse_step == 0; default 1 (every layer)
    #[napi(js_name = "decoder_sparse_step")]
    pub decoder_sparse_step: Option<u32>,
    /// positions a query sees, itself included, in the `sliding_layers`; null = full attention
    #[napi(js_name = "sliding_window", ts_type = "number | null")]
    pub sliding_window: Option<u32>,
    /// the layers with a sliding window (all of them when absent and `sliding_window` is set)
    #[napi(js_name = "sliding_layers", ts_type = "number[] | null")]
    pub sliding_layers: Option<Vec<u32>>,
}

/// Per layer and per sequence routing statistics of one forward, and its loss (DESIGN §3).
/// Sums are over valid positions; divide by `validTokens` for means.
#[napi(object)]
pub struct ModelForwardResult {
    /// cross-entropy summed over every valid position, in nats (not a mean: divide by the sum of
    /// `validTokens` for the mean per token)
    pub loss_sum: f64,
    /// (B) cross-entropy summed over each sequence's valid positions, in nats
    pub loss_sums: Float32Array,
    /// (B) valid positions per sequence
    pub valid_tokens: Float32Array,
    /// (L_moe, B, E): per layer with experts (`moeLayers`), per sequence, tokens routed to each expert
    pub counts: Float32Array,
    /// (L_moe, B, E): router softmax scores summed over valid tokens
    pub score_sums: Float32Array,
    /// (L_moe, B): the chosen experts' scores summed over valid tokens
    pub topk_score_sums: Float32Array,
    /// (L_moe, B): squared logsumexp of the router logits summed over valid tokens (z-loss)
    pub z_sums: Float32Array,
}

fn forward_result(s: ModelStats) -> ModelForwardResult {
    ModelForwardResult {
        loss_sum: s.loss,
        loss_sums: Float32Array::new(s.loss_sums),
        valid_tokens: Float32Array::new(s.valid_tokens),
        counts: Float32Array::new(s.counts),
        score_sums: Float32Array::new(s.score_sums),
        topk_score_sums: Float32Array::new(s.topk_score_sums),
        z_sums: Float32Array::new(s.z_sums),
    }
}

#[napi(object, object_from_js = false)]
pub struct ModelForwardOptions {
    /// (B, S) 1 = token t is a prediction target (position t - 1's loss counts); absent = all
    pub mask: Option<Uint8Array>,
    /// keep activations for `backward` (default true); false = statistics-only forward
    pub store: Option<bool>,
}

#[napi(object, object_from_js = false)]
pub struct BackwardScales {
    /// multiplies the summed cross-entropy: 1 / T_glob
    pub lm_scale: f64,
    /// beta / T_glob of the router z-loss (default 0)
    pub z_scale: Option<f64>,
}

/// Type-only mirror of `moe_core::generate::GenerateOptions`.
#[napi(object, object_from_js = false, object_to_js = false, js_name = "GenerateOptions")]
pub struct GenerateOptionsInput {
    /// 0 = greedy; default 1
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub seed: Option<u32>,
}

/// The options of `MoeModel.fromCheckpoint`.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct LoadOptions {
    /// "auto", "gpu" or "cpu" (default: MOE_DEVICE or auto)
    #[napi(ts_type = "'auto' | 'gpu' | 'cpu'")]
    pub device: Option<String>,
    /// only the weights (and router biases): the optimiser starts afresh and no trainer state is
    /// returned, whatever the checkpoint holds (the start of a fine-tuning run); default false
    pub weights_only: Option<bool>,
}

pub struct LoadTask {
    /// the folder, device and weightsOnly, or the error of the argument checks
    args: moe_core::Result<(PathBuf, Option<String>, bool)>,
}

impl Task for LoadTask {
    type Output = moe_core::Result<(Core, Option<String>)>;
    type JsValue = MoeModel;
    fn compute(&mut self) -> Result<Self::Output> {
        let args = std::mem::replace(&mut self.args, Err(MoeError::Internal("a task ran twice".into())));
        Ok(args.and_then(|(dir, device, weights_only)| {
            guard(|| {
                let (mut m, trainer) = if weights_only { (Core::from_weights(&dir)?, None) } else { Core::from_checkpoint(&dir)? };
                m.to_device(device.as_deref())?;
                Ok((m, trainer))
            })
        }))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<MoeModel> {
        let (m, trainer) = out.map_err(|e| js_error(&env, e))?;
        Ok(MoeModel::wrap(&env, m, trainer))
    }
}

/// The `device` of a DeviceOptions object.
pub(crate) fn device_option(options: Option<Unknown>) -> moe_core::Result<Option<String>> {
    device_of(&args::options("options", options, &["device"])?)
}

fn device_of(o: &args::Options<'_>) -> moe_core::Result<Option<String>> {
    let device = o.field("device", args::string)?;
    if let Some(d) = &device {
        if !["auto", "gpu", "cpu"].contains(&d.as_str()) {
            return Err(MoeError::InvalidConfig(format!("options.device must be \"auto\", \"gpu\" or \"cpu\", got \"{d}\"")));
        }
    }
    Ok(device)
}

/// A Qwen3-MoE causal language model on the CPU or the GPU. Parameters use the Hugging Face names
/// (`model.layers.{l}.mlp.experts.{e}.up_proj.weight`, ...); checkpoints load in transformers.
///
/// Calls on one model run in the order they are made: asynchronous ones queue behind each other,
/// and a synchronous one made while an asynchronous one is pending fails with `INVALID_STATE`
/// (await first). Arguments are checked before anything runs (`INVALID_ARGUMENT`,
/// `INVALID_CONFIG` for option fields, naming them); asynchronous methods report every failure as
/// a rejected Promise. The native memory is reported to V8, so a dropped model is collected.
#[napi(custom_finalize)]
pub struct MoeModel {
    inner: Shared<Core>,
    trainer_state: Option<String>,
    moe_layers: Vec<u32>,
    info: Info,
}

impl MoeModel {
    fn wrap(env: &Env, mut m: Core, trainer_state: Option<String>) -> MoeModel {
        let config = serde_json::to_value(&m.cfg).unwrap_or_default();
        let device = m.device();
        let moe_layers = m.cfg.moe_layers().into_iter().map(|l| l as u32).collect();
        let info = Info::new(env, device, config, m.store.host().ok());
        MoeModel { inner: shared(m), trainer_state, moe_layers, info }
    }
}

#[napi]
impl MoeModel {
    /// A freshly initialised model (seeded by `config.seed`) on `options.device`.
    #[napi(constructor, ts_args_type = "config: ModelConfig, options?: DeviceOptions")]
    pub fn new(env: Env, config: Option<Unknown>, options: Option<Unknown>) -> Result<Self> {
        let m = (|| {
            if absent(&config) {
                return Err(MoeError::InvalidConfig("config must be an object".into()));
            }
            let (config, device) = (args::json_object("config", config)?, device_option(options)?);
            guard(|| -> moe_core::Result<Core> {
                let mut m = ModelConfig::from_json(config).and_then(Core::new)?;
                m.to_device(device.as_deref())?;
                Ok(m)
            })
        })()
        .map_err(|e| js_error(&env, e))?;
        Ok(MoeModel::wrap(&env, m, None))
    }

    /// A model read from a checkpoint folder: ours, or one transformers wrote for Qwen3-MoE,
    /// Qwen2-MoE, OLMoE or Mixtral (config.json + model.safetensors or sharded
    /// model-0000N-of-0000M.safetensors with their index; per-expert or fused expert tensors;
    /// f32, bf16 or f16, widened to f32), memory-mapped, every file of ours checked against the
    /// folder's checksums; with its optimiser and trainer state unless `weightsOnly`.
    /// Errors: CHECKPOINT_MISSING (folder or file), UNSUPPORTED_MODEL (architecture or field,
    /// named), CHECKPOINT_CORRUPT, SHAPE_MISMATCH.
    #[napi(ts_args_type = "dir: string, options?: LoadOptions", ts_return_type = "Promise<MoeModel>")]
    pub fn from_checkpoint(dir: Unknown, options: Option<Unknown>) -> AsyncTask<LoadTask> {
        AsyncTask::new(LoadTask {
            args: (|| {
                let dir = PathBuf::from(args::string("dir", dir)?);
                let o = args::options("options", options, &["device", "weightsOnly"])?;
                Ok((dir, device_of(&o)?, o.field("weightsOnly", args::boolean)?.unwrap_or(false)))
            })(),
        })
    }

    /// The layers with experts, ascending: the rows of every per-layer statistic (L_moe of them).
    #[napi(getter)]
    pub fn moe_layers(&self) -> Vec<u32> {
        self.moe_layers.clone()
    }

    /// Activation recomputation: what a stored forward keeps for the backward. "none" (default)
    /// keeps every activation; "attention" all but the attention probabilities (B·H·S² floats per
    /// layer), recomputed in the backward; "full" only each layer's input (B·S·hidden_size floats),
    /// the whole layer recomputed. Results are bit-identical in every setting; the recomputed
    /// routing statistics are never reported again. Changing it drops the stored forward.
    #[napi(getter, ts_return_type = "'none' | 'attention' | 'full'")]
    pub fn recompute(&self, env: Env) -> Result<String> {
        with(&self.inner, "MoeModel.recompute", |m| Ok(m.recompute().name().to_string())).map_err(|e| js_error(&env, e))
    }

    #[napi(ts_args_type = "recompute: 'none' | 'attention' | 'full'")]
    pub fn set_recompute(&self, env: Env, recompute: Unknown) -> Result<()> {
        (|| {
            let r: Recompute = args::string("recompute", recompute)?.parse()?;
            with(&self.inner, "MoeModel.setRecompute", |m| {
                m.set_recompute(r);
                Ok(())
            })
        })()
        .map_err(|e| js_error(&env, e))
    }

    /// The number format of the large GEMMs' inputs (q/k/v, o_proj, experts and dense MLPs,
    /// lm_head), forward and backward: "f32" (default) or "bf16" (both operands rounded to bfloat16,
    /// products summed in f32; parameters, gradients, AdamW and every other op stay f32). Changing
    /// it drops the stored forward.
    #[napi(getter, ts_return_type = "'f32' | 'bf16'")]
    pub fn precision(&self, env: Env) -> Result<String> {
        with(&self.inner, "MoeModel.precision", |m| Ok(m.precision().name().to_string())).map_err(|e| js_error(&env, e))
    }

    #[napi(ts_args_type = "precision: 'f32' | 'bf16'")]
    pub fn set_precision(&self, env: Env, precision: Unknown) -> Result<()> {
        (|| {
            let p: Precision = args::string("precision", precision)?.parse()?;
            with(&self.inner, "MoeModel.setPrecision", |m| {
                m.set_precision(p);
                Ok(())
            })
        })()
        .map_err(|e| js_error(&env, e))
    }

    /// The trainer state (JSON) saved with the checkpoint this model was made from, if any.
    #[napi(getter)]
    pub fn trainer_state(&self) -> Option<String> {
        self.trainer_state.clone()
    }

    /// Optimiser steps taken (restored by checkpoints).
    #[napi(getter)]
    pub fn optimizer_step(&self, env: Env) -> Result<f64> {
        with(&self.inner, "MoeModel.optimizerStep", |m| Ok(m.store.steps() as f64)).map_err(|e| js_error(&env, e))
    }

    /// Forward on tokens (B, S) with B = numSequences: the summed loss and the per-layer,
    /// per-sequence routing statistics. `store: false` keeps no activations (evaluation,
    /// statistics pre-pass).
    #[napi(ts_args_type = "tokens: Uint32Array, numSequences: number, options?: ModelForwardOptions", ts_return_type = "Promise<ModelForwardResult>")]
    pub fn forward(&self, tokens: Unknown, num_sequences: Unknown, options: Option<Unknown>) -> AsyncTask<CoreTask<Core, ModelStats, ModelForwardResult>> {
        let checked = (|| {
            let (tokens, b) = (args::u32s("tokens", tokens)?, args::count("numSequences", num_sequences, 1)?);
            let o = args::options("options", options, &["mask", "store"])?;
            let (mask, store) = (o.field("mask", args::u8s)?, o.field("store", args::boolean)?.unwrap_or(true));
            Ok(move |m: &mut Core| m.forward(&tokens, mask.as_deref(), b, store))
        })();
        task(&self.inner, "MoeModel.forward", forward_result, checked)
    }

    /// Logits (B*S, vocab_size) of every position; stores nothing.
    #[napi(ts_args_type = "tokens: Uint32Array, numSequences: number", ts_return_type = "Promise<Float32Array>")]
    pub fn logits(&self, tokens: Unknown, num_sequences: Unknown) -> AsyncTask<CoreTask<Core, Vec<f32>, Float32Array>> {
        let checked = (|| {
            let (tokens, b) = (args::u32s("tokens", tokens)?, args::count("numSequences", num_sequences, 1)?);
            Ok(move |m: &mut Core| m.logits(&tokens, b))
        })();
        task(&self.inner, "MoeModel.logits", Float32Array::new, checked)
    }

    /// Backward of the last stored forward with router pressure (L_moe, B, E): a row per layer with experts (`moeLayers`); accumulates gradients.
    /// A stored forward serves one backward: a second one fails with INVALID_STATE.
    #[napi(ts_args_type = "pressure: Float32Array, scales: BackwardScales", ts_return_type = "Promise<void>")]
    pub fn backward(&self, pressure: Unknown, scales: Option<Unknown>) -> AsyncTask<CoreTask<Core, (), ()>> {
        let checked = (|| {
            let pressure = args::f32s("pressure", pressure)?;
            if absent(&scales) {
                return Err(MoeError::InvalidArgument("scales must be an object with lmScale (1 / T_glob)".into()));
            }
            let o = args::options("scales", scales, &["lmScale", "zScale"])?;
            let lm = o.field("lmScale", args::number)?.ok_or_else(|| MoeError::InvalidConfig("scales.lmScale is required (1 / T_glob)".into()))?;
            let z = o.field("zScale", args::number)?.unwrap_or(0.0);
            Ok(move |m: &mut Core| m.backward(&pressure, lm as f32, z as f32))
        })();
        task(&self.inner, "MoeModel.backward", |()| (), checked)
    }

    /// Writes the checkpoint folder `dir`: config.json + model.safetensors; with `trainerState`
    /// (JSON) also the optimiser state (a training checkpoint); with `files` (name → text) those
    /// files too. The folder is written whole beside `dir` and switched in atomically, with a
    /// sha256 per file in `moe_checkpoint.json`: a reader sees the previous save or this one.
    #[napi(ts_args_type = "dir: string, trainerState?: string | null, files?: Record<string, string>", ts_return_type = "Promise<void>")]
    pub fn save(&self, dir: Unknown, trainer_state: Option<Unknown>, files: Option<Unknown>) -> AsyncTask<CoreTask<Core, (), ()>> {
        let checked = (|| {
            let dir = PathBuf::from(args::string("dir", dir)?);
            let trainer = if absent(&trainer_state) { None } else { Some(args::string("trainerState", trainer_state.unwrap())?) };
            let files: Vec<(String, Vec<u8>)> = match args::json_object("files", files)? {
                serde_json::Value::Object(o) => o
                    .into_iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(t) => Ok((k, t.into_bytes())),
                        _ => Err(MoeError::InvalidConfig(format!("files.{k} must be a string"))),
                    })
                    .collect::<moe_core::Result<_>>()?,
                _ => Vec::new(),
            };
            Ok(move |m: &mut Core| m.save(&dir, trainer.as_deref(), &files))
        })();
        task(&self.inner, "MoeModel.save", |()| (), checked)
    }

    /// Loads a checkpoint of the same architecture into this model (optimiser included when the
    /// checkpoint has it); resolves to the saved trainer state. On error nothing changes.
    #[napi(ts_args_type = "dir: string", ts_return_type = "Promise<string | null>")]
    pub fn load_checkpoint(&self, dir: Unknown) -> AsyncTask<CoreTask<Core, Option<String>, Option<String>>> {
        let checked = args::string("dir", dir).map(|dir| move |m: &mut Core| m.load_checkpoint(&PathBuf::from(dir)));
        task(&self.inner, "MoeModel.loadCheckpoint", |s| s, checked)
    }

    /// Continues `prompt` by up to `maxNewTokens` tokens with a key/value cache.
    #[napi(ts_args_type = "prompt: Uint32Array, maxNewTokens: number, options?: GenerateOptions", ts_return_type = "Promise<Uint32Array>")]
    pub fn generate(&self, prompt: Unknown, max_new_tokens: Unknown, options: Option<Unknown>) -> AsyncTask<CoreTask<Core, Vec<u32>, Uint32Array>> {
        let checked = (|| {
            let (prompt, n) = (args::u32s("prompt", prompt)?, args::count("maxNewTokens", max_new_tokens, 0)?);
            let opts: GenerateOptions = moe_core::error::from_json(args::json_object("options", options)?)?;
            Ok(move |m: &mut Core| generate(m, &prompt, n, &opts))
        })();
        task(&self.inner, "MoeModel.generate", Uint32Array::new, checked)
    }
}

shared_methods!(MoeModel, "Required<ModelConfig>", "MoeModel");
