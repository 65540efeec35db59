//! The router on the GPU, op for op `cpu::router`: softmax, logsumexp and top-k of the expert logits,
//! its backward, and the per-sequence routing statistics (`shaders/router.wgsl`). A block's
//! statistics land in one f32 view of `moe::stats_len(B, E)` laid out [counts (B, E) | score_sums
//! (B, E) | topk_score_sums (B) | z_sums (B) | valid (B)], so a model packs every layer's into one
//! buffer and reads them back once per step.

use super::matmul::View;
use super::{groups_1d, word, Buf, Encoder, Gpu, Kernel};

const SRC: &str = include_str!("shaders/router.wgsl");
const FORWARD: Kernel = Kernel::checked(SRC, "router_forward");
const BACKWARD: Kernel = Kernel::checked(SRC, "router_backward");
const STATS: Kernel = Kernel::checked(SRC, "router_stats");

/// router.wgsl's `Params`, one line per 16-byte row: tokens, experts, slots, tokens per sequence;
/// renormalise or not, z_scale (f32 bits), the offsets of the pressure and statistics views; the
/// offset of the bias view.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32, e: u32, k: u32, s: u32,
    norm_topk: u32, z_scale: u32, p_off: u32, st_off: u32,
    b_off: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

impl Params {
    /// T tokens in sequences of S, E experts, K slots; the rest zero.
    fn new(t: usize, e: usize, k: usize, s: usize) -> Self {
        Params { t: word(t), e: word(e), k: word(k), s: word(s), ..bytemuck::Zeroable::zeroed() }
    }
}

/// `cpu::router::router_forward` on T tokens: from logits (T, E) and bias (E), overwrites probs
/// (T, E) = softmax, lse (T) = logsumexp, idx (T, K) u32 = the K largest probs + bias (ties to the
/// lower expert) and w (T, K) = their probs, renormalised when `norm_topk`.
#[allow(clippy::too_many_arguments)]
pub fn router_forward(
    g: &Gpu,
    enc: &mut Encoder,
    probs: &Buf,
    lse: &Buf,
    idx: &Buf,
    w: &Buf,
    logits: &Buf,
    bias: View,
    t: usize,
    e: usize,
    k: usize,
    norm_topk: bool,
) {
    let p = Params { norm_topk: norm_topk.into(), b_off: word(bias.off), ..Params::new(t, e, k, 1) };
    g.dispatch(enc, &FORWARD, &[logits, probs, lse, idx, w, bias.buf], &p, groups_1d(t, 64));
}

/// `cpu::router::router_backward` on T = B*S tokens: overwrites dlogits (T, E) from dw (T, K), the
/// saved probs (T, E), lse (T), idx (T, K) u32, w (T, K), mask (T) u32, pressure (B, E) and z_scale.
#[allow(clippy::too_many_arguments)]
pub fn router_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dlogits: &Buf,
    dw: &Buf,
    probs: &Buf,
    lse: &Buf,
    idx: &Buf,
    w: &Buf,
    mask: &Buf,
    pressure: View,
    z_scale: f32,
    b: usize,
    s: usize,
    e: usize,
    k: usize,
    norm_topk: bool,
) {
    let p = Params {
        norm_topk: norm_topk.into(),
        z_scale: z_scale.to_bits(),
        p_off: word(pressure.off),
        ..Params::new(b * s, e, k, s)
    };
    let bufs = [probs, lse, idx, mask, w, dw, pressure.buf, dlogits];
    g.dispatch(enc, &BACKWARD, &bufs, &p, groups_1d(b * s, 64));
}

/// `cpu::router::router_stats` of T = B*S tokens into stats (`moe::stats_len(B, E)` floats, laid out
/// as in the module doc) from probs (T, E), lse (T), idx (T, K) u32 and mask (T) u32. Overwrites
/// stats. One workgroup per sequence: deterministic.
#[allow(clippy::too_many_arguments)]
pub fn router_stats(
    g: &Gpu,
    enc: &mut Encoder,
    stats: View,
    probs: &Buf,
    lse: &Buf,
    idx: &Buf,
    mask: &Buf,
    b: usize,
    s: usize,
    e: usize,
    k: usize,
) {
    assert!(b <= 65535, "router_stats: at most 65535 sequences");
    let p = Params { st_off: word(stats.off), ..Params::new(b * s, e, k, s) };
    g.dispatch(enc, &STATS, &[probs, lse, idx, mask, stats.buf], &p, [b as u32, 1, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::router as cpu;
    use crate::gpu::moe::stats_len;
    use crate::gpu::tests::{check_stats, f32s, mask_of, padded, test_gpu, upload_mask};
    use crate::stats::RoutingStats;
    use crate::testutil::{assert_close, randn};

    #[test]
    fn router_matches_cpu() {
        let Some(g) = test_gpu("router_matches_cpu") else { return };
        let (b, s, e, k) = (3, 7, 9, 3);
        let t = b * s;
        let mut logits: Vec<f32> = randn(t * e, 1).iter().map(|v| 2.0 * v).collect();
        // A tie for the top slot: the lower expert index goes first.
        (logits[2], logits[5]) = (9.0, 9.0);
        let (dw, mask) = (randn(t * k, 2), mask_of(t));
        let pressure: Vec<f32> = randn(b * e, 3).iter().map(|v| 0.1 * v).collect();
        let z_scale = 0.05;
        let alloc = |n| g.alloc(n).unwrap();
        let up = |v: &[f32]| g.upload(v).unwrap();
        // Plain top-k, and top-k steered by a selection bias (read from a view at an offset).
        for (norm, bias) in [(false, vec![0.0; e]), (true, vec![0.0; e]), (true, randn(e, 6).iter().map(|v| 0.2 * v).collect())] {
            let (mut probs, mut lse, mut idx, mut w) = (vec![0.0; t * e], vec![0.0; t], vec![0u32; t * k], vec![0.0; t * k]);
            cpu::router_forward(&mut probs, &mut lse, &mut idx, &mut w, &logits, &bias, e, k, norm);
            let mut dlogits = vec![0.0; t * e];
            cpu::router_backward(&mut dlogits, &dw, &probs, &lse, &idx, &w, &mask, &pressure, z_scale, s, e, k, norm);
            if bias.iter().all(|&x| x == 0.0) {
                assert_eq!(&idx[..2], &[2, 5]);
            }
            let gbias = padded(g, 2, &bias);

            let (gp, gl, gi, gw, gdl) = (alloc(t * e), alloc(t), alloc(t * k), alloc(t * k), alloc(t * e));
            let (glogits, gdw, gmask, gpress) = (up(&logits), up(&dw), upload_mask(g, &mask), padded(g, 5, &pressure));
            let mut enc = g.encoder();
            router_forward(g, &mut enc, &gp, &gl, &gi, &gw, &glogits, View { buf: &gbias, off: 2 }, t, e, k, norm);
            // The backward from the CPU's forward, so that it is tested alone.
            let (cp, cl, ci, cw) = (up(&probs), up(&lse), g.upload(&idx).unwrap(), up(&w));
            let pv = View { buf: &gpress, off: 5 };
            router_backward(g, &mut enc, &gdl, &gdw, &cp, &cl, &ci, &cw, &gmask, pv, z_scale, b, s, e, k, norm);
            let r = g.finish(enc, &[&gp, &gl, &gi, &gw, &gdl]).unwrap();
            eprintln!("norm_topk = {norm}, bias = {}", bias.iter().any(|&x| x != 0.0));
            assert_close("router probs", &f32s(&r[0]), &probs, 1e-6, 1e-5);
            assert_close("router lse", &f32s(&r[1]), &lse, 1e-6, 1e-5);
            assert_eq!(r[2], idx, "router idx");
            assert_close("router w", &f32s(&r[3]), &w, 1e-6, 1e-5);
            assert_close("router dlogits", &f32s(&r[4]), &dlogits, 1e-6, 1e-5);
        }
    }

    #[test]
    fn router_stats_match_cpu() {
        let Some(g) = test_gpu("router_stats_match_cpu") else { return };
        // More tokens per sequence than invocations, more experts than one pass of them.
        let (b, s, e, k) = (2, 300, 260, 4);
        let t = b * s;
        let logits = randn(t * e, 4);
        let (mut probs, mut lse, mut idx, mut w) = (vec![0.0; t * e], vec![0.0; t], vec![0u32; t * k], vec![0.0; t * k]);
        cpu::router_forward(&mut probs, &mut lse, &mut idx, &mut w, &logits, &vec![0.0; e], e, k, false);
        let mask = mask_of(t);
        let (mut counts, mut scores) = (vec![0.0; b * e], vec![0.0; b * e]);
        let (mut topk, mut z, mut valid) = (vec![0.0; b], vec![0.0; b], vec![0.0; b]);
        cpu::router_stats(&mut counts, &mut scores, &mut topk, &mut z, &mut valid, &probs, &lse, &idx, &mask, s, e, k);
        let st = RoutingStats { counts, score_sums: scores, topk_score_sums: topk, z_sums: z, valid_tokens: valid };

        let n = stats_len(b, e);
        let gst = padded(g, 3, &vec![0.0; n]);
        let (cp, cl, ci) = (g.upload(&probs).unwrap(), g.upload(&lse).unwrap(), g.upload(&idx).unwrap());
        let gmask = upload_mask(g, &mask);
        let mut enc = g.encoder();
        router_stats(g, &mut enc, View { buf: &gst, off: 3 }, &cp, &cl, &ci, &gmask, b, s, e, k);
        let got = f32s(&g.finish(enc, &[&gst]).unwrap()[0]);
        check_stats(&got[3..3 + n], &st, b, e);
    }
}
