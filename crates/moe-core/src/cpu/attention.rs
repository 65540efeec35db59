//! Causal grouped-query attention: H query heads share KV key/value heads (query head h reads
//! kv head h / (H / KV)); scores scaled by 1/sqrt(D), softmax over positions j <= i — over the last
//! `window` of them (i - window < j <= i) in layers with a sliding window (Mixtral, Qwen2-MoE).
//! Layouts: q, out (T, H, D); k, v (T, KV, D); probs (B, H, S, S) with zeros above the diagonal.

use super::dot;
use super::matmul::gemm_strided;
use rayon::prelude::*;

/// The first key position query i sees: 0, or i + 1 - window with a sliding window.
#[inline]
pub fn first_key(i: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (i + 1).saturating_sub(w))
}

/// Overwrites out (T, H*D) and probs (B, H, S, S). T = B * S. Parallel over sequences; per head
/// two GEMMs: scores = scale q k^T (the masked entries are computed, then zeroed: cheaper in a
/// GEMM than skipping them in scalar loops), and out = P v. window: see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(out: &mut [f32], probs: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: usize, h: usize, kv: usize, d: usize, window: Option<usize>) {
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kv;
    out.par_chunks_mut(s * h * d).zip(probs.par_chunks_mut(h * s * s)).enumerate().for_each(|(b, (out, probs))| {
        let (q, k, v) = (&q[b * s * h * d..][..s * h * d], &k[b * s * kv * d..][..s * kv * d], &v[b * s * kv * d..][..s * kv * d]);
        for hh in 0..h {
            let g = hh / group;
            let p = &mut probs[hh * s * s..][..s * s];
            // q_h (S, D) with row stride H*D; k_g^T (D, S): element (e, j) = k[j, g, e].
            gemm_strided(p, s, false, &q[hh * d..], (h * d, 1), &k[g * d..], (1, kv * d), s, s, d, scale);
            for (i, row) in p.chunks_mut(s).enumerate() {
                let lo = first_key(i, window);
                let max = row[lo..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in &mut row[lo..=i] {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                row[lo..=i].iter_mut().for_each(|x| *x /= sum);
                row[..lo].fill(0.0);
                row[i + 1..].fill(0.0);
            }
            gemm_strided(&mut out[hh * d..], h * d, false, p, (s, 1), &v[g * d..], (kv * d, 1), s, d, s, 1.0);
        }
    });
}

/// Overwrites dq (T, H*D), dk, dv (T, KV*D) from dout (T, H*D) through the saved probs, per head:
///   dP = dO v^T;  dS = P (dP - rowsum(P dP));  dq = scale dS k;  dk += scale dS^T q;  dv += P^T dO
/// (dk, dv summed over the query heads of their group, in head order). window: as the forward's.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    probs: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: usize,
    h: usize,
    kv: usize,
    d: usize,
    window: Option<usize>,
) {
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kv;
    dq.par_chunks_mut(s * h * d)
        .zip(dk.par_chunks_mut(s * kv * d).zip(dv.par_chunks_mut(s * kv * d)))
        .enumerate()
        .for_each(|(b, (dq, (dk, dv)))| {
            dk.fill(0.0);
            dv.fill(0.0);
            let (q, k, v) = (&q[b * s * h * d..][..s * h * d], &k[b * s * kv * d..][..s * kv * d], &v[b * s * kv * d..][..s * kv * d]);
            let (dout, probs) = (&dout[b * s * h * d..][..s * h * d], &probs[b * h * s * s..][..h * s * s]);
            let mut ds = vec![0.0f32; s * s];
            for hh in 0..h {
                let g = hh / group;
                let p = &probs[hh * s * s..][..s * s];
                gemm_strided(&mut ds, s, false, &dout[hh * d..], (h * d, 1), &v[g * d..], (1, kv * d), s, s, d, 1.0);
                for (i, (dsr, pr)) in ds.chunks_mut(s).zip(p.chunks(s)).enumerate() {
                    let lo = first_key(i, window);
                    let sum: f32 = dsr[lo..=i].iter().zip(&pr[lo..=i]).map(|(a, b)| a * b).sum();
                    dsr[lo..=i].iter_mut().zip(&pr[lo..=i]).for_each(|(x, &pij)| *x = pij * (*x - sum));
                    dsr[..lo].fill(0.0);
                    dsr[i + 1..].fill(0.0);
                }
                gemm_strided(&mut dq[hh * d..], h * d, false, &ds, (s, 1), &k[g * d..], (kv * d, 1), s, d, s, scale);
                gemm_strided(&mut dk[g * d..], kv * d, true, &ds, (1, s), &q[hh * d..], (h * d, 1), s, d, s, scale);
                gemm_strided(&mut dv[g * d..], kv * d, true, p, (1, s), &dout[hh * d..], (h * d, 1), s, d, s, 1.0);
            }
        });
}

/// One new query per head against a key/value cache of n positions (generation; inference only,
/// no backward). out (H*D); q (H*D); kcache, vcache (n, KV*D); window: see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(out: &mut [f32], q: &[f32], kcache: &[f32], vcache: &[f32], n: usize, h: usize, kv: usize, d: usize, window: Option<usize>) {
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kv;
    let lo = first_key(n - 1, window);
    let mut p = vec![0.0f32; n];
    for hh in 0..h {
        let g = hh / group;
        let qh = &q[hh * d..][..d];
        let mut max = f32::NEG_INFINITY;
        for j in lo..n {
            p[j] = scale * dot(qh, &kcache[(j * kv + g) * d..][..d]);
            max = max.max(p[j]);
        }
        let mut sum = 0.0;
        p[lo..].iter_mut().for_each(|x| {
            *x = (*x - max).exp();
            sum += *x;
        });
        let o = &mut out[hh * d..][..d];
        o.fill(0.0);
        for j in lo..n {
            let w = p[j] / sum;
            o.iter_mut().zip(&vcache[(j * kv + g) * d..][..d]).for_each(|(o, v)| *o += w * v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, dot as dot64, gradcheck, randn};

    const B: usize = 2;
    const S: usize = 4;
    const H: usize = 4;
    const KV: usize = 2;
    const D: usize = 3;

    fn fwd(q: &[f32], k: &[f32], v: &[f32], window: Option<usize>) -> (Vec<f32>, Vec<f32>) {
        let (mut out, mut probs) = (vec![0.0; B * S * H * D], vec![0.0; B * H * S * S]);
        attention_forward(&mut out, &mut probs, q, k, v, S, H, KV, D, window);
        (out, probs)
    }

    #[test]
    fn attention_gradcheck() {
        for window in [None, Some(2)] {
            let (q, k, v) = (randn(B * S * H * D, 1), randn(B * S * KV * D, 2), randn(B * S * KV * D, 3));
            let dout = randn(B * S * H * D, 4);
            let (_, probs) = fwd(&q, &k, &v, window);
            let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
            attention_backward(&mut dq, &mut dk, &mut dv, &dout, &probs, &q, &k, &v, S, H, KV, D, window);
            gradcheck("attention.q", |x| dot64(&fwd(x, &k, &v, window).0, &dout), &q, &dq, 1e-2, 1e-3, 1e-2);
            gradcheck("attention.k", |x| dot64(&fwd(&q, x, &v, window).0, &dout), &k, &dk, 1e-2, 1e-3, 1e-2);
            gradcheck("attention.v", |x| dot64(&fwd(&q, &k, x, window).0, &dout), &v, &dv, 1e-2, 1e-3, 1e-2);
        }
    }

    #[test]
    fn attention_is_causal_and_decode_matches_the_last_row() {
        for window in [None, Some(2)] {
            let (q, k, mut v) = (randn(B * S * H * D, 1), randn(B * S * KV * D, 2), randn(B * S * KV * D, 3));
            let (out, _) = fwd(&q, &k, &v, window);
            // Changing the last position's value cannot change earlier outputs.
            v[(S - 1) * KV * D] += 5.0;
            let (out2, _) = fwd(&q, &k, &v, window);
            assert_eq!(&out[..(S - 1) * H * D], &out2[..(S - 1) * H * D]);
            // Decoding the last query of sequence 0 against its S cached keys gives the same row.
            let mut dec = vec![0.0; H * D];
            attention_decode(&mut dec, &q[(S - 1) * H * D..][..H * D], &k[..S * KV * D], &v[..S * KV * D], S, H, KV, D, window);
            assert_close("decode", &dec, &out2[(S - 1) * H * D..][..H * D], 1e-6, 1e-5);
        }
    }

    #[test]
    fn a_sliding_window_hides_the_keys_before_it() {
        let (q, k, mut v) = (randn(B * S * H * D, 1), randn(B * S * KV * D, 2), randn(B * S * KV * D, 3));
        let (out, probs) = fwd(&q, &k, &v, Some(2));
        // Position 3 sees positions 2 and 3 only: changing position 0's value changes nothing there.
        v[0] += 5.0;
        let (out2, _) = fwd(&q, &k, &v, Some(2));
        assert_eq!(&out[3 * H * D..4 * H * D], &out2[3 * H * D..4 * H * D]);
        assert_eq!(probs[3 * S], 0.0);
        assert!(probs[3 * S + 2] > 0.0);
    }
}
