//! The MoE block on the GPU, op for op `crate::moe::moe_forward` / `moe_backward`: the router
//! (`router.wgsl`, mirroring `cpu::router`) and the dropless experts (`experts.wgsl`, mirroring
//! `cpu::experts`). Each op takes `g, enc` first, device buffers where the CPU takes slices, and
//! explicit dims; nothing reads back. A block's routing statistics land in one f32 view of
//! `stats_len(B, E)` laid out [counts (B, E) | score_sums (B, E) | topk_score_sums (B) | z_sums (B) |
//! valid (B)], so a model packs every layer's into one buffer and reads them back once per step.

use super::matmul::{matmul_backward, matmul_forward, View};
use super::{groups_1d, Buf, Encoder, Gpu, Kernel};
use crate::error::{MoeError, Result};
use crate::moe::MoeConfig;

const ROUTER: &str = include_str!("router.wgsl");
const EXPERTS: &str = include_str!("experts.wgsl");
const ROUTER_FORWARD: Kernel = Kernel { src: ROUTER, entry: "router_forward" };
const ROUTER_BACKWARD: Kernel = Kernel { src: ROUTER, entry: "router_backward" };
const ROUTER_STATS: Kernel = Kernel { src: ROUTER, entry: "router_stats" };
const PERMUTE_COUNT: Kernel = Kernel { src: EXPERTS, entry: "permute_count" };
const PERMUTE_SCAN: Kernel = Kernel { src: EXPERTS, entry: "permute_scan" };
const PERMUTE_SCATTER: Kernel = Kernel { src: EXPERTS, entry: "permute_scatter" };
const GATHER_FORWARD: Kernel = Kernel { src: EXPERTS, entry: "gather_forward" };
const GATHER_BACKWARD: Kernel = Kernel { src: EXPERTS, entry: "gather_backward" };
const COMBINE_FORWARD: Kernel = Kernel { src: EXPERTS, entry: "combine_forward" };
const COMBINE_BACKWARD: Kernel = Kernel { src: EXPERTS, entry: "combine_backward" };
const EXPERTS_GEMM: Kernel = Kernel { src: EXPERTS, entry: "experts_gemm" };
const EXPERTS_WGRAD: Kernel = Kernel { src: EXPERTS, entry: "experts_wgrad" };

/// Output tile of the grouped GEMMs (BM = BN in experts.wgsl).
const TILE: usize = 64;
/// Pairs per block of the counting sort.
const SORT_BLOCK: usize = 256;

/// Length of one block's statistics view: 2 B E + 3 B.
pub fn stats_len(b: usize, e: usize) -> usize {
    2 * b * e + 3 * b
}

fn words(params: &[usize]) -> Vec<u32> {
    params.iter().map(|&x| u32::try_from(x).expect("a kernel parameter exceeds 32 bits")).collect()
}

fn at(v: View, off: usize) -> View {
    View { buf: v.buf, off: v.off + off }
}

// ---- Router ---------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn router_params(t: usize, e: usize, k: usize, s: usize, norm_topk: bool, z_scale: f32, p_off: usize, st_off: usize) -> Vec<u32> {
    let mut p = words(&[t, e, k, s, usize::from(norm_topk), 0, p_off, st_off]);
    p[5] = z_scale.to_bits();
    p
}

/// `cpu::router::router_forward` on T tokens: probs (T, E), lse (T), idx (T, K) u32 and w (T, K)
/// from logits (T, E).
#[allow(clippy::too_many_arguments)]
pub fn router_forward(
    g: &Gpu,
    enc: &mut Encoder,
    probs: &Buf,
    lse: &Buf,
    idx: &Buf,
    w: &Buf,
    logits: &Buf,
    t: usize,
    e: usize,
    k: usize,
    norm_topk: bool,
) {
    let params = router_params(t, e, k, 1, norm_topk, 0.0, 0, 0);
    g.dispatch(enc, &ROUTER_FORWARD, &[logits, probs, lse, idx, w], &params, groups_1d(t, 64));
}

/// `cpu::router::router_backward` on B sequences of S tokens: overwrites dlogits (T, E).
/// mask (T) u32; pressure (B, E).
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
    let params = router_params(b * s, e, k, s, norm_topk, z_scale, pressure.off, 0);
    let bufs = [probs, lse, idx, mask, w, dw, pressure.buf, dlogits];
    g.dispatch(enc, &ROUTER_BACKWARD, &bufs, &params, groups_1d(b * s, 64));
}

/// `cpu::router::router_stats` of B sequences of S tokens into `stats` (`stats_len(B, E)` floats,
/// laid out as in the module doc). One workgroup per sequence: deterministic.
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
    let params = router_params(b * s, e, k, s, false, 0.0, 0, stats.off);
    g.dispatch(enc, &ROUTER_STATS, &[probs, lse, idx, mask, stats.buf], &params, [b as u32, 1, 1]);
}

// ---- Experts --------------------------------------------------------------------------------

/// Words of scratch `permute_forward` needs for N pairs and E experts: E per block of 256 pairs.
pub fn permute_scratch_len(n: usize, e: usize) -> usize {
    e * n.div_ceil(SORT_BLOCK)
}

/// `cpu::experts::permute_forward` of the N = T*K pairs idx (N) u32: offsets (E + 1), rows (N),
/// pos (N), all u32, plus the grouped GEMMs' row-tile table tiles (E + 1):
/// tiles[e] = sum_{j<e} ceil(n_j / 64). counts: scratch of `permute_scratch_len(N, E)` words.
#[allow(clippy::too_many_arguments)]
pub fn permute_forward(
    g: &Gpu,
    enc: &mut Encoder,
    offsets: &Buf,
    tiles: &Buf,
    rows: &Buf,
    pos: &Buf,
    counts: &Buf,
    idx: &Buf,
    n: usize,
    e: usize,
) {
    let params = words(&[n, e, n.div_ceil(SORT_BLOCK), 0]);
    g.dispatch(enc, &PERMUTE_COUNT, &[idx, counts], &params, groups_1d(n, SORT_BLOCK));
    g.dispatch(enc, &PERMUTE_SCAN, &[counts, offsets, tiles], &params, [1, 1, 1]);
    g.dispatch(enc, &PERMUTE_SCATTER, &[idx, counts, rows, pos], &params, groups_1d(n, SORT_BLOCK));
}

/// xs (N, C) = x (T, C) gathered in sorted order: xs[p] = x[rows[p] / K].
#[allow(clippy::too_many_arguments)]
pub fn gather_forward(g: &Gpu, enc: &mut Encoder, xs: &Buf, x: View, rows: &Buf, n: usize, c: usize, k: usize) {
    g.dispatch(enc, &GATHER_FORWARD, &[rows, x.buf, xs], &words(&[n, c, k, x.off]), groups_1d(n * c, 256));
}

/// dx (T, C) = the sum over the K sorted copies of each token of dxs (N, C). Overwrites dx, unlike
/// the CPU's +=: the block's backward writes dx here first.
#[allow(clippy::too_many_arguments)]
pub fn gather_backward(g: &Gpu, enc: &mut Encoder, dx: View, dxs: &Buf, pos: &Buf, t: usize, c: usize, k: usize) {
    g.dispatch(enc, &GATHER_BACKWARD, &[pos, dxs, dx.buf], &words(&[t, c, k, dx.off]), groups_1d(t * c, 256));
}

/// The sorted rows the grouped GEMMs run over: `permute_forward`'s offsets and tiles, N rows, E experts.
#[derive(Clone, Copy)]
pub struct Sorted<'a> {
    pub offsets: &'a Buf,
    pub tiles: &'a Buf,
    pub n: usize,
    pub e: usize,
}

/// What `experts_gemm` does with each output element v (see experts.wgsl).
#[derive(Clone, Copy)]
enum Epilogue {
    Store,
    Add,
    /// A second product with the up weights at this offset: (v, u) -> g, u, h = silu(g) * u.
    SwiGlu { up_off: usize },
    /// v = dh -> dg, du, reading g, u from `aux`.
    SwiGluBackward,
}

/// For every expert e: c rows of e (n_e, n) = a rows of e (n_e, k) · op(W_e), W_e the e-th (n, k)
/// block of `w` (W_e^T when `trans_b`, i.e. nn.Linear's (out, in)); `aux` (read) feeds SwiGluBackward.
#[allow(clippy::too_many_arguments)]
fn experts_gemm(
    g: &Gpu,
    enc: &mut Encoder,
    c: &Buf,
    a: View,
    w: View,
    aux: &Buf,
    sorted: &Sorted,
    n: usize,
    k: usize,
    trans_b: bool,
    epilogue: Epilogue,
) {
    let (flags, up_off) = match epilogue {
        Epilogue::Store => (0, 0),
        Epilogue::Add => (2, 0),
        Epilogue::SwiGlu { up_off } => (4, up_off),
        Epilogue::SwiGluBackward => (8, 0),
    };
    let flags = flags | usize::from(trans_b);
    let params = words(&[0, n, k, flags, sorted.e, a.off, w.off, up_off, n * k, 0, sorted.n * n, 0]);
    // Row tiles: an upper bound (sum_e ceil(n_e / 64) <= ceil(N / 64) + E); the rest exit at once.
    let [x, y, _] = groups_1d(sorted.n.div_ceil(TILE) + sorted.e, 1);
    let bufs = [sorted.offsets, a.buf, w.buf, c, sorted.tiles, aux];
    g.dispatch(enc, &EXPERTS_GEMM, &bufs, &params, [x, y, n.div_ceil(TILE) as u32]);
}

/// For every expert e: dw_e (m, n) += a rows of e^T (m, n_e) · b rows of e (n_e, n), dw_e the e-th
/// (m, n) block of `dw`.
#[allow(clippy::too_many_arguments)]
fn experts_wgrad(g: &Gpu, enc: &mut Encoder, dw: View, a: View, b: View, sorted: &Sorted, m: usize, n: usize) {
    let params = words(&[m, n, 0, 0, sorted.e, a.off, b.off, 0, 0, dw.off, 0, 0]);
    let groups = [n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, sorted.e as u32];
    g.dispatch(enc, &EXPERTS_WGRAD, &[sorted.offsets, a.buf, b.buf, dw.buf], &params, groups);
}

/// `cpu::experts::experts_forward` over the sorted rows: guh (3, N, F) = g | u | h and ys (N, C) from
/// xs (N, C). wt: the experts' weights, gate_proj and up_proj (E, F, C) then down_proj (E, C, F)
/// contiguous (as in `MoeWeights`). Experts without rows own no tiles.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward(
    g: &Gpu,
    enc: &mut Encoder,
    guh: &Buf,
    ys: &Buf,
    xs: &Buf,
    wt: View,
    sorted: &Sorted,
    c: usize,
    f: usize,
) {
    let efc = sorted.e * f * c;
    // g = xs · gate_proj_e^T, u = xs · up_proj_e^T, h = silu(g) * u, one pass
    let swiglu = Epilogue::SwiGlu { up_off: wt.off + efc };
    experts_gemm(g, enc, guh, xs.into(), wt, xs, sorted, f, c, true, swiglu);
    // ys = h · down_proj_e^T
    let h = View { buf: guh, off: 2 * sorted.n * f };
    experts_gemm(g, enc, ys, h, at(wt, 2 * efc), guh, sorted, c, f, true, Epilogue::Store);
}

/// `cpu::experts::experts_backward`: overwrites dxs (N, C) and dgu (2, N, F) = dg | du; accumulates
/// the experts' weight gradients into `grads` (laid out as `wt`). dys (N, C) may be the same buffer
/// as dxs: it is dead before dxs is written.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dxs: &Buf,
    grads: View,
    dgu: &Buf,
    dys: &Buf,
    xs: &Buf,
    guh: &Buf,
    wt: View,
    sorted: &Sorted,
    c: usize,
    f: usize,
) {
    let (efc, nf) = (sorted.e * f * c, sorted.n * f);
    let (dg, du) = (View { buf: dgu, off: 0 }, View { buf: dgu, off: nf });
    // dh = dys · down_proj_e, then dg, du through the SwiGLU; down_proj_e += dys^T · h
    experts_gemm(g, enc, dgu, dys.into(), at(wt, 2 * efc), guh, sorted, f, c, false, Epilogue::SwiGluBackward);
    experts_wgrad(g, enc, at(grads, 2 * efc), dys.into(), View { buf: guh, off: 2 * nf }, sorted, c, f);
    // dxs = dg · gate_proj_e + du · up_proj_e
    experts_gemm(g, enc, dxs, dg, wt, dgu, sorted, c, f, false, Epilogue::Store);
    experts_gemm(g, enc, dxs, du, at(wt, efc), dgu, sorted, c, f, false, Epilogue::Add);
    // gate_proj_e += dg^T · xs;  up_proj_e += du^T · xs
    experts_wgrad(g, enc, grads, dg, xs.into(), sorted, f, c);
    experts_wgrad(g, enc, at(grads, efc), du, xs.into(), sorted, f, c);
}

/// out (T, C) = sum_k w[t,k] * ys[pos[t*K+k]]. Overwrites out.
#[allow(clippy::too_many_arguments)]
pub fn combine_forward(
    g: &Gpu,
    enc: &mut Encoder,
    out: View,
    ys: &Buf,
    w: &Buf,
    pos: &Buf,
    t: usize,
    c: usize,
    k: usize,
) {
    g.dispatch(enc, &COMBINE_FORWARD, &[pos, ys, out.buf, w], &words(&[t, c, k, out.off]), groups_1d(t * c, 256));
}

/// Overwrites dys (N, C): dys[pos[t*K+k]] = w[t,k] * dout[t]; and dw (T, K) = <dout[t], ys[pos[t*K+k]]>.
#[allow(clippy::too_many_arguments)]
pub fn combine_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dys: &Buf,
    dw: &Buf,
    dout: View,
    ys: &Buf,
    w: &Buf,
    pos: &Buf,
    t: usize,
    c: usize,
    k: usize,
) {
    let bufs = [pos, ys, dys, w, dout.buf, dw];
    g.dispatch(enc, &COMBINE_BACKWARD, &bufs, &words(&[t, c, k, dout.off]), groups_1d(t, 1));
}

// ---- The block ------------------------------------------------------------------------------

/// Device activations of one block saved by the forward for the backward (the GPU `MoeActs`), and
/// the backward's scratch. The forward allocates them on first use and again when the shape changes;
/// the scratch comes with the first backward. `GpuMoeActs::default()` starts empty.
#[derive(Default)]
pub struct GpuMoeActs {
    pub b: usize,
    pub s: usize,
    saved: Option<Saved>,
    scratch: Option<Scratch>,
}

/// T = B * S tokens, N = T * K sorted rows.
struct Saved {
    shape: [usize; 5], // (T, C, F, E, K)
    x: Buf,            // (T, C) input
    mask: Buf,         // (T) u32
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
            x: g.alloc(t * c)?,
            mask: g.alloc(t)?,
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
        Sorted { offsets: &self.offsets, tiles: &self.tiles, n: t * k, e }
    }
}

/// Forward of the block on B sequences of S tokens (GPU `moe::moe_forward`). Overwrites out (T, C)
/// and stats (`stats_len(B, E)` floats, laid out as in the module doc); `acts` receives what the
/// backward needs. x (T, C); mask (T) u32, 1 = valid token; wt: the block's weights laid out as
/// `MoeWeights::split` (gate (E, C), gate_proj, up_proj (E, F, C), down_proj (E, C, F)).
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    g: &Gpu,
    enc: &mut Encoder,
    out: View,
    stats: View,
    acts: &mut GpuMoeActs,
    x: View,
    mask: &Buf,
    wt: View,
    cfg: &MoeConfig,
    b: usize,
    s: usize,
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
    let a = acts.saved.as_ref().expect("allocated above");
    g.copy(enc, x.buf, x.off, &a.x, 0, t * c);
    g.copy(enc, mask, 0, &a.mask, 0, t);
    matmul_forward(g, enc, (&a.logits).into(), x, wt, t, c, e);
    router_forward(g, enc, &a.probs, &a.lse, &a.idx, &a.w, &a.logits, t, e, k, cfg.norm_topk_prob);
    router_stats(g, enc, stats, &a.probs, &a.lse, &a.idx, &a.mask, b, s, e, k);
    permute_forward(g, enc, &a.offsets, &a.tiles, &a.rows, &a.pos, &a.counts, &a.idx, t * k, e);
    gather_forward(g, enc, &a.xs, x, &a.rows, t * k, c, k);
    experts_forward(g, enc, &a.guh, &a.ys, &a.xs, at(wt, e * c), &a.sorted(), c, f);
    combine_forward(g, enc, out, &a.ys, &a.w, &a.pos, t, c, k);
    Ok(())
}

/// Backward of the block (GPU `moe::moe_backward`). Overwrites dx (T, C); accumulates into `grads`
/// (laid out as `wt`). dout (T, C); pressure (B, E) and z_scale: see `cpu::router::router_backward`.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dx: View,
    grads: View,
    acts: &mut GpuMoeActs,
    dout: View,
    pressure: View,
    z_scale: f32,
    wt: View,
    cfg: &MoeConfig,
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
    let (wx, gx) = (at(wt, e * c), at(grads, e * c));
    experts_backward(g, enc, &sc.drows, gx, &sc.dgu, &sc.drows, &a.xs, &a.guh, wx, &a.sorted(), c, f);
    gather_backward(g, enc, dx, &sc.drows, &a.pos, t, c, k);
    let (dlogits, norm) = (&a.logits, cfg.norm_topk_prob);
    router_backward(g, enc, dlogits, &sc.dw, &a.probs, &a.lse, &a.idx, &a.w, &a.mask, pressure, z_scale, b, s, e, k, norm);
    matmul_backward(g, enc, dx, grads, dlogits.into(), (&a.x).into(), wt, t, c, e);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{experts as cpu_experts, router as cpu_router};
    use crate::gpu::tests::test_gpu;
    use crate::moe::{moe_param_count, MoeActs, MoeGrads, MoeWeights, RoutingStats};
    use crate::testutil::{assert_close, randn};

    fn f32s(w: &[u32]) -> Vec<f32> {
        bytemuck::cast_slice(w).to_vec()
    }

    /// `v` behind `pad` filler values: views at odd offsets, as in a flat parameter buffer.
    fn padded(g: &Gpu, pad: usize, v: &[f32]) -> Buf {
        g.upload(&[vec![7.0; pad], v.to_vec()].concat()).unwrap()
    }

    /// Every fourth token masked out.
    fn mask_of(t: usize) -> Vec<u8> {
        (0..t).map(|i| u8::from(i % 4 != 3)).collect()
    }

    fn upload_mask(g: &Gpu, mask: &[u8]) -> Buf {
        g.upload(&mask.iter().map(|&m| m as u32).collect::<Vec<u32>>()).unwrap()
    }

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
        for norm in [false, true] {
            let (mut probs, mut lse, mut idx, mut w) = (vec![0.0; t * e], vec![0.0; t], vec![0u32; t * k], vec![0.0; t * k]);
            cpu_router::router_forward(&mut probs, &mut lse, &mut idx, &mut w, &logits, e, k, norm);
            let mut dlogits = vec![0.0; t * e];
            cpu_router::router_backward(&mut dlogits, &dw, &probs, &lse, &idx, &w, &mask, &pressure, z_scale, s, e, k, norm);
            assert_eq!(&idx[..2], &[2, 5]);

            let (gp, gl, gi, gw, gdl) = (alloc(t * e), alloc(t), alloc(t * k), alloc(t * k), alloc(t * e));
            let (glogits, gdw, gmask, gpress) = (up(&logits), up(&dw), upload_mask(g, &mask), padded(g, 5, &pressure));
            let mut enc = g.encoder();
            router_forward(g, &mut enc, &gp, &gl, &gi, &gw, &glogits, t, e, k, norm);
            // The backward from the CPU's forward, so that it is tested alone.
            let (cp, cl, ci, cw) = (up(&probs), up(&lse), g.upload(&idx).unwrap(), up(&w));
            let pv = View { buf: &gpress, off: 5 };
            router_backward(g, &mut enc, &gdl, &gdw, &cp, &cl, &ci, &cw, &gmask, pv, z_scale, b, s, e, k, norm);
            let r = g.finish(enc, &[&gp, &gl, &gi, &gw, &gdl]).unwrap();
            eprintln!("norm_topk = {norm}");
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
        cpu_router::router_forward(&mut probs, &mut lse, &mut idx, &mut w, &logits, e, k, false);
        let mask = mask_of(t);
        let (mut counts, mut scores) = (vec![0.0; b * e], vec![0.0; b * e]);
        let (mut topk, mut z, mut valid) = (vec![0.0; b], vec![0.0; b], vec![0.0; b]);
        cpu_router::router_stats(&mut counts, &mut scores, &mut topk, &mut z, &mut valid, &probs, &lse, &idx, &mask, s, e, k);
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

    fn check_stats(got: &[f32], want: &RoutingStats, b: usize, e: usize) {
        let be = b * e;
        assert_eq!(&got[..be], &want.counts[..], "stats counts");
        assert_close("stats score_sums", &got[be..2 * be], &want.score_sums, 1e-5, 1e-5);
        assert_close("stats topk_score_sums", &got[2 * be..2 * be + b], &want.topk_score_sums, 1e-5, 1e-5);
        assert_close("stats z_sums", &got[2 * be + b..2 * be + 2 * b], &want.z_sums, 1e-5, 1e-5);
        assert_eq!(&got[2 * be + 2 * b..], &want.valid_tokens[..], "stats valid");
    }

    #[test]
    fn permute_matches_cpu() {
        let Some(g) = test_gpu("permute_matches_cpu") else { return };
        // Several sort blocks, the last one partial; expert 3 chosen by no pair.
        let (n, e) = (999, 7);
        let idx: Vec<u32> = randn(n, 5).iter().map(|v| ((v.abs() * 1000.0) as u32 % 6 + 4) % 7).collect();
        assert!(!idx.contains(&3));
        let (mut off, mut rows, mut pos) = (vec![0usize; e + 1], vec![0u32; n], vec![0u32; n]);
        cpu_experts::permute_forward(&mut off, &mut rows, &mut pos, &idx, e);
        let tiles: Vec<u32> = (0..=e).map(|i| (0..i).map(|j| (off[j + 1] - off[j]).div_ceil(TILE) as u32).sum()).collect();

        let (go, gt, gr, gp) = (g.alloc(e + 1).unwrap(), g.alloc(e + 1).unwrap(), g.alloc(n).unwrap(), g.alloc(n).unwrap());
        let (gc, gi) = (g.alloc(permute_scratch_len(n, e)).unwrap(), g.upload(&idx).unwrap());
        let mut enc = g.encoder();
        permute_forward(g, &mut enc, &go, &gt, &gr, &gp, &gc, &gi, n, e);
        let r = g.finish(enc, &[&go, &gt, &gr, &gp]).unwrap();
        assert_eq!(r[0], off.iter().map(|&o| o as u32).collect::<Vec<_>>(), "offsets");
        assert_eq!(r[1], tiles, "tiles");
        assert_eq!(r[2], rows, "rows");
        assert_eq!(r[3], pos, "pos");
        eprintln!("permute: offsets {:?}, tiles {:?} exact", r[0], r[1]);
    }

    /// The whole block against `crate::moe` on B sequences of S tokens: output, statistics, dx and
    /// every gradient. Experts 2 and E-1 receive no tokens. Returns the most rows an expert received.
    fn check_block(g: &Gpu, acts: &mut GpuMoeActs, [b, s, c, f, e, k]: [usize; 6], norm: bool) -> u32 {
        eprintln!("block B={b} S={s} C={c} F={f} E={e} K={k} norm_topk={norm}");
        let cfg = MoeConfig {
            hidden_size: c,
            moe_intermediate_size: f,
            num_experts: e,
            num_experts_per_tok: k,
            norm_topk_prob: norm,
            initializer_range: 0.02,
            seed: 0,
        };
        let t = b * s;
        let np = moe_param_count(&cfg);
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

        let (mut out, mut stats, mut cacts) = (vec![0.0; t * c], RoutingStats::default(), MoeActs::default());
        let wt = MoeWeights::split(&params, &cfg);
        crate::moe::moe_forward(&mut out, &mut stats, &mut cacts, &x, &mask, &wt, &cfg, b, s);
        let (mut dx, mut grads) = (vec![0.0; t * c], grads0.clone());
        let mut cgrads = MoeGrads::split(&mut grads, &cfg);
        crate::moe::moe_backward(&mut dx, &mut cgrads, &mut cacts, &dout, &pressure, z_scale, &wt, &cfg);
        for i in [2, e - 1] {
            assert!((0..b).all(|bi| stats.counts[bi * e + i] == 0.0), "expert {i} should receive no tokens");
        }

        let n = stats_len(b, e);
        let (gparams, gx, gmask) = (padded(g, 5, &params), padded(g, 3, &x), upload_mask(g, &mask));
        let (gout, gstats) = (g.alloc(2 + t * c).unwrap(), g.alloc(4 + n).unwrap());
        let (gdout, gpress, ggrads) = (padded(g, 1, &dout), padded(g, 2, &pressure), padded(g, 7, &grads0));
        let gdx = g.alloc(6 + t * c).unwrap();
        let v = |buf, off| View { buf, off };
        let mut enc = g.encoder();
        moe_forward(g, &mut enc, v(&gout, 2), v(&gstats, 4), acts, v(&gx, 3), &gmask, v(&gparams, 5), &cfg, b, s).unwrap();
        let (dx_v, grads_v, dout_v, press_v) = (v(&gdx, 6), v(&ggrads, 7), v(&gdout, 1), v(&gpress, 2));
        moe_backward(g, &mut enc, dx_v, grads_v, acts, dout_v, press_v, z_scale, v(&gparams, 5), &cfg).unwrap();
        let r = g.finish(enc, &[&gout, &gstats, &gdx, &ggrads]).unwrap();
        assert_close("block out", &f32s(&r[0])[2..], &out, 1e-5, 1e-4);
        check_stats(&f32s(&r[1])[4..], &stats, b, e);
        assert_close("block dx", &f32s(&r[2])[6..], &dx, 1e-5, 1e-4);
        let ggr = f32s(&r[3]);
        let (gw, cw) = (MoeWeights::split(&ggr[7..], &cfg), MoeWeights::split(&grads, &cfg));
        assert_close("block d gate", gw.gate, cw.gate, 1e-5, 1e-4);
        assert_close("block d gate_proj", gw.experts.gate_proj, cw.experts.gate_proj, 1e-5, 1e-4);
        assert_close("block d up_proj", gw.experts.up_proj, cw.experts.up_proj, 1e-5, 1e-4);
        assert_close("block d down_proj", gw.experts.down_proj, cw.experts.down_proj, 1e-5, 1e-4);
        let offsets = g.read_u32(&acts.saved.as_ref().unwrap().offsets).unwrap();
        (0..e).map(|i| offsets[i + 1] - offsets[i]).max().unwrap()
    }

    #[test]
    fn moe_block_matches_cpu() {
        let Some(g) = test_gpu("moe_block_matches_cpu") else { return };
        // One GpuMoeActs throughout: reused for equal shapes, reallocated when the shape changes.
        let mut acts = GpuMoeActs::default();
        check_block(g, &mut acts, [2, 5, 12, 10, 6, 2], false);
        check_block(g, &mut acts, [2, 5, 12, 10, 6, 2], true);
        // Experts with more rows than one 64-row tile, more columns than one tile.
        let most = check_block(g, &mut acts, [2, 48, 70, 20, 6, 3], true);
        assert!(most > TILE as u32, "no expert spans two row tiles ({most} rows at most)");
    }
}
