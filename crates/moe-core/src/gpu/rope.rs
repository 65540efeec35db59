//! Rotary position embedding on the GPU in the convention of `cpu::rope` (rotate-half). The cos and
//! sin tables are `cpu::rope::rope_tables`, uploaded once.

use super::matmul::View;
use super::{groups_1d, Encoder, Gpu, Kernel};

const SRC: &str = include_str!("shaders/rope.wgsl");
const FORWARD: Kernel = Kernel::checked(SRC, "rope_forward");
const BACKWARD: Kernel = Kernel::checked(SRC, "rope_backward");

/// rope.wgsl's `Params`, one line per 16-byte row: sizes, the first position, the views' offsets.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32, s: u32, h: u32, d: u32,
    pos0: u32, out_off: u32, x_off: u32, cos_off: u32,
    sin_off: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

/// One invocation per rotated pair: (T, H, D/2) of them. `dims` = (T, S, H, D, pos0).
fn rotate(g: &Gpu, enc: &mut Encoder, k: &Kernel, [out, x, cos, sin]: [View; 4], dims: [usize; 5]) {
    let [t, s, h, d, pos0] = dims;
    let p = Params {
        t: t as u32,
        s: s as u32,
        h: h as u32,
        d: d as u32,
        pos0: pos0 as u32,
        out_off: out.off as u32,
        x_off: x.off as u32,
        cos_off: cos.off as u32,
        sin_off: sin.off as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    g.dispatch(enc, k, &[out.buf, x.buf, cos.buf, sin.buf], &p, groups_1d(t * h * (d / 2), 256));
}

/// out (T, H, D) = rotate(x (T, H, D)) with token t at position pos0 + t % S; cos, sin (S', D/2)
/// with S' >= pos0 + S. Overwrites out.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward(
    g: &Gpu,
    enc: &mut Encoder,
    out: View,
    x: View,
    cos: View,
    sin: View,
    t: usize,
    s: usize,
    h: usize,
    d: usize,
    pos0: usize,
) {
    rotate(g, enc, &FORWARD, [out, x, cos, sin], [t, s, h, d, pos0]);
}

/// The transpose rotation: dx (T, H, D) = R(-a) dout (T, H, D), token t at position t % S; cos, sin
/// (S', D/2) with S' >= S. Overwrites dx.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dx: View,
    dout: View,
    cos: View,
    sin: View,
    t: usize,
    s: usize,
    h: usize,
    d: usize,
) {
    rotate(g, enc, &BACKWARD, [dx, dout, cos, sin], [t, s, h, d, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::rope as cpu;
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};

    #[test]
    fn rope_matches_cpu() {
        let Some(g) = test_gpu("rope_matches_cpu") else { return };
        // T not a multiple of S, T * H * D/2 = 231 not a multiple of 256; tables cover pos0 + S.
        let (t, s, h, d, pos0) = (11, 4, 3, 14, 2);
        let (cos, sin) = cpu::rope_tables(s + pos0, d, 10000.0);
        let (x, dout) = (randn(t * h * d, 1), randn(t * h * d, 2));
        let (mut out, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        cpu::rope_forward(&mut out, &x, &cos, &sin, s, h, d, pos0);
        cpu::rope_backward(&mut dx, &dout, &cos, &sin, s, h, d);

        // Every tensor a view at an offset (tables, as one buffer, at two offsets).
        let pad = |v: &[f32], k| [vec![7.0; k], v.to_vec()].concat();
        let tables = g.upload(&[vec![7.0; 1], cos.clone(), sin.clone()].concat()).unwrap();
        let (gx, gdout) = (g.upload(&pad(&x, 3)).unwrap(), g.upload(&pad(&dout, 5)).unwrap());
        let (gout, gdx) = (g.upload(&vec![9.0f32; x.len() + 2]).unwrap(), g.upload(&vec![9.0f32; x.len() + 4]).unwrap());
        let at = |buf, off| View { buf, off };
        let (gcos, gsin) = (at(&tables, 1), at(&tables, 1 + cos.len()));
        let mut enc = g.encoder();
        rope_forward(g, &mut enc, at(&gout, 2), at(&gx, 3), gcos, gsin, t, s, h, d, pos0);
        rope_backward(g, &mut enc, at(&gdx, 4), at(&gdout, 5), gcos, gsin, t, s, h, d);
        let res = g.finish(enc, &[&gout, &gdx]).unwrap();
        let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(w).to_vec();
        assert_close("rope out", &f(&res[0])[2..], &out, 1e-6, 1e-6);
        assert_close("rope dx", &f(&res[1])[4..], &dx, 1e-6, 1e-6);
    }
}
