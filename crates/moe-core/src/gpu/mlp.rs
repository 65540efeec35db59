//! A dense SwiGLU MLP and the sigmoid gate of a shared expert on the GPU, as `cpu::mlp`: the MLP is
//! the grouped expert GEMMs (`gpu::experts`) with one expert owning every row (`DenseRows`), the
//! gate's products are GEMMs and its elementwise part `shaders/mlp.wgsl`.

use super::experts::{experts_backward, experts_forward, grouped_tiles, Sorted};
use super::matmul::{gemm, Gemm, View};
use super::{groups_1d, word, Buf, Encoder, Gpu, Kernel};
use crate::config::Precision;
use crate::error::Result;
use crate::layout::ExpertParams;

const SRC: &str = include_str!("shaders/mlp.wgsl");
const GATE_FORWARD: Kernel = Kernel::checked(SRC, "sigmoid_gate_forward");
const GATE_BACKWARD: Kernel = Kernel::checked(SRC, "sigmoid_gate_backward");

/// mlp.wgsl's `Params`: T rows of C, the offset of out / dout.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32, c: u32, o_off: u32, _pad: u32,
}

/// The row table of T rows all owned by one expert, for the grouped GEMMs, and the MLP's saved
/// g | u | h (3, T, F) and backward scratch dg | du (2, T, F).
pub struct GpuMlpActs {
    offsets: Buf,
    tiles: Buf,
    t: usize,
    guh: Buf,
    dgu: Option<Buf>,
}

impl GpuMlpActs {
    /// For T rows of an MLP of width F.
    pub fn new(g: &Gpu, t: usize, f: usize) -> Result<Self> {
        let tile = grouped_tiles(t, 1);
        Ok(GpuMlpActs {
            offsets: g.upload(&[0u32, word(t)])?,
            tiles: g.upload(&[0u32, word(t.div_ceil(tile.bm))])?,
            t,
            guh: g.alloc(3 * t * f)?,
            dgu: None,
        })
    }

    fn sorted(&self) -> Sorted<'_> {
        Sorted { offsets: &self.offsets, tiles: &self.tiles, tile: grouped_tiles(self.t, 1), n: self.t, e: 1 }
    }
}

/// `cpu::mlp::mlp_forward`: overwrites y (T, C) from x (T, C); wt: gate_proj, up_proj (F, C),
/// down_proj (C, F), views of one buffer. Saves g | u | h in `acts`.
#[allow(clippy::too_many_arguments)]
pub fn mlp_forward(g: &Gpu, enc: &mut Encoder, y: View, acts: &GpuMlpActs, x: View, wt: &ExpertParams<View>, c: usize, f: usize, p: Precision) {
    experts_forward(g, enc, &acts.guh, y, x, wt, &acts.sorted(), c, f, p);
}

/// `cpu::mlp::mlp_backward`: overwrites dx (T, C) from dy (T, C) (dx and dy may be one view);
/// accumulates into `grads`. x: the forward's input.
#[allow(clippy::too_many_arguments)]
pub fn mlp_backward(g: &Gpu, enc: &mut Encoder, dx: View, grads: &ExpertParams<View>, acts: &mut GpuMlpActs, dy: View, x: View, wt: &ExpertParams<View>, c: usize, f: usize, p: Precision) -> Result<()> {
    if acts.dgu.is_none() {
        acts.dgu = Some(g.alloc(2 * acts.t * f)?);
    }
    let dgu = acts.dgu.as_ref().expect("allocated above");
    experts_backward(g, enc, dx, grads, dgu, dy, x, &acts.guh, wt, &acts.sorted(), c, f, p);
    Ok(())
}

/// `cpu::mlp::sigmoid_gate_forward`: out (T, C) += sigmoid(x · w) * m; overwrites logits (T).
/// x (T, C), w (1, C), m (T, C).
#[allow(clippy::too_many_arguments)]
pub fn sigmoid_gate_forward(g: &Gpu, enc: &mut Encoder, out: View, logits: &Buf, x: View, w: View, m: &Buf, t: usize, c: usize) {
    gemm(g, enc, logits.into(), x, w, Gemm { trans_b: true, ..Gemm::new(t, 1, c) });
    let p = Params { t: word(t), c: word(c), o_off: word(out.off), _pad: 0 };
    g.dispatch(enc, &GATE_FORWARD, &[logits, m, out.buf], &p, groups_1d(t * c, 256));
}

/// `cpu::mlp::sigmoid_gate_backward`: overwrites dm (T, C) and dlogits (T) from dout (T, C);
/// dx (T, C) += dlogits · w;  dw (1, C) += dlogits^T · x.
#[allow(clippy::too_many_arguments)]
pub fn sigmoid_gate_backward(g: &Gpu, enc: &mut Encoder, dx: View, dw: View, dm: &Buf, dlogits: &Buf, dout: View, x: View, w: View, m: &Buf, logits: &Buf, t: usize, c: usize) {
    let p = Params { t: word(t), c: word(c), o_off: word(dout.off), _pad: 0 };
    g.dispatch(enc, &GATE_BACKWARD, &[logits, m, dout.buf, dm, dlogits], &p, groups_1d(t, 1));
    gemm(g, enc, dx, dlogits.into(), w, Gemm { acc: true, ..Gemm::new(t, c, 1) });
    gemm(g, enc, dw, dlogits.into(), x, Gemm { trans_a: true, acc: true, ..Gemm::new(1, c, t) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::mlp as cpu;
    use crate::gpu::tests::{f32s, test_gpu};
    use crate::testutil::{assert_close, randn};

    /// The gated MLP y = sigmoid(x · w_g) * mlp(x) (added to an output holding junk) forward and
    /// backward against the CPU: out, dx and every weight gradient. T straddles a row tile.
    #[test]
    fn gated_mlp_matches_cpu() {
        let Some(g) = test_gpu("gated_mlp_matches_cpu") else { return };
        let (t, c, f) = (70, 12, 9);
        let (x, wg, dout, base) = (randn(t * c, 1), randn(c, 2), randn(t * c, 3), randn(t * c, 4));
        let w: Vec<f32> = randn(3 * f * c, 5).iter().map(|v| v / (c as f32).sqrt()).collect();
        let (gp, up, dp) = (&w[..f * c], &w[f * c..2 * f * c], &w[2 * f * c..]);
        let wt = ExpertParams { gate_proj: gp, up_proj: up, down_proj: dp };
        // CPU
        let (mut cg, mut cu, mut ch, mut m) = (vec![0.0; t * f], vec![0.0; t * f], vec![0.0; t * f], vec![0.0; t * c]);
        cpu::mlp_forward(&mut cg, &mut cu, &mut ch, &mut m, &x, &wt, c, f, Precision::F32);
        let (mut out, mut logits) = (base.clone(), vec![0.0; t]);
        cpu::sigmoid_gate_forward(&mut out, &mut logits, &x, &wg, &m, c);
        let (mut dx, mut dwg, mut dm, mut dl) = (vec![0.0; t * c], vec![0.0; c], vec![0.0; t * c], vec![0.0; t]);
        cpu::sigmoid_gate_backward(&mut dx, &mut dwg, &mut dm, &mut dl, &dout, &x, &wg, &m, &logits, c);
        let mut dw = vec![0.0; 3 * f * c];
        let (dgp, rest) = dw.split_at_mut(f * c);
        let (dup, ddp) = rest.split_at_mut(f * c);
        let mut grads = ExpertParams { gate_proj: dgp, up_proj: dup, down_proj: ddp };
        let (mut dxm, mut dh, mut dg, mut du) = (vec![0.0; t * c], vec![0.0; t * f], vec![0.0; t * f], vec![0.0; t * f]);
        cpu::mlp_backward(&mut dxm, &mut grads, &mut dh, &mut dg, &mut du, &dm, &x, &cg, &cu, &ch, &wt, c, f, Precision::F32);
        dx.iter_mut().zip(&dxm).for_each(|(a, b)| *a += b);
        // GPU
        let (gx, gw, gwg, gdout) = (g.upload(&x).unwrap(), g.upload(&w).unwrap(), g.upload(&wg).unwrap(), g.upload(&dout).unwrap());
        let (gout, gm, glog) = (g.upload(&base).unwrap(), g.alloc(t * c).unwrap(), g.alloc(t).unwrap());
        let (gdx, gdw, gdwg, gdm, gdl, gdxm) = (g.zeros(t * c).unwrap(), g.zeros(3 * f * c).unwrap(), g.zeros(c).unwrap(), g.alloc(t * c).unwrap(), g.alloc(t).unwrap(), g.alloc(t * c).unwrap());
        let v = |buf, off| View { buf, off };
        let (wv, dwv) = (ExpertParams { gate_proj: v(&gw, 0), up_proj: v(&gw, f * c), down_proj: v(&gw, 2 * f * c) }, ExpertParams { gate_proj: v(&gdw, 0), up_proj: v(&gdw, f * c), down_proj: v(&gdw, 2 * f * c) });
        let mut acts = GpuMlpActs::new(g, t, f).unwrap();
        let mut enc = g.encoder();
        mlp_forward(g, &mut enc, (&gm).into(), &acts, (&gx).into(), &wv, c, f, Precision::F32);
        sigmoid_gate_forward(g, &mut enc, (&gout).into(), &glog, (&gx).into(), (&gwg).into(), &gm, t, c);
        sigmoid_gate_backward(g, &mut enc, (&gdx).into(), (&gdwg).into(), &gdm, &gdl, (&gdout).into(), (&gx).into(), (&gwg).into(), &gm, &glog, t, c);
        mlp_backward(g, &mut enc, (&gdxm).into(), &dwv, &mut acts, (&gdm).into(), (&gx).into(), &wv, c, f, Precision::F32).unwrap();
        let r = g.finish(enc, &[&gout, &gdx, &gdxm, &gdwg, &gdw]).unwrap();
        assert_close("gated mlp out", &f32s(&r[0]), &out, 1e-5, 1e-4);
        let gdx_all: Vec<f32> = f32s(&r[1]).iter().zip(f32s(&r[2])).map(|(a, b)| a + b).collect();
        assert_close("gated mlp dx", &gdx_all, &dx, 1e-5, 1e-4);
        assert_close("gated mlp d gate", &f32s(&r[3]), &dwg, 1e-5, 1e-4);
        assert_close("gated mlp d weights", &f32s(&r[4]), &dw, 1e-5, 1e-4);
    }
}
