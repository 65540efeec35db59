//! `MoeModel`: the Qwen3-MoE language model.

use crate::{guard, js_error, shared_methods, task, with, CoreTask, DeviceOptions, ParameterInfo, Shared};
use moe_core::generate::{generate, GenerateOptions};
use moe_core::{MoeError, ModelConfig, ModelStats};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
}

/// Per layer and per sequence routing statistics of one forward, and its loss (DESIGN §3).
#[napi(object)]
pub struct ModelForwardResult {
    /// summed cross-entropy (nats) over valid positions
    pub loss: f64,
    /// (B) summed cross-entropy per sequence
    pub loss_sums: Float32Array,
    /// (B) valid positions per sequence
    pub valid_tokens: Float32Array,
    /// (L, B, E)
    pub counts: Float32Array,
    /// (L, B, E)
    pub score_sums: Float32Array,
    /// (L, B)
    pub topk_score_sums: Float32Array,
    /// (L, B)
    pub z_sums: Float32Array,
}

fn forward_result(s: ModelStats) -> ModelForwardResult {
    ModelForwardResult {
        loss: s.loss,
        loss_sums: Float32Array::new(s.loss_sums),
        valid_tokens: Float32Array::new(s.valid_tokens),
        counts: Float32Array::new(s.counts),
        score_sums: Float32Array::new(s.score_sums),
        topk_score_sums: Float32Array::new(s.topk_score_sums),
        z_sums: Float32Array::new(s.z_sums),
    }
}

#[napi(object)]
pub struct ModelForwardOptions {
    /// (B, S) 1 = token t is a prediction target (position t - 1's loss counts); absent = all
    pub mask: Option<Uint8Array>,
    /// keep activations for `backward` (default true); false = statistics-only forward
    pub store: Option<bool>,
}

#[napi(object)]
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

pub struct LoadTask {
    dir: PathBuf,
    device: Option<String>,
}

impl Task for LoadTask {
    type Output = moe_core::Result<(Core, Option<String>)>;
    type JsValue = MoeModel;
    fn compute(&mut self) -> Result<Self::Output> {
        Ok(guard(|| {
            let (mut m, trainer) = Core::from_checkpoint(&self.dir)?;
            m.to_device(self.device.as_deref())?;
            Ok((m, trainer))
        }))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<MoeModel> {
        let (m, trainer) = out.map_err(|e| js_error(&env, e))?;
        Ok(MoeModel { inner: Arc::new(Mutex::new(Some(m))), trainer_state: trainer })
    }
}

/// A Qwen3-MoE causal language model on the CPU or the GPU. Parameters use the Hugging Face names
/// (`model.layers.{l}.mlp.experts.{e}.up_proj.weight`, ...); checkpoints load in transformers.
#[napi]
pub struct MoeModel {
    inner: Shared<Core>,
    trainer_state: Option<String>,
}

#[napi]
impl MoeModel {
    /// A freshly initialised model (seeded by `config.seed`) on `options.device`.
    #[napi(constructor, ts_args_type = "config: ModelConfig, options?: DeviceOptions")]
    pub fn new(env: Env, config: serde_json::Value, options: Option<DeviceOptions>) -> Result<Self> {
        let device = options.and_then(|o| o.device);
        let m = guard(|| -> moe_core::Result<Core> {
            let mut m = ModelConfig::from_json(config).and_then(Core::new)?;
            m.to_device(device.as_deref())?;
            Ok(m)
        })
        .map_err(|e| js_error(&env, e))?;
        Ok(MoeModel { inner: Arc::new(Mutex::new(Some(m))), trainer_state: None })
    }

    /// A model read from a checkpoint folder (config.json + model.safetensors [+ training state]).
    #[napi(ts_args_type = "dir: string, options?: DeviceOptions", ts_return_type = "Promise<MoeModel>")]
    pub fn from_checkpoint(dir: String, options: Option<DeviceOptions>) -> AsyncTask<LoadTask> {
        AsyncTask::new(LoadTask { dir: dir.into(), device: options.and_then(|o| o.device) })
    }

    /// The trainer state (JSON) saved with the checkpoint this model was made from, if any.
    #[napi(getter)]
    pub fn trainer_state(&self) -> Option<String> {
        self.trainer_state.clone()
    }

    /// Optimiser steps taken (restored by checkpoints).
    #[napi(getter)]
    pub fn optimizer_step(&self, env: Env) -> Result<f64> {
        with(&self.inner, |m| Ok(m.store.steps() as f64)).map_err(|e| js_error(&env, e))
    }

    /// Forward on tokens (B, S) with B = numSequences: the loss and the per-layer, per-sequence
    /// routing statistics. `store: false` keeps no activations (evaluation, statistics pre-pass).
    #[napi(ts_return_type = "Promise<ModelForwardResult>")]
    pub fn forward(&self, tokens: Uint32Array, num_sequences: u32, options: Option<ModelForwardOptions>) -> AsyncTask<CoreTask<Core, ModelStats, ModelForwardResult>> {
        let (mask, store) = options.map_or((None, true), |o| (o.mask.map(|m| m.to_vec()), o.store.unwrap_or(true)));
        let tokens = tokens.to_vec();
        task(&self.inner, forward_result, move |m| m.forward(&tokens, mask.as_deref(), num_sequences as usize, store))
    }

    /// Logits (B*S, vocab_size) of every position; stores nothing.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn logits(&self, tokens: Uint32Array, num_sequences: u32) -> AsyncTask<CoreTask<Core, Vec<f32>, Float32Array>> {
        let tokens = tokens.to_vec();
        task(&self.inner, Float32Array::new, move |m| m.logits(&tokens, num_sequences as usize))
    }

    /// Backward of the last stored forward with router pressure (L, B, E); accumulates gradients.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn backward(&self, pressure: Float32Array, scales: BackwardScales) -> AsyncTask<CoreTask<Core, (), ()>> {
        let pressure = pressure.to_vec();
        let (lm, z) = (scales.lm_scale as f32, scales.z_scale.unwrap_or(0.0) as f32);
        task(&self.inner, |()| (), move |m| m.backward(&pressure, lm, z))
    }

    /// Writes config.json + model.safetensors into `dir`; with `trainerState` (JSON) also the
    /// optimiser state: a training checkpoint. Every file is replaced atomically.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, dir: String, trainer_state: Option<String>) -> AsyncTask<CoreTask<Core, (), ()>> {
        task(&self.inner, |()| (), move |m| m.save(&PathBuf::from(dir), trainer_state.as_deref()))
    }

    /// Loads a checkpoint of the same architecture into this model (optimiser included when the
    /// checkpoint has it); resolves to the saved trainer state. On error nothing changes.
    #[napi(ts_return_type = "Promise<string | null>")]
    pub fn load_checkpoint(&self, dir: String) -> AsyncTask<CoreTask<Core, Option<String>, Option<String>>> {
        task(&self.inner, |s| s, move |m| m.load_checkpoint(&PathBuf::from(dir)))
    }

    /// Continues `prompt` by up to `maxNewTokens` tokens with a key/value cache.
    #[napi(ts_args_type = "prompt: Uint32Array, maxNewTokens: number, options?: GenerateOptions", ts_return_type = "Promise<Uint32Array>")]
    pub fn generate(&self, env: Env, prompt: Uint32Array, max_new_tokens: u32, options: Option<serde_json::Value>) -> Result<AsyncTask<CoreTask<Core, Vec<u32>, Uint32Array>>> {
        let opts: GenerateOptions = serde_json::from_value(options.unwrap_or(serde_json::json!({})))
            .map_err(|e| js_error(&env, MoeError::InvalidConfig(e.to_string())))?;
        let prompt = prompt.to_vec();
        Ok(task(&self.inner, Uint32Array::new, move |m| generate(m, &prompt, max_new_tokens as usize, &opts)))
    }

}

shared_methods!(MoeModel, "Required<ModelConfig>");
