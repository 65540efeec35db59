//! Cross-entropy of next-token logits on the GPU in the convention of `cpu::crossentropy`, over
//! valid positions only. targets (T) and valid (T, 0 or 1) are u32 buffers. A model calls it on
//! chunks of rows (`row0`), so that logits never need a binding of T x V values.

use super::matmul::View;
use super::{groups_1d, word, Buf, Encoder, Gpu, Kernel};

const SRC: &str = include_str!("shaders/crossentropy.wgsl");
const FORWARD: Kernel = Kernel::checked(SRC, "crossentropy_forward");
const BACKWARD: Kernel = Kernel::checked(SRC, "crossentropy_backward");

/// crossentropy.wgsl's `Params`, one line per 16-byte row. out_off: the losses' offset, or the
/// dlogits'; scale (the backward's): f32 bits; row0: the first row's index in targets and valid.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32, v: u32, out_off: u32, logits_off: u32,
    scale: u32, row0: u32, _pad1: u32, _pad2: u32,
}

impl Params {
    /// T rows of V logits at logits' offset, from row row0 of targets and valid; the rest zero.
    fn new(t: usize, v: usize, logits: View, row0: usize) -> Self {
        Params { t: word(t), v: word(v), logits_off: word(logits.off), row0: word(row0), ..bytemuck::Zeroable::zeroed() }
    }
}

/// losses (T) = logsumexp(logits[t]) - logits[t, targets[row0 + t]] where valid[row0 + t] != 0,
/// else 0. logits (T, V); targets, valid (row0 + T) u32. Overwrites losses.
#[allow(clippy::too_many_arguments)]
pub fn crossentropy_forward(g: &Gpu, enc: &mut Encoder, losses: View, logits: View, targets: &Buf, valid: &Buf, row0: usize, t: usize, v: usize) {
    let p = Params { out_off: word(losses.off), ..Params::new(t, v, logits, row0) };
    g.dispatch(enc, &FORWARD, &[losses.buf, logits.buf, targets, valid], &p, groups_1d(t, 1));
}

/// dlogits (T, V) = scale * (softmax(logits[t]) - onehot(targets[row0 + t])) where valid[row0 + t],
/// else 0. Overwrites. logits (T, V); targets, valid (row0 + T) u32.
#[allow(clippy::too_many_arguments)]
pub fn crossentropy_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dlogits: View,
    logits: View,
    targets: &Buf,
    valid: &Buf,
    scale: f32,
    row0: usize,
    t: usize,
    v: usize,
) {
    let p = Params { out_off: word(dlogits.off), scale: scale.to_bits(), ..Params::new(t, v, logits, row0) };
    g.dispatch(enc, &BACKWARD, &[dlogits.buf, logits.buf, targets, valid], &p, groups_1d(t, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::crossentropy as cpu;
    use crate::gpu::tests::test_gpu;
    use crate::testutil::{assert_close, randn};

    #[test]
    fn crossentropy_matches_cpu() {
        let Some(g) = test_gpu("crossentropy_matches_cpu") else { return };
        // V straddles the 256-wide workgroup; one invalid row; targets at both ends of the row.
        let (t, v, scale) = (5, 301, 0.37);
        let logits: Vec<f32> = randn(t * v, 1).iter().map(|x| 3.0 * x).collect();
        let (targets, valid) = ([0u32, 300, 17, 5, 256], [1u8, 1, 0, 1, 1]);
        let mut losses = vec![0.0; t];
        cpu::crossentropy_forward(&mut losses, &logits, &targets, &valid, v);
        let mut dlogits = vec![0.0; t * v];
        cpu::crossentropy_backward(&mut dlogits, &logits, &targets, &valid, scale, v);

        // Outputs prefilled with garbage (both overwrite), every f32 tensor at an offset.
        let valid32: Vec<u32> = valid.iter().map(|&b| b as u32).collect();
        let glogits = g.upload(&[vec![7.0; 3], logits.clone()].concat()).unwrap();
        let (gtargets, gvalid) = (g.upload(&targets).unwrap(), g.upload(&valid32).unwrap());
        let (glosses, gdlogits) = (g.upload(&vec![9.0f32; t + 1]).unwrap(), g.upload(&vec![9.0f32; t * v + 2]).unwrap());
        let at = |buf, off| View { buf, off };
        let mut enc = g.encoder();
        crossentropy_forward(g, &mut enc, at(&glosses, 1), at(&glogits, 3), &gtargets, &gvalid, 0, t, v);
        crossentropy_backward(g, &mut enc, at(&gdlogits, 2), at(&glogits, 3), &gtargets, &gvalid, scale, 0, t, v);
        let res = g.finish(enc, &[&glosses, &gdlogits]).unwrap();
        let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(w).to_vec();
        assert_close("crossentropy losses", &f(&res[0])[1..], &losses, 1e-5, 1e-5);
        assert_close("crossentropy dlogits", &f(&res[1])[2..], &dlogits, 1e-6, 1e-5);
        assert_eq!(f(&res[0])[1 + 2], 0.0, "an invalid row has no loss");

        // By chunks of rows (2, 2, 1), as a model's LM head runs: the same values.
        let (glosses, gdlogits) = (g.upload(&vec![9.0f32; t + 1]).unwrap(), g.upload(&vec![9.0f32; t * v + 2]).unwrap());
        let mut enc = g.encoder();
        for (r0, rows) in [(0, 2), (2, 2), (4, 1)] {
            let logits_c = at(&glogits, 3 + r0 * v);
            crossentropy_forward(g, &mut enc, at(&glosses, 1 + r0), logits_c, &gtargets, &gvalid, r0, rows, v);
            crossentropy_backward(g, &mut enc, at(&gdlogits, 2 + r0 * v), logits_c, &gtargets, &gvalid, scale, r0, rows, v);
        }
        let res = g.finish(enc, &[&glosses, &gdlogits]).unwrap();
        assert_close("crossentropy losses (chunks)", &f(&res[0])[1..], &losses, 1e-5, 1e-5);
        assert_close("crossentropy dlogits (chunks)", &f(&res[1])[2..], &dlogits, 1e-6, 1e-5);
    }
}
