//! Dropless experts on the GPU, op for op `cpu::experts` (`shaders/experts.wgsl`): the N = T*K
//! (token, slot) pairs counting-sorted by expert, gathered into one block of rows per expert, the
//! SwiGLU expert MLPs as grouped GEMMs over those blocks, and the weighted combine. Each op takes
//! `g, enc` first, device buffers where the CPU takes slices, and explicit dims; nothing reads back.

use super::matmul::View;
use crate::layout::ExpertParams;
use super::{groups_1d, word, Buf, Encoder, Gpu, Kernel};

const SRC: &str = include_str!("shaders/experts.wgsl");
const PERMUTE_COUNT: Kernel = Kernel::checked(SRC, "permute_count");
const PERMUTE_SCAN: Kernel = Kernel::checked(SRC, "permute_scan");
const PERMUTE_SCATTER: Kernel = Kernel::checked(SRC, "permute_scatter");
const GATHER_FORWARD: Kernel = Kernel::checked(SRC, "gather_forward");
const GATHER_BACKWARD: Kernel = Kernel::checked(SRC, "gather_backward");
const COMBINE_FORWARD: Kernel = Kernel::checked(SRC, "combine_forward");
const COMBINE_BACKWARD: Kernel = Kernel::checked(SRC, "combine_backward");
const EXPERTS_GEMM: Kernel = Kernel::checked(SRC, "experts_gemm");
const EXPERTS_WGRAD: Kernel = Kernel::checked(SRC, "experts_wgrad");

/// Output tile of the grouped GEMMs (BM = BN in experts.wgsl).
pub(crate) const TILE: usize = 64;
/// Pairs per block of the counting sort.
const SORT_BLOCK: usize = 256;

// experts.wgsl's three uniforms, one line per 16-byte row.

/// The counting sort's: N pairs, E experts, NB = ceil(N / 256) blocks.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PermuteParams {
    n: u32, e: u32, nb: u32, _pad: u32,
}

/// Gather's and combine's: `rows` rows of C channels, K slots, the offset of the (T, C) view.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32, c: u32, k: u32, off: u32,
}

impl RowParams {
    fn new(rows: usize, c: usize, k: usize, off: usize) -> Self {
        RowParams { rows: word(rows), c: word(c), k: word(k), off: word(off) }
    }
}

/// The grouped GEMMs' (fields as in the comment above `GemmParams` in experts.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32, n: u32, k: u32, flags: u32,
    experts: u32, a_off: u32, b_off: u32, b_off2: u32,
    b_es: u32, c_off: u32, sec: u32, _pad: u32,
}

/// Words of scratch `permute_forward` needs for N pairs and E experts: E per block of 256 pairs.
pub fn permute_scratch_len(n: usize, e: usize) -> usize {
    e * n.div_ceil(SORT_BLOCK)
}

/// `cpu::experts::permute_forward` of the N = T*K pairs idx (N) u32: offsets (E + 1), rows (N),
/// pos (N), all u32, plus the grouped GEMMs' row-tile table tiles (E + 1):
/// tiles[e] = sum_{j<e} ceil(n_j / 64). counts: scratch of `permute_scratch_len(N, E)` words.
/// No backward: a permutation of indices.
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
    let p = PermuteParams { n: word(n), e: word(e), nb: word(n.div_ceil(SORT_BLOCK)), _pad: 0 };
    g.dispatch(enc, &PERMUTE_COUNT, &[idx, counts], &p, groups_1d(n, SORT_BLOCK));
    g.dispatch(enc, &PERMUTE_SCAN, &[counts, offsets, tiles], &p, [1, 1, 1]);
    g.dispatch(enc, &PERMUTE_SCATTER, &[idx, counts, rows, pos], &p, groups_1d(n, SORT_BLOCK));
}

/// xs (N, C) = x (T, C) gathered in sorted order: xs[p] = x[rows[p] / K]; rows (N) u32.
#[allow(clippy::too_many_arguments)]
pub fn gather_forward(g: &Gpu, enc: &mut Encoder, xs: &Buf, x: View, rows: &Buf, n: usize, c: usize, k: usize) {
    g.dispatch(enc, &GATHER_FORWARD, &[rows, x.buf, xs], &RowParams::new(n, c, k, x.off), groups_1d(n * c, 256));
}

/// dx (T, C) = the sum over the K sorted copies of each token of dxs (N, C); pos (N) u32. Overwrites
/// dx, unlike the CPU's +=: the block's backward writes dx here first.
#[allow(clippy::too_many_arguments)]
pub fn gather_backward(g: &Gpu, enc: &mut Encoder, dx: View, dxs: &Buf, pos: &Buf, t: usize, c: usize, k: usize) {
    g.dispatch(enc, &GATHER_BACKWARD, &[pos, dxs, dx.buf], &RowParams::new(t, c, k, dx.off), groups_1d(t * c, 256));
}

/// The sorted rows the grouped GEMMs run over: `permute_forward`'s offsets (E + 1) and tiles (E + 1),
/// N rows, E experts.
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
    let p = GemmParams {
        n: word(n),
        k: word(k),
        flags: flags | u32::from(trans_b),
        experts: word(sorted.e),
        a_off: word(a.off),
        b_off: word(w.off),
        b_off2: word(up_off),
        b_es: word(n * k),
        sec: word(sorted.n * n),
        ..bytemuck::Zeroable::zeroed()
    };
    // Row tiles: an upper bound (sum_e ceil(n_e / 64) <= ceil(N / 64) + E); the rest exit at once.
    let [x, y, _] = groups_1d(sorted.n.div_ceil(TILE) + sorted.e, 1);
    let bufs = [sorted.offsets, a.buf, w.buf, c, sorted.tiles, aux];
    g.dispatch(enc, &EXPERTS_GEMM, &bufs, &p, [x, y, n.div_ceil(TILE) as u32]);
}

/// For every expert e: dw_e (m, n) += a rows of e^T (m, n_e) · b rows of e (n_e, n), dw_e the e-th
/// (m, n) block of `dw`.
#[allow(clippy::too_many_arguments)]
fn experts_wgrad(g: &Gpu, enc: &mut Encoder, dw: View, a: View, b: View, sorted: &Sorted, m: usize, n: usize) {
    let p = GemmParams {
        m: word(m),
        n: word(n),
        experts: word(sorted.e),
        a_off: word(a.off),
        b_off: word(b.off),
        c_off: word(dw.off),
        ..bytemuck::Zeroable::zeroed()
    };
    let groups = [n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, sorted.e as u32];
    g.dispatch(enc, &EXPERTS_WGRAD, &[sorted.offsets, a.buf, b.buf, dw.buf], &p, groups);
}

/// `cpu::experts::experts_forward` over the sorted rows: guh (3, N, F) = g | u | h and ys (N, C) from
/// xs (N, C). wt: the experts' weights, gate_proj and up_proj (E, F, C), down_proj (E, C, F), views
/// of one buffer. Experts without rows own no tiles.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward(
    g: &Gpu,
    enc: &mut Encoder,
    guh: &Buf,
    ys: &Buf,
    xs: &Buf,
    wt: &ExpertParams<View>,
    sorted: &Sorted,
    c: usize,
    f: usize,
) {
    // g = xs · gate_proj_e^T, u = xs · up_proj_e^T, h = silu(g) * u, one pass (up_proj read from
    // gate_proj's buffer at its own offset)
    assert!(std::ptr::eq(wt.gate_proj.buf, wt.up_proj.buf), "gate_proj and up_proj must be views of one buffer");
    let swiglu = Epilogue::SwiGlu { up_off: wt.up_proj.off };
    experts_gemm(g, enc, guh, xs.into(), wt.gate_proj, xs, sorted, f, c, true, swiglu);
    // ys = h · down_proj_e^T
    let h = View { buf: guh, off: 2 * sorted.n * f };
    experts_gemm(g, enc, ys, h, wt.down_proj, guh, sorted, c, f, true, Epilogue::Store);
}

/// `cpu::experts::experts_backward`: overwrites dxs (N, C) and dgu (2, N, F) = dg | du; accumulates
/// the experts' weight gradients into `grads` (shaped as `wt`: (E, F, C), (E, F, C), (E, C, F)).
/// dys (N, C), xs (N, C), guh (3, N, F) as saved by the forward. dys may be the same buffer as dxs:
/// it is dead before dxs is written.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dxs: &Buf,
    grads: &ExpertParams<View>,
    dgu: &Buf,
    dys: &Buf,
    xs: &Buf,
    guh: &Buf,
    wt: &ExpertParams<View>,
    sorted: &Sorted,
    c: usize,
    f: usize,
) {
    let nf = sorted.n * f;
    let (dg, du) = (View { buf: dgu, off: 0 }, View { buf: dgu, off: nf });
    // dh = dys · down_proj_e, then dg, du through the SwiGLU; down_proj_e += dys^T · h
    experts_gemm(g, enc, dgu, dys.into(), wt.down_proj, guh, sorted, f, c, false, Epilogue::SwiGluBackward);
    experts_wgrad(g, enc, grads.down_proj, dys.into(), View { buf: guh, off: 2 * nf }, sorted, c, f);
    // dxs = dg · gate_proj_e + du · up_proj_e
    experts_gemm(g, enc, dxs, dg, wt.gate_proj, dgu, sorted, c, f, false, Epilogue::Store);
    experts_gemm(g, enc, dxs, du, wt.up_proj, dgu, sorted, c, f, false, Epilogue::Add);
    // gate_proj_e += dg^T · xs;  up_proj_e += du^T · xs
    experts_wgrad(g, enc, grads.gate_proj, dg, xs.into(), sorted, f, c);
    experts_wgrad(g, enc, grads.up_proj, du, xs.into(), sorted, f, c);
}

/// out (T, C) = sum_k w[t,k] * ys[pos[t*K+k]], from ys (N, C), w (T, K) and pos (N) u32. Overwrites out.
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
    g.dispatch(enc, &COMBINE_FORWARD, &[pos, ys, out.buf, w], &RowParams::new(t, c, k, out.off), groups_1d(t * c, 256));
}

/// Overwrites dys (N, C): dys[pos[t*K+k]] = w[t,k] * dout[t]; and dw (T, K) = <dout[t], ys[pos[t*K+k]]>.
/// dout (T, C), ys (N, C), w (T, K), pos (N) u32.
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
    g.dispatch(enc, &COMBINE_BACKWARD, &bufs, &RowParams::new(t, c, k, dout.off), groups_1d(t, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::experts as cpu;
    use crate::gpu::tests::test_gpu;
    use crate::testutil::randn;

    #[test]
    fn permute_matches_cpu() {
        let Some(g) = test_gpu("permute_matches_cpu") else { return };
        // Several sort blocks, the last one partial; expert 3 chosen by no pair.
        let (n, e) = (999, 7);
        let idx: Vec<u32> = randn(n, 5).iter().map(|v| ((v.abs() * 1000.0) as u32 % 6 + 4) % 7).collect();
        assert!(!idx.contains(&3));
        let (mut off, mut rows, mut pos) = (vec![0usize; e + 1], vec![0u32; n], vec![0u32; n]);
        cpu::permute_forward(&mut off, &mut rows, &mut pos, &idx, e);
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
}
