//! Dense matmul on the GPU in the convention of `cpu::matmul`: out = inp · weight^T, weight stored
//! (out_features, in_features). One tiled GEMM kernel (`matmul.wgsl` on the GEMM core `gemm.wgsl`)
//! serves the forward and both backward products through transpose flags, offsets and column
//! sections; its tile sizes are override constants, one of two sets (`Tiles`) picked by problem
//! size, which the grouped expert GEMMs and attention's GEMMs use too.

use super::{word, Buf, Encoder, Gpu, Kernel};
use crate::config::Precision;
use std::cell::Cell;

const GEMM: Kernel = Kernel::proven(concat!(include_str!("shaders/gemm.wgsl"), include_str!("shaders/matmul.wgsl")), "gemm");

/// A tile configuration of the GEMM core, the values of gemm.wgsl's override constants: BM x BN
/// blocks of c per workgroup through BK-deep slices, TM x TN of them per invocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tiles {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
}

/// Large products: 256 invocations of 8x8 (64 FMAs per four vec4 reads of workgroup memory),
/// 8.25 KiB of workgroup memory.
pub const BIG: Tiles = Tiles { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 }.checked();
/// The rest: 256 invocations of 4x4, 8.5 KiB; four times BIG's workgroups for the same product.
pub const SMALL: Tiles = Tiles { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 }.checked();

impl Tiles {
    /// Fails the build unless the GEMM core's literal register code holds the tile: TM, TN 4 or 8,
    /// exactly 4 staged loads per invocation and operand, BK a divisor of BM (causal ranges start at
    /// row tiles).
    const fn checked(self) -> Tiles {
        let wg = (self.bm / self.tm) * (self.bn / self.tn);
        assert!((self.tm == 4 || self.tm == 8) && (self.tn == 4 || self.tn == 8));
        assert!(self.bm.is_multiple_of(4 * self.tm) && self.bn.is_multiple_of(4 * self.tn));
        assert!(self.bm * self.bk == 4 * wg && self.bn * self.bk == 4 * wg && self.bm.is_multiple_of(self.bk));
        self
    }

    /// BIG once both sides of c reach 512 and its grid still has 256 workgroups (about two per SM of a
    /// 132-SM H200); smaller grids leave SMs idle, which SMALL's fourfold count avoids. Unmeasured.
    /// A configuration forced on this thread (`force`) wins.
    pub fn pick(s: &Gemm) -> Tiles {
        if let Some(t) = forced() {
            return t;
        }
        let big_groups = s.m.div_ceil(BIG.bm) * s.n.div_ceil(BIG.bn) * s.batch;
        if s.m >= 512 && s.n >= 512 && big_groups >= 256 { BIG } else { SMALL }
    }

    pub(crate) fn constants(self) -> [(&'static str, f64); 5] {
        [("BM", self.bm as f64), ("BN", self.bn as f64), ("BK", self.bk as f64), ("TM", self.tm as f64), ("TN", self.tn as f64)]
    }

    /// `constants` and, for `Precision::Bf16`, BF16 = true (f32 keeps the shader's default and the
    /// pipelines it had).
    pub(crate) fn constants_for(self, p: Precision) -> Vec<(&'static str, f64)> {
        let mut c = self.constants().to_vec();
        if p == Precision::Bf16 {
            c.push(("BF16", 1.0));
        }
        c
    }
}

thread_local! {
    static FORCED: Cell<Option<Tiles>> = const { Cell::new(None) };
}

/// The configuration `force`d on this thread, if any.
pub(crate) fn forced() -> Option<Tiles> {
    FORCED.with(Cell::get)
}

/// Makes every GEMM this thread records (dense, grouped, attention) use `t`, or picks by size again
/// (None): tests cover both configurations, the device check times each.
pub fn force(t: Option<Tiles>) {
    FORCED.with(|f| f.set(t));
}

/// matmul.wgsl's `Params`, one line per 16-byte row: sizes, flags (TRANS_A 1 | TRANS_B 2 | ACC 4),
/// the views' offsets, the batch strides of a, b, c, and the column sections of a and c.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad0: u32,
    a_bs: u32, b_bs: u32, c_bs: u32, _pad1: u32,
    a_w0: u32, a_w1: u32, c_w0: u32, c_w1: u32,
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

    /// Panics unless `n` elements from the view's start lie in its buffer: what proves the indices of
    /// a `Kernel::proven` kernel in range.
    pub fn fits(self, n: usize, what: &str) {
        assert!(self.off + n <= self.buf.len, "{what}: a view of {n} elements at {} passes the end of its buffer of {}", self.off, self.buf.len);
    }
}

impl<'a> From<&'a Buf> for View<'a> {
    fn from(buf: &'a Buf) -> Self {
        View { buf, off: 0 }
    }
}

/// One GEMM: c (m, n) = op(a) · op(b), accumulated into c when `acc`; `batch` products with element
/// strides `strides` = (a, b, c) between them. `a_sections`, `c_sections`: the widths [w0, w1] of the
/// first two column sections of a's stored columns and of c's columns (matmul.wgsl), [0, 0] for
/// plain row-major matrices.
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
    pub a_sections: [usize; 2],
    pub c_sections: [usize; 2],
    /// the operands' format (gemm.wgsl's BF16)
    pub precision: Precision,
}

impl Gemm {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, trans_a: false, trans_b: false, acc: false, batch: 1, strides: [0; 3], a_sections: [0; 2], c_sections: [0; 2], precision: Precision::F32 }
    }
}

/// matmul.wgsl's (w0, w1) of a matrix with `cols` columns in `sections` ([0, 0]: one section).
fn widths(sections: [usize; 2], cols: usize) -> (u32, u32) {
    match sections {
        [0, 0] => (word(cols), 0),
        [w0, w1] => {
            assert!(w0 + w1 <= cols, "column sections {w0} + {w1} exceed {cols} columns");
            (word(w0), word(w1))
        }
    }
}

/// c (M, N) = op(a) (M, K) · op(b) (K, N) as `s` says (a stored (K, M) when trans_a, b (N, K) when
/// trans_b), `s.batch` times.
pub fn gemm(g: &Gpu, enc: &mut Encoder, c: View, a: View, b: View, s: Gemm) {
    gemm_tiled(g, enc, c, a, b, s, Tiles::pick(&s));
}

/// `gemm` with the tile configuration `t` (tests run both on small shapes).
pub(crate) fn gemm_tiled(g: &Gpu, enc: &mut Encoder, c: View, a: View, b: View, s: Gemm, t: Tiles) {
    let last = s.batch.saturating_sub(1);
    a.fits(last * s.strides[0] + s.m * s.k, "gemm a");
    b.fits(last * s.strides[1] + s.k * s.n, "gemm b");
    c.fits(last * s.strides[2] + s.m * s.n, "gemm c");
    let (a_w0, a_w1) = widths(s.a_sections, if s.trans_a { s.m } else { s.k });
    let (c_w0, c_w1) = widths(s.c_sections, s.n);
    let p = Params {
        m: word(s.m),
        n: word(s.n),
        k: word(s.k),
        flags: u32::from(s.trans_a) | u32::from(s.trans_b) << 1 | u32::from(s.acc) << 2,
        a_off: word(a.off),
        b_off: word(b.off),
        c_off: word(c.off),
        a_bs: word(s.strides[0]),
        b_bs: word(s.strides[1]),
        c_bs: word(s.strides[2]),
        a_w0,
        a_w1,
        c_w0,
        c_w1,
        ..bytemuck::Zeroable::zeroed()
    };
    let groups = [s.n.div_ceil(t.bn) as u32, s.m.div_ceil(t.bm) as u32, s.batch as u32];
    g.dispatch_with(enc, &GEMM, &t.constants_for(s.precision), &[a.buf, b.buf, c.buf], &p, groups);
}

/// out (M, N) = inp (M, K) · weight (N, K)^T in precision `p`. Overwrites `out`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(g: &Gpu, enc: &mut Encoder, out: View, inp: View, weight: View, m: usize, k: usize, n: usize, p: Precision) {
    gemm(g, enc, out, inp, weight, Gemm { trans_b: true, precision: p, ..Gemm::new(m, n, k) });
}

/// dinp (M, K) += dout (M, N) · weight (N, K);  dweight (N, K) += dout^T · inp (M, K), in precision `p`.
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
    p: Precision,
) {
    gemm(g, enc, dinp, dout, weight, Gemm { acc: true, precision: p, ..Gemm::new(m, k, n) });
    gemm(g, enc, dweight, dout, inp, Gemm { trans_a: true, acc: true, precision: p, ..Gemm::new(n, k, m) });
}
