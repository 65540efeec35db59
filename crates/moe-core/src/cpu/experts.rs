//! Dropless experts: tokens sorted by expert (counting sort), gathered into one contiguous block per
//! expert, SwiGLU expert MLPs run as grouped GEMMs (compute ∝ K, not E), and the weighted combine.
//! Sorted position `p` holds the pair (token t, slot k) = (rows[p] / K, rows[p] % K).

use super::matmul::{matmul_backward, matmul_forward};
use crate::config::Precision;
use crate::layout::ExpertParams;
use rayon::prelude::*;

/// Counting sort of the T*K (token, slot) pairs by expert, stable in token order.
/// offsets (E + 1): expert e owns sorted positions offsets[e]..offsets[e+1];
/// rows (T*K): sorted position -> t*K + k;  pos (T*K): t*K + k -> sorted position.
/// No backward: a permutation of indices.
pub fn permute_forward(offsets: &mut [usize], rows: &mut [u32], pos: &mut [u32], idx: &[u32], e: usize) {
    offsets.fill(0);
    for &i in idx {
        offsets[i as usize + 1] += 1;
    }
    for i in 0..e {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets[..e].to_vec();
    for (tk, &i) in idx.iter().enumerate() {
        let p = next[i as usize];
        next[i as usize] += 1;
        rows[p] = tk as u32;
        pos[tk] = p as u32;
    }
}

/// xs (T*K, C) = x (T, C) gathered in sorted order: xs[p] = x[rows[p] / K].
pub fn gather_forward(xs: &mut [f32], x: &[f32], rows: &[u32], c: usize, k: usize) {
    xs.par_chunks_mut(c).zip(rows.par_iter()).for_each(|(dst, &r)| {
        dst.copy_from_slice(&x[(r as usize / k) * c..][..c]);
    });
}

/// dx (T, C) += sum over the K sorted copies of each token of dxs (T*K, C).
pub fn gather_backward(dx: &mut [f32], dxs: &[f32], pos: &[u32], c: usize, k: usize) {
    dx.par_chunks_mut(c).enumerate().for_each(|(t, d)| {
        for &p in &pos[t * k..][..k] {
            d.iter_mut().zip(&dxs[p as usize * c..][..c]).for_each(|(a, b)| *a += b);
        }
    });
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// h = silu(g) * u elementwise, silu(g) = g * sigmoid(g). Overwrites h; all of length N.
pub fn swiglu_forward(h: &mut [f32], g: &[f32], u: &[f32]) {
    h.par_iter_mut().zip(g.par_iter().zip(u.par_iter())).for_each(|(h, (&g, &u))| *h = g * sigmoid(g) * u);
}

/// Overwrites dg and du from dh: du = dh * silu(g); dg = dh * u * sigmoid(g) * (1 + g (1 - sigmoid(g))).
pub fn swiglu_backward(dg: &mut [f32], du: &mut [f32], dh: &[f32], g: &[f32], u: &[f32]) {
    dg.par_iter_mut().zip(du.par_iter_mut()).zip(dh.par_iter().zip(g.par_iter().zip(u.par_iter()))).for_each(
        |((dg, du), (&dh, (&g, &u)))| {
            let sg = sigmoid(g);
            *du = dh * g * sg;
            *dg = dh * u * sg * (1.0 + g * (1.0 - sg));
        },
    );
}

/// Splits `buf` into the row blocks of the experts: block e holds rows offsets[e]..offsets[e+1] of
/// `width` values each.
fn expert_rows<'a>(mut buf: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    offsets
        .windows(2)
        .map(|r| {
            let (block, rest) = std::mem::take(&mut buf).split_at_mut((r[1] - r[0]) * width);
            buf = rest;
            block
        })
        .collect()
}

/// Grouped SwiGLU experts over the sorted rows. For expert e and its rows R_e = offsets[e]..offsets[e+1]:
///   g = xs[R_e] · gate_proj_e^T,  u = xs[R_e] · up_proj_e^T   (n_e, F)
///   h = silu(g) * u,              ys[R_e] = h · down_proj_e^T (n_e, C)
/// Overwrites g, u, h (T*K, F) and ys (T*K, C). Experts with no rows are skipped. The experts run
/// in parallel (fine-grained experts have few rows each: a GEMM per expert spread over the threads
/// spends more on synchronisation than on arithmetic).
/// wt: gate_proj, up_proj (E, F, C); down_proj (E, C, F).
#[allow(clippy::too_many_arguments)]
pub fn experts_forward(
    g: &mut [f32],
    u: &mut [f32],
    h: &mut [f32],
    ys: &mut [f32],
    xs: &[f32],
    wt: &ExpertParams<&[f32]>,
    offsets: &[usize],
    c: usize,
    f: usize,
    p: Precision,
) {
    let blocks: Vec<_> = expert_rows(g, offsets, f).into_iter().zip(expert_rows(u, offsets, f)).zip(expert_rows(h, offsets, f)).zip(expert_rows(ys, offsets, c)).collect();
    blocks.into_par_iter().enumerate().for_each(|(e, (((ge, ue), he), ye))| {
        let (lo, n) = (offsets[e], offsets[e + 1] - offsets[e]);
        if n == 0 {
            return;
        }
        let x = &xs[lo * c..][..n * c];
        matmul_forward(ge, x, &wt.gate_proj[e * f * c..][..f * c], n, c, f, p);
        matmul_forward(ue, x, &wt.up_proj[e * f * c..][..f * c], n, c, f, p);
        swiglu_forward(he, ge, ue);
        matmul_forward(ye, he, &wt.down_proj[e * c * f..][..c * f], n, f, c, p);
    });
}

/// Backward of `experts_forward`. Overwrites dxs (T*K, C) and the scratch dh, dg, du (T*K, F);
/// accumulates into the expert weight gradients. dys (T*K, C) is the gradient of ys. Parallel over
/// experts like the forward.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward(
    dxs: &mut [f32],
    grads: &mut ExpertParams<&mut [f32]>,
    dh: &mut [f32],
    dg: &mut [f32],
    du: &mut [f32],
    dys: &[f32],
    xs: &[f32],
    g: &[f32],
    u: &[f32],
    h: &[f32],
    wt: &ExpertParams<&[f32]>,
    offsets: &[usize],
    c: usize,
    f: usize,
    p: Precision,
) {
    let acts: Vec<_> = expert_rows(dxs, offsets, c).into_iter().zip(expert_rows(dh, offsets, f)).zip(expert_rows(dg, offsets, f)).zip(expert_rows(du, offsets, f)).collect();
    let weights: Vec<_> = grads.gate_proj.chunks_mut(f * c).zip(grads.up_proj.chunks_mut(f * c)).zip(grads.down_proj.chunks_mut(c * f)).collect();
    acts.into_par_iter().zip(weights).enumerate().for_each(|(e, ((((dxe, dhe), dge), due), ((dwg, dwu), dwd)))| {
        let (lo, n) = (offsets[e], offsets[e + 1] - offsets[e]);
        if n == 0 {
            return;
        }
        let (rows_f, rows_c) = (lo * f..(lo + n) * f, lo * c..(lo + n) * c);
        let (wg, wd) = (e * f * c..(e + 1) * f * c, e * c * f..(e + 1) * c * f);
        dxe.fill(0.0);
        dhe.fill(0.0);
        matmul_backward(dhe, dwd, &dys[rows_c.clone()], &h[rows_f.clone()], &wt.down_proj[wd], n, f, c, p);
        swiglu_backward(dge, due, dhe, &g[rows_f.clone()], &u[rows_f]);
        matmul_backward(dxe, dwg, dge, &xs[rows_c.clone()], &wt.gate_proj[wg.clone()], n, c, f, p);
        matmul_backward(dxe, dwu, due, &xs[rows_c], &wt.up_proj[wg], n, c, f, p);
    });
}

/// out (T, C) = sum_k w[t,k] * ys[pos[t*K+k]]. Overwrites out.
pub fn combine_forward(out: &mut [f32], ys: &[f32], w: &[f32], pos: &[u32], c: usize, k: usize) {
    out.par_chunks_mut(c).enumerate().for_each(|(t, o)| {
        o.fill(0.0);
        for slot in 0..k {
            let wk = w[t * k + slot];
            let y = &ys[pos[t * k + slot] as usize * c..][..c];
            o.iter_mut().zip(y).for_each(|(o, &y)| *o += wk * y);
        }
    });
}

/// Overwrites dys (T*K, C): dys[p] = w[t,k] * dout[t] for the pair (t, k) = rows[p];
/// and dw (T, K) = <dout[t], ys[pos[t*K+k]]>.
#[allow(clippy::too_many_arguments)]
pub fn combine_backward(
    dys: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    ys: &[f32],
    w: &[f32],
    rows: &[u32],
    pos: &[u32],
    c: usize,
    k: usize,
) {
    dw.par_chunks_mut(k).enumerate().for_each(|(t, dw_t)| {
        let d = &dout[t * c..][..c];
        for slot in 0..k {
            let y = &ys[pos[t * k + slot] as usize * c..][..c];
            dw_t[slot] = super::dot(d, y);
        }
    });
    dys.par_chunks_mut(c).zip(rows.par_iter()).for_each(|(dy, &tk)| {
        let (wk, d) = (w[tk as usize], &dout[(tk as usize / k) * c..][..c]);
        dy.iter_mut().zip(d).for_each(|(a, &b)| *a = wk * b);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_sort_is_stable_and_inverse() {
        // T = 3, K = 2, E = 3.
        let idx = [2u32, 0, 0, 1, 2, 0];
        let (mut off, mut rows, mut pos) = ([0usize; 4], [0u32; 6], [0u32; 6]);
        permute_forward(&mut off, &mut rows, &mut pos, &idx, 3);
        assert_eq!(off, [0, 3, 4, 6]);
        assert_eq!(rows, [1, 2, 5, 3, 0, 4]);
        for tk in 0..6 {
            assert_eq!(rows[pos[tk] as usize] as usize, tk);
        }
    }
}
