//! Dense matmul on the GPU in the convention of `cpu::matmul`: out = inp · weight^T, weight stored
//! (out_features, in_features). One tiled GEMM kernel (`matmul.wgsl`) serves the forward, both
//! backward products and the batched products of attention, through transpose flags and offsets;
//! its tile sizes are override constants, one of two sets picked by problem size.

use super::{Buf, Encoder, Gpu, Kernel};

const GEMM: Kernel = Kernel::checked(include_str!("shaders/matmul.wgsl"), "gemm");

/// A tile configuration of `gemm`, the values of matmul.wgsl's override constants: BM x BN blocks of
/// c per workgroup through BK-deep slices, TM x TN of them per invocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Tiles {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
}

/// Large products: 256 invocations of 8x8 (64 FMAs per four vec4 reads of workgroup memory),
/// 8.25 KiB of workgroup memory.
pub(crate) const BIG: Tiles = Tiles { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 }.checked();
/// The rest: 256 invocations of 4x4, 8.5 KiB; four times BIG's workgroups for the same product.
pub(crate) const SMALL: Tiles = Tiles { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 }.checked();

impl Tiles {
    /// Fails the build unless the shader's register arrays hold the tile: TM, TN multiples of 4 up to
    /// 8, at most 8 staged loads per invocation and operand, and every load slot filled.
    const fn checked(self) -> Tiles {
        let wg = (self.bm / self.tm) * (self.bn / self.tn);
        assert!(self.tm.is_multiple_of(4) && self.tm <= 8 && self.tn.is_multiple_of(4) && self.tn <= 8);
        assert!(self.bm.is_multiple_of(self.tm) && self.bn.is_multiple_of(self.tn));
        assert!((self.bm * self.bk).is_multiple_of(wg) && self.bm * self.bk / wg <= 8);
        assert!((self.bn * self.bk).is_multiple_of(wg) && self.bn * self.bk / wg <= 8);
        self
    }

    /// BIG once both sides of c reach 512 and its grid still has 256 workgroups (about two per SM of a
    /// 132-SM H200); smaller grids leave SMs idle, which SMALL's fourfold count avoids. Unmeasured.
    pub(crate) fn pick(s: &Gemm) -> Tiles {
        let big_groups = s.m.div_ceil(BIG.bm) * s.n.div_ceil(BIG.bn) * s.batch;
        if s.m >= 512 && s.n >= 512 && big_groups >= 256 { BIG } else { SMALL }
    }

    fn constants(self) -> [(&'static str, f64); 5] {
        [("BM", self.bm as f64), ("BN", self.bn as f64), ("BK", self.bk as f64), ("TM", self.tm as f64), ("TN", self.tn as f64)]
    }
}

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
    gemm_tiled(g, enc, c, a, b, s, Tiles::pick(&s));
}

/// `gemm` with the tile configuration `t` (tests run both on small shapes).
pub(crate) fn gemm_tiled(g: &Gpu, enc: &mut Encoder, c: View, a: View, b: View, s: Gemm, t: Tiles) {
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
    let groups = [s.n.div_ceil(t.bn) as u32, s.m.div_ceil(t.bm) as u32, s.batch as u32];
    g.dispatch_with(enc, &GEMM, &t.constants(), &[a.buf, b.buf, c.buf], &p, groups);
}

/// out (M, N) = inp (M, K) · weight (N, K)^T. Overwrites `out`.
#[allow(clippy::too_many_arguments)]
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
