//! The standalone MoE layer on the GPU: the block of `gpu::moe` behind `layer::MoeLayer`, laid out as
//! `GpuModel` is, its parameters in a `DeviceStore`. A forward uploads x and the mask and reads back
//! the output and the statistics at once; a backward uploads dout and pressure and reads back dx.

use super::moe::{moe_backward, moe_forward, stats_len, unpack_stats, GpuMoeActs};
use super::store::DeviceStore;
use super::{BindReservation, Buf, Gpu};
use super::matmul::View;
use crate::config::{MoeConfig, Precision};
use crate::error::{MoeError, Result};
use crate::layout::{MoeParams, ParamSpec};
use crate::stats::ForwardOutput;

/// Inputs, outputs and saved activations of one forward of B sequences of S tokens.
struct Acts {
    b: usize,
    s: usize,
    x: Buf,
    mask: Buf,
    out: Buf,
    /// [counts (B,E) | score_sums (B,E) | topk sums (B) | z sums (B) | valid (B)]
    stats: Buf,
    /// (E) the router's selection bias
    bias: Buf,
    moe: GpuMoeActs,
    binds: BindReservation,
}

impl Acts {
    fn new(g: &Gpu, cfg: &MoeConfig, b: usize, s: usize) -> Result<Self> {
        let t = b * s;
        Ok(Acts {
            b,
            s,
            x: g.alloc(t * cfg.hidden_size)?,
            mask: g.alloc(t)?,
            out: g.alloc(t * cfg.hidden_size)?,
            stats: g.alloc(stats_len(b, cfg.num_experts))?,
            bias: g.alloc(cfg.num_experts)?,
            moe: GpuMoeActs::default(),
            binds: BindReservation::default(),
        })
    }
}

/// Inputs and output of the backward of B sequences of S tokens.
struct Grads {
    b: usize,
    s: usize,
    dout: Buf,
    pressure: Buf,
    dx: Buf,
    binds: BindReservation,
}

/// The device activations of a `MoeLayer` on the GPU; its parameters are the `DeviceStore` passed in.
#[derive(Default)]
pub struct GpuLayer {
    /// the stored forward (for `backward`) and the scratch of `store = false` forwards
    acts: Option<Acts>,
    scratch: Option<Acts>,
    grad_scratch: Option<Grads>,
}

impl GpuLayer {
    /// Forward on B sequences of S tokens, x (T, C) and mask (T) already validated; see
    /// `MoeLayer::forward`. With `store` the activations are kept for `backward`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&mut self, dev: &DeviceStore, layout: &MoeParams<ParamSpec>, cfg: &MoeConfig, bias: &[f32], x: &[f32], mask: &[u8], b: usize, s: usize, store: bool) -> Result<ForwardOutput> {
        let g = dev.g;
        let slot = if store { &mut self.acts } else { &mut self.scratch };
        if !matches!(slot, Some(a) if a.b == b && a.s == s) {
            *slot = None; // free the old shape's buffers before allocating the new ones
            *slot = Some(Acts::new(g, cfg, b, s)?);
        }
        let a = slot.as_mut().unwrap();
        let mask: Vec<u32> = mask.iter().map(|&m| m as u32).collect();
        g.write(&a.x, 0, x);
        g.write(&a.mask, 0, &mask);
        g.write(&a.bias, 0, bias);
        let mut enc = g.encoder();
        let wt = layout.map(&mut |t| View { buf: &dev.params, off: t.offset });
        moe_forward(g, &mut enc, (&a.out).into(), (&a.stats).into(), &mut a.moe, (&a.x).into(), &a.mask, (&a.bias).into(), &wt, cfg, b, s, Precision::F32)?;
        a.binds.fit(g, enc.dispatches());
        let r = g.finish(enc, &[&a.out, &a.stats])?;
        let stats = unpack_stats(bytemuck::cast_slice(&r[1]), b, cfg.num_experts);
        Ok(ForwardOutput { out: bytemuck::cast_slice(&r[0]).to_vec(), stats })
    }

    /// Backward of the stored forward; accumulates into the gradient buffer and returns dx (T, C).
    /// See `MoeLayer::backward`.
    pub fn backward(&mut self, dev: &DeviceStore, layout: &MoeParams<ParamSpec>, cfg: &MoeConfig, dout: &[f32], pressure: &[f32], z_scale: f32) -> Result<Vec<f32>> {
        let g = dev.g;
        let a = self.acts.as_mut().ok_or_else(|| MoeError::InvalidState("backward needs a stored forward".into()))?;
        let (b, s) = (a.b, a.s);
        if !matches!(&self.grad_scratch, Some(gs) if gs.b == b && gs.s == s) {
            self.grad_scratch = None;
            let t = b * s;
            let (dout, pressure, dx) = (g.alloc(t * cfg.hidden_size)?, g.alloc(b * cfg.num_experts)?, g.alloc(t * cfg.hidden_size)?);
            self.grad_scratch = Some(Grads { b, s, dout, pressure, dx, binds: BindReservation::default() });
        }
        let gs = self.grad_scratch.as_mut().unwrap();
        g.write(&gs.dout, 0, dout);
        g.write(&gs.pressure, 0, pressure);
        let mut enc = g.encoder();
        dev.grads_ready(&mut enc);
        let (wt, gr) = (layout.map(&mut |t| View { buf: &dev.params, off: t.offset }), layout.map(&mut |t| View { buf: &dev.grads, off: t.offset }));
        moe_backward(g, &mut enc, (&gs.dx).into(), &gr, &mut a.moe, (&gs.dout).into(), (&a.x).into(), &a.mask, (&gs.pressure).into(), z_scale, &wt, cfg, Precision::F32)?;
        gs.binds.fit(g, enc.dispatches());
        let r = g.finish(enc, &[&gs.dx])?;
        Ok(bytemuck::cast_slice(&r[0]).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};
    use crate::{AdamWConfig, MoeConfig, MoeLayer};

    /// Three training rounds (forward, backward with pressure and z-loss, AdamW with clipping) on
    /// both devices from the same initialisation, with masked tokens; a statistics-only forward of
    /// another batch size and a refused forward between forward and backward must not disturb the
    /// stored activations.
    #[test]
    fn layer_training_matches_cpu() {
        let Some(_) = test_gpu("layer_training_matches_cpu") else { return };
        let cfg = MoeConfig {
            hidden_size: 12,
            moe_intermediate_size: 10,
            num_experts: 6,
            num_experts_per_tok: 2,
            norm_topk_prob: true,
            shared_expert_intermediate_size: 0,
            initializer_range: 0.2,
            seed: 5,
        };
        let (b, s, c, e) = (2, 7, cfg.hidden_size, cfg.num_experts);
        let t = b * s;
        let x = randn(t * c, 1);
        let mask: Vec<u8> = (0..t).map(|i| u8::from(i % 5 != 2)).collect();
        let other = randn(3 * s * c, 2);
        let dout = randn(t * c, 3);
        let pressure: Vec<f32> = randn(b * e, 4).iter().map(|v| 0.1 * v).collect();
        let z_scale = 0.05;
        let opt = AdamWConfig::from_json(serde_json::json!({ "lr": 1e-2, "weightDecay": 0.1, "maxGradNorm": 0.5 })).unwrap();
        let mut cpu = MoeLayer::new(cfg.clone()).unwrap();
        let mut gpu = MoeLayer::new(cfg).unwrap();
        gpu.to_device(Some("gpu")).unwrap();
        for round in 0..3 {
            let oc = cpu.forward(&x, Some(&mask), b, true).unwrap();
            let og = gpu.forward(&x, Some(&mask), b, true).unwrap();
            gpu.forward(&other, None, 3, false).unwrap();
            // Refused before the device is touched: the stored forward stays.
            assert_eq!(gpu.forward(&x[1..], None, b, true).err().map(|e| e.code()), Some("SHAPE_MISMATCH"));
            assert_eq!(og.stats.counts, oc.stats.counts, "round {round}: routing differs");
            assert_eq!(og.stats.valid_tokens, oc.stats.valid_tokens);
            assert_close(&format!("out (round {round})"), &og.out, &oc.out, 1e-5, 1e-4);
            assert_close("score_sums", &og.stats.score_sums, &oc.stats.score_sums, 1e-5, 1e-4);
            assert_close("topk_score_sums", &og.stats.topk_score_sums, &oc.stats.topk_score_sums, 1e-5, 1e-4);
            assert_close("z_sums", &og.stats.z_sums, &oc.stats.z_sums, 1e-5, 1e-4);
            let dxc = cpu.backward(&dout, &pressure, z_scale).unwrap();
            let dxg = gpu.backward(&dout, &pressure, z_scale).unwrap();
            assert_close(&format!("dx (round {round})"), &dxg, &dxc, 1e-5, 1e-4);
            let gc = cpu.store.host().unwrap().grads.clone();
            assert_close(&format!("grads (round {round})"), &gpu.store.host().unwrap().grads, &gc, 1e-5, 1e-3);
            let (nc, ng) = (cpu.store.step(&opt).unwrap(), gpu.store.step(&opt).unwrap());
            assert!(((ng - nc) / nc).abs() < 1e-5, "grad norm {ng} vs {nc}");
            cpu.store.zero_grad().unwrap();
            gpu.store.zero_grad().unwrap();
        }
        let (pc, mc) = (cpu.store.host().unwrap().params.clone(), cpu.store.host().unwrap().opt.m.clone());
        assert_close("adam m after 3 steps", &gpu.store.host().unwrap().opt.m, &mc, 1e-6, 1e-3);
        // A weight whose gradient is rounding noise still moves by up to lr on either device (see
        // the model's test): a tenth of lr bounds that, far below what a real difference would show.
        assert_close("params after 3 steps", &gpu.store.host().unwrap().params, &pc, 1e-3, 1e-4);
        assert_eq!(gpu.store.host().unwrap().opt.step, 3);
    }
}
