//! Dropless experts on the GPU, op for op `cpu::experts` (`shaders/experts.wgsl`): the N = T*K
//! (token, slot) pairs counting-sorted by expert, gathered into one block of rows per expert, the
//! SwiGLU expert MLPs as grouped GEMMs over those blocks, and the weighted combine. Each op takes
//! `g, enc` first, device buffers where the CPU takes slices, and explicit dims; nothing reads back.

use super::matmul::{forced, Gemm, Tiles, View, BIG, SMALL};
use crate::config::Precision;
use crate::layout::ExpertParams;
use super::{groups_1d, word, Buf, Encoder, Gpu, Kernel};

const SRC: &str = concat!(include_str!("shaders/gemm.wgsl"), include_str!("shaders/experts.wgsl"));
const PERMUTE_COUNT: Kernel = Kernel::checked(SRC, "permute_count");
const PERMUTE_SCAN: Kernel = Kernel::checked(SRC, "permute_scan");
const PERMUTE_SCATTER: Kernel = Kernel::checked(SRC, "permute_scatter");
const GATHER_FORWARD: Kernel = Kernel::checked(SRC, "gather_forward");
const GATHER_BACKWARD: Kernel = Kernel::checked(SRC, "gather_backward");
const COMBINE_FORWARD: Kernel = Kernel::checked(SRC, "combine_forward");
const COMBINE_BACKWARD: Kernel = Kernel::checked(SRC, "combine_backward");
const EXPERTS_GEMM: Kernel = Kernel::proven(SRC, "experts_gemm");

/// Pairs per block of the counting sort.
const SORT_BLOCK: usize = 256;

// experts.wgsl's three uniforms, one line per 16-byte row.

/// The counting sort's: N pairs, E experts, NB = ceil(N / 256) blocks, rows per row tile.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PermuteParams {
    n: u32, e: u32, nb: u32, tile: u32,
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
    m: u32, n: u32, k: u32, experts: u32,
    a_off: u32, b_off: u32, b_off2: u32, b_es: u32,
    c_off: u32, c_off2: u32, sec: u32, halves: u32,
}

/// experts.wgsl's MODE: which grouped product `experts_gemm` computes.
#[derive(Clone, Copy)]
enum Mode {
    Up = 0,
    Down = 1,
    Dh = 2,
    Dx = 3,
    Wgrad = 4,
}

/// The tiles of a layer's grouped data products for N sorted rows of E experts: BIG when experts
/// average 512 rows (a BIG row tile pads at most 127 rows per expert), else SMALL; a configuration
/// forced on this thread wins. Unmeasured.
pub fn grouped_tiles(n: usize, e: usize) -> Tiles {
    match forced() {
        Some(t) => t,
        None if n / e.max(1) >= 512 => BIG,
        None => SMALL,
    }
}

/// Words of scratch `permute_forward` needs for N pairs and E experts: E per block of 256 pairs.
pub fn permute_scratch_len(n: usize, e: usize) -> usize {
    e * n.div_ceil(SORT_BLOCK)
}

/// `cpu::experts::permute_forward` of the N = T*K pairs idx (N) u32: offsets (E + 1), rows (N),
/// pos (N), all u32, plus the grouped GEMMs' row-tile table tiles (E + 1):
/// tiles[e] = sum_{j<e} ceil(n_j / tile). counts: scratch of `permute_scratch_len(N, E)` words.
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
    tile: usize,
) {
    let p = PermuteParams { n: word(n), e: word(e), nb: word(n.div_ceil(SORT_BLOCK)), tile: word(tile) };
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

/// The sorted rows the grouped GEMMs run over: `permute_forward`'s offsets (E + 1) and tiles (E + 1)
/// (row tiles of `tiles.bm` rows), N rows, E experts.
#[derive(Clone, Copy)]
pub struct Sorted<'a> {
    pub offsets: &'a Buf,
    pub tiles: &'a Buf,
    pub tile: Tiles,
    pub n: usize,
    pub e: usize,
}

/// One grouped product `mode` (see experts.wgsl) over the sorted rows: c from a and the weights (or
/// B) w; `p` holds its sizes and second offsets, `cols` the output columns of a data product (its
/// grid's z). Every index is in range when a, w and c hold what the mode reads and writes, which
/// the callers' views guarantee (`check`).
#[allow(clippy::too_many_arguments)]
fn grouped(g: &Gpu, enc: &mut Encoder, mode: Mode, c: View, a: View, w: View, aux: &Buf, sorted: &Sorted, cols: usize, p: GemmParams, precision: Precision) {
    let p = GemmParams { experts: word(sorted.e), a_off: word(a.off), b_off: word(w.off), c_off: word(c.off), sec: p.sec, ..p };
    let (t, groups) = match mode {
        Mode::Wgrad => {
            let (m, n) = (p.halves as usize * p.m as usize, p.n as usize);
            let t = Tiles::pick(&Gemm { batch: sorted.e, ..Gemm::new(m, n, 1) });
            (t, [n.div_ceil(t.bn) as u32, m.div_ceil(t.bm) as u32, sorted.e as u32])
        }
        // Row tiles: an upper bound (sum_e ceil(n_e / BM) <= ceil(N / BM) + E); the rest exit at once.
        _ => {
            let [x, y, _] = groups_1d(sorted.n.div_ceil(sorted.tile.bm) + sorted.e, 1);
            (sorted.tile, [x, y, cols.div_ceil(sorted.tile.bn) as u32])
        }
    };
    let mut constants = t.constants_for(precision);
    constants.push(("MODE", mode as u32 as f64));
    let bufs = [sorted.offsets, a.buf, w.buf, c.buf, sorted.tiles, aux];
    g.dispatch_with(enc, &EXPERTS_GEMM, &constants, &bufs, &p, groups);
}

/// `cpu::experts::experts_forward` over the sorted rows: guh (3, N, F) = g | u | h and ys (N, C) from
/// xs (N, C). wt: the experts' weights, gate_proj and up_proj (E, F, C), down_proj (E, C, F), views
/// of one buffer. Experts without rows own no tiles.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward(
    g: &Gpu,
    enc: &mut Encoder,
    guh: &Buf,
    ys: View,
    xs: View,
    wt: &ExpertParams<View>,
    sorted: &Sorted,
    c: usize,
    f: usize,
    precision: Precision,
) {
    let (n, e) = (sorted.n, sorted.e);
    check(wt, c, f, e);
    View::from(guh).fits(3 * n * f, "experts_forward");
    for x in [ys, xs] {
        x.fits(n * c, "experts_forward");
    }
    // g, u, h = silu(g) * u in one product: gate_proj and up_proj columns interleaved (up_proj read
    // from gate_proj's buffer at its own offset)
    assert!(std::ptr::eq(wt.gate_proj.buf, wt.up_proj.buf), "gate_proj and up_proj must be views of one buffer");
    let sec = word(n * f);
    let up = GemmParams { n: word(f), k: word(c), b_off2: word(wt.up_proj.off), b_es: word(f * c), sec, ..bytemuck::Zeroable::zeroed() };
    grouped(g, enc, Mode::Up, guh.into(), xs, wt.gate_proj, xs.buf, sorted, 2 * f, up, precision);
    // ys = h · down_proj_e^T
    let down = GemmParams { n: word(c), k: word(f), b_es: word(c * f), sec, ..bytemuck::Zeroable::zeroed() };
    grouped(g, enc, Mode::Down, ys, View { buf: guh, off: 2 * n * f }, wt.down_proj, guh, sorted, c, down, precision);
}

/// Panics unless the weight views hold E experts of (F, C), (F, C) and (C, F).
fn check(wt: &ExpertParams<View>, c: usize, f: usize, e: usize) {
    for v in [wt.gate_proj, wt.up_proj, wt.down_proj] {
        v.fits(e * f * c, "expert weights");
    }
}

/// `cpu::experts::experts_backward`: overwrites dxs (N, C) and dgu (2, N, F) = dg | du; accumulates
/// the experts' weight gradients into `grads` (shaped as `wt`: (E, F, C), (E, F, C), (E, C, F)).
/// dys (N, C), xs (N, C), guh (3, N, F) as saved by the forward. dys may be the same view as dxs:
/// it is dead before dxs is written.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dxs: View,
    grads: &ExpertParams<View>,
    dgu: &Buf,
    dys: View,
    xs: View,
    guh: &Buf,
    wt: &ExpertParams<View>,
    sorted: &Sorted,
    c: usize,
    f: usize,
    precision: Precision,
) {
    let (n, e) = (sorted.n, sorted.e);
    check(wt, c, f, e);
    check(grads, c, f, e);
    for x in [dxs, dys, xs] {
        x.fits(n * c, "experts_backward");
    }
    View::from(dgu).fits(2 * n * f, "experts_backward");
    View::from(guh).fits(3 * n * f, "experts_backward");
    assert!(std::ptr::eq(wt.gate_proj.buf, wt.up_proj.buf) && std::ptr::eq(grads.gate_proj.buf, grads.up_proj.buf));
    let sec = word(n * f);
    let z = bytemuck::Zeroable::zeroed;
    // dh = dys · down_proj_e, then dg, du through the SwiGLU
    let dh = GemmParams { n: word(f), k: word(c), b_es: word(c * f), sec, ..z() };
    grouped(g, enc, Mode::Dh, dgu.into(), dys, wt.down_proj, guh, sorted, f, dh, precision);
    // down_proj_e += dys^T · h
    let h = View { buf: guh, off: 2 * n * f };
    let wd = GemmParams { m: word(c), n: word(f), halves: 1, sec, ..z() };
    grouped(g, enc, Mode::Wgrad, grads.down_proj, dys, h, xs.buf, sorted, 0, wd, precision);
    // dxs = dg · gate_proj_e + du · up_proj_e, one product over 2F
    let dx = GemmParams { n: word(c), k: word(f), b_off2: word(wt.up_proj.off), b_es: word(f * c), sec, ..z() };
    grouped(g, enc, Mode::Dx, dxs, dgu.into(), wt.gate_proj, xs.buf, sorted, c, dx, precision);
    // gate_proj_e += dg^T · xs;  up_proj_e += du^T · xs, one product over 2F rows
    let wgu = GemmParams { m: word(f), n: word(c), halves: 2, c_off2: word(grads.up_proj.off), sec, ..z() };
    grouped(g, enc, Mode::Wgrad, grads.gate_proj, dgu.into(), xs, xs.buf, sorted, 0, wgu, precision);
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
        let tiles: Vec<u32> = (0..=e).map(|i| (0..i).map(|j| (off[j + 1] - off[j]).div_ceil(SMALL.bm) as u32).sum()).collect();

        let (go, gt, gr, gp) = (g.alloc(e + 1).unwrap(), g.alloc(e + 1).unwrap(), g.alloc(n).unwrap(), g.alloc(n).unwrap());
        let (gc, gi) = (g.alloc(permute_scratch_len(n, e)).unwrap(), g.upload(&idx).unwrap());
        let mut enc = g.encoder();
        permute_forward(g, &mut enc, &go, &gt, &gr, &gp, &gc, &gi, n, e, SMALL.bm);
        let r = g.finish(enc, &[&go, &gt, &gr, &gp]).unwrap();
        assert_eq!(r[0], off.iter().map(|&o| o as u32).collect::<Vec<_>>(), "offsets");
        assert_eq!(r[1], tiles, "tiles");
        assert_eq!(r[2], rows, "rows");
        assert_eq!(r[3], pos, "pos");
        eprintln!("permute: offsets {:?}, tiles {:?} exact", r[0], r[1]);
    }
}
