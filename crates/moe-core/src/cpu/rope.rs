//! Rotary position embedding, rotate-half convention (Hugging Face Llama/Qwen):
//! for pair (j, j + D/2) of a head vector at position p, angle a = p * theta^(-2j/D):
//!   out_j = x_j cos a - x_{j+D/2} sin a;   out_{j+D/2} = x_{j+D/2} cos a + x_j sin a.

use rayon::prelude::*;

/// cos, sin tables (S, D/2) for positions 0..S, in f32 as transformers computes them.
pub fn rope_tables(s: usize, d: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let inv: Vec<f32> = (0..half).map(|j| (1.0 / theta.powf((2 * j) as f64 / d as f64)) as f32).collect();
    let mut cos = vec![0.0; s * half];
    let mut sin = vec![0.0; s * half];
    for p in 0..s {
        for j in 0..half {
            let a = p as f32 * inv[j];
            cos[p * half + j] = a.cos();
            sin[p * half + j] = a.sin();
        }
    }
    (cos, sin)
}

/// out (T, H, D) = rotate(x (T, H, D)) with token t at position pos0 + t % S. Overwrites out.
pub fn rope_forward(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], s: usize, h: usize, d: usize, pos0: usize) {
    let half = d / 2;
    out.par_chunks_mut(h * d).zip(x.par_chunks(h * d)).enumerate().for_each(|(t, (o, x))| {
        let p = pos0 + t % s;
        let (c, sn) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            for j in 0..half {
                o[j] = x[j] * c[j] - x[j + half] * sn[j];
                o[j + half] = x[j + half] * c[j] + x[j] * sn[j];
            }
        }
    });
}

/// The transpose rotation: dx (T, H, D) = R(-a) dout. Overwrites dx.
pub fn rope_backward(dx: &mut [f32], dout: &[f32], cos: &[f32], sin: &[f32], s: usize, h: usize, d: usize) {
    let half = d / 2;
    dx.par_chunks_mut(h * d).zip(dout.par_chunks(h * d)).enumerate().for_each(|(t, (dx, g))| {
        let p = t % s;
        let (c, sn) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for (dx, g) in dx.chunks_mut(d).zip(g.chunks(d)) {
            for j in 0..half {
                dx[j] = g[j] * c[j] + g[j + half] * sn[j];
                dx[j + half] = g[j + half] * c[j] - g[j] * sn[j];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dot, gradcheck, randn};

    #[test]
    fn rope_gradcheck_and_position_zero_is_identity() {
        let (s, h, d) = (3, 2, 4);
        let (cos, sin) = rope_tables(s, d, 10000.0);
        let (x, dout) = (randn(2 * s * h * d, 1), randn(2 * s * h * d, 2));
        let mut out = vec![0.0; x.len()];
        rope_forward(&mut out, &x, &cos, &sin, s, h, d, 0);
        assert_eq!(&out[..h * d], &x[..h * d]);
        let mut dx = vec![0.0; x.len()];
        rope_backward(&mut dx, &dout, &cos, &sin, s, h, d);
        let loss = |xp: &[f32]| {
            let mut o = vec![0.0; xp.len()];
            rope_forward(&mut o, xp, &cos, &sin, s, h, d, 0);
            dot(&o, &dout)
        };
        gradcheck("rope.x", loss, &x, &dx, 1e-2, 1e-4, 1e-3);
    }
}
