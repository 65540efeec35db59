//! The standalone MoE layer on the CPU: the block of `cpu::moe` with the activations of the last
//! stored forward kept for its backward.

use super::moe::{moe_backward, moe_forward, MoeActs};
use crate::config::{MoeConfig, Precision};
use crate::layout::MoeParams;
use crate::stats::{ForwardOutput, RoutingStats};

/// The CPU side of a `MoeLayer`.
#[derive(Default)]
pub struct CpuLayer {
    acts: MoeActs,
}

impl CpuLayer {
    /// Forward on B sequences of S tokens, x (T, C) and mask (T) already validated. With `store`
    /// the activations are kept for `backward`; without, the stored ones are left untouched.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&mut self, wt: &MoeParams<&[f32]>, cfg: &MoeConfig, bias: &[f32], x: &[f32], mask: &[u8], b: usize, s: usize, store: bool) -> ForwardOutput {
        let mut out = ForwardOutput { out: vec![0.0; x.len()], stats: RoutingStats::default() };
        let mut scratch = MoeActs::default();
        let acts = if store { &mut self.acts } else { &mut scratch };
        super::pool().install(|| moe_forward(&mut out.out, &mut out.stats, acts, x, mask, bias, wt, cfg, b, s, Precision::F32));
        out
    }

    /// Backward of the stored forward: returns dx (T, C) and accumulates into `grads`.
    /// dout (T, C); pressure (B, E) and z_scale: see `cpu::router::router_backward`.
    pub fn backward(&mut self, grads: &mut MoeParams<&mut [f32]>, wt: &MoeParams<&[f32]>, cfg: &MoeConfig, dout: &[f32], pressure: &[f32], z_scale: f32) -> Vec<f32> {
        let mut dx = vec![0.0; dout.len()];
        let acts = &mut self.acts;
        super::pool().install(|| moe_backward(&mut dx, grads, acts, dout, pressure, z_scale, wt, cfg, Precision::F32));
        dx
    }
}
