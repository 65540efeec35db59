//! napi-rs binding of moe-core and moe-data. Translation only: JS values in, one core call, JS
//! values out. Real work runs as an `AsyncTask` on the libuv pool; core errors become JS `Error`s
//! whose `code` is the stable code of the error variant; a panic becomes an `INTERNAL` error,
//! never a crash.

pub(crate) mod args;
pub mod data;
pub mod layer;
pub mod model;

use moe_core::MoeError;
use napi::bindgen_prelude::*;
use napi::{Env, JsError};
use napi_derive::napi;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex};

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

/// A core object shared between its JS wrapper and its tasks, with the order of its calls.
/// Asynchronous calls run one at a time in the order they were made (each takes a ticket when it
/// is made, on the JS thread, and waits for its turn on the libuv pool); a synchronous call made
/// while an asynchronous one is pending — from the call until its Promise settles — fails with
/// `INVALID_STATE`, so it never observes or changes state under a running call, whatever the
/// timing. `dispose` frees the object once the calls made before it are done.
pub(crate) struct Handle<M> {
    obj: Mutex<Option<M>>,
    order: Mutex<Order>,
    turn: Condvar,
}

#[derive(Default)]
struct Order {
    /// the next ticket to hand out
    next: u64,
    /// every ticket below is finished
    done: u64,
    /// tickets released out of turn (a task dropped before it ran)
    released: BTreeSet<u64>,
    /// the method of each pending ticket, for messages
    pending: BTreeMap<u64, &'static str>,
    disposed: bool,
}

pub(crate) type Shared<M> = Arc<Handle<M>>;

pub(crate) fn shared<M>(m: M) -> Shared<M> {
    Arc::new(Handle { obj: Mutex::new(Some(m)), order: Mutex::new(Order::default()), turn: Condvar::new() })
}

fn order_lock<M>(h: &Handle<M>) -> std::sync::MutexGuard<'_, Order> {
    h.order.lock().unwrap_or_else(|p| p.into_inner())
}

impl<M> Handle<M> {
    fn ticket(&self, method: &'static str) -> moe_core::Result<u64> {
        let mut o = order_lock(self);
        if o.disposed {
            return Err(MoeError::InvalidState(format!("{method}: the object was disposed")));
        }
        let t = o.next;
        o.next += 1;
        o.pending.insert(t, method);
        Ok(t)
    }

    fn wait_turn(&self, t: u64) {
        let mut o = order_lock(self);
        while o.done != t {
            o = self.turn.wait(o).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The call of ticket `t` has settled on the JS thread (its Promise resolved or rejected, or it
    /// never ran): synchronous calls may run again once none is pending.
    fn settle(&self, t: u64) {
        order_lock(self).pending.remove(&t);
    }

    /// Ticket `t` has finished its work (or will never run): the next call may run.
    fn release(&self, t: u64) {
        let mut o = order_lock(self);
        if t == o.done {
            o.done += 1;
            loop {
                let d = o.done;
                if !o.released.remove(&d) {
                    break;
                }
                o.done += 1;
            }
        } else {
            o.released.insert(t);
        }
        if o.disposed && o.done == o.next {
            if let Ok(mut obj) = self.obj.lock() {
                obj.take();
            }
        }
        drop(o);
        self.turn.notify_all();
    }

    /// Refuses a synchronous call while asynchronous ones are pending.
    fn idle(&self, method: &str) -> moe_core::Result<()> {
        let o = order_lock(self);
        if o.disposed {
            return Err(MoeError::InvalidState(format!("{method}: the object was disposed")));
        }
        if let Some((_, running)) = o.pending.iter().next() {
            return Err(MoeError::InvalidState(format!(
                "{method} was called while {running} on this object has not finished: await it first (calls on one object run in the order they are made)"
            )));
        }
        Ok(())
    }
}

/// Runs `f` on the object under `guard`. An object whose lock was poisoned by a panic, or that was
/// disposed, refuses further work.
fn run<M, T>(h: &Handle<M>, f: impl FnOnce(&mut M) -> moe_core::Result<T>) -> moe_core::Result<T> {
    let mut lock = h.obj.lock().map_err(|_| MoeError::InvalidState("the object was left inconsistent by an earlier internal error".into()))?;
    let obj = lock.as_mut().ok_or_else(|| MoeError::InvalidState("the object was disposed".into()))?;
    guard(|| f(obj))
}

/// A synchronous call `method`: refused while an asynchronous call on the object is pending.
pub(crate) fn with<M, T>(h: &Shared<M>, method: &str, f: impl FnOnce(&mut M) -> moe_core::Result<T>) -> moe_core::Result<T> {
    h.idle(method)?;
    run(h, f)
}

/// Marks the object disposed (later calls fail with INVALID_STATE) and frees it now, or when the
/// calls made before are done. Returns false when it was already disposed.
pub(crate) fn dispose<M>(h: &Shared<M>) -> bool {
    let mut o = order_lock(h);
    if std::mem::replace(&mut o.disposed, true) {
        return false;
    }
    if o.done == o.next {
        if let Ok(mut obj) = h.obj.lock() {
            obj.take();
        }
    }
    true
}

type Work<M, T> = Box<dyn FnOnce(&mut M) -> moe_core::Result<T> + Send>;

/// The one async task: runs `work` on the shared core object off the JS thread, in its turn, then
/// converts the result to a JS value on it. A call refused by its argument checks is a task too,
/// so that an async method reports every failure as a rejected Promise.
pub struct CoreTask<M: Send, T: Send, J> {
    shared: Option<Shared<M>>,
    /// the turn of this call, until its work is done
    ticket: Option<u64>,
    /// the same ticket, until the call settles on the JS thread
    unsettled: Option<u64>,
    work: std::result::Result<Work<M, T>, Option<MoeError>>,
    convert: fn(T) -> J,
}

/// An async call `method` of the object: queued behind the calls made before it. `checked` holds
/// the work, or the error of the argument checks (the Promise then rejects with it).
pub(crate) fn task<M: Send + 'static, T: Send + 'static, J, W>(
    shared: &Shared<M>,
    method: &'static str,
    convert: fn(T) -> J,
    checked: moe_core::Result<W>,
) -> AsyncTask<CoreTask<M, T, J>>
where
    J: ToNapiValue + TypeName,
    W: FnOnce(&mut M) -> moe_core::Result<T> + Send + 'static,
{
    let queued = checked.and_then(|w| shared.ticket(method).map(|t| (w, t)));
    AsyncTask::new(match queued {
        Ok((w, t)) => CoreTask { shared: Some(shared.clone()), ticket: Some(t), unsettled: Some(t), work: Ok(Box::new(w)), convert },
        Err(e) => CoreTask { shared: None, ticket: None, unsettled: None, work: Err(Some(e)), convert },
    })
}

impl<M: Send, T: Send + 'static, J: ToNapiValue + TypeName> Task for CoreTask<M, T, J> {
    type Output = moe_core::Result<T>;
    type JsValue = J;
    fn compute(&mut self) -> Result<Self::Output> {
        match std::mem::replace(&mut self.work, Err(None)) {
            Err(e) => Ok(Err(e.unwrap_or_else(|| MoeError::Internal("a task ran twice".into())))),
            Ok(work) => {
                let (Some(shared), Some(t)) = (self.shared.clone(), self.ticket.take()) else {
                    return Ok(Err(MoeError::Internal("a task without its turn".into())));
                };
                shared.wait_turn(t);
                let r = run(&shared, work);
                shared.release(t);
                Ok(r)
            }
        }
    }
    fn resolve(&mut self, env: Env, out: Self::Output) -> Result<J> {
        if let (Some(shared), Some(t)) = (&self.shared, self.unsettled.take()) {
            shared.settle(t);
        }
        out.map(self.convert).map_err(|e| js_error(&env, e))
    }
}

impl<M: Send, T: Send, J> Drop for CoreTask<M, T, J> {
    fn drop(&mut self) {
        // A task that never ran must not hold up the calls made after it.
        if let Some(shared) = &self.shared {
            if let Some(t) = self.ticket.take() {
                shared.release(t);
            }
            if let Some(t) = self.unsettled.take() {
                shared.settle(t);
            }
        }
    }
}

/// What a JS wrapper knows without asking the core (fixed for the object's life), and the native
/// memory it reported to V8 (`napi_adjust_external_memory`), so that dropped objects get collected.
pub(crate) struct Info {
    pub device: &'static str,
    pub config: serde_json::Value,
    pub parameters: Vec<ParameterInfo>,
    pub num_parameters: usize,
    reported: AtomicI64,
}

impl Info {
    pub(crate) fn new(env: &Env, device: moe_core::gpu::Device, config: serde_json::Value, store: Option<&moe_core::params::ParamStore>) -> Info {
        let specs = store.map_or(&[][..], |s| &s.specs[..]);
        let parameters = specs.iter().map(|p| ParameterInfo { name: p.name.clone(), shape: p.shape.iter().map(|&d| d as u32).collect() }).collect();
        let n = store.map_or(0, |s| s.params.len());
        // Parameters, gradients and the two AdamW moments, f32 each, on the host.
        let bytes = (16 * n) as i64;
        let _ = env.adjust_external_memory(bytes);
        Info { device: device_name(device), config, parameters, num_parameters: n, reported: AtomicI64::new(bytes) }
    }

    /// Tells V8 the memory is gone (once).
    pub(crate) fn forget(&self, env: &Env) {
        let bytes = self.reported.swap(0, AtomicOrdering::Relaxed);
        if bytes != 0 {
            let _ = env.adjust_external_memory(-bytes);
        }
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
    /// the learning rate by step, counted by the optimiser's own step count (see LrSchedule)
    pub schedule: Option<LrSchedule>,
}

/// lr(t) for optimiser step t (1-based). Every kind warms up linearly over `warmupSteps`; then,
/// with p = (t - warmupSteps) / (totalSteps - warmupSteps) clamped to [0, 1]: `constant` keeps lr,
/// `linear` goes from lr to minLr, `cosine` (the default) follows minLr + (lr - minLr)(1 + cos πp)/2,
/// `wsd` (warm-up, stable, decay) keeps lr until the last `decaySteps` (default totalSteps / 5) and
/// then goes linearly to minLr. Past totalSteps each stays at its final value.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct LrSchedule {
    #[napi(ts_type = "'constant' | 'linear' | 'cosine' | 'wsd'")]
    pub kind: Option<String>,
    pub warmup_steps: u32,
    pub total_steps: u32,
    pub min_lr: Option<f64>,
    /// `wsd` only: steps of the final decay
    pub decay_steps: Option<u32>,
}

/// The methods `MoeModel` and `MoeLayer` share — device, configuration, router bias, parameters
/// by name and as one flat buffer, gradients, the optimiser step, disposal — written once and
/// generated for each class (napi classes cannot inherit). Each is one core call on the object's
/// `Placed` store or the core object itself; the synchronous ones fail with INVALID_STATE while an
/// asynchronous call on the object is pending.
macro_rules! shared_methods {
    ($class:ident, $config:literal, $what:literal) => {
        #[napi]
        impl $class {
            /// Where it runs: "gpu" or "cpu".
            #[napi(getter, ts_return_type = "'gpu' | 'cpu'")]
            pub fn device(&self) -> String {
                self.info.device.to_string()
            }

            /// The validated configuration, defaults filled in.
            #[napi(getter, ts_return_type = $config)]
            pub fn config(&self) -> serde_json::Value {
                self.info.config.clone()
            }

            /// The routers' selection biases, (L_moe, E) for a model (a row per layer with experts) and (E) for a layer: added to the
            /// scores to choose the top-k experts, never to their weights (auxiliary-loss-free
            /// balancing); zero unless set.
            #[napi(getter)]
            pub fn router_bias(&self, env: Env) -> Result<Float32Array> {
                with(&self.inner, concat!($what, ".routerBias"), |m| Ok(Float32Array::new(m.router_bias().to_vec()))).map_err(|e| js_error(&env, e))
            }

            #[napi(ts_args_type = "bias: Float32Array")]
            pub fn set_router_bias(&self, env: Env, bias: Unknown) -> Result<()> {
                (|| {
                    let bias = $crate::args::f32s("bias", bias)?;
                    with(&self.inner, concat!($what, ".setRouterBias"), |m| m.set_router_bias(&bias))
                })()
                .map_err(|e| js_error(&env, e))
            }

            /// Number of parameters (elements of the flat buffer).
            #[napi(getter)]
            pub fn num_parameters(&self) -> f64 {
                self.info.num_parameters as f64
            }

            /// Every parameter by its Hugging Face name, in the order of the flat buffer.
            #[napi]
            pub fn parameters(&self) -> Vec<ParameterInfo> {
                self.info.parameters.iter().map(|p| ParameterInfo { name: p.name.clone(), shape: p.shape.clone() }).collect()
            }

            /// A copy of parameter `name`, row-major.
            #[napi(ts_args_type = "name: string")]
            pub fn get_parameter(&self, env: Env, name: Unknown) -> Result<Float32Array> {
                (|| {
                    let name = $crate::args::string("name", name)?;
                    with(&self.inner, concat!($what, ".getParameter"), |m| m.store.host()?.param(&name).map(|p| Float32Array::new(p.to_vec())))
                })()
                .map_err(|e| js_error(&env, e))
            }

            #[napi(ts_args_type = "name: string, data: Float32Array")]
            pub fn set_parameter(&self, env: Env, name: Unknown, data: Unknown) -> Result<()> {
                (|| {
                    let (name, data) = ($crate::args::string("name", name)?, $crate::args::f32s("data", data)?);
                    with(&self.inner, concat!($what, ".setParameter"), |m| m.store.host_mut()?.set_param(&name, &data))
                })()
                .map_err(|e| js_error(&env, e))
            }

            /// A copy of the accumulated gradient of parameter `name`.
            #[napi(ts_args_type = "name: string")]
            pub fn get_grad(&self, env: Env, name: Unknown) -> Result<Float32Array> {
                (|| {
                    let name = $crate::args::string("name", name)?;
                    with(&self.inner, concat!($what, ".getGrad"), |m| m.store.host()?.grad(&name).map(|g| Float32Array::new(g.to_vec())))
                })()
                .map_err(|e| js_error(&env, e))
            }

            /// All parameters as one flat array in parameter order (e.g. to broadcast rank 0's copy).
            #[napi]
            pub fn get_params(&self, env: Env) -> Result<Float32Array> {
                with(&self.inner, concat!($what, ".getParams"), |m| Ok(Float32Array::new(m.store.host()?.params.clone()))).map_err(|e| js_error(&env, e))
            }

            #[napi(ts_args_type = "data: Float32Array")]
            pub fn set_params(&self, env: Env, data: Unknown) -> Result<()> {
                (|| {
                    let data = $crate::args::f32s("data", data)?;
                    with(&self.inner, concat!($what, ".setParams"), |m| m.store.host_mut()?.set_params(&data))
                })()
                .map_err(|e| js_error(&env, e))
            }

            /// All gradients as one flat array in parameter order (read, all-reduce, write back);
            /// copied into `out` when given, a buffer reused from step to step.
            #[napi(ts_args_type = "out?: Float32Array")]
            pub fn get_grads(&self, env: Env, out: Option<Unknown>) -> Result<Float32Array> {
                (|| {
                    let out = if $crate::args::absent(&out) { None } else { Some($crate::args::f32_out("out", out.unwrap())?) };
                    with(&self.inner, concat!($what, ".getGrads"), |m| {
                        let g = m.store.grads()?;
                        let Some(mut out) = out else { return Ok(Float32Array::new(g.to_vec())) };
                        moe_core::error::check_len("out", out.len(), g.len())?;
                        // SAFETY: a synchronous call on the JS thread: nothing else touches the buffer meanwhile.
                        unsafe { out.as_mut() }.copy_from_slice(g);
                        Ok(out)
                    })
                })()
                .map_err(|e| js_error(&env, e))
            }

            /// Replaces all gradients (e.g. with their all-reduced sum).
            #[napi(ts_args_type = "data: Float32Array")]
            pub fn set_grads(&self, env: Env, data: Unknown) -> Result<()> {
                (|| {
                    let data = $crate::args::f32s("data", data)?;
                    with(&self.inner, concat!($what, ".setGrads"), |m| m.store.set_grads(&data))
                })()
                .map_err(|e| js_error(&env, e))
            }

            #[napi]
            pub fn zero_grad(&self, env: Env) -> Result<()> {
                with(&self.inner, concat!($what, ".zeroGrad"), |m| m.store.zero_grad()).map_err(|e| js_error(&env, e))
            }

            /// One AdamW step on the accumulated gradients (see AdamWOptions); resolves to the
            /// gradient norm before clipping. Bad options reject the Promise (INVALID_CONFIG).
            #[napi(ts_args_type = "options: AdamWOptions", ts_return_type = "Promise<number>")]
            pub fn step(&self, options: Option<Unknown>) -> AsyncTask<CoreTask<Core, f64, f64>> {
                let checked = (|| {
                    let json = if $crate::args::absent(&options) {
                        Err(MoeError::InvalidConfig("options must be an object with at least lr".into()))
                    } else {
                        $crate::args::json_object("options", options)
                    };
                    let opt = guard(|| moe_core::AdamWConfig::from_json(json?))?;
                    Ok(move |m: &mut Core| m.store.step(&opt))
                })();
                task(&self.inner, concat!($what, ".step"), |n| n, checked)
            }

            /// Frees the memory once the calls made before are done; any later call fails with
            /// INVALID_STATE.
            #[napi]
            pub fn dispose(&self, env: Env) {
                $crate::dispose(&self.inner);
                self.info.forget(&env);
            }
        }

        impl ObjectFinalize for $class {
            fn finalize(self, env: Env) -> Result<()> {
                self.info.forget(&env);
                Ok(())
            }
        }
    };
}
pub(crate) use shared_methods;

/// The learning rate the optimiser applies at step `step` (1-based) for these options: the core's
/// own schedule (see LrSchedule), so that logs never re-derive it.
#[napi(ts_args_type = "options: AdamWOptions, step: number")]
pub fn lr_at(env: Env, options: Option<Unknown>, step: Unknown) -> Result<f64> {
    (|| {
        let step = args::integer("step", step, 0, u64::MAX >> 11)?;
        let json = args::json_object("options", options)?;
        guard(|| moe_core::AdamWConfig::from_json(json).map(|o| o.lr_at(step) as f64))
    })()
    .map_err(|e| js_error(&env, e))
}

/// Checks a model configuration as `new MoeModel` does — every field, their relations, the memory
/// its parameters would need — without allocating the model; returns it with defaults filled in.
#[napi(ts_args_type = "config: ModelConfig", ts_return_type = "Required<ModelConfig>")]
pub fn check_model_config(env: Env, config: Option<Unknown>) -> Result<serde_json::Value> {
    (|| {
        if args::absent(&config) {
            return Err(MoeError::InvalidConfig("config must be an object".into()));
        }
        let cfg = guard(|| moe_core::ModelConfig::from_json(args::json_object("config", config)?))?;
        moe_core::memory::check_model(&cfg)?;
        serde_json::to_value(&cfg).map_err(|e| MoeError::Internal(e.to_string()))
    })()
    .map_err(|e| js_error(&env, e))
}

/// The model configuration of a checkpoint folder (ours, or a Hugging Face one of a supported
/// architecture), read and checked as `MoeModel.fromCheckpoint` would, without its weights.
/// Errors: CHECKPOINT_MISSING, UNSUPPORTED_MODEL (the field named), CHECKPOINT_CORRUPT.
#[napi(ts_args_type = "dir: string", ts_return_type = "Required<ModelConfig>")]
pub fn read_checkpoint_config(env: Env, dir: Unknown) -> Result<serde_json::Value> {
    (|| {
        let dir = std::path::PathBuf::from(args::string("dir", dir)?);
        let cfg = guard(|| moe_core::checkpoint::read_config(&dir))?;
        serde_json::to_value(&cfg).map_err(|e| MoeError::Internal(e.to_string()))
    })()
    .map_err(|e| js_error(&env, e))
}

/// Valid positions per sequence (B) of `numSequences` sequences packed in `numTokens` tokens, with
/// an optional mask (B, S): exactly what `MoeModel.forward` reports as `validTokens` (position t
/// predicts token t + 1 and counts when t < S - 1 and the target's mask entry is 1). The trainer
/// sums it into T_glob before a step's first forward.
#[napi(ts_args_type = "numTokens: number, numSequences: number, mask?: Uint8Array")]
pub fn valid_tokens(env: Env, num_tokens: Unknown, num_sequences: Unknown, mask: Option<Unknown>) -> Result<Float32Array> {
    (|| {
        let (n, b) = (args::count("numTokens", num_tokens, 1)?, args::count("numSequences", num_sequences, 1)?);
        let mask = if args::absent(&mask) { None } else { Some(args::u8s("mask", mask.unwrap())?) };
        guard(|| moe_core::model::valid_tokens(n, b, mask.as_deref()))
    })()
    .map(Float32Array::new)
    .map_err(|e| js_error(&env, e))
}
