//! `Model`: the Qwen3-MoE language model, a thin facade over its two implementations — `cpu::model`
//! and `gpu::model` — chosen by `to_device`. The facade validates every input before any state is
//! touched, keeps the parameter layout and the parameters (`Placed`: host copy plus device copy),
//! and hands each call to the live implementation.

use crate::checkpoint::Loaded;
use crate::config::{ModelConfig, Precision, Recompute};
use crate::cpu::model::CpuModel;
use crate::error::{check_finite, check_len, set_checked, MoeError, Result};
use crate::gpu::model::GpuModel;
use crate::gpu::Device;
use crate::layout::{Layout, ModelParams, ParamSpec};
use crate::params::ParamStore;
use crate::placed::{Backend, Placed};
use crate::stats::ModelStats;

pub struct Model {
    pub cfg: ModelConfig,
    /// Where every tensor lives in the flat buffers, with its Hugging Face name.
    pub layout: ModelParams<ParamSpec>,
    /// Parameters, gradients and AdamW moments, on the host and (on the GPU) the device.
    pub store: Placed,
    backend: Backend<CpuModel, GpuModel>,
    /// B of the stored forward, once one succeeded
    stored: Option<usize>,
    /// (L, E) the routers' selection biases; see `set_router_bias`
    router_bias: Vec<f32>,
    /// what a stored forward keeps for the backward; see `set_recompute`
    recompute: Recompute,
    /// the inputs' format of the large GEMMs; see `set_precision`
    precision: Precision,
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Result<Self> {
        cfg.validate()?;
        crate::memory::check_model(&cfg)?;
        let layout = ModelParams::layout(&cfg);
        let store = ParamStore::init(&layout.specs(), cfg.initializer_range, cfg.seed)?;
        let router_bias = vec![0.0; cfg.moe_layers().len() * cfg.num_experts];
        Ok(Model::on_cpu(cfg, layout, store, router_bias))
    }

    fn on_cpu(cfg: ModelConfig, layout: ModelParams<ParamSpec>, store: ParamStore, router_bias: Vec<f32>) -> Model {
        Model { cfg, layout, store: Placed::new(store), backend: Backend::Cpu(CpuModel::default()), stored: None, router_bias, recompute: Recompute::None, precision: Precision::F32 }
    }

    /// Moves the model to `requested` ("auto" | "gpu" | "cpu"; None reads MOE_DEVICE, default auto).
    pub fn to_device(&mut self, requested: Option<&str>) -> Result<Device> {
        let device = crate::gpu::select(requested)?;
        self.store.place(device)?;
        if self.backend.switch(device, || GpuModel::new(&self.layout)) {
            self.stored = None;
        }
        Ok(device)
    }

    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// The routers' selection biases (L_moe, E): a row per layer with experts; zero by default.
    pub fn router_bias(&self) -> &[f32] {
        &self.router_bias
    }

    /// Sets the routers' selection biases (L_moe, E): added to the softmax scores to choose the top-k
    /// experts, never to their weights (auxiliary-loss-free balancing, Wang et al. 2024). The
    /// trainer owns their updates; Qwen3-MoE checkpoints have no such tensor, so transformers
    /// routes a model trained with nonzero biases as if they were zero.
    pub fn set_router_bias(&mut self, bias: &[f32]) -> Result<()> {
        set_checked("router bias", &mut self.router_bias, bias)
    }

    /// What a stored forward keeps for the backward (`Recompute`; `None` by default). Changing it
    /// drops the stored forward: the next backward needs a new one.
    pub fn set_recompute(&mut self, recompute: Recompute) {
        if recompute != self.recompute {
            self.recompute = recompute;
            self.stored = None;
        }
    }

    pub fn recompute(&self) -> Recompute {
        self.recompute
    }

    /// The format of the large GEMMs' inputs in every forward and backward (`Precision`; `F32` by
    /// default); parameters, gradients and AdamW stay f32. Changing it drops the stored forward.
    pub fn set_precision(&mut self, precision: Precision) {
        if precision != self.precision {
            self.precision = precision;
            self.stored = None;
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Checks tokens (B, S) and the optional mask (B, S); returns S and the per-position validity
    /// (`valid_positions`).
    fn validate(&self, tokens: &[u32], mask: Option<&[u8]>, b: usize, store: bool) -> Result<(usize, Vec<u8>)> {
        if b == 0 || tokens.is_empty() || tokens.len() % b != 0 {
            return Err(MoeError::ShapeMismatch(format!("{} tokens are not {b} sequences of equal length", tokens.len())));
        }
        let s = tokens.len() / b;
        if s > self.cfg.max_position_embeddings {
            return Err(MoeError::ShapeMismatch(format!("sequence length {s} exceeds max_position_embeddings {}", self.cfg.max_position_embeddings)));
        }
        if let Some(i) = tokens.iter().position(|&t| t as usize >= self.cfg.vocab_size) {
            return Err(MoeError::TokenOutOfRange(format!("tokens[{i}] = {} but vocab_size is {}", tokens[i], self.cfg.vocab_size)));
        }
        let valid = valid_positions(tokens.len(), b, mask)?;
        if self.device() == Device::Cpu {
            crate::memory::check_forward(&self.cfg, b, s, store.then_some(self.recompute))?;
        }
        Ok((s, valid))
    }

    /// Forward on B sequences. With `store` the activations are kept for `backward`; without, the
    /// stored ones are left untouched (evaluation and statistics-only forwards).
    pub fn forward(&mut self, tokens: &[u32], mask: Option<&[u8]>, b: usize, store: bool) -> Result<ModelStats> {
        fail::fail_point!("model.forward");
        let (s, valid) = self.validate(tokens, mask, b, store)?;
        let r = self.run_forward(tokens, &valid, b, s, store, false).map(|(stats, _)| stats);
        if store {
            self.stored = r.is_ok().then_some(b);
        }
        r
    }

    /// Logits (T, V) of every position, nothing stored.
    pub fn logits(&mut self, tokens: &[u32], b: usize) -> Result<Vec<f32>> {
        let (s, valid) = self.validate(tokens, None, b, false)?;
        Ok(self.run_forward(tokens, &valid, b, s, false, true)?.1.unwrap_or_default())
    }

    fn run_forward(&mut self, tokens: &[u32], valid: &[u8], b: usize, s: usize, store: bool, want_logits: bool) -> Result<(ModelStats, Option<Vec<f32>>)> {
        let (cfg, bias) = (&self.cfg, &self.router_bias);
        let store = store.then_some(self.recompute);
        match &mut self.backend {
            Backend::Cpu(m) => m.forward(&self.layout.views(&self.store.host.params), bias, cfg, tokens, valid, b, s, store, self.precision, want_logits),
            Backend::Gpu(m) => m.forward(self.store.device_copy()?, cfg, bias, tokens, valid, b, s, store, self.precision, want_logits),
        }
    }

    /// Backward of the last stored forward; accumulates gradients. pressure (L_moe, B, E), a row per
    /// layer with experts;
    /// lm_scale multiplies the summed cross-entropy (1/T_glob); z_scale = beta / T_glob.
    /// A stored forward serves one backward: a second one fails with `INVALID_STATE` (it would add
    /// the same gradients again).
    pub fn backward(&mut self, pressure: &[f32], lm_scale: f32, z_scale: f32) -> Result<()> {
        let Some(b) = self.stored else {
            return Err(MoeError::InvalidState("backward needs a successful forward with store = true since the last backward".into()));
        };
        check_len("pressure", pressure.len(), self.cfg.moe_layers().len() * b * self.cfg.num_experts)?;
        check_finite("pressure", pressure)?;
        if !(lm_scale.is_finite() && z_scale.is_finite()) {
            return Err(MoeError::NonFinite(format!("lm_scale = {lm_scale}, z_scale = {z_scale}")));
        }
        let cfg = &self.cfg;
        match &mut self.backend {
            Backend::Cpu(m) => {
                let host = &mut self.store.host;
                m.backward(&mut self.layout.views_mut(&mut host.grads), &self.layout.views(&host.params), cfg, pressure, lm_scale, z_scale);
            }
            Backend::Gpu(m) => {
                m.backward(self.store.device_copy()?, cfg, pressure, lm_scale, z_scale)?;
                self.store.device_wrote_grads();
            }
        }
        self.stored = None;
        Ok(())
    }

    /// Saves `config.json` + `model.safetensors`, and with `trainer` (the trainer's JSON state) the
    /// optimiser state too, plus `files` (name, bytes), as one folder switched in atomically. See
    /// `checkpoint`.
    pub fn save(&mut self, dir: &std::path::Path, trainer: Option<&str>, files: &[(String, Vec<u8>)]) -> Result<()> {
        crate::checkpoint::save(dir, &self.cfg, self.store.host()?, &self.router_bias, trainer, files)
    }

    /// A model built from a checkpoint, with its optimiser state when the checkpoint has one.
    /// Returns the trainer's saved state too.
    /// The loaded parameters become the model's without a copy (a load peaks at about one copy).
    pub fn from_checkpoint(dir: &std::path::Path) -> Result<(Model, Option<String>)> {
        Model::from_loaded(crate::checkpoint::load(dir)?)
    }

    /// A model with the weights (and router biases) of a checkpoint and a fresh optimiser, whatever
    /// training state the checkpoint holds: the start of a fine-tuning run.
    pub fn from_weights(dir: &std::path::Path) -> Result<Model> {
        let loaded = crate::checkpoint::load(dir)?;
        Ok(Model::from_loaded(Loaded { state: None, ..loaded })?.0)
    }

    fn from_loaded(loaded: Loaded) -> Result<(Model, Option<String>)> {
        let Loaded { cfg, params, router_bias, state } = loaded;
        let layout = ModelParams::layout(&cfg);
        let mut store = ParamStore::with_params(&layout.specs(), params)?;
        let trainer = state.map(|st| {
            (store.opt.m, store.opt.v, store.opt.step) = (st.m, st.v, st.step);
            st.trainer
        });
        Ok((Model::on_cpu(cfg, layout, store, router_bias), trainer))
    }

    /// Loads a checkpoint of the same architecture into this model. Everything is read and checked
    /// first: on any error the model is exactly as it was. Without a training state in the
    /// checkpoint the optimiser starts afresh. Returns the trainer's saved state.
    pub fn load_checkpoint(&mut self, dir: &std::path::Path) -> Result<Option<String>> {
        let loaded = crate::checkpoint::load(dir)?;
        if !loaded.cfg.same_architecture(&self.cfg) {
            return Err(MoeError::ShapeMismatch(format!(
                "{}: the checkpoint's architecture differs from this model's ({:?} vs {:?})",
                dir.display(),
                loaded.cfg,
                self.cfg
            )));
        }
        Ok(self.apply(loaded))
    }

    fn apply(&mut self, loaded: Loaded) -> Option<String> {
        // Everything the device holds is replaced: the host copy becomes the newer one.
        self.store.replaced();
        self.stored = None;
        self.router_bias = loaded.router_bias;
        let host = &mut self.store.host;
        host.params = loaded.params;
        host.zero_grad();
        match loaded.state {
            Some(st) => {
                (host.opt.m, host.opt.v, host.opt.step) = (st.m, st.v, st.step);
                Some(st.trainer)
            }
            None => {
                host.opt = crate::adamw::AdamWState::new(host.params.len());
                None
            }
        }
    }
}

/// Which positions of B sequences of `n / B` tokens count (1) for the loss and every routing
/// statistic: position t predicts token t + 1, so it counts when t < S - 1 and the target's mask
/// entry (B, S) is 1 (all 1 without a mask). The trainer counts T_glob with this same function.
pub fn valid_positions(n: usize, b: usize, mask: Option<&[u8]>) -> Result<Vec<u8>> {
    if b == 0 || n == 0 || n % b != 0 {
        return Err(MoeError::ShapeMismatch(format!("{n} tokens are not {b} sequences of equal length")));
    }
    if let Some(m) = mask {
        check_len("mask", m.len(), n)?;
    }
    let s = n / b;
    Ok((0..n).map(|i| u8::from(i % s + 1 < s && mask.is_none_or(|m| m[i + 1] != 0))).collect())
}

/// Valid positions per sequence (B) of B sequences of `n / B` tokens: what a forward reports as
/// `valid_tokens`, and what the trainer sums into T_glob before the first forward of a step.
/// Counted without a buffer of n flags (n may be any size a caller names).
pub fn valid_tokens(n: usize, b: usize, mask: Option<&[u8]>) -> Result<Vec<f32>> {
    if b == 0 || n == 0 || n % b != 0 {
        return Err(MoeError::ShapeMismatch(format!("{n} tokens are not {b} sequences of equal length")));
    }
    let s = n / b;
    match mask {
        None => Ok(vec![(s - 1) as f32; b]),
        Some(m) => {
            check_len("mask", m.len(), n)?;
            Ok(m.chunks(s).map(|seq| seq[1..].iter().filter(|&&v| v != 0).count() as f32).collect())
        }
    }
}
