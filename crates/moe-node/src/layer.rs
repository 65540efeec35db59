//! `MoeLayer`: the standalone MoE block.

use crate::args::{self, absent};
use crate::model::device_option;
use crate::{guard, js_error, shared, shared_methods, task, with, CoreTask, Info, ParameterInfo, Shared};
use moe_core::{MoeConfig, MoeError};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

type Core = moe_core::MoeLayer;

/// Type-only mirror of `moe_core::MoeConfig` (the constructor takes it as JSON so that the core
/// validates it and reports INVALID_CONFIG). Hugging Face Qwen3MoeConfig field names.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct MoeLayerConfig {
    #[napi(js_name = "hidden_size")]
    pub hidden_size: u32,
    #[napi(js_name = "moe_intermediate_size")]
    pub moe_intermediate_size: u32,
    #[napi(js_name = "num_experts")]
    pub num_experts: u32,
    #[napi(js_name = "num_experts_per_tok")]
    pub num_experts_per_tok: u32,
    #[napi(js_name = "norm_topk_prob")]
    pub norm_topk_prob: Option<bool>,
    /// F of a shared expert beside the routed ones, gated by sigmoid(x · w) (Qwen2-MoE); 0 = none
    #[napi(js_name = "shared_expert_intermediate_size")]
    pub shared_expert_intermediate_size: Option<u32>,
    #[napi(js_name = "initializer_range")]
    pub initializer_range: Option<f64>,
    pub seed: Option<u32>,
}

#[napi(object)]
pub struct RoutingStats {
    /// (B, E) tokens of sequence b that chose expert i
    pub counts: Float32Array,
    /// (B, E) sum over the sequence's valid tokens of the softmax score of expert i
    pub score_sums: Float32Array,
    /// (B) sum over valid tokens of their top-k scores
    pub topk_score_sums: Float32Array,
    /// (B) sum over valid tokens of logsumexp(router logits)^2
    pub z_sums: Float32Array,
    /// (B) valid (mask 1) tokens
    pub valid_tokens: Float32Array,
}

#[napi(object)]
pub struct ForwardResult {
    /// (T, hidden_size)
    pub output: Float32Array,
    pub stats: RoutingStats,
}

#[napi(object, object_from_js = false)]
pub struct ForwardOptions {
    /// (T) 1 = valid token; absent = all valid
    pub mask: Option<Uint8Array>,
    /// keep activations for `backward` (default true); false = statistics-only forward
    pub store: Option<bool>,
}

fn forward_result(o: moe_core::ForwardOutput) -> ForwardResult {
    let s = o.stats;
    ForwardResult {
        output: Float32Array::new(o.out),
        stats: RoutingStats {
            counts: Float32Array::new(s.counts),
            score_sums: Float32Array::new(s.score_sums),
            topk_score_sums: Float32Array::new(s.topk_score_sums),
            z_sums: Float32Array::new(s.z_sums),
            valid_tokens: Float32Array::new(s.valid_tokens),
        },
    }
}

/// A standalone MoE layer (router + dropless SwiGLU experts) on the CPU or the GPU. Parameters and gradients
/// are addressed by their Hugging Face names: `gate.weight` [E, d],
/// `experts.{e}.gate_proj.weight` / `up_proj.weight` [F, d], `experts.{e}.down_proj.weight` [d, F].
/// Calls run in the order they are made, as on `MoeModel`.
#[napi(custom_finalize)]
pub struct MoeLayer {
    inner: Shared<Core>,
    info: Info,
}

#[napi]
impl MoeLayer {
    /// `config` uses the Qwen3MoeConfig names: hidden_size, moe_intermediate_size, num_experts,
    /// num_experts_per_tok, norm_topk_prob (default false), initializer_range (0.02), seed (0).
    /// The layer runs on `options.device`.
    #[napi(constructor, ts_args_type = "config: MoeLayerConfig, options?: DeviceOptions")]
    pub fn new(env: Env, config: Option<Unknown>, options: Option<Unknown>) -> Result<Self> {
        let mut layer = (|| {
            if absent(&config) {
                return Err(MoeError::InvalidConfig("config must be an object".into()));
            }
            let (config, device) = (args::json_object("config", config)?, device_option(options)?);
            guard(|| -> moe_core::Result<Core> {
                let mut l = MoeConfig::from_json(config).and_then(Core::new)?;
                l.to_device(device.as_deref())?;
                Ok(l)
            })
        })()
        .map_err(|e| js_error(&env, e))?;
        let config = serde_json::to_value(&layer.cfg).unwrap_or_default();
        let device = layer.device();
        let info = Info::new(&env, device, config, layer.store.host().ok());
        Ok(MoeLayer { inner: shared(layer), info })
    }

    /// Forward on `numSequences` equal-length sequences packed in x (T, hidden_size). Resolves to the
    /// output and per-sequence routing statistics. With `store: false` it keeps no activations.
    #[napi(ts_args_type = "x: Float32Array, numSequences: number, options?: ForwardOptions", ts_return_type = "Promise<ForwardResult>")]
    pub fn forward(&self, x: Unknown, num_sequences: Unknown, options: Option<Unknown>) -> AsyncTask<CoreTask<Core, moe_core::ForwardOutput, ForwardResult>> {
        let checked = (|| {
            let (x, b) = (args::f32s("x", x)?, args::count("numSequences", num_sequences, 1)?);
            let o = args::options("options", options, &["mask", "store"])?;
            let (mask, store) = (o.field("mask", args::u8s)?, o.field("store", args::boolean)?.unwrap_or(true));
            Ok(move |l: &mut Core| l.forward(&x, mask.as_deref(), b, store))
        })();
        task(&self.inner, "MoeLayer.forward", forward_result, checked)
    }

    /// Backward of the last stored forward: dOut (T, hidden_size), pressure (B, E), zScale = beta/T_glob.
    /// Accumulates parameter gradients; resolves to dx (T, hidden_size). A stored forward serves one
    /// backward: a second one fails with INVALID_STATE.
    #[napi(ts_args_type = "dOut: Float32Array, pressure: Float32Array, zScale: number", ts_return_type = "Promise<Float32Array>")]
    pub fn backward(&self, d_out: Unknown, pressure: Unknown, z_scale: Unknown) -> AsyncTask<CoreTask<Core, Vec<f32>, Float32Array>> {
        let checked = (|| {
            let (dout, pressure, z) = (args::f32s("dOut", d_out)?, args::f32s("pressure", pressure)?, args::number("zScale", z_scale)?);
            Ok(move |l: &mut Core| l.backward(&dout, &pressure, z as f32))
        })();
        task(&self.inner, "MoeLayer.backward", Float32Array::new, checked)
    }
}

shared_methods!(MoeLayer, "Required<MoeLayerConfig>", "MoeLayer");
