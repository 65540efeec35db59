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

/// Query rows per tile: a tile of rows reads only the keys its rows can see (causal, and the
/// window), so the GEMMs skip the masked upper triangle of S x S at the cost of one partial tile
/// per row block.
const ROWS: usize = 128;

/// The keys tile [i0, i1) reads: from the first key row i0 sees to i1 (exclusive).
fn key_range(i0: usize, i1: usize, window: Option<usize>) -> (usize, usize) {
    (first_key(i0, window), i1)
}

/// A (T, N*D) tensor is N heads of D per token, so one head's (S, D) of one sequence is strided:
/// the heads are computed into contiguous (S, D) blocks in parallel, then copied into place here.
/// `parts` yields the blocks in (sequence, head) order.
fn scatter_heads<'a>(out: &mut [f32], parts: impl Iterator<Item = &'a [f32]>, s: usize, n: usize, d: usize) {
    for (i, part) in parts.enumerate() {
        let (b, head) = (i / n, i % n);
        for (r, row) in part.chunks(d).enumerate() {
            out[((b * s + r) * n + head) * d..][..d].copy_from_slice(row);
        }
    }
}

/// Overwrites out (T, H*D) and probs (B, H, S, S). T = B * S. Parallel over (sequence, head); per
/// tile of ROWS queries two GEMMs over the visible keys only: scores = scale q k^T, softmax per
/// row (entries outside the row's keys are zero), out = P v. window: see the module doc.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(out: &mut [f32], probs: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: usize, h: usize, kv: usize, d: usize, window: Option<usize>) {
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kv;
    let parts: Vec<Vec<f32>> = probs
        .par_chunks_mut(s * s)
        .enumerate()
        .map(|(i, p)| {
            let (b, hh) = (i / h, i % h);
            let g = hh / group;
            let (q, k, v) = (&q[b * s * h * d..][..s * h * d], &k[b * s * kv * d..][..s * kv * d], &v[b * s * kv * d..][..s * kv * d]);
            let mut o = vec![0.0f32; s * d];
            for i0 in (0..s).step_by(ROWS) {
                let i1 = (i0 + ROWS).min(s);
                let (k0, k1) = key_range(i0, i1, window);
                // scores (rows i0..i1, keys k0..k1): q_h rows with stride H*D; k_g^T (D, keys)
                gemm_strided(&mut p[i0 * s + k0..], s, false, &q[i0 * h * d + hh * d..], (h * d, 1), &k[k0 * kv * d + g * d..], (1, kv * d), i1 - i0, k1 - k0, d, scale);
                for (i, row) in (i0..i1).zip(p[i0 * s..i1 * s].chunks_mut(s)) {
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
                gemm_strided(&mut o[i0 * d..], d, false, &p[i0 * s + k0..], (s, 1), &v[k0 * kv * d + g * d..], (kv * d, 1), i1 - i0, d, k1 - k0, 1.0);
            }
            o
        })
        .collect();
    scatter_heads(out, parts.iter().map(Vec::as_slice), s, h, d);
}

/// Overwrites dq (T, H*D), dk, dv (T, KV*D) from dout (T, H*D) through the saved probs, per head
/// and tile of ROWS queries, over the visible keys only:
///   dP = dO v^T;  dS = P (dP - rowsum(P dP));  dq = scale dS k;  dk += scale dS^T q;  dv += P^T dO
/// Parallel over (sequence, key/value head): dk, dv summed over the query heads of their group in
/// head order and over the tiles in order. window: as the forward's.
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
    let nb = dq.len() / (s * h * d);
    // Per (sequence, kv head): dq of its query heads (group, S, D), then its dk and dv (S, D).
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..nb * kv)
        .into_par_iter()
        .map(|i| {
            let (b, g) = (i / kv, i % kv);
            let (q, k, v) = (&q[b * s * h * d..][..s * h * d], &k[b * s * kv * d..][..s * kv * d], &v[b * s * kv * d..][..s * kv * d]);
            let (dout, probs) = (&dout[b * s * h * d..][..s * h * d], &probs[b * h * s * s..][..h * s * s]);
            let (mut dqg, mut dkg, mut dvg) = (vec![0.0f32; group * s * d], vec![0.0f32; s * d], vec![0.0f32; s * d]);
            let mut ds = vec![0.0f32; ROWS * s];
            for (j, hh) in (g * group..(g + 1) * group).enumerate() {
                let p = &probs[hh * s * s..][..s * s];
                for i0 in (0..s).step_by(ROWS) {
                    let i1 = (i0 + ROWS).min(s);
                    let (k0, k1) = key_range(i0, i1, window);
                    let (m, n) = (i1 - i0, k1 - k0);
                    gemm_strided(&mut ds[k0..], s, false, &dout[i0 * h * d + hh * d..], (h * d, 1), &v[k0 * kv * d + g * d..], (1, kv * d), m, n, d, 1.0);
                    for (i, (dsr, pr)) in (i0..i1).zip(ds.chunks_mut(s).zip(p[i0 * s..i1 * s].chunks(s))) {
                        let lo = first_key(i, window);
                        let sum: f32 = dsr[lo..=i].iter().zip(&pr[lo..=i]).map(|(a, b)| a * b).sum();
                        dsr[lo..=i].iter_mut().zip(&pr[lo..=i]).for_each(|(x, &pij)| *x = pij * (*x - sum));
                        dsr[k0..lo].fill(0.0);
                        dsr[i + 1..k1].fill(0.0);
                    }
                    gemm_strided(&mut dqg[(j * s + i0) * d..], d, false, &ds[k0..], (s, 1), &k[k0 * kv * d + g * d..], (kv * d, 1), m, d, n, scale);
                    gemm_strided(&mut dkg[k0 * d..], d, true, &ds[k0..], (1, s), &q[i0 * h * d + hh * d..], (h * d, 1), n, d, m, scale);
                    gemm_strided(&mut dvg[k0 * d..], d, true, &p[i0 * s + k0..], (1, s), &dout[i0 * h * d + hh * d..], (h * d, 1), n, d, m, 1.0);
                }
            }
            (dqg, dkg, dvg)
        })
        .collect();
    // dq blocks come per (sequence, kv head) in head order within the group: (sequence, head) order.
    scatter_heads(dq, parts.iter().flat_map(|p| p.0.chunks(s * d)), s, h, d);
    scatter_heads(dk, parts.iter().map(|p| p.1.as_slice()), s, kv, d);
    scatter_heads(dv, parts.iter().map(|p| p.2.as_slice()), s, kv, d);
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

    /// The specification: softmax(scale q k^T) v per (sequence, head, query) in plain loops with
    /// f64 sums, over the keys the query sees.
    fn attention_slow(q: &[f32], k: &[f32], v: &[f32], b: usize, s: usize, h: usize, kv: usize, d: usize, window: Option<usize>) -> Vec<f32> {
        let mut out = vec![0.0; b * s * h * d];
        for (bb, hh, i) in (0..b).flat_map(|bb| (0..h).flat_map(move |hh| (0..s).map(move |i| (bb, hh, i)))) {
            let g = hh / (h / kv);
            let qi = &q[((bb * s + i) * h + hh) * d..][..d];
            let keys: Vec<usize> = (first_key(i, window)..=i).collect();
            let scores: Vec<f64> = keys.iter().map(|&j| dot64(qi, &k[((bb * s + j) * kv + g) * d..][..d]) / (d as f64).sqrt()).collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
            for e in 0..d {
                let o: f64 = keys.iter().zip(&scores).map(|(&j, x)| (x - max).exp() / sum * v[((bb * s + j) * kv + g) * d + e] as f64).sum();
                out[((bb * s + i) * h + hh) * d + e] = o as f32;
            }
        }
        out
    }

    /// Several tiles of ROWS queries (S = 300: tiles of 128, 128, 44), with and without windows
    /// shorter and longer than a tile: the tiled forward is the definition, and its backward passes
    /// finite differences on a few coordinates of a product large enough to span tiles.
    #[test]
    fn tiles_match_the_plain_definition() {
        let (b, s, h, kv, d) = (2, 300, 4, 2, 8);
        for window in [None, Some(50), Some(200)] {
            let (q, k, v) = (randn(b * s * h * d, 5), randn(b * s * kv * d, 6), randn(b * s * kv * d, 7));
            let (mut out, mut probs) = (vec![0.0; q.len()], vec![0.0; b * h * s * s]);
            attention_forward(&mut out, &mut probs, &q, &k, &v, s, h, kv, d, window);
            assert_close(&format!("tiled forward, window {window:?}"), &out, &attention_slow(&q, &k, &v, b, s, h, kv, d, window), 1e-5, 1e-4);
            let dout = randn(q.len(), 8);
            let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
            attention_backward(&mut dq, &mut dk, &mut dv, &dout, &probs, &q, &k, &v, s, h, kv, d, window);
            let loss = |q: &[f32], k: &[f32], v: &[f32]| dot64(&attention_slow(q, k, v, b, s, h, kv, d, window), &dout);
            for (name, x, dx) in [("q", &q, &dq), ("k", &k, &dk), ("v", &v, &dv)] {
                for idx in [3, x.len() / 2 + 5, x.len() - 9] {
                    let mut xp = x.clone();
                    let eps = 1e-2;
                    xp[idx] += eps;
                    let up = match name { "q" => loss(&xp, &k, &v), "k" => loss(&q, &xp, &v), _ => loss(&q, &k, &xp) };
                    xp[idx] -= 2.0 * eps;
                    let down = match name { "q" => loss(&xp, &k, &v), "k" => loss(&q, &xp, &v), _ => loss(&q, &k, &xp) };
                    let fd = (up - down) / (2.0 * eps as f64);
                    assert!((fd - dx[idx] as f64).abs() <= 1e-2 * fd.abs().max(1e-1), "d{name}[{idx}], window {window:?}: {} vs finite difference {fd}", dx[idx]);
                }
            }
        }
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
