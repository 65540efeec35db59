//! Dense matmul on the GPU in the convention of `cpu::matmul`: out = inp · weight^T, weight stored
//! (out_features, in_features). One tiled GEMM kernel (`matmul.wgsl`) serves the forward, both
//! backward products and the batched products of attention, through transpose flags and offsets.

use super::{Buf, Encoder, Gpu, Kernel};

const GEMM: Kernel = Kernel { src: include_str!("shaders/matmul.wgsl"), entry: "gemm" };
const TILE: usize = 64;

/// matmul.wgsl's `Params`, one line per 16-byte row: sizes, flags (TRANS_A 1 | TRANS_B 2 | ACC 4),
/// the views' offsets, and the batch strides of a, b, c.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad0: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, _pad1: u32,
}

/// A slice of a device buffer: `buf[off..]`. Parameters and gradients are views of one flat buffer.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buf: &'a Buf,
    pub off: usize,
}

impl<'a> View<'a> {
    /// The view `n` elements further on.
    pub fn at(self, n: usize) -> View<'a> {
        View { buf: self.buf, off: self.off + n }
    }
}

impl<'a> From<&'a Buf> for View<'a> {
    fn from(buf: &'a Buf) -> Self {
        View { buf, off: 0 }
    }
}

/// One GEMM: c (m, n) = op(a) · op(b), accumulated into c when `acc`; `batch` products with element
/// strides `strides` = (a, b, c) between them.
#[derive(Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub acc: bool,
    pub batch: usize,
    pub strides: [usize; 3],
}

impl Gemm {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, trans_a: false, trans_b: false, acc: false, batch: 1, strides: [0; 3] }
    }
}

/// c (M, N) = op(a) (M, K) · op(b) (K, N) as `s` says (a stored (K, M) when trans_a, b (N, K) when
/// trans_b), `s.batch` times.
pub fn gemm(g: &Gpu, enc: &mut Encoder, c: View, a: View, b: View, s: Gemm) {
    let p = Params {
        m: s.m as u32,
        n: s.n as u32,
        k: s.k as u32,
        flags: u32::from(s.trans_a) | u32::from(s.trans_b) << 1 | u32::from(s.acc) << 2,
        a_off: a.off as u32,
        b_off: b.off as u32,
        c_off: c.off as u32,
        a_bs: s.strides[0] as u32,
        b_bs: s.strides[1] as u32,
        c_bs: s.strides[2] as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    let groups = [s.n.div_ceil(TILE) as u32, s.m.div_ceil(TILE) as u32, s.batch as u32];
    g.dispatch(enc, &GEMM, &[a.buf, b.buf, c.buf], &p, groups);
}

/// out (M, N) = inp (M, K) · weight (N, K)^T. Overwrites `out`.
pub fn matmul_forward(g: &Gpu, enc: &mut Encoder, out: View, inp: View, weight: View, m: usize, k: usize, n: usize) {
    gemm(g, enc, out, inp, weight, Gemm { trans_b: true, ..Gemm::new(m, n, k) });
}

/// dinp (M, K) += dout (M, N) · weight (N, K);  dweight (N, K) += dout^T · inp (M, K).
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dinp: View,
    dweight: View,
    dout: View,
    inp: View,
    weight: View,
    m: usize,
    k: usize,
    n: usize,
) {
    gemm(g, enc, dinp, dout, weight, Gemm { acc: true, ..Gemm::new(m, k, n) });
    gemm(g, enc, dweight, dout, inp, Gemm { trans_a: true, acc: true, ..Gemm::new(n, k, m) });
}
