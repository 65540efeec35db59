//! AdamW (Loshchilov & Hutter) with bias correction and decoupled weight decay, plus global
//! gradient-norm clipping. Single loops over flat buffers (one per role: params, grads, m, v).

use crate::error::{MoeError, Result};
use rayon::prelude::*;
use serde::Deserialize;

/// Hyper-parameters of one optimiser step; field names are the JS ones (camelCase).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdamWConfig {
    pub lr: f32,
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    #[serde(default = "default_eps")]
    pub eps: f32,
    #[serde(default)]
    pub weight_decay: f32,
    /// Clip the global gradient L2 norm to this value before the update (none if absent).
    #[serde(default)]
    pub max_grad_norm: Option<f32>,
    /// Optional schedule: linear warm-up, then cosine decay of `lr` to `min_lr`.
    #[serde(default)]
    pub schedule: Option<LrSchedule>,
}

/// The learning rate by step (one source of truth: the optimiser applies it, `lrAt` reports it).
/// Every kind warms up linearly, lr(t) = lr * t / warmup_steps for t <= warmup_steps (t 1-based);
/// after the warm-up, with p = (t - warmup_steps) / (total_steps - warmup_steps) clamped to [0, 1]:
/// - `constant`: lr
/// - `linear`: lr + (min_lr - lr) * p
/// - `cosine` (the default): min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2
/// - `wsd` (warm-up, stable, decay): lr until the last `decay_steps` steps (default total_steps / 5),
///   then linearly down to min_lr at total_steps.
///
/// Past total_steps every kind stays at its final value (min_lr; lr for `constant`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LrSchedule {
    #[serde(default)]
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub total_steps: u64,
    #[serde(default)]
    pub min_lr: f32,
    /// `wsd` only: steps of the final decay (default total_steps / 5).
    #[serde(default)]
    pub decay_steps: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    #[default]
    Cosine,
    Wsd,
}

impl LrSchedule {
    /// The `wsd` decay length.
    fn decay(&self) -> u64 {
        self.decay_steps.unwrap_or(self.total_steps / 5).min(self.total_steps - self.warmup_steps)
    }
}

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.95
}
fn default_eps() -> f32 {
    1e-8
}

impl AdamWConfig {
    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        let cfg: AdamWConfig = crate::error::from_json(v)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(MoeError::InvalidConfig(m.to_string()));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr must be a finite number >= 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1 and beta2 must lie in [0, 1)");
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad("eps must be > 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weightDecay must be >= 0");
        }
        if matches!(self.max_grad_norm, Some(n) if !(n > 0.0 && n.is_finite())) {
            return bad("maxGradNorm must be > 0");
        }
        if let Some(s) = &self.schedule {
            if s.total_steps == 0 || s.warmup_steps > s.total_steps {
                return bad("schedule needs 0 <= warmupSteps <= totalSteps and totalSteps >= 1");
            }
            if !(s.min_lr >= 0.0 && s.min_lr <= self.lr) {
                return bad("schedule.minLr must lie in [0, lr]");
            }
            if s.decay_steps.is_some_and(|d| d > s.total_steps - s.warmup_steps) {
                return bad("schedule.decaySteps must not exceed totalSteps - warmupSteps");
            }
            if s.decay_steps.is_some() && s.kind != ScheduleKind::Wsd {
                return bad("schedule.decaySteps belongs to kind \"wsd\"");
            }
        }
        Ok(())
    }

    /// The learning rate of step t (1-based); see `LrSchedule`.
    pub fn lr_at(&self, t: u64) -> f32 {
        let Some(s) = &self.schedule else { return self.lr };
        if t <= s.warmup_steps {
            return self.lr * t as f32 / s.warmup_steps as f32;
        }
        let span = (s.total_steps - s.warmup_steps).max(1) as f64;
        let progress = ((t - s.warmup_steps) as f64 / span).min(1.0);
        match s.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Linear => self.lr + (s.min_lr - self.lr) * progress as f32,
            ScheduleKind::Cosine => s.min_lr + (self.lr - s.min_lr) * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32,
            ScheduleKind::Wsd => {
                let decay = s.decay();
                let start = s.total_steps - decay;
                if t <= start || decay == 0 {
                    return if t > s.total_steps { s.min_lr } else { self.lr };
                }
                let p = ((t - start) as f64 / decay as f64).min(1.0);
                self.lr + (s.min_lr - self.lr) * p as f32
            }
        }
    }
}

/// Optimiser state: first and second moments (same layout as params) and the step count.
#[derive(Debug, Clone, Default)]
pub struct AdamWState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

impl AdamWState {
    pub fn new(n: usize) -> Self {
        AdamWState { m: vec![0.0; n], v: vec![0.0; n], step: 0 }
    }
}

/// L2 norm of the whole gradient buffer, accumulated in f64 over fixed chunks summed in order,
/// so the result does not depend on thread scheduling (resume must be bit-exact).
pub fn grad_norm(grads: &[f32]) -> f64 {
    let partial: Vec<f64> = grads.par_chunks(1 << 14).map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum()).collect();
    partial.iter().sum::<f64>().sqrt()
}

/// Clip scale for a gradient of norm `norm`: min(1, max_norm / norm).
pub fn clip_scale(norm: f64, max_norm: Option<f32>) -> f32 {
    match max_norm {
        Some(mx) if norm > mx as f64 => (mx as f64 / norm) as f32,
        _ => 1.0,
    }
}

/// One AdamW update of params (N) from grads (N) * grad_scale, moments m, v (N) at step t (1-based):
///   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  m̂ = m/(1-b1^t);  v̂ = v/(1-b2^t)
///   p -= lr (m̂ / (sqrt(v̂) + eps) + wd p)     (wd = weight_decay when `decay`, else 0; lr = lr_at(t))
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    grad_scale: f32,
    cfg: &AdamWConfig,
    lr: f32,
    t: u64,
    decay: bool,
) {
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(t as i32);
    let (bc1, bc2) = (bc1 as f32, bc2 as f32);
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    params.par_iter_mut().zip(m.par_iter_mut().zip(v.par_iter_mut())).zip(grads.par_iter()).for_each(
        |((p, (m, v)), &g)| {
            let g = g * grad_scale;
            *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
            *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
            let (mh, vh) = (*m / bc1, *v / bc2);
            *p -= lr * (mh / (vh.sqrt() + cfg.eps) + wd * *p);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(wd: f32) -> AdamWConfig {
        AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, max_grad_norm: None, schedule: None }
    }

    #[test]
    fn two_steps_match_hand_computation() {
        // Step 1, g = 0.5: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25, update 0.5/0.5 = 1;
        //   p = 1 - 0.1 (1 + 0.1 * 1) = 0.89.
        // Step 2, g = -0.5: m = 0.045 - 0.05 = -0.005, v = 0.00024975 + 0.00025 = 0.00049975,
        //   m̂ = -0.005/0.19 = -0.0263158, v̂ = 0.00049975/0.001999 = 0.25, update = -0.0526316;
        //   p = 0.89 - 0.1 (-0.0526316 + 0.089) = 0.8863632.
        let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
        adamw_update(&mut p, &mut m, &mut v, &[0.5], 1.0, &cfg(0.1), 0.1, 1, true);
        assert!((p[0] - 0.89).abs() < 1e-6, "{}", p[0]);
        adamw_update(&mut p, &mut m, &mut v, &[-0.5], 1.0, &cfg(0.1), 0.1, 2, true);
        assert!((p[0] - 0.886_363_2).abs() < 1e-6, "{}", p[0]);
        // Without decay the same first step moves p by exactly lr * 1.
        let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
        adamw_update(&mut p, &mut m, &mut v, &[0.5], 1.0, &cfg(0.1), 0.1, 1, false);
        assert!((p[0] - 0.9).abs() < 1e-6, "{}", p[0]);
    }

    #[test]
    fn schedule_warms_up_then_follows_the_cosine() {
        let mut c = cfg(0.0);
        c.schedule = Some(LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 10, total_steps: 110, min_lr: 0.01, decay_steps: None });
        assert!((c.lr_at(1) - 0.01).abs() < 1e-7);
        assert!((c.lr_at(10) - 0.1).abs() < 1e-7);
        assert!((c.lr_at(60) - 0.055).abs() < 1e-6, "half way: (lr + min_lr) / 2");
        assert!((c.lr_at(110) - 0.01).abs() < 1e-7);
        assert!((c.lr_at(500) - 0.01).abs() < 1e-7);
        assert_eq!(cfg(0.0).lr_at(77), 0.1);
    }

    #[test]
    fn every_schedule_kind_has_its_values() {
        let at = |kind, decay: Option<u64>, t| {
            let mut c = cfg(0.0);
            c.schedule = Some(LrSchedule { kind, warmup_steps: 10, total_steps: 110, min_lr: 0.01, decay_steps: decay });
            c.validate().unwrap();
            c.lr_at(t)
        };
        let close = |a: f32, b: f32| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        for kind in [ScheduleKind::Constant, ScheduleKind::Linear, ScheduleKind::Cosine, ScheduleKind::Wsd] {
            close(at(kind, None, 5), 0.05); // half-way through the warm-up, whatever the kind
            close(at(kind, None, 10), 0.1);
        }
        close(at(ScheduleKind::Constant, None, 60), 0.1);
        close(at(ScheduleKind::Constant, None, 500), 0.1);
        close(at(ScheduleKind::Linear, None, 60), 0.055); // half-way: (lr + min_lr) / 2
        close(at(ScheduleKind::Linear, None, 35), 0.1 - 0.09 * 0.25);
        close(at(ScheduleKind::Linear, None, 110), 0.01);
        close(at(ScheduleKind::Cosine, None, 35), 0.01 + 0.09 * (1.0 + (std::f32::consts::PI / 4.0).cos()) / 2.0);
        // wsd: stable until the last 22 steps (110 / 5), then linear to min_lr.
        close(at(ScheduleKind::Wsd, None, 88), 0.1);
        close(at(ScheduleKind::Wsd, None, 99), 0.1 - 0.09 * 0.5);
        close(at(ScheduleKind::Wsd, None, 110), 0.01);
        close(at(ScheduleKind::Wsd, None, 200), 0.01);
        close(at(ScheduleKind::Wsd, Some(50), 85), 0.1 - 0.09 * 0.5);
        let mut c = cfg(0.0);
        c.schedule = Some(LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 10, total_steps: 110, min_lr: 0.0, decay_steps: Some(5) });
        assert_eq!(c.validate().unwrap_err().code(), "INVALID_CONFIG");
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let g = [3.0f32, 4.0];
        let n = grad_norm(&g);
        assert!((n - 5.0).abs() < 1e-12);
        assert!((clip_scale(n, Some(1.0)) - 0.2).abs() < 1e-7);
        assert_eq!(clip_scale(n, Some(10.0)), 1.0);
        assert_eq!(clip_scale(n, None), 1.0);
    }
}
