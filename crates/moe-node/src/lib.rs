//! napi-rs binding of moe-core and moe-data. Translation only: JS values in, one core call, JS
//! values out. Real work runs as an `AsyncTask` on the libuv pool; core errors become JS `Error`s
//! whose `code` is the stable code of the error variant; a panic becomes an `INTERNAL` error,
//! never a crash.

pub mod data;
pub mod layer;
pub mod model;

use moe_core::MoeError;
use napi::bindgen_prelude::*;
use napi::{Env, JsError};
use napi_derive::napi;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// The error types of the crates bound here: a stable code, a message, and the variant a panic
/// becomes.
pub(crate) trait Coded: std::fmt::Display {
    fn code(&self) -> &'static str;
    fn internal(msg: String) -> Self;
}

impl Coded for MoeError {
    fn code(&self) -> &'static str {
        MoeError::code(self)
    }
    fn internal(msg: String) -> Self {
        MoeError::Internal(msg)
    }
}

impl Coded for moe_data::DataError {
    fn code(&self) -> &'static str {
        moe_data::DataError::code(self)
    }
    fn internal(msg: String) -> Self {
        moe_data::DataError::Internal(msg)
    }
}

/// A JS `Error` with `code` = the error's code.
pub(crate) fn js_error(env: &Env, e: impl Coded) -> napi::Error {
    napi::Error::from(JsError::from(napi::Error::new(e.code(), e.to_string())).into_unknown(*env))
}

/// Runs a native call, turning a panic into the `INTERNAL` variant. The core's test failpoints
/// (`MOE_FAILPOINTS`) are configured before the first call.
pub(crate) fn guard<T, E: Coded>(f: impl FnOnce() -> std::result::Result<T, E>) -> std::result::Result<T, E> {
    moe_core::error::failpoints_from_env().map_err(|e| E::internal(e.to_string()))?;
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(E::internal(format!("panic in native code: {}", msg.unwrap_or_default())))
    })
}

/// A core object shared between the JS wrapper and its running tasks; `None` once disposed.
pub(crate) type Shared<M> = Arc<Mutex<Option<M>>>;

/// Locks the object and runs `f` on it under `guard`. An object whose lock was poisoned by a panic,
/// or that was disposed, refuses further work.
pub(crate) fn with<M, T>(shared: &Shared<M>, f: impl FnOnce(&mut M) -> moe_core::Result<T>) -> moe_core::Result<T> {
    let mut lock = shared
        .lock()
        .map_err(|_| MoeError::InvalidState("the object was left inconsistent by an earlier internal error".into()))?;
    let obj = lock.as_mut().ok_or_else(|| MoeError::InvalidState("the object was disposed".into()))?;
    guard(|| f(obj))
}

pub(crate) fn dispose<M>(shared: &Shared<M>) {
    if let Ok(mut lock) = shared.lock() {
        lock.take();
    }
}

type Work<M, T> = Box<dyn FnOnce(&mut M) -> moe_core::Result<T> + Send>;

/// The one async task: runs `work` on the shared core object off the JS thread, then converts the
/// result to a JS value on it.
pub struct CoreTask<M: Send, T: Send, J> {
    shared: Shared<M>,
    work: Option<Work<M, T>>,
    convert: fn(T) -> J,
}

pub(crate) fn task<M: Send + 'static, T: Send + 'static, J>(
    shared: &Shared<M>,
    convert: fn(T) -> J,
    work: impl FnOnce(&mut M) -> moe_core::Result<T> + Send + 'static,
) -> AsyncTask<CoreTask<M, T, J>>
where
    J: ToNapiValue + TypeName,
{
    AsyncTask::new(CoreTask { shared: shared.clone(), work: Some(Box::new(work)), convert })
}

impl<M: Send, T: Send + 'static, J: ToNapiValue + TypeName> Task for CoreTask<M, T, J> {
    type Output = moe_core::Result<T>;
    type JsValue = J;
    fn compute(&mut self) -> Result<Self::Output> {
        let work = self.work.take().expect("a task runs once");
        Ok(with(&self.shared, work))
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<J> {
        out.map(self.convert).map_err(|e| js_error(&env, e))
    }
}

/// Where a model or layer runs.
#[napi(object)]
pub struct DeviceOptions {
    /// "auto" (a real GPU if there is one, else the CPU), "gpu" or "cpu"; default: MOE_DEVICE or auto
    #[napi(ts_type = "'auto' | 'gpu' | 'cpu'")]
    pub device: Option<String>,
}

pub(crate) fn device_name(d: moe_core::gpu::Device) -> &'static str {
    match d {
        moe_core::gpu::Device::Gpu => "gpu",
        moe_core::gpu::Device::Cpu => "cpu",
    }
}

#[napi(object)]
pub struct ParameterInfo {
    pub name: String,
    pub shape: Vec<u32>,
}

/// Type-only mirror of `moe_core::AdamWConfig` (the step takes it as JSON for the core to validate).
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct AdamWOptions {
    pub lr: f64,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
    /// warm-up then cosine decay of lr to minLr, by the optimiser's own step count
    pub schedule: Option<LrSchedule>,
}

#[napi(object, object_from_js = false, object_to_js = false)]
pub struct LrSchedule {
    pub warmup_steps: u32,
    pub total_steps: u32,
    pub min_lr: Option<f64>,
}

/// The methods `MoeModel` and `MoeLayer` share — device, configuration, router bias, parameters
/// by name and as one flat buffer, gradients, the optimiser step, disposal — written once and
/// generated for each class (napi classes cannot inherit). Each is one core call on the object's
/// `Placed` store or the core object itself.
macro_rules! shared_methods {
    ($class:ident, $config:literal) => {
        #[napi]
        impl $class {
            /// Where it runs: "gpu" or "cpu".
            #[napi(getter, ts_return_type = "'gpu' | 'cpu'")]
            pub fn device(&self, env: Env) -> Result<String> {
                with(&self.inner, |m| Ok($crate::device_name(m.device()).to_string())).map_err(|e| js_error(&env, e))
            }

            /// The validated configuration, defaults filled in.
            #[napi(getter, ts_return_type = $config)]
            pub fn config(&self, env: Env) -> Result<serde_json::Value> {
                with(&self.inner, |m| serde_json::to_value(&m.cfg).map_err(|e| MoeError::Internal(e.to_string()))).map_err(|e| js_error(&env, e))
            }

            /// The routers' selection biases, (L, E) for a model and (E) for a layer: added to the
            /// scores to choose the top-k experts, never to their weights (auxiliary-loss-free
            /// balancing); zero unless set.
            #[napi(getter)]
            pub fn router_bias(&self, env: Env) -> Result<Float32Array> {
                with(&self.inner, |m| Ok(Float32Array::new(m.router_bias().to_vec()))).map_err(|e| js_error(&env, e))
            }

            #[napi]
            pub fn set_router_bias(&self, env: Env, bias: Float32Array) -> Result<()> {
                with(&self.inner, |m| m.set_router_bias(&bias)).map_err(|e| js_error(&env, e))
            }

            /// Number of parameters (elements of the flat buffer).
            #[napi(getter)]
            pub fn num_parameters(&self, env: Env) -> Result<f64> {
                with(&self.inner, |m| Ok(m.store.host()?.params.len() as f64)).map_err(|e| js_error(&env, e))
            }

            /// Every parameter by its Hugging Face name, in the order of the flat buffer.
            #[napi]
            pub fn parameters(&self, env: Env) -> Result<Vec<ParameterInfo>> {
                with(&self.inner, |m| {
                    Ok(m.store.host()?.specs.iter().map(|p| ParameterInfo { name: p.name.clone(), shape: p.shape.iter().map(|&d| d as u32).collect() }).collect())
                })
                .map_err(|e| js_error(&env, e))
            }

            /// A copy of parameter `name`, row-major.
            #[napi]
            pub fn get_parameter(&self, env: Env, name: String) -> Result<Float32Array> {
                with(&self.inner, |m| m.store.host()?.param(&name).map(|p| Float32Array::new(p.to_vec()))).map_err(|e| js_error(&env, e))
            }

            #[napi]
            pub fn set_parameter(&self, env: Env, name: String, data: Float32Array) -> Result<()> {
                with(&self.inner, |m| m.store.host_mut()?.set_param(&name, &data)).map_err(|e| js_error(&env, e))
            }

            /// A copy of the accumulated gradient of parameter `name`.
            #[napi]
            pub fn get_grad(&self, env: Env, name: String) -> Result<Float32Array> {
                with(&self.inner, |m| m.store.host()?.grad(&name).map(|g| Float32Array::new(g.to_vec()))).map_err(|e| js_error(&env, e))
            }

            /// All parameters as one flat array in parameter order (e.g. to broadcast rank 0's copy).
            #[napi]
            pub fn get_params(&self, env: Env) -> Result<Float32Array> {
                with(&self.inner, |m| Ok(Float32Array::new(m.store.host()?.params.clone()))).map_err(|e| js_error(&env, e))
            }

            #[napi]
            pub fn set_params(&self, env: Env, data: Float32Array) -> Result<()> {
                with(&self.inner, |m| m.store.host_mut()?.set_params(&data)).map_err(|e| js_error(&env, e))
            }

            /// All gradients as one flat array in parameter order (read, all-reduce, write back);
            /// copied into `out` when given, a buffer reused from step to step.
            #[napi]
            pub fn get_grads(&self, env: Env, out: Option<Float32Array>) -> Result<Float32Array> {
                with(&self.inner, |m| {
                    let g = m.store.grads()?;
                    let Some(mut out) = out else { return Ok(Float32Array::new(g.to_vec())) };
                    moe_core::error::check_len("out", out.len(), g.len())?;
                    // SAFETY: a synchronous call on the JS thread: nothing else touches the buffer meanwhile.
                    unsafe { out.as_mut() }.copy_from_slice(g);
                    Ok(out)
                })
                .map_err(|e| js_error(&env, e))
            }

            /// Replaces all gradients (e.g. with their all-reduced sum).
            #[napi]
            pub fn set_grads(&self, env: Env, data: Float32Array) -> Result<()> {
                with(&self.inner, |m| m.store.set_grads(&data)).map_err(|e| js_error(&env, e))
            }

            #[napi]
            pub fn zero_grad(&self, env: Env) -> Result<()> {
                with(&self.inner, |m| m.store.zero_grad()).map_err(|e| js_error(&env, e))
            }

            /// One AdamW step on the accumulated gradients (see AdamWOptions); resolves to the
            /// gradient norm before clipping.
            #[napi(ts_args_type = "options: AdamWOptions", ts_return_type = "Promise<number>")]
            pub fn step(&self, env: Env, options: serde_json::Value) -> Result<AsyncTask<CoreTask<Core, f64, f64>>> {
                let opt = guard(|| moe_core::AdamWConfig::from_json(options)).map_err(|e| js_error(&env, e))?;
                Ok(task(&self.inner, |n| n, move |m| m.store.step(&opt)))
            }

            /// Frees the memory now; any later call fails with INVALID_STATE.
            #[napi]
            pub fn dispose(&self) {
                $crate::dispose(&self.inner)
            }
        }
    };
}
pub(crate) use shared_methods;

/// The learning rate the optimiser applies at step `step` (1-based) for these options: the core's
/// own warm-up + cosine schedule, so that logs never re-derive it.
#[napi(ts_args_type = "options: AdamWOptions, step: number")]
pub fn lr_at(env: Env, options: serde_json::Value, step: u32) -> Result<f64> {
    guard(|| moe_core::AdamWConfig::from_json(options).map(|o| o.lr_at(step as u64) as f64)).map_err(|e| js_error(&env, e))
}

/// Valid positions per sequence (B) of `numSequences` sequences packed in `numTokens` tokens, with
/// an optional mask (B, S): exactly what `MoeModel.forward` reports as `validTokens` (position t
/// predicts token t + 1 and counts when t < S - 1 and the target's mask entry is 1). The trainer
/// sums it into T_glob before a step's first forward.
#[napi]
pub fn valid_tokens(env: Env, num_tokens: u32, num_sequences: u32, mask: Option<Uint8Array>) -> Result<Float32Array> {
    guard(|| moe_core::model::valid_tokens(num_tokens as usize, num_sequences as usize, mask.as_deref()))
        .map(Float32Array::new)
        .map_err(|e| js_error(&env, e))
}
