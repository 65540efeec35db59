//! Router: softmax over expert logits (fp32), top-k selection, optional renormalisation of the top-k
//! weights, and the per-sequence routing statistics the balance engine consumes (DESIGN §2–3).
//! The logits themselves come from `matmul_forward(x, gate.weight)`.

use rayon::prelude::*;

/// Per token t: probs[t] = softmax(logits[t]); lse[t] = logsumexp(logits[t]);
/// idx[t] = the K largest probs + bias (ties go to the lower expert index): the bias (E) steers
/// selection only (auxiliary-loss-free balancing), zero for plain top-k;
/// w[t,k] = probs[t, idx[t,k]] (unbiased), divided by their sum when `norm_topk`.
///
/// probs (T, E), lse (T), idx (T, K), w (T, K) are outputs; logits (T, E) and bias (E) the inputs.
#[allow(clippy::too_many_arguments)]
pub fn router_forward(
    probs: &mut [f32],
    lse: &mut [f32],
    idx: &mut [u32],
    w: &mut [f32],
    logits: &[f32],
    bias: &[f32],
    e: usize,
    k: usize,
    norm_topk: bool,
) {
    probs
        .par_chunks_mut(e)
        .zip(lse.par_iter_mut())
        .zip(idx.par_chunks_mut(k).zip(w.par_chunks_mut(k)))
        .zip(logits.par_chunks(e))
        .for_each(|(((p, lse), (idx, w)), z)| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (pi, &zi) in p.iter_mut().zip(z) {
                *pi = (zi - max).exp();
                sum += *pi;
            }
            p.iter_mut().for_each(|pi| *pi /= sum);
            *lse = max + sum.ln();
            // K passes of argmax with a strict '>' scanning upwards: ties resolve to the lower index.
            for slot in 0..k {
                let mut best = usize::MAX;
                for i in 0..e {
                    if idx[..slot].contains(&(i as u32)) {
                        continue;
                    }
                    if best == usize::MAX || p[i] + bias[i] > p[best] + bias[best] {
                        best = i;
                    }
                }
                idx[slot] = best as u32;
                w[slot] = p[best];
            }
            if norm_topk {
                let s: f32 = w.iter().sum();
                w.iter_mut().for_each(|wi| *wi /= s);
            }
        });
}

/// Router backward. Overwrites dlogits (T, E) with dL/dz from
///   dw (T, K)        gradient w.r.t. the top-k weights (from the combine),
///   pressure (B, E)  lambda_{b,i} = dL/ds_{t,i} of the balance terms, same for every valid token of
///                    sequence b (DESIGN §2),
///   z_scale          beta / T_glob for the z-loss  Z = z_scale * sum_t lse_t^2,
/// through the renormalisation  w_k = p_k / S:  dp_j = (dw_j - sum_k dw_k w_k) / S
/// and the softmax  dz_i = s_i (ds_i - sum_j ds_j s_j), plus dZ/dz_i = z_scale * 2 lse s_i.
/// Tokens with mask 0 get no pressure and no z-loss gradient. T = B * S.
#[allow(clippy::too_many_arguments)]
pub fn router_backward(
    dlogits: &mut [f32],
    dw: &[f32],
    probs: &[f32],
    lse: &[f32],
    idx: &[u32],
    w: &[f32],
    mask: &[u8],
    pressure: &[f32],
    z_scale: f32,
    s: usize,
    e: usize,
    k: usize,
    norm_topk: bool,
) {
    dlogits.par_chunks_mut(e).enumerate().for_each(|(t, dz)| {
        let (p, idx_t, w_t, dw_t) = (&probs[t * e..][..e], &idx[t * k..][..k], &w[t * k..][..k], &dw[t * k..][..k]);
        let valid = mask[t] != 0;
        let b = t / s;
        // dz holds ds (dL/ds) first, then is turned into dL/dz in place.
        if valid {
            dz.copy_from_slice(&pressure[b * e..][..e]);
        } else {
            dz.fill(0.0);
        }
        if norm_topk {
            let sum_p: f32 = idx_t.iter().map(|&i| p[i as usize]).sum();
            let dot: f32 = dw_t.iter().zip(w_t).map(|(a, b)| a * b).sum();
            for (&i, &g) in idx_t.iter().zip(dw_t) {
                dz[i as usize] += (g - dot) / sum_p;
            }
        } else {
            for (&i, &g) in idx_t.iter().zip(dw_t) {
                dz[i as usize] += g;
            }
        }
        let dot: f32 = dz.iter().zip(p).map(|(a, b)| a * b).sum();
        let z_term = if valid { 2.0 * z_scale * lse[t] } else { 0.0 };
        for (d, &pi) in dz.iter_mut().zip(p) {
            *d = pi * (*d - dot) + z_term * pi;
        }
    });
}

/// Per-sequence routing statistics over valid tokens (mask 1), B sequences of S tokens:
/// counts (B, E) = tokens choosing expert i; score_sums (B, E) = sum_t s_{t,i};
/// topk_sums (B) = sum_t sum_k s_{t,idx_k}; z_sums (B) = sum_t lse_t^2; valid (B) = valid tokens.
/// No backward: these are observations; their gradient enters through `pressure` and `z_scale`.
#[allow(clippy::too_many_arguments)]
pub fn router_stats(
    counts: &mut [f32],
    score_sums: &mut [f32],
    topk_sums: &mut [f32],
    z_sums: &mut [f32],
    valid: &mut [f32],
    probs: &[f32],
    lse: &[f32],
    idx: &[u32],
    mask: &[u8],
    s: usize,
    e: usize,
    k: usize,
) {
    counts
        .par_chunks_mut(e)
        .zip(score_sums.par_chunks_mut(e))
        .zip(topk_sums.par_iter_mut().zip(z_sums.par_iter_mut()).zip(valid.par_iter_mut()))
        .enumerate()
        .for_each(|(b, ((counts, scores), ((topk, z), n)))| {
            // f64 accumulation: sums over thousands of tokens must not drift with the token order.
            let mut acc_scores = vec![0.0f64; e];
            let (mut acc_topk, mut acc_z, mut acc_n) = (0.0f64, 0.0f64, 0.0f64);
            counts.fill(0.0);
            for t in b * s..(b + 1) * s {
                if mask[t] == 0 {
                    continue;
                }
                let p = &probs[t * e..][..e];
                acc_scores.iter_mut().zip(p).for_each(|(a, &pi)| *a += pi as f64);
                for &i in &idx[t * k..][..k] {
                    counts[i as usize] += 1.0;
                    acc_topk += p[i as usize] as f64;
                }
                acc_z += (lse[t] as f64).powi(2);
                acc_n += 1.0;
            }
            scores.iter_mut().zip(&acc_scores).for_each(|(o, a)| *o = *a as f32);
            (*topk, *z, *n) = (acc_topk as f32, acc_z as f32, acc_n as f32);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_ties_go_to_lower_index_and_renormalise() {
        let logits = [0.0f32, 1.0, 1.0, 0.0, 1.0];
        let (mut p, mut lse, mut idx, mut w) = ([0.0; 5], [0.0; 1], [0u32; 2], [0.0; 2]);
        router_forward(&mut p, &mut lse, &mut idx, &mut w, &logits, &[0.0; 5], 5, 2, true);
        assert_eq!(idx, [1, 2]);
        assert!((w[0] - 0.5).abs() < 1e-7 && (w[1] - 0.5).abs() < 1e-7);
        let expect_lse = (2.0f32 + 3.0 * 1f32.exp()).ln();
        assert!((lse[0] - expect_lse).abs() < 1e-6);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bias_steers_selection_but_not_weights() {
        let logits = [2.0f32, 1.0, 0.0];
        let (mut p, mut lse, mut idx, mut w) = ([0.0; 3], [0.0; 1], [0u32; 1], [0.0; 1]);
        router_forward(&mut p, &mut lse, &mut idx, &mut w, &logits, &[0.0, 0.0, 0.5], 3, 1, false);
        assert_eq!(idx, [0], "0.665 + 0 beats 0.090 + 0.5");
        router_forward(&mut p, &mut lse, &mut idx, &mut w, &logits, &[0.0, 0.0, 0.8], 3, 1, false);
        assert_eq!(idx, [2], "0.090 + 0.8 beats 0.665 + 0");
        router_forward(&mut p, &mut lse, &mut idx, &mut w, &logits, &[-0.5, 0.0, 0.0], 3, 1, false);
        assert_eq!(idx, [1], "0.665 - 0.5 loses to 0.245");
        assert_eq!(w[0], p[1], "the weight is the unbiased probability");
    }

    /// The router's loss seen by its backward, in f64 from the logits, with the top-k choice `idx`
    /// held fixed (it is piecewise constant): sum_t [ sum_k dw_tk w_tk + [valid] sum_i λ_b(t),i s_ti
    /// + [valid] z_scale lse_t² ], w renormalised when `norm`.
    #[allow(clippy::too_many_arguments)]
    fn loss_f64(z: &[f64], idx: &[u32], dw: &[f32], mask: &[u8], pressure: &[f32], z_scale: f64, s: usize, e: usize, k: usize, norm: bool) -> f64 {
        let mut total = 0.0;
        for (t, zt) in z.chunks(e).enumerate() {
            let max = zt.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = zt.iter().map(|v| (v - max).exp()).sum();
            let p: Vec<f64> = zt.iter().map(|v| (v - max).exp() / sum).collect();
            let lse = max + sum.ln();
            let chosen = &idx[t * k..][..k];
            let denom = if norm { chosen.iter().map(|&i| p[i as usize]).sum() } else { 1.0 };
            total += chosen.iter().zip(&dw[t * k..][..k]).map(|(&i, &g)| g as f64 * p[i as usize] / denom).sum::<f64>();
            if mask[t] != 0 {
                total += p.iter().zip(&pressure[(t / s) * e..][..e]).map(|(pi, &l)| pi * l as f64).sum::<f64>();
                total += z_scale * lse * lse;
            }
        }
        total
    }

    /// STYLE habit 8: the router backward (renormalisation, pressure, z-loss) against central
    /// differences of an independent f64 forward, eps 1e-6: agreement to f32 rounding.
    #[test]
    fn backward_matches_f64_finite_differences() {
        let (b, s, e, k) = (2, 3, 5, 2);
        let t = b * s;
        let logits: Vec<f32> = crate::testutil::randn(t * e, 21);
        let dw = crate::testutil::randn(t * k, 22);
        let pressure: Vec<f32> = crate::testutil::randn(b * e, 23).iter().map(|v| 0.3 * v).collect();
        let mask = [1u8, 1, 0, 1, 0, 1];
        let z_scale = 0.07f32;
        for norm in [false, true] {
            let (mut p, mut lse, mut idx, mut w) = (vec![0.0; t * e], vec![0.0; t], vec![0u32; t * k], vec![0.0; t * k]);
            router_forward(&mut p, &mut lse, &mut idx, &mut w, &logits, &vec![0.0; e], e, k, norm);
            let mut dlogits = vec![0.0; t * e];
            router_backward(&mut dlogits, &dw, &p, &lse, &idx, &w, &mask, &pressure, z_scale, s, e, k, norm);
            let z: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
            let mut worst = 0.0f64;
            for i in 0..z.len() {
                let (mut zp, mut zm) = (z.clone(), z.clone());
                zp[i] += 1e-6;
                zm[i] -= 1e-6;
                let f = |z: &[f64]| loss_f64(z, &idx, &dw, &mask, &pressure, z_scale as f64, s, e, k, norm);
                let num = (f(&zp) - f(&zm)) / 2e-6;
                let d = (dlogits[i] as f64 - num).abs();
                assert!(d <= 1e-6 + 1e-5 * num.abs(), "norm {norm}, dlogits[{i}]: {} vs {num}", dlogits[i]);
                worst = worst.max(d);
            }
            eprintln!("router backward vs f64 differences (norm_topk = {norm}): max |Δ| = {worst:.2e}");
        }
    }

    #[test]
    fn stats_skip_masked_tokens() {
        // B = 1, S = 2, E = 2, K = 1; the second token is masked out.
        let probs = [0.75f32, 0.25, 0.1, 0.9];
        let lse = [2.0f32, 3.0];
        let idx = [0u32, 1];
        let mask = [1u8, 0];
        let (mut c, mut sc, mut tk, mut z, mut n) = ([0.0; 2], [0.0; 2], [0.0; 1], [0.0; 1], [0.0; 1]);
        router_stats(&mut c, &mut sc, &mut tk, &mut z, &mut n, &probs, &lse, &idx, &mask, 2, 2, 1);
        assert_eq!((c, sc, tk, z, n), ([1.0, 0.0], [0.75, 0.25], [0.75], [4.0], [1.0]));
    }
}
