//! One flat buffer per role — params, grads, AdamW moments — addressed through the Hugging Face
//! tensors of a layout (`crate::layout`). Shared by the standalone MoE layer and the model: lookup by
//! name, whole-buffer gradient I/O, and the optimiser step.

use crate::adamw::{adamw_update, clip_scale, grad_norm, AdamWConfig, AdamWState};
use crate::error::{set_checked, MoeError, Result};
use crate::layout::{hf_tensors, ParamSpec};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub struct ParamStore {
    /// The Hugging Face tensors in buffer order (expert banks expanded per expert).
    pub specs: Vec<ParamSpec>,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub opt: AdamWState,
}

impl ParamStore {
    /// The buffers of a layout (`specs` in buffer order). Matrices (2-D Hugging Face tensors) drawn
    /// from N(0, std²) by ChaCha8 seeded with `seed`, in tensor order; vectors (norm weights) set to 1.
    pub fn init(specs: &[ParamSpec], std: f64, seed: u64) -> Result<Self> {
        let specs = hf_tensors(specs);
        let n = specs.last().map_or(0, |s| s.offset + s.len());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std as f32).map_err(|e| MoeError::InvalidConfig(e.to_string()))?;
        let mut params = crate::memory::zeros("parameters", n)?;
        for s in &specs {
            let p = &mut params[s.range()];
            if s.shape.len() >= 2 {
                p.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
            } else {
                p.fill(1.0);
            }
        }
        let (grads, m, v) = (crate::memory::zeros("gradients", n)?, crate::memory::zeros("AdamW moments", n)?, crate::memory::zeros("AdamW moments", n)?);
        Ok(ParamStore { specs, params, grads, opt: AdamWState { m, v, step: 0 } })
    }

    /// The buffers of a layout around given parameters (a loaded checkpoint): gradients and AdamW
    /// moments start at zero, allocated but untouched until used.
    pub fn with_params(specs: &[ParamSpec], params: Vec<f32>) -> Result<Self> {
        let specs = hf_tensors(specs);
        let n = specs.last().map_or(0, |s| s.offset + s.len());
        if params.len() != n {
            return Err(MoeError::Internal(format!("{} parameters for a layout of {n}", params.len())));
        }
        Ok(ParamStore { specs, params, grads: vec![0.0; n], opt: AdamWState::new(n) })
    }

    pub fn spec(&self, name: &str) -> Result<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name).ok_or_else(|| MoeError::UnknownParameter(name.to_string()))
    }

    pub fn param(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.params[self.spec(name)?.range()])
    }

    pub fn grad(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.grads[self.spec(name)?.range()])
    }

    pub fn set_param(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let range = self.spec(name)?.range();
        set_checked(name, &mut self.params[range], data)
    }

    /// Replaces the whole parameter buffer (e.g. by rank 0's copy at the start of data parallelism).
    pub fn set_params(&mut self, data: &[f32]) -> Result<()> {
        set_checked("params", &mut self.params, data)
    }

    /// Replaces the whole gradient buffer (e.g. by its all-reduced sum over ranks).
    pub fn set_grads(&mut self, data: &[f32]) -> Result<()> {
        set_checked("grads", &mut self.grads, data)
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    /// One AdamW step on the accumulated gradients (clipped first when `max_grad_norm` is set),
    /// with decay on matrices only. Returns the gradient norm before clipping. A non-finite norm
    /// fails with `NON_FINITE` and leaves parameters and moments untouched.
    pub fn step(&mut self, opt: &AdamWConfig) -> Result<f64> {
        opt.validate()?;
        let norm = crate::cpu::pool().install(|| grad_norm(&self.grads));
        if !norm.is_finite() {
            return Err(MoeError::NonFinite(format!("gradient norm is {norm}")));
        }
        let scale = clip_scale(norm, opt.max_grad_norm);
        self.opt.step += 1;
        let t = self.opt.step;
        let lr = opt.lr_at(t);
        let (params, grads, st) = (&mut self.params, &self.grads, &mut self.opt);
        crate::cpu::pool().install(|| {
            for s in &self.specs {
                let r = s.range();
                adamw_update(&mut params[r.clone()], &mut st.m[r.clone()], &mut st.v[r.clone()], &grads[r], scale, opt, lr, t, s.shape.len() >= 2);
            }
        });
        Ok(norm)
    }
}
