//! Elementwise kernels of the model step (`shaders/elementwise.wgsl`): the residual add, used by the
//! model and the shared expert, and the finiteness flags that replace the CPU's per-layer
//! `check_finite` without a readback per layer.

use super::matmul::View;
use super::{groups_1d, Buf, Encoder, Gpu, Kernel};

const ADD: Kernel = Kernel::checked(include_str!("shaders/elementwise.wgsl"), "add_inplace");
const FINITE: Kernel = Kernel::checked(include_str!("shaders/elementwise.wgsl"), "finite_flags");

/// elementwise.wgsl's `Params`: n elements of x from x_off (of y from y_off); slot: the flag
/// finite_flags sets.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32, x_off: u32, slot: u32, y_off: u32,
}

/// y += x, n elements of each view.
pub fn add_inplace(g: &Gpu, enc: &mut Encoder, y: View, x: View, n: usize) {
    let p = Params { n: n as u32, x_off: x.off as u32, slot: 0, y_off: y.off as u32 };
    g.dispatch(enc, &ADD, &[x.buf, y.buf], &p, groups_1d(n, 256));
}

/// flags[slot] = 1 when x holds a NaN or an infinity.
pub fn finite_flags(g: &Gpu, enc: &mut Encoder, flags: &Buf, slot: usize, x: &Buf) {
    let p = Params { n: x.len as u32, x_off: 0, slot: slot as u32, y_off: 0 };
    g.dispatch(enc, &FINITE, &[x, flags], &p, groups_1d(x.len, 256));
}

