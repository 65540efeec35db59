//! The standalone MoE layer (input (T, C) floats): owns one flat buffer per role (params, grads,
//! AdamW moments), validates every input before touching state, and keeps the activations of the
//! last stored forward for its backward.

use crate::adamw::{adamw_update, clip_scale, grad_norm, AdamWConfig, AdamWState};
use crate::error::{check_finite, check_len, MoeError, Result};
use crate::moe::*;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub struct MoeLayer {
    pub cfg: MoeConfig,
    pub specs: Vec<ParamSpec>,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub opt: AdamWState,
    acts: MoeActs,
    stored: bool,
}

/// What a forward returns: the output (T, C) and the per-sequence routing statistics.
pub struct ForwardOutput {
    pub out: Vec<f32>,
    pub stats: RoutingStats,
}

impl MoeLayer {
    /// A layer with weights drawn from N(0, initializer_range²) by a ChaCha8 generator seeded with `cfg.seed`.
    pub fn new(cfg: MoeConfig) -> Result<Self> {
        cfg.validate()?;
        let specs = moe_param_specs(&cfg, "", 0);
        let n = moe_param_count(&cfg);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        let normal = Normal::new(0.0f32, cfg.initializer_range as f32).map_err(|e| MoeError::InvalidConfig(e.to_string()))?;
        let params: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        Ok(MoeLayer { cfg, specs, params, grads: vec![0.0; n], opt: AdamWState::new(n), acts: MoeActs::default(), stored: false })
    }

    fn spec(&self, name: &str) -> Result<&ParamSpec> {
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
        check_len(name, data.len(), range.len())?;
        check_finite(name, data)?;
        self.params[range].copy_from_slice(data);
        Ok(())
    }

    /// Forward on `num_seqs` sequences of equal length packed in x (T, C). mask (T): 1 = valid token
    /// (all valid when absent). With `store` the activations are kept for `backward`; without, the
    /// stored ones are left exactly as they were (statistics-only / evaluation forwards).
    pub fn forward(&mut self, x: &[f32], mask: Option<&[u8]>, num_seqs: usize, store: bool) -> Result<ForwardOutput> {
        let c = self.cfg.hidden_size;
        if num_seqs == 0 || x.is_empty() || x.len() % (num_seqs * c) != 0 {
            return Err(MoeError::ShapeMismatch(format!(
                "input of {} values is not {num_seqs} sequences of whole tokens of hidden_size {c}",
                x.len()
            )));
        }
        let t = x.len() / c;
        let ones;
        let mask = match mask {
            Some(m) => {
                check_len("mask", m.len(), t)?;
                m
            }
            None => {
                ones = vec![1u8; t];
                &ones
            }
        };
        check_finite("input", x)?;
        let mut out = ForwardOutput { out: vec![0.0; t * c], stats: RoutingStats::default() };
        let wt = MoeWeights::split(&self.params, &self.cfg);
        let mut scratch;
        let acts = if store {
            &mut self.acts
        } else {
            scratch = MoeActs::default();
            &mut scratch
        };
        crate::cpu::pool().install(|| {
            moe_forward(&mut out.out, &mut out.stats, acts, x, mask, &wt, &self.cfg, num_seqs, t / num_seqs)
        });
        self.stored |= store;
        Ok(out)
    }

    /// Backward of the last stored forward. dout (T, C); pressure (B, E) per sequence and expert;
    /// z_scale = beta / T_glob. Returns dx (T, C); accumulates parameter gradients.
    pub fn backward(&mut self, dout: &[f32], pressure: &[f32], z_scale: f32) -> Result<Vec<f32>> {
        if !self.stored {
            return Err(MoeError::InvalidState("backward needs a forward with store = true first".into()));
        }
        let (b, t, c, e) = (self.acts.b, self.acts.b * self.acts.s, self.cfg.hidden_size, self.cfg.num_experts);
        check_len("dout", dout.len(), t * c)?;
        check_len("pressure", pressure.len(), b * e)?;
        check_finite("dout", dout)?;
        check_finite("pressure", pressure)?;
        if !z_scale.is_finite() {
            return Err(MoeError::NonFinite(format!("z_scale = {z_scale}")));
        }
        let mut dx = vec![0.0; t * c];
        let wt = MoeWeights::split(&self.params, &self.cfg);
        let mut grads = MoeGrads::split(&mut self.grads, &self.cfg);
        let acts = &mut self.acts;
        let cfg = &self.cfg;
        crate::cpu::pool().install(|| moe_backward(&mut dx, &mut grads, acts, dout, pressure, z_scale, &wt, cfg));
        Ok(dx)
    }

    /// Replaces the whole gradient buffer (e.g. by its all-reduced sum over ranks).
    pub fn set_grads(&mut self, data: &[f32]) -> Result<()> {
        check_len("grads", data.len(), self.grads.len())?;
        check_finite("grads", data)?;
        self.grads.copy_from_slice(data);
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    /// One AdamW step on the accumulated gradients (clipped first when `max_grad_norm` is set).
    /// Returns the gradient norm before clipping. A non-finite norm fails with `NON_FINITE` and
    /// leaves parameters and moments untouched.
    pub fn step(&mut self, opt: &AdamWConfig) -> Result<f64> {
        opt.validate()?;
        let norm = crate::cpu::pool().install(|| grad_norm(&self.grads));
        if !norm.is_finite() {
            return Err(MoeError::NonFinite(format!("gradient norm is {norm}")));
        }
        let scale = clip_scale(norm, opt.max_grad_norm);
        self.opt.step += 1;
        let st = &mut self.opt;
        let (params, grads) = (&mut self.params, &self.grads);
        crate::cpu::pool().install(|| {
            // Every parameter of the MoE block is a matrix, so all of them decay.
            adamw_update(params, &mut st.m, &mut st.v, grads, scale, opt, st.step, true)
        });
        Ok(norm)
    }
}
