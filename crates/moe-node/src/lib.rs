//! napi-rs binding of moe-core. Translation only: JS values in, one core call, JS values out.
//! Real work runs as an `AsyncTask` on the libuv pool; core errors become JS `Error`s whose `code`
//! is the stable code of the `MoeError` variant; a panic becomes an `INTERNAL` error, never a crash.

use moe_core::{AdamWConfig, MoeConfig, MoeError};
use napi::bindgen_prelude::*;
use napi::{Env, JsError};
use napi_derive::napi;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// A JS `Error` with `code` = the core error's code.
fn js_error(env: &Env, e: MoeError) -> napi::Error {
    napi::Error::from(JsError::from(napi::Error::new(e.code(), e.to_string())).into_unknown(*env))
}

/// Runs a core call, turning a panic into `MoeError::Internal`.
fn guard<T>(f: impl FnOnce() -> moe_core::Result<T>) -> moe_core::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(MoeError::Internal(format!("panic in native code: {}", msg.unwrap_or_default())))
    })
}

type Shared = Arc<Mutex<Option<moe_core::MoeLayer>>>;

/// Locks the layer and runs `f` on it under `guard`. A layer whose lock was poisoned by a panic, or
/// that was disposed, refuses further work.
fn with_layer<T>(shared: &Shared, f: impl FnOnce(&mut moe_core::MoeLayer) -> moe_core::Result<T>) -> moe_core::Result<T> {
    let mut lock = shared
        .lock()
        .map_err(|_| MoeError::InvalidState("the layer was left inconsistent by an earlier internal error".into()))?;
    let layer = lock.as_mut().ok_or_else(|| MoeError::InvalidState("the layer was disposed".into()))?;
    guard(|| f(layer))
}

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
    #[napi(js_name = "initializer_range")]
    pub initializer_range: Option<f64>,
    pub seed: Option<u32>,
}

/// Type-only mirror of `moe_core::AdamWConfig`.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct AdamWOptions {
    pub lr: f64,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
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

#[napi(object)]
pub struct ForwardOptions {
    /// (T) 1 = valid token; absent = all valid
    pub mask: Option<Uint8Array>,
    /// keep activations for `backward` (default true); false = statistics-only forward
    pub store: Option<bool>,
}

#[napi(object)]
pub struct ParameterInfo {
    pub name: String,
    pub shape: Vec<u32>,
}

pub struct ForwardTask {
    layer: Shared,
    x: Vec<f32>,
    mask: Option<Vec<u8>>,
    num_sequences: usize,
    store: bool,
}

impl Task for ForwardTask {
    type Output = moe_core::Result<moe_core::ForwardOutput>;
    type JsValue = ForwardResult;
    fn compute(&mut self) -> Result<Self::Output> {
        Ok(with_layer(&self.layer, |l| l.forward(&self.x, self.mask.as_deref(), self.num_sequences, self.store)))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<ForwardResult> {
        let o = out.map_err(|e| js_error(&env, e))?;
        Ok(ForwardResult {
            output: Float32Array::new(o.out),
            stats: RoutingStats {
                counts: Float32Array::new(o.stats.counts),
                score_sums: Float32Array::new(o.stats.score_sums),
                topk_score_sums: Float32Array::new(o.stats.topk_score_sums),
                z_sums: Float32Array::new(o.stats.z_sums),
                valid_tokens: Float32Array::new(o.stats.valid_tokens),
            },
        })
    }
}

pub struct BackwardTask {
    layer: Shared,
    dout: Vec<f32>,
    pressure: Vec<f32>,
    z_scale: f32,
}

impl Task for BackwardTask {
    type Output = moe_core::Result<Vec<f32>>;
    type JsValue = Float32Array;
    fn compute(&mut self) -> Result<Self::Output> {
        Ok(with_layer(&self.layer, |l| l.backward(&self.dout, &self.pressure, self.z_scale)))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<Float32Array> {
        out.map(Float32Array::new).map_err(|e| js_error(&env, e))
    }
}

pub struct StepTask {
    layer: Shared,
    opt: AdamWConfig,
}

impl Task for StepTask {
    type Output = moe_core::Result<f64>;
    type JsValue = f64;
    fn compute(&mut self) -> Result<Self::Output> {
        Ok(with_layer(&self.layer, |l| l.store.step(&self.opt)))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<f64> {
        out.map_err(|e| js_error(&env, e))
    }
}

/// A standalone MoE layer (router + dropless SwiGLU experts) on the CPU. Parameters and gradients
/// are addressed by their Hugging Face names: `gate.weight` [E, d],
/// `experts.{e}.gate_proj.weight` / `up_proj.weight` [F, d], `experts.{e}.down_proj.weight` [d, F].
#[napi]
pub struct MoeLayer {
    inner: Shared,
}

#[napi]
impl MoeLayer {
    /// `config` uses the Qwen3MoeConfig names: hidden_size, moe_intermediate_size, num_experts,
    /// num_experts_per_tok, norm_topk_prob (default false), initializer_range (0.02), seed (0).
    #[napi(constructor, ts_args_type = "config: MoeLayerConfig")]
    pub fn new(env: Env, config: serde_json::Value) -> Result<Self> {
        let layer = guard(|| MoeConfig::from_json(config).and_then(moe_core::MoeLayer::new)).map_err(|e| js_error(&env, e))?;
        Ok(MoeLayer { inner: Arc::new(Mutex::new(Some(layer))) })
    }

    fn sync<T>(&self, env: &Env, f: impl FnOnce(&mut moe_core::MoeLayer) -> moe_core::Result<T>) -> Result<T> {
        with_layer(&self.inner, f).map_err(|e| js_error(env, e))
    }

    /// The validated configuration, defaults filled in.
    #[napi(getter, ts_return_type = "Required<MoeLayerConfig>")]
    pub fn config(&self, env: Env) -> Result<serde_json::Value> {
        self.sync(&env, |l| serde_json::to_value(&l.cfg).map_err(|e| MoeError::Internal(e.to_string())))
    }

    #[napi(getter)]
    pub fn num_parameters(&self, env: Env) -> Result<f64> {
        self.sync(&env, |l| Ok(l.store.params.len() as f64))
    }

    /// Every parameter, in the order of the flat buffer.
    #[napi]
    pub fn parameters(&self, env: Env) -> Result<Vec<ParameterInfo>> {
        self.sync(&env, |l| {
            Ok(l.store.specs.iter().map(|s| ParameterInfo { name: s.name.clone(), shape: s.shape.iter().map(|&d| d as u32).collect() }).collect())
        })
    }

    /// A copy of parameter `name`, row-major.
    #[napi]
    pub fn get_parameter(&self, env: Env, name: String) -> Result<Float32Array> {
        self.sync(&env, |l| l.store.param(&name).map(|p| Float32Array::new(p.to_vec())))
    }

    #[napi]
    pub fn set_parameter(&self, env: Env, name: String, data: Float32Array) -> Result<()> {
        self.sync(&env, |l| l.store.set_param(&name, &data))
    }

    /// A copy of the accumulated gradient of parameter `name`.
    #[napi]
    pub fn get_grad(&self, env: Env, name: String) -> Result<Float32Array> {
        self.sync(&env, |l| l.store.grad(&name).map(|g| Float32Array::new(g.to_vec())))
    }

    /// All gradients as one flat array in parameter order (for all-reduce).
    #[napi]
    pub fn get_grads(&self, env: Env) -> Result<Float32Array> {
        self.sync(&env, |l| Ok(Float32Array::new(l.store.grads.clone())))
    }

    /// Replaces all gradients (e.g. with their all-reduced sum).
    #[napi]
    pub fn set_grads(&self, env: Env, data: Float32Array) -> Result<()> {
        self.sync(&env, |l| l.store.set_grads(&data))
    }

    #[napi]
    pub fn zero_grad(&self, env: Env) -> Result<()> {
        self.sync(&env, |l| {
            l.store.zero_grad();
            Ok(())
        })
    }

    /// Forward on `numSequences` equal-length sequences packed in x (T, hidden_size). Resolves to the
    /// output and per-sequence routing statistics. With `store: false` it keeps no activations.
    #[napi(ts_return_type = "Promise<ForwardResult>")]
    pub fn forward(&self, x: Float32Array, num_sequences: u32, options: Option<ForwardOptions>) -> AsyncTask<ForwardTask> {
        let (mask, store) = options.map_or((None, true), |o| (o.mask.map(|m| m.to_vec()), o.store.unwrap_or(true)));
        AsyncTask::new(ForwardTask { layer: self.inner.clone(), x: x.to_vec(), mask, num_sequences: num_sequences as usize, store })
    }

    /// Backward of the last stored forward: dOut (T, hidden_size), pressure (B, E), zScale = beta/T_glob.
    /// Accumulates parameter gradients; resolves to dx (T, hidden_size).
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn backward(&self, d_out: Float32Array, pressure: Float32Array, z_scale: f64) -> AsyncTask<BackwardTask> {
        AsyncTask::new(BackwardTask { layer: self.inner.clone(), dout: d_out.to_vec(), pressure: pressure.to_vec(), z_scale: z_scale as f32 })
    }

    /// One AdamW step: { lr, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weightDecay = 0, maxGradNorm? }.
    /// Resolves to the gradient norm before clipping.
    #[napi(ts_args_type = "options: AdamWOptions", ts_return_type = "Promise<number>")]
    pub fn step(&self, env: Env, options: serde_json::Value) -> Result<AsyncTask<StepTask>> {
        let opt = guard(|| AdamWConfig::from_json(options)).map_err(|e| js_error(&env, e))?;
        Ok(AsyncTask::new(StepTask { layer: self.inner.clone(), opt }))
    }

    /// Frees the layer's memory now; any later call fails with INVALID_STATE.
    #[napi]
    pub fn dispose(&self) {
        if let Ok(mut lock) = self.inner.lock() {
            lock.take();
        }
    }
}

/// Panics inside native code on purpose, to prove that a panic reaches JS as an `INTERNAL` error.
#[napi]
pub fn internal_test_panic(env: Env) -> Result<()> {
    guard(|| -> moe_core::Result<()> { panic!("deliberate test panic") }).map_err(|e| js_error(&env, e))
}
