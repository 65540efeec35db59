//! Causal grouped-query attention on the GPU in the convention of `cpu::attention`: q, out (T, H*D);
//! k, v (T, KV*D); probs (B, H, S, S) with zeros above the diagonal; T = B*S. Tiled kernels in
//! `shaders/attention.wgsl`; the backward recomputes dP tile by tile instead of storing dS.

use super::matmul::View;
use super::{groups_1d, Encoder, Gpu, Kernel};

const SRC: &str = include_str!("shaders/attention.wgsl");
const SCORES: Kernel = Kernel::checked(SRC, "attn_scores");
const SOFTMAX: Kernel = Kernel::checked(SRC, "attn_softmax");
const PV: Kernel = Kernel::checked(SRC, "attn_pv");
const DELTA: Kernel = Kernel::checked(SRC, "attn_delta");
const DQ: Kernel = Kernel::checked(SRC, "attn_dq");
const DK: Kernel = Kernel::checked(SRC, "attn_dk");
const DV: Kernel = Kernel::checked(SRC, "attn_dv");
const TILE: usize = 64;

/// attention.wgsl's `Params`, which every entry point reads, one line per 16-byte row: S, H, KV,
/// D, scale (f32 bits), rows = B*H*S and the view offsets (o_off: out's, or dout's in the backward).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    s: u32, h: u32, kv: u32, d: u32,
    scale: u32, rows: u32, q_off: u32, k_off: u32,
    v_off: u32, p_off: u32, o_off: u32, dq_off: u32,
    dk_off: u32, dv_off: u32, dl_off: u32, _pad1: u32,
}

impl Params {
    /// S, H, KV, D, scale and rows for B sequences; every offset zero.
    fn new(b: usize, s: usize, h: usize, kv: usize, d: usize) -> Self {
        assert!(kv > 0 && h.is_multiple_of(kv), "attention: {h} query heads do not split into {kv} kv heads");
        assert!(b * h <= 65535, "attention: B*H = {} workgroup rows exceed 65535", b * h);
        let scale = 1.0 / (d as f32).sqrt();
        let (s, h, kv, d, rows) = (s as u32, h as u32, kv as u32, d as u32, (b * h * s) as u32);
        Params { s, h, kv, d, scale: scale.to_bits(), rows, ..bytemuck::Zeroable::zeroed() }
    }
}

/// Overwrites out (T, H*D) and probs (B, H, S, S) from q (T, H*D), k, v (T, KV*D). T = B*S.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    g: &Gpu,
    enc: &mut Encoder,
    out: View,
    probs: View,
    q: View,
    k: View,
    v: View,
    b: usize,
    s: usize,
    h: usize,
    kv: usize,
    d: usize,
) {
    let (q_off, k_off, v_off, p_off, o_off) = (q.off as u32, k.off as u32, v.off as u32, probs.off as u32, out.off as u32);
    let p = Params { q_off, k_off, v_off, p_off, o_off, ..Params::new(b, s, h, kv, d) };
    let (tiles, dtiles) = (s.div_ceil(TILE) as u32, d.div_ceil(TILE) as u32);
    g.dispatch(enc, &SCORES, &[probs.buf, q.buf, k.buf], &p, [tiles, tiles, (b * h) as u32]);
    g.dispatch(enc, &SOFTMAX, &[probs.buf], &p, groups_1d(b * h * s, 1));
    g.dispatch(enc, &PV, &[out.buf, probs.buf, v.buf], &p, [dtiles, tiles, (b * h) as u32]);
}

/// Overwrites dq (T, H*D), dk, dv (T, KV*D) from dout (T, H*D) through the saved probs:
///   dP = dO V^T;  dS = P (dP - rowsum(P dP));  dq = scale dS K;  dk = scale dS^T Q;  dv = P^T dO,
/// dk and dv summed over the query heads of each group in a fixed order (deterministic).
/// delta (B*H*S) is scratch for the row sums rowsum(P dP), which the dq and dk kernels read.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dq: View,
    dk: View,
    dv: View,
    delta: View,
    dout: View,
    probs: View,
    q: View,
    k: View,
    v: View,
    b: usize,
    s: usize,
    h: usize,
    kv: usize,
    d: usize,
) {
    let (q_off, k_off, v_off, p_off, o_off) = (q.off as u32, k.off as u32, v.off as u32, probs.off as u32, dout.off as u32);
    let (dq_off, dk_off, dv_off, dl_off) = (dq.off as u32, dk.off as u32, dv.off as u32, delta.off as u32);
    let p = Params { q_off, k_off, v_off, p_off, o_off, dq_off, dk_off, dv_off, dl_off, ..Params::new(b, s, h, kv, d) };
    let (tiles, dtiles) = (s.div_ceil(TILE) as u32, d.div_ceil(TILE) as u32);
    let (bh, bkv) = ((b * h) as u32, (b * kv) as u32);
    g.dispatch(enc, &DELTA, &[delta.buf, probs.buf, v.buf, dout.buf], &p, [1, tiles, bh]);
    g.dispatch(enc, &DQ, &[dq.buf, probs.buf, v.buf, dout.buf, delta.buf, k.buf], &p, [dtiles, tiles, bh]);
    g.dispatch(enc, &DK, &[dk.buf, probs.buf, v.buf, dout.buf, delta.buf, q.buf], &p, [dtiles, tiles, bkv]);
    g.dispatch(enc, &DV, &[dv.buf, probs.buf, dout.buf], &p, [dtiles, tiles, bkv]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention as cpu;
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};

    /// Forward then backward on the GPU (in one encoder, the backward reading the GPU's probs)
    /// against the CPU. Inputs sit at offset 3 and outputs at offset 5 of buffers pre-filled with
    /// junk, so views and overwriting are both exercised.
    fn matches_cpu(test: &str, b: usize, s: usize, h: usize, kv: usize, d: usize) {
        let Some(g) = test_gpu(test) else { return };
        let (t, qn, kn) = (b * s, b * s * h * d, b * s * kv * d);
        let (q, k, v, dout) = (randn(qn, 1), randn(kn, 2), randn(kn, 3), randn(qn, 4));
        let (mut out, mut probs) = (vec![0.0; qn], vec![0.0; b * h * s * s]);
        cpu::attention_forward(&mut out, &mut probs, &q, &k, &v, s, h, kv, d);
        let (mut dq, mut dk, mut dv) = (vec![0.0; qn], vec![0.0; kn], vec![0.0; kn]);
        cpu::attention_backward(&mut dq, &mut dk, &mut dv, &dout, &probs, &q, &k, &v, s, h, kv, d);

        let input = |x: &[f32]| g.upload(&[vec![7.0; 3], x.to_vec()].concat()).unwrap();
        let output = |n: usize| g.upload(&vec![-9.0f32; n + 5]).unwrap();
        let (gq, gk, gv, gdout) = (input(&q), input(&k), input(&v), input(&dout));
        let (gout, gprobs, gdq, gdk, gdv) = (output(qn), output(probs.len()), output(qn), output(kn), output(kn));
        let gdelta = output(b * h * s);
        let (i, o) = (|buf| View { buf, off: 3 }, |buf| View { buf, off: 5 });
        let mut enc = g.encoder();
        attention_forward(g, &mut enc, o(&gout), o(&gprobs), i(&gq), i(&gk), i(&gv), b, s, h, kv, d);
        attention_backward(g, &mut enc, o(&gdq), o(&gdk), o(&gdv), o(&gdelta), i(&gdout), o(&gprobs), i(&gq), i(&gk), i(&gv), b, s, h, kv, d);
        let res = g.finish(enc, &[&gout, &gprobs, &gdq, &gdk, &gdv]).unwrap();
        let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(&w[5..]).to_vec();
        eprintln!("{test}: B={b} S={s} H={h} KV={kv} D={d} (T={t})");
        assert_close("attention out", &f(&res[0]), &out, 1e-5, 1e-4);
        assert_close("attention probs", &f(&res[1]), &probs, 1e-5, 1e-4);
        assert_close("attention dq", &f(&res[2]), &dq, 1e-5, 1e-4);
        assert_close("attention dk", &f(&res[3]), &dk, 1e-5, 1e-4);
        assert_close("attention dv", &f(&res[4]), &dv, 1e-5, 1e-4);
    }

    #[test]
    fn attention_gqa_matches_cpu() {
        matches_cpu("attention_gqa_matches_cpu", 2, 7, 4, 2, 8);
    }

    #[test]
    fn attention_mha_matches_cpu() {
        matches_cpu("attention_mha_matches_cpu", 2, 5, 3, 3, 4);
    }

    /// S and D straddle the 64-wide tiles and 16-deep slices: several tiles per row and column.
    #[test]
    fn attention_multi_tile_matches_cpu() {
        matches_cpu("attention_multi_tile_matches_cpu", 1, 67, 2, 1, 72);
    }
}
