//! A dense SwiGLU MLP (the layers without experts, and Qwen2-MoE's shared expert) and the sigmoid
//! gate that scales the shared expert's output. The MLP is the grouped expert GEMMs of
//! `cpu::experts` with one expert owning every row.

use super::experts::{experts_backward, experts_forward};
use super::matmul::{matmul_backward, matmul_forward};
use super::sized;
use crate::config::Precision;
use crate::layout::ExpertParams;
use rayon::prelude::*;

/// A dense MLP's saved activations and its backward's scratch, reused from call to call.
#[derive(Debug, Default)]
pub struct MlpActs {
    g: Vec<f32>,  // (T, F)
    u: Vec<f32>,  // (T, F)
    h: Vec<f32>,  // (T, F)
    pub y: Vec<f32>, // (T, C) output
    dh: Vec<f32>, // (T, F)
    dg: Vec<f32>, // (T, F)
    du: Vec<f32>, // (T, F)
    pub dx: Vec<f32>, // (T, C)
}

impl MlpActs {
    /// `mlp_forward` of x (T, C) into `self.y`, keeping what the backward needs.
    pub fn forward(&mut self, x: &[f32], wt: &ExpertParams<&[f32]>, c: usize, f: usize, p: Precision) {
        let t = x.len() / c;
        mlp_forward(sized(&mut self.g, t * f), sized(&mut self.u, t * f), sized(&mut self.h, t * f), sized(&mut self.y, t * c), x, wt, c, f, p);
    }

    /// `mlp_backward` of the last forward (input x) for dy (T, C) into `self.dx`; accumulates `grads`.
    pub fn backward(&mut self, grads: &mut ExpertParams<&mut [f32]>, dy: &[f32], x: &[f32], wt: &ExpertParams<&[f32]>, c: usize, f: usize, p: Precision) {
        let t = x.len() / c;
        let (dh, dg, du) = (sized(&mut self.dh, t * f), sized(&mut self.dg, t * f), sized(&mut self.du, t * f));
        mlp_backward(sized(&mut self.dx, t * c), grads, dh, dg, du, dy, x, &self.g, &self.u, &self.h, wt, c, f, p);
    }
}

/// y (T, C) = down(silu(x · gate_proj^T) * (x · up_proj^T)). Overwrites g, u, h (T, F) and y.
/// x (T, C); wt: gate_proj, up_proj (F, C), down_proj (C, F).
#[allow(clippy::too_many_arguments)]
pub fn mlp_forward(g: &mut [f32], u: &mut [f32], h: &mut [f32], y: &mut [f32], x: &[f32], wt: &ExpertParams<&[f32]>, c: usize, f: usize, p: Precision) {
    experts_forward(g, u, h, y, x, wt, &[0, x.len() / c], c, f, p);
}

/// Backward of `mlp_forward`: overwrites dx (T, C) and the scratch dh, dg, du (T, F); accumulates
/// into `grads`. dy (T, C).
#[allow(clippy::too_many_arguments)]
pub fn mlp_backward(
    dx: &mut [f32],
    grads: &mut ExpertParams<&mut [f32]>,
    dh: &mut [f32],
    dg: &mut [f32],
    du: &mut [f32],
    dy: &[f32],
    x: &[f32],
    g: &[f32],
    u: &[f32],
    h: &[f32],
    wt: &ExpertParams<&[f32]>,
    c: usize,
    f: usize,
    p: Precision,
) {
    experts_backward(dx, grads, dh, dg, du, dy, x, g, u, h, wt, &[0, x.len() / c], c, f, p);
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// out (T, C) += sigmoid(x · w) * m: the gate of a shared expert. Overwrites logits (T) = x · w;
/// x (T, C), w (1, C), m (T, C) the expert's output.
pub fn sigmoid_gate_forward(out: &mut [f32], logits: &mut [f32], x: &[f32], w: &[f32], m: &[f32], c: usize) {
    matmul_forward(logits, x, w, x.len() / c, c, 1, Precision::F32);
    out.par_chunks_mut(c).zip(m.par_chunks(c).zip(logits.par_iter())).for_each(|(o, (m, &l))| {
        let s = sigmoid(l);
        o.iter_mut().zip(m).for_each(|(o, m)| *o += s * m);
    });
}

/// Backward of `sigmoid_gate_forward` for dout (T, C): overwrites dm (T, C) = sigmoid(l) * dout and
/// dlogits (T); dx (T, C) += dlogits · w; dw (1, C) += dlogits^T · x.
#[allow(clippy::too_many_arguments)]
pub fn sigmoid_gate_backward(dx: &mut [f32], dw: &mut [f32], dm: &mut [f32], dlogits: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], m: &[f32], logits: &[f32], c: usize) {
    dm.par_chunks_mut(c).zip(dlogits.par_iter_mut()).enumerate().for_each(|(t, (dm, dl))| {
        let (d, mt) = (&dout[t * c..][..c], &m[t * c..][..c]);
        let s = sigmoid(logits[t]);
        dm.iter_mut().zip(d).for_each(|(a, &b)| *a = s * b);
        *dl = super::dot(d, mt) * s * (1.0 - s);
    });
    matmul_backward(dx, dw, dlogits, x, w, x.len() / c, c, 1, Precision::F32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dot, gradcheck, randn};

    const T: usize = 5;
    const C: usize = 4;
    const F: usize = 3;

    /// Every input and weight of the gated shared expert: out = sigmoid(x · w_g) * mlp(x).
    #[test]
    fn gated_mlp_gradcheck() {
        let (x, wg, dout) = (randn(T * C, 1), randn(C, 2), randn(T * C, 3));
        let (gp, up, dp) = (randn(F * C, 4), randn(F * C, 5), randn(C * F, 6));
        let run = |x: &[f32], wg: &[f32], gp: &[f32], up: &[f32], dp: &[f32]| {
            let wt = ExpertParams { gate_proj: gp, up_proj: up, down_proj: dp };
            let (mut g, mut u, mut h, mut m) = (vec![0.0; T * F], vec![0.0; T * F], vec![0.0; T * F], vec![0.0; T * C]);
            mlp_forward(&mut g, &mut u, &mut h, &mut m, x, &wt, C, F, Precision::F32);
            let (mut out, mut logits) = (vec![0.0; T * C], vec![0.0; T]);
            sigmoid_gate_forward(&mut out, &mut logits, x, wg, &m, C);
            (out, logits, g, u, h, m)
        };
        let (_, logits, g, u, h, m) = run(&x, &wg, &gp, &up, &dp);
        let (mut dx, mut dwg, mut dm, mut dl) = (vec![0.0; T * C], vec![0.0; C], vec![0.0; T * C], vec![0.0; T]);
        sigmoid_gate_backward(&mut dx, &mut dwg, &mut dm, &mut dl, &dout, &x, &wg, &m, &logits, C);
        let (mut dgp, mut dup, mut ddp) = (vec![0.0; F * C], vec![0.0; F * C], vec![0.0; C * F]);
        let (mut dxm, mut dh, mut dg, mut du) = (vec![0.0; T * C], vec![0.0; T * F], vec![0.0; T * F], vec![0.0; T * F]);
        let wt = ExpertParams { gate_proj: &gp[..], up_proj: &up[..], down_proj: &dp[..] };
        let mut grads = ExpertParams { gate_proj: &mut dgp[..], up_proj: &mut dup[..], down_proj: &mut ddp[..] };
        mlp_backward(&mut dxm, &mut grads, &mut dh, &mut dg, &mut du, &dm, &x, &g, &u, &h, &wt, C, F, Precision::F32);
        dx.iter_mut().zip(&dxm).for_each(|(a, b)| *a += b);
        let l = |out: Vec<f32>| dot(&out, &dout);
        gradcheck("gated mlp: x", |v| l(run(v, &wg, &gp, &up, &dp).0), &x, &dx, 1e-2, 1e-3, 1e-2);
        gradcheck("gated mlp: gate", |v| l(run(&x, v, &gp, &up, &dp).0), &wg, &dwg, 1e-2, 1e-3, 1e-2);
        gradcheck("gated mlp: gate_proj", |v| l(run(&x, &wg, v, &up, &dp).0), &gp, &dgp, 1e-2, 1e-3, 1e-2);
        gradcheck("gated mlp: up_proj", |v| l(run(&x, &wg, &gp, v, &dp).0), &up, &dup, 1e-2, 1e-3, 1e-2);
        gradcheck("gated mlp: down_proj", |v| l(run(&x, &wg, &gp, &up, v).0), &dp, &ddp, 1e-2, 1e-3, 1e-2);
    }
}
