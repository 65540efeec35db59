//! RMSNorm on the GPU in the convention of `cpu::rmsnorm`: out = x * rstd * w over rows of C.

use super::matmul::View;
use super::{groups_1d, Encoder, Gpu, Kernel};

const SRC: &str = include_str!("shaders/rmsnorm.wgsl");
const FORWARD: Kernel = Kernel::checked(SRC, "rmsnorm_forward");
const BACKWARD_DX: Kernel = Kernel::checked(SRC, "rmsnorm_backward_dx");
const BACKWARD_DW: Kernel = Kernel::checked(SRC, "rmsnorm_backward_dw");

// rmsnorm.wgsl's two uniforms, one line per 16-byte row: N rows of C, the views' offsets.

/// The forward's; eps: f32 bits.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FwdParams {
    n: u32, c: u32, eps: u32, out_off: u32,
    rstd_off: u32, x_off: u32, w_off: u32, _pad: u32,
}

/// Both backward kernels'; acc: whether dx accumulates (1) or is overwritten (0).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdParams {
    n: u32, c: u32, dx_off: u32, dw_off: u32,
    dout_off: u32, x_off: u32, w_off: u32, rstd_off: u32,
    acc: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

/// out (N, C) = norm(x (N, C)) * w (C); rstd (N) is saved for the backward. Overwrites both.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(g: &Gpu, enc: &mut Encoder, out: View, rstd: View, x: View, w: View, n: usize, c: usize, eps: f32) {
    let p = FwdParams {
        n: n as u32,
        c: c as u32,
        eps: eps.to_bits(),
        out_off: out.off as u32,
        rstd_off: rstd.off as u32,
        x_off: x.off as u32,
        w_off: w.off as u32,
        _pad: 0,
    };
    g.dispatch(enc, &FORWARD, &[out.buf, rstd.buf, x.buf, w.buf], &p, groups_1d(n, 1));
}

/// With g = dout * w:  dx += rstd * g - x * rstd³ * <g, x> / C;  dw += sum_rows dout * x * rstd.
/// dx, dout, x (N, C); dw, w (C); rstd (N) from the forward. Both accumulate. dw is a fixed-order
/// tree sum per channel (deterministic, not the CPU's order).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(g: &Gpu, enc: &mut Encoder, dx: View, dw: View, dout: View, x: View, w: View, rstd: View, n: usize, c: usize) {
    backward(g, enc, dx, dw, dout, x, w, rstd, n, c, true);
}

/// `rmsnorm_backward` that overwrites dx (N, C) instead of adding to it (dw still accumulates): the
/// first writer of a gradient needs no clear before it.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward_into(g: &Gpu, enc: &mut Encoder, dx: View, dw: View, dout: View, x: View, w: View, rstd: View, n: usize, c: usize) {
    backward(g, enc, dx, dw, dout, x, w, rstd, n, c, false);
}

#[allow(clippy::too_many_arguments)]
fn backward(g: &Gpu, enc: &mut Encoder, dx: View, dw: View, dout: View, x: View, w: View, rstd: View, n: usize, c: usize, acc: bool) {
    let p = BwdParams {
        n: n as u32,
        c: c as u32,
        dx_off: dx.off as u32,
        dw_off: dw.off as u32,
        dout_off: dout.off as u32,
        x_off: x.off as u32,
        w_off: w.off as u32,
        rstd_off: rstd.off as u32,
        acc: acc.into(),
        ..bytemuck::Zeroable::zeroed()
    };
    g.dispatch(enc, &BACKWARD_DX, &[dx.buf, dout.buf, x.buf, w.buf, rstd.buf], &p, groups_1d(n, 1));
    g.dispatch(enc, &BACKWARD_DW, &[dw.buf, dout.buf, x.buf, rstd.buf], &p, groups_1d(c, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::rmsnorm as cpu;
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};

    #[test]
    fn rmsnorm_matches_cpu() {
        let Some(g) = test_gpu("rmsnorm_matches_cpu") else { return };
        // C straddles the 64-wide row workgroups, N the 256-wide column workgroups.
        for (n, c) in [(300, 70), (5, 7)] {
            let eps = 1e-6;
            let (x, w, dout) = (randn(n * c, 1), randn(c, 2), randn(n * c, 3));
            let (dx0, dw0) = (randn(n * c, 4), randn(c, 5));
            let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
            cpu::rmsnorm_forward(&mut out, &mut rstd, &x, &w, c, eps);
            let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
            cpu::rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd, c);

            // w and dw are views at an offset, as in the flat parameter and gradient buffers.
            let pad = |v: &[f32]| [vec![7.0; 3], v.to_vec()].concat();
            let (gx, gw, gdout) = (g.upload(&x).unwrap(), g.upload(&pad(&w)).unwrap(), g.upload(&dout).unwrap());
            let (gout, grstd) = (g.upload(&vec![9.0f32; n * c]).unwrap(), g.upload(&vec![9.0f32; n + 2]).unwrap());
            let (gdx, gdw) = (g.upload(&dx0).unwrap(), g.upload(&pad(&dw0)).unwrap());
            let at = |buf, off| View { buf, off };
            let mut enc = g.encoder();
            rmsnorm_forward(g, &mut enc, (&gout).into(), at(&grstd, 2), (&gx).into(), at(&gw, 3), n, c, eps);
            rmsnorm_backward(g, &mut enc, (&gdx).into(), at(&gdw, 3), (&gdout).into(), (&gx).into(), at(&gw, 3), at(&grstd, 2), n, c);
            let res = g.finish(enc, &[&gout, &grstd, &gdx, &gdw]).unwrap();
            let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(w).to_vec();
            assert_close("rmsnorm out", &f(&res[0]), &out, 1e-5, 1e-5);
            assert_close("rmsnorm rstd", &f(&res[1])[2..], &rstd, 1e-5, 1e-5);
            assert_close("rmsnorm dx", &f(&res[2]), &dx, 1e-5, 1e-5);
            assert_close("rmsnorm dw", &f(&res[3])[3..], &dw, 1e-4, 1e-5);
            assert_eq!(&f(&res[3])[..3], &[7.0; 3], "dw outside the view is untouched");

            // Overwriting dx: the CPU's sum from zero, whatever dx held.
            let mut dx_new = vec![0.0; n * c];
            cpu::rmsnorm_backward(&mut dx_new, &mut dw, &dout, &x, &w, &rstd, c);
            let mut enc = g.encoder();
            rmsnorm_backward_into(g, &mut enc, (&gdx).into(), at(&gdw, 3), (&gdout).into(), (&gx).into(), at(&gw, 3), at(&grstd, 2), n, c);
            let res = g.finish(enc, &[&gdx, &gdw]).unwrap();
            assert_close("rmsnorm dx (overwritten)", &f(&res[0]), &dx_new, 1e-5, 1e-5);
            assert_close("rmsnorm dw (second sum)", &f(&res[1])[3..], &dw, 1e-4, 1e-5);
        }
    }
}
