//! Causal grouped-query attention on the GPU in the convention of `cpu::attention`: q, out (T, H*D);
//! k, v (T, KV*D); probs (B, H, S, S) with zeros above the diagonal; T = B*S. Every product runs on
//! the GEMM core (`shaders/attention.wgsl` after `gemm.wgsl`); the backward stores dS in a scratch
//! view and takes delta = rowsum(dO * O).

use super::matmul::{Gemm, Tiles, View};
use super::{groups_1d, Encoder, Gpu, Kernel};

const SRC: &str = concat!(include_str!("shaders/gemm.wgsl"), include_str!("shaders/attention.wgsl"));
const GEMM: Kernel = Kernel::proven(SRC, "attn_gemm");
const SOFTMAX: Kernel = Kernel::checked(SRC, "attn_softmax");

/// attention.wgsl's `Params`, which every entry point reads, one line per 16-byte row: S, H, KV,
/// D, scale (f32 bits), rows = B*H*S and the view offsets (o_off: out's, or dout's in the backward;
/// f_off: the forward's out in the backward).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    s: u32, h: u32, kv: u32, d: u32,
    scale: u32, rows: u32, q_off: u32, k_off: u32,
    v_off: u32, p_off: u32, o_off: u32, dq_off: u32,
    dk_off: u32, dv_off: u32, ds_off: u32, f_off: u32,
    win: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

/// attention.wgsl's MODE: the product `attn_gemm` computes.
#[derive(Clone, Copy)]
enum Mode {
    Scores = 0,
    Pv = 1,
    Ds = 2,
    Dq = 3,
    Dk = 4,
    Dv = 5,
}

/// The shape of one attention call: B sequences of S positions, H query heads of KV groups, head
/// dim D, and the sliding window (positions a query sees; None = all before it).
#[derive(Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub kv: usize,
    pub d: usize,
    pub window: Option<usize>,
}

impl Shape {
    /// S, H, KV, D, scale and rows; every offset zero. Checks what the kernels divide by.
    fn params(&self) -> Params {
        let Shape { b, s, h, kv, d, window } = *self;
        assert!(kv > 0 && h.is_multiple_of(kv), "attention: {h} query heads do not split into {kv} kv heads");
        assert!(b * h <= 65535, "attention: B*H = {} workgroup rows exceed 65535", b * h);
        let scale = 1.0 / (d as f32).sqrt();
        let (s, h, kv, d, rows) = (s as u32, h as u32, kv as u32, d as u32, (b * h * s) as u32);
        let win = window.map_or(0, |w| w.min(s as usize)) as u32;
        Params { s, h, kv, d, scale: scale.to_bits(), rows, win, ..bytemuck::Zeroable::zeroed() }
    }

    /// Records `mode` over views [c, a, b, and for DS the probs and out it reads].
    fn gemm(&self, g: &Gpu, enc: &mut Encoder, mode: Mode, p: &Params, views: &[View]) {
        let Shape { b, s, h, kv, d, .. } = *self;
        // (M, N, batch) of the product: rows are positions, columns positions or head dims.
        let (n, heads) = match mode {
            Mode::Scores | Mode::Ds => (s, h),
            Mode::Pv | Mode::Dq => (d, h),
            Mode::Dk | Mode::Dv => (d, kv),
        };
        let t = Tiles::pick(&Gemm { batch: b * heads, ..Gemm::new(s, n, d) });
        let mut constants = t.constants().to_vec();
        constants.push(("MODE", mode as u32 as f64));
        let a = views[1].buf;
        let bufs = [views[0].buf, a, views[2].buf, views.get(3).map_or(a, |v| v.buf), views.get(4).map_or(a, |v| v.buf)];
        let groups = [n.div_ceil(t.bn) as u32, s.div_ceil(t.bm) as u32, (b * heads) as u32];
        g.dispatch_with(enc, &GEMM, &constants, &bufs, p, groups);
    }

    /// Panics unless the views hold (T, H*D) queries-sized, (T, KV*D) keys-sized and (B, H, S, S)
    /// tensors: the extents that prove attn_gemm's indices in range.
    fn fit(&self, queries: &[View], keys: &[View], squares: &[View]) {
        let Shape { b, s, h, kv, d, .. } = *self;
        queries.iter().for_each(|x| x.fits(b * s * h * d, "attention (T, H*D)"));
        keys.iter().for_each(|x| x.fits(b * s * kv * d, "attention (T, KV*D)"));
        squares.iter().for_each(|x| x.fits(b * h * s * s, "attention (B, H, S, S)"));
    }
}

/// Overwrites out (T, H*D) and probs (B, H, S, S) from q (T, H*D), k, v (T, KV*D). T = B*S.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(g: &Gpu, enc: &mut Encoder, out: View, probs: View, q: View, k: View, v: View, shape: Shape) {
    shape.fit(&[out, q], &[k, v], &[probs]);
    let (q_off, k_off, v_off, p_off, o_off) = (q.off as u32, k.off as u32, v.off as u32, probs.off as u32, out.off as u32);
    let p = Params { q_off, k_off, v_off, p_off, o_off, ..shape.params() };
    shape.gemm(g, enc, Mode::Scores, &p, &[probs, q, k]);
    g.dispatch(enc, &SOFTMAX, &[probs.buf], &p, groups_1d(shape.b * shape.h * shape.s, 1));
    shape.gemm(g, enc, Mode::Pv, &p, &[out, probs, v]);
}

/// Overwrites dq (T, H*D), dk, dv (T, KV*D) from dout (T, H*D) through the saved probs and the
/// forward's out (T, H*D):
///   dP = dO V^T;  delta = rowsum(P dP) = rowsum(dO O);  dS = scale P (dP - delta);
///   dq = dS K;  dk = dS^T Q;  dv = P^T dO,
/// dk and dv summed over the query heads of each group in a fixed order (deterministic).
/// ds (B, H, S, S) is scratch for dS below the diagonal.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dq: View,
    dk: View,
    dv: View,
    ds: View,
    dout: View,
    out: View,
    probs: View,
    q: View,
    k: View,
    v: View,
    shape: Shape,
) {
    shape.fit(&[dq, dout, out, q], &[dk, dv, k, v], &[ds, probs]);
    let (q_off, k_off, v_off, p_off, o_off, f_off) = (q.off as u32, k.off as u32, v.off as u32, probs.off as u32, dout.off as u32, out.off as u32);
    let (dq_off, dk_off, dv_off, ds_off) = (dq.off as u32, dk.off as u32, dv.off as u32, ds.off as u32);
    let p = Params { q_off, k_off, v_off, p_off, o_off, dq_off, dk_off, dv_off, ds_off, f_off, ..shape.params() };
    shape.gemm(g, enc, Mode::Ds, &p, &[ds, dout, v, probs, out]);
    shape.gemm(g, enc, Mode::Dq, &p, &[dq, ds, k]);
    shape.gemm(g, enc, Mode::Dk, &p, &[dk, ds, q]);
    shape.gemm(g, enc, Mode::Dv, &p, &[dv, probs, dout]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention as cpu;
    use crate::gpu::matmul::{force, BIG, SMALL};
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};

    /// Forward then backward on the GPU (in one encoder, the backward reading the GPU's probs)
    /// against the CPU. Inputs sit at offset 3 and outputs at offset 5 of buffers pre-filled with
    /// junk, so views and overwriting are both exercised.
    fn matches_cpu(test: &str, b: usize, s: usize, h: usize, kv: usize, d: usize, window: Option<usize>) {
        let Some(g) = test_gpu(test) else { return };
        let (t, qn, kn) = (b * s, b * s * h * d, b * s * kv * d);
        let shape = Shape { b, s, h, kv, d, window };
        let (q, k, v, dout) = (randn(qn, 1), randn(kn, 2), randn(kn, 3), randn(qn, 4));
        let (mut out, mut probs) = (vec![0.0; qn], vec![0.0; b * h * s * s]);
        cpu::attention_forward(&mut out, &mut probs, &q, &k, &v, s, h, kv, d, window);
        let (mut dq, mut dk, mut dv) = (vec![0.0; qn], vec![0.0; kn], vec![0.0; kn]);
        cpu::attention_backward(&mut dq, &mut dk, &mut dv, &dout, &probs, &q, &k, &v, s, h, kv, d, window);

        let input = |x: &[f32]| g.upload(&[vec![7.0; 3], x.to_vec()].concat()).unwrap();
        let output = |n: usize| g.upload(&vec![-9.0f32; n + 5]).unwrap();
        let (gq, gk, gv, gdout) = (input(&q), input(&k), input(&v), input(&dout));
        // Both tile configurations of the GEMM core.
        for tiles in [SMALL, BIG] {
            force(Some(tiles));
            let (gout, gprobs, gdq, gdk, gdv) = (output(qn), output(probs.len()), output(qn), output(kn), output(kn));
            let gds = output(probs.len());
            let (i, o) = (|buf| View { buf, off: 3 }, |buf| View { buf, off: 5 });
            let mut enc = g.encoder();
            attention_forward(g, &mut enc, o(&gout), o(&gprobs), i(&gq), i(&gk), i(&gv), shape);
            attention_backward(g, &mut enc, o(&gdq), o(&gdk), o(&gdv), o(&gds), i(&gdout), o(&gout), o(&gprobs), i(&gq), i(&gk), i(&gv), shape);
            force(None);
            let res = g.finish(enc, &[&gout, &gprobs, &gdq, &gdk, &gdv]).unwrap();
            let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(&w[5..]).to_vec();
            eprintln!("{test}: B={b} S={s} H={h} KV={kv} D={d} (T={t}) window {window:?}, {}x{} tiles", tiles.bm, tiles.bn);
            assert_close("attention out", &f(&res[0]), &out, 1e-5, 1e-4);
            assert_close("attention probs", &f(&res[1]), &probs, 1e-5, 1e-4);
            assert_close("attention dq", &f(&res[2]), &dq, 1e-5, 1e-4);
            assert_close("attention dk", &f(&res[3]), &dk, 1e-5, 1e-4);
            assert_close("attention dv", &f(&res[4]), &dv, 1e-5, 1e-4);
        }
    }

    #[test]
    fn attention_gqa_matches_cpu() {
        matches_cpu("attention_gqa_matches_cpu", 2, 7, 4, 2, 8, None);
    }

    /// A sliding window of 3 positions (Mixtral, Qwen2-MoE), and one over two tiles of positions.
    #[test]
    fn attention_sliding_window_matches_cpu() {
        matches_cpu("attention_sliding_window_matches_cpu", 2, 7, 4, 2, 8, Some(3));
        matches_cpu("attention_sliding_window_matches_cpu", 1, 67, 2, 1, 8, Some(20));
    }

    #[test]
    fn attention_mha_matches_cpu() {
        matches_cpu("attention_mha_matches_cpu", 2, 5, 3, 3, 4, None);
    }

    /// S and D straddle the 64-wide tiles and 16-deep slices: several tiles per row and column.
    #[test]
    fn attention_multi_tile_matches_cpu() {
        matches_cpu("attention_multi_tile_matches_cpu", 1, 67, 2, 1, 72, None);
    }

    /// S and D straddle the 128-wide tiles too.
    #[test]
    fn attention_large_tiles_matches_cpu() {
        matches_cpu("attention_large_tiles_matches_cpu", 1, 135, 2, 1, 132, None);
    }
}
