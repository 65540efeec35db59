//! RMSNorm (Qwen3): out = x * rstd * w, rstd = 1 / sqrt(mean(x²) + eps), over the last dimension C.
//! Used for the layer norms (rows = tokens) and the per-head q/k norms (rows = tokens x heads).

use rayon::prelude::*;

/// out (N, C) = norm(x (N, C)) * w (C); rstd (N) is saved for the backward. Overwrites both.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    out.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(x.par_chunks(c)).for_each(|((o, r), x)| {
        let ms: f32 = x.iter().map(|v| v * v).sum::<f32>() / c as f32;
        *r = 1.0 / (ms + eps).sqrt();
        o.iter_mut().zip(x).zip(w).for_each(|((o, &x), &w)| *o = x * *r * w);
    });
}

/// With g = dout * w:  dx += rstd * g - x * rstd³ * <g, x> / C;  dw += sum_rows dout * x * rstd.
/// Both accumulate. dw is reduced over fixed row blocks in a fixed order (deterministic).
pub fn rmsnorm_backward(dx: &mut [f32], dw: &mut [f32], dout: &[f32], x: &[f32], w: &[f32], rstd: &[f32], c: usize) {
    dx.par_chunks_mut(c).zip(dout.par_chunks(c)).zip(x.par_chunks(c).zip(rstd.par_iter())).for_each(|((dx, d), (x, &r))| {
        let gx: f32 = d.iter().zip(w).zip(x).map(|((d, w), x)| d * w * x).sum::<f32>() / c as f32;
        for i in 0..c {
            dx[i] += r * d[i] * w[i] - x[i] * r * r * r * gx;
        }
    });
    super::sum_row_blocks(dw, x.len() / c, |row, acc| {
        let (d, x, r) = (&dout[row * c..][..c], &x[row * c..][..c], rstd[row]);
        acc.iter_mut().zip(d).zip(x).for_each(|((a, d), x)| *a += d * x * r);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dot, gradcheck, randn};

    #[test]
    fn rmsnorm_gradcheck() {
        let (n, c, eps) = (5, 7, 1e-6);
        let (x, w, dout) = (randn(n * c, 1), randn(c, 2), randn(n * c, 3));
        let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, c, eps);
        let expect: f32 = 1.0 / (x[..c].iter().map(|v| v * v).sum::<f32>() / c as f32 + eps).sqrt();
        assert!((rstd[0] - expect).abs() < 1e-6);
        let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
        rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd, c);
        let loss = |x: &[f32], w: &[f32]| {
            let (mut o, mut r) = (vec![0.0; n * c], vec![0.0; n]);
            rmsnorm_forward(&mut o, &mut r, x, w, c, eps);
            dot(&o, &dout)
        };
        gradcheck("rmsnorm.x", |xp| loss(xp, &w), &x, &dx, 1e-2, 1e-3, 1e-2);
        gradcheck("rmsnorm.w", |wp| loss(&x, wp), &w, &dw, 1e-2, 1e-3, 1e-2);
    }
}
