//! The MoE block on the GPU, op for op `cpu::moe::moe_forward` / `moe_backward`: the router linear,
//! `router` (mirroring `cpu::router`) and the dropless `experts` (mirroring `cpu::experts`), composed
//! in one encoder; nothing reads back. A block's routing statistics land in one f32 view of
//! `stats_len(B, E)` laid out as in `router`'s module doc, so a model packs every layer's into one
//! buffer and reads them back once per step.

use super::experts::{
    combine_backward, combine_forward, experts_backward, experts_forward, gather_backward, gather_forward, grouped_tiles,
    permute_forward, permute_scratch_len, Sorted,
};
use super::elementwise::add_inplace;
use super::mlp::{mlp_backward, mlp_forward, sigmoid_gate_backward, sigmoid_gate_forward, GpuMlpActs};
use super::matmul::{matmul_backward, matmul_forward, Tiles, View};
use super::router::{router_backward, router_forward, router_stats};
use super::{Buf, Encoder, Gpu};
use crate::config::{MoeConfig, Precision};
use crate::error::{MoeError, Result};
use crate::layout::MoeParams;
use crate::stats::RoutingStats;

/// Length of one block's statistics view: 2 B E + 3 B.
pub fn stats_len(b: usize, e: usize) -> usize {
    2 * b * e + 3 * b
}

/// One block's statistics as read back: [counts (B, E) | score_sums (B, E) | topk_score_sums (B) |
/// z_sums (B) | valid (B)] (`stats_len(B, E)` values).
pub fn unpack_stats(st: &[f32], b: usize, e: usize) -> RoutingStats {
    let (counts, st) = st.split_at(b * e);
    let (score_sums, st) = st.split_at(b * e);
    let (topk, st) = st.split_at(b);
    let (z, valid) = st.split_at(b);
    RoutingStats {
        counts: counts.to_vec(),
        score_sums: score_sums.to_vec(),
        topk_score_sums: topk.to_vec(),
        z_sums: z.to_vec(),
        valid_tokens: valid.to_vec(),
    }
}

/// Device activations of one block saved by the forward for the backward (the GPU `MoeActs`), and
/// the backward's scratch. The forward allocates them on first use and again when the shape changes;
/// the scratch comes with the first backward. `GpuMoeActs::default()` starts empty.
#[derive(Default)]
pub struct GpuMoeActs {
    pub b: usize,
    pub s: usize,
    saved: Option<Saved>,
    scratch: Option<Scratch>,
    shared: Option<SharedActs>,
}

/// The shared expert's (Qwen2-MoE): its MLP, gate logits (T), output m (T, C), and the backward's
/// dm (T, C), dlogits (T), dx (T, C).
struct SharedActs {
    t: usize,
    mlp: GpuMlpActs,
    logits: Buf,
    m: Buf,
    dm: Buf,
    dlogits: Buf,
    dx: Buf,
}

impl SharedActs {
    fn new(g: &Gpu, t: usize, c: usize, f: usize) -> Result<Self> {
        Ok(SharedActs { t, mlp: GpuMlpActs::new(g, t, f)?, logits: g.alloc(t)?, m: g.alloc(t * c)?, dm: g.alloc(t * c)?, dlogits: g.alloc(t)?, dx: g.alloc(t * c)? })
    }
}

/// T = B * S tokens, N = T * K sorted rows.
struct Saved {
    shape: [usize; 5], // (T, C, F, E, K)
    tile: Tiles,       // of the grouped products, whose row tiles the permutation counts
    logits: Buf,       // (T, E); dlogits in the backward
    probs: Buf,        // (T, E)
    lse: Buf,          // (T)
    idx: Buf,          // (T, K) u32
    w: Buf,            // (T, K) combine weights
    counts: Buf,       // counting-sort scratch
    offsets: Buf,      // (E + 1) u32
    tiles: Buf,        // (E + 1) u32
    rows: Buf,         // (N) u32 sorted position -> t*K + k
    pos: Buf,          // (N) u32 t*K + k -> sorted position
    xs: Buf,           // (N, C) sorted inputs
    guh: Buf,          // (3, N, F) g | u | h
    ys: Buf,           // (N, C) expert outputs
}

impl GpuMoeActs {
    /// The experts chosen by the last forward, idx (T, K) u32 (the device check compares routing).
    pub fn routing(&self) -> Option<&Buf> {
        self.saved.as_ref().map(|a| &a.idx)
    }
}

struct Scratch {
    drows: Buf, // (N, C) dys, then dxs
    dgu: Buf,   // (2, N, F) dg | du
    dw: Buf,    // (T, K)
}

impl Saved {
    fn new(g: &Gpu, shape: [usize; 5]) -> Result<Self> {
        let [t, c, f, e, k] = shape;
        let n = t * k;
        Ok(Saved {
            shape,
            tile: grouped_tiles(n, e),
            logits: g.alloc(t * e)?,
            probs: g.alloc(t * e)?,
            lse: g.alloc(t)?,
            idx: g.alloc(n)?,
            w: g.alloc(n)?,
            counts: g.alloc(permute_scratch_len(n, e))?,
            offsets: g.alloc(e + 1)?,
            tiles: g.alloc(e + 1)?,
            rows: g.alloc(n)?,
            pos: g.alloc(n)?,
            xs: g.alloc(n * c)?,
            guh: g.alloc(3 * n * f)?,
            ys: g.alloc(n * c)?,
        })
    }

    fn sorted(&self) -> Sorted<'_> {
        let [t, _, _, e, k] = self.shape;
        Sorted { offsets: &self.offsets, tiles: &self.tiles, tile: self.tile, n: t * k, e }
    }
}

/// Forward of the block on B sequences of S tokens (GPU `cpu::moe::moe_forward`). Overwrites out (T, C)
/// and stats (`stats_len(B, E)` floats, laid out as in the module doc); `acts` receives what the
/// backward needs but x and mask, which the backward is given again (unchanged: no copies). x (T, C);
/// mask (T) u32, 1 = valid token; bias (E) the router's selection bias; wt: the block's weights,
/// gate (E, C), gate_proj, up_proj (E, F, C), down_proj (E, C, F).
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    g: &Gpu,
    enc: &mut Encoder,
    out: View,
    stats: View,
    acts: &mut GpuMoeActs,
    x: View,
    mask: &Buf,
    bias: View,
    wt: &MoeParams<View>,
    cfg: &MoeConfig,
    b: usize,
    s: usize,
    p: Precision,
) -> Result<()> {
    let (c, f, e, k) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let t = b * s;
    let shape = [t, c, f, e, k];
    if acts.saved.as_ref().is_none_or(|a| a.shape != shape) {
        // The old buffers go back to the pool before the new ones are taken.
        acts.saved = None;
        acts.scratch = None;
        acts.saved = Some(Saved::new(g, shape)?);
    }
    (acts.b, acts.s) = (b, s);
    let a = acts.saved.as_mut().expect("allocated above");
    a.tile = grouped_tiles(t * k, e);
    let a = &*a;
    matmul_forward(g, enc, (&a.logits).into(), x, wt.gate, t, c, e, Precision::F32);
    router_forward(g, enc, &a.probs, &a.lse, &a.idx, &a.w, &a.logits, bias, t, e, k, cfg.norm_topk_prob);
    router_stats(g, enc, stats, &a.probs, &a.lse, &a.idx, mask, b, s, e, k);
    permute_forward(g, enc, &a.offsets, &a.tiles, &a.rows, &a.pos, &a.counts, &a.idx, t * k, e, a.tile.bm);
    gather_forward(g, enc, &a.xs, x, &a.rows, t * k, c, k);
    experts_forward(g, enc, &a.guh, (&a.ys).into(), (&a.xs).into(), &wt.experts, &a.sorted(), c, f, p);
    combine_forward(g, enc, out, &a.ys, &a.w, &a.pos, t, c, k);
    if let Some(sw) = &wt.shared {
        let fs = cfg.shared_expert_intermediate_size;
        if acts.shared.as_ref().is_none_or(|sh| sh.t != t) {
            acts.shared = None;
            acts.shared = Some(SharedActs::new(g, t, c, fs)?);
        }
        let sh = acts.shared.as_ref().expect("allocated above");
        mlp_forward(g, enc, (&sh.m).into(), &sh.mlp, x, &sw.mlp, c, fs, p);
        sigmoid_gate_forward(g, enc, out, &sh.logits, x, sw.gate, &sh.m, t, c);
    }
    Ok(())
}

/// Backward of the block (GPU `cpu::moe::moe_backward`). Overwrites dx (T, C); accumulates into `grads`
/// (shaped as `wt`). dout (T, C); x (T, C) and mask (T) u32 as given to the forward; pressure (B, E)
/// and z_scale: see `cpu::router::router_backward`.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dx: View,
    grads: &MoeParams<View>,
    acts: &mut GpuMoeActs,
    dout: View,
    x: View,
    mask: &Buf,
    pressure: View,
    z_scale: f32,
    wt: &MoeParams<View>,
    cfg: &MoeConfig,
    p: Precision,
) -> Result<()> {
    let (c, f, e, k) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let (b, s) = (acts.b, acts.s);
    let t = b * s;
    let Some(a) = acts.saved.as_ref().filter(|a| a.shape == [t, c, f, e, k]) else {
        return Err(MoeError::InvalidState("the GPU MoE backward needs a forward of the same shape first".into()));
    };
    if acts.scratch.is_none() {
        let n = t * k;
        acts.scratch = Some(Scratch { drows: g.alloc(n * c)?, dgu: g.alloc(2 * n * f)?, dw: g.alloc(n)? });
    }
    let sc = acts.scratch.as_ref().expect("allocated above");
    combine_backward(g, enc, &sc.drows, &sc.dw, dout, &a.ys, &a.w, &a.pos, t, c, k);
    let drows = (&sc.drows).into();
    experts_backward(g, enc, drows, &grads.experts, &sc.dgu, drows, (&a.xs).into(), &a.guh, &wt.experts, &a.sorted(), c, f, p);
    gather_backward(g, enc, dx, &sc.drows, &a.pos, t, c, k);
    let (dlogits, norm) = (&a.logits, cfg.norm_topk_prob);
    router_backward(g, enc, dlogits, &sc.dw, &a.probs, &a.lse, &a.idx, &a.w, mask, pressure, z_scale, b, s, e, k, norm);
    matmul_backward(g, enc, dx, grads.gate, dlogits.into(), x, wt.gate, t, c, e, Precision::F32);
    // The shared expert last: gather_backward above overwrites dx, what follows adds to it.
    if let (Some(sw), Some(sg)) = (&wt.shared, &grads.shared) {
        let fs = cfg.shared_expert_intermediate_size;
        let sh = acts.shared.as_mut().ok_or_else(|| MoeError::InvalidState("the shared expert's backward needs its forward".into()))?;
        sigmoid_gate_backward(g, enc, dx, sg.gate, &sh.dm, &sh.dlogits, dout, x, sw.gate, &sh.m, &sh.logits, t, c);
        mlp_backward(g, enc, (&sh.dx).into(), &sg.mlp, &mut sh.mlp, (&sh.dm).into(), x, &sw.mlp, c, fs, p)?;
        add_inplace(g, enc, dx, (&sh.dx).into(), t * c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::matmul::{force, BIG, SMALL};
    use crate::gpu::tests::{check_stats, f32s, mask_of, padded, test_gpu, upload_mask};
    use crate::cpu::moe::MoeActs;
    use crate::layout::Layout;
    use crate::testutil::{assert_close, randn};

    /// The whole block against `cpu::moe` on B sequences of S tokens: output, statistics, dx and
    /// every gradient. Experts 2 and E-1 receive no tokens. Returns the most rows an expert received.
    /// `shared` > 0 adds a sigmoid-gated shared expert of that intermediate size (Qwen2-MoE). In
    /// bf16 both sides round the same operands, but an f32 intermediate (h, the gradients) that
    /// differs in its last bits may round to the neighbouring bf16 value (2^-8 apart), so values
    /// agree to 1e-3 rather than 1e-5.
    fn check_block(g: &Gpu, acts: &mut GpuMoeActs, [b, s, c, f, e, k]: [usize; 6], norm: bool, shared: usize, p: Precision) -> u32 {
        eprintln!("block B={b} S={s} C={c} F={f} E={e} K={k} norm_topk={norm} shared={shared} {}", p.name());
        let (atol, rtol) = match p {
            Precision::F32 => (1e-5, 1e-4),
            Precision::Bf16 => (1e-3, 1e-2),
        };
        let cfg = MoeConfig {
            hidden_size: c,
            moe_intermediate_size: f,
            num_experts: e,
            num_experts_per_tok: k,
            norm_topk_prob: norm,
            shared_expert_intermediate_size: shared,
            initializer_range: 0.02,
            seed: 0,
        };
        let t = b * s;
        let layout = MoeParams::layout(&cfg);
        let np = layout.len();
        // Weights ~ N(0, 1/C): activations and gradients of order one.
        let mut params: Vec<f32> = randn(np, 6).iter().map(|v| v / (c as f32).sqrt()).collect();
        let mut x = randn(t * c, 7);
        // Feature 0 is a constant 3 that experts 2 and E-1 weigh at -20: their logits sit far below.
        for i in 0..t {
            x[i * c] = 3.0;
        }
        (params[2 * c], params[(e - 1) * c]) = (-20.0, -20.0);
        let mask = mask_of(t);
        let (dout, grads0) = (randn(t * c, 8), randn(np, 9));
        let pressure: Vec<f32> = randn(b * e, 10).iter().map(|v| 0.1 * v).collect();
        let z_scale = 0.05;
        // A selection bias, which keeps the two starved experts starved.
        let mut bias: Vec<f32> = randn(e, 11).iter().map(|v| 0.05 * v).collect();
        (bias[2], bias[e - 1]) = (-1.0, -1.0);

        let (mut out, mut stats, mut cacts) = (vec![0.0; t * c], RoutingStats::default(), MoeActs::default());
        let wt = layout.views(&params);
        crate::cpu::moe::moe_forward(&mut out, &mut stats, &mut cacts, &x, &mask, &bias, &wt, &cfg, b, s, p);
        let (mut dx, mut grads) = (vec![0.0; t * c], grads0.clone());
        let mut cgrads = layout.views_mut(&mut grads);
        crate::cpu::moe::moe_backward(&mut dx, &mut cgrads, &mut cacts, &dout, &pressure, z_scale, &wt, &cfg, p);
        for i in [2, e - 1] {
            assert!((0..b).all(|bi| stats.counts[bi * e + i] == 0.0), "expert {i} should receive no tokens");
        }

        let n = stats_len(b, e);
        let (gparams, gx, gmask, gbias) = (padded(g, 5, &params), padded(g, 3, &x), upload_mask(g, &mask), padded(g, 1, &bias));
        let (gout, gstats) = (g.alloc(2 + t * c).unwrap(), g.alloc(4 + n).unwrap());
        let (gdout, gpress, ggrads) = (padded(g, 1, &dout), padded(g, 2, &pressure), padded(g, 7, &grads0));
        let gdx = g.alloc(6 + t * c).unwrap();
        let v = |buf, off| View { buf, off };
        // The block's tensors at their layout offsets behind 5 (params) and 7 (grads) filler values.
        let (wv, gv) = (layout.map(&mut |s| v(&gparams, 5 + s.offset)), layout.map(&mut |s| v(&ggrads, 7 + s.offset)));
        let mut enc = g.encoder();
        moe_forward(g, &mut enc, v(&gout, 2), v(&gstats, 4), acts, v(&gx, 3), &gmask, v(&gbias, 1), &wv, &cfg, b, s, p).unwrap();
        let (dx_v, dout_v, press_v) = (v(&gdx, 6), v(&gdout, 1), v(&gpress, 2));
        moe_backward(g, &mut enc, dx_v, &gv, acts, dout_v, v(&gx, 3), &gmask, press_v, z_scale, &wv, &cfg, p).unwrap();
        let r = g.finish(enc, &[&gout, &gstats, &gdx, &ggrads]).unwrap();
        assert_close("block out", &f32s(&r[0])[2..], &out, atol, rtol);
        check_stats(&f32s(&r[1])[4..], &stats, b, e);
        assert_close("block dx", &f32s(&r[2])[6..], &dx, atol, rtol);
        let ggr = f32s(&r[3]);
        let (gw, cw) = (layout.views(&ggr[7..]), layout.views(&grads));
        assert_close("block d gate", gw.gate, cw.gate, atol, rtol);
        assert_close("block d gate_proj", gw.experts.gate_proj, cw.experts.gate_proj, atol, rtol);
        assert_close("block d up_proj", gw.experts.up_proj, cw.experts.up_proj, atol, rtol);
        assert_close("block d down_proj", gw.experts.down_proj, cw.experts.down_proj, atol, rtol);
        if let (Some(gs), Some(cs)) = (&gw.shared, &cw.shared) {
            assert_close("block d shared gate", gs.gate, cs.gate, atol, rtol);
            assert_close("block d shared gate_proj", gs.mlp.gate_proj, cs.mlp.gate_proj, atol, rtol);
            assert_close("block d shared up_proj", gs.mlp.up_proj, cs.mlp.up_proj, atol, rtol);
            assert_close("block d shared down_proj", gs.mlp.down_proj, cs.mlp.down_proj, atol, rtol);
        }
        let offsets = g.read_u32(&acts.saved.as_ref().unwrap().offsets).unwrap();
        (0..e).map(|i| offsets[i + 1] - offsets[i]).max().unwrap()
    }

    #[test]
    fn moe_block_matches_cpu() {
        let Some(g) = test_gpu("moe_block_matches_cpu") else { return };
        // One GpuMoeActs throughout: reused for equal shapes, reallocated when the shape changes.
        let mut acts = GpuMoeActs::default();
        force(Some(SMALL));
        check_block(g, &mut acts, [2, 5, 12, 10, 6, 2], false, 0, Precision::F32);
        check_block(g, &mut acts, [2, 5, 12, 10, 6, 2], true, 0, Precision::F32);
        check_block(g, &mut acts, [2, 5, 12, 10, 6, 2], false, 9, Precision::F32);
        check_block(g, &mut acts, [2, 5, 12, 10, 6, 2], false, 9, Precision::Bf16);
        // Experts with more rows than one 64-row tile, more columns than one tile.
        let most = check_block(g, &mut acts, [2, 48, 70, 20, 6, 3], true, 0, Precision::F32);
        assert!(most > SMALL.bm as u32, "no expert spans two row tiles ({most} rows at most)");
        // The same on the large tiles: experts past one 128-row tile, channels past one 128 tile.
        force(Some(BIG));
        let most = check_block(g, &mut acts, [2, 96, 136, 20, 6, 3], true, 0, Precision::F32);
        check_block(g, &mut acts, [2, 96, 136, 20, 6, 3], true, 0, Precision::Bf16);
        force(None);
        assert!(most > BIG.bm as u32, "no expert spans two large row tiles ({most} rows at most)");
    }
}
