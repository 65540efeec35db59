//! Cross-entropy of next-token logits, over valid positions only.

use rayon::prelude::*;

/// losses (T) = logsumexp(logits[t]) - logits[t, targets[t]] where valid[t] != 0, else 0.
/// logits (T, V). Overwrites losses.
pub fn crossentropy_forward(losses: &mut [f32], logits: &[f32], targets: &[u32], valid: &[u8], v: usize) {
    losses.par_iter_mut().enumerate().for_each(|(t, l)| {
        if valid[t] == 0 {
            *l = 0.0;
            return;
        }
        let z = &logits[t * v..][..v];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        *l = lse - z[targets[t] as usize];
    });
}

/// dlogits (T, V) = scale * (softmax(logits[t]) - onehot(targets[t])) where valid, else 0. Overwrites.
pub fn crossentropy_backward(dlogits: &mut [f32], logits: &[f32], targets: &[u32], valid: &[u8], scale: f32, v: usize) {
    dlogits.par_chunks_mut(v).enumerate().for_each(|(t, d)| {
        if valid[t] == 0 {
            d.fill(0.0);
            return;
        }
        let z = &logits[t * v..][..v];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (d, &x) in d.iter_mut().zip(z) {
            *d = (x - max).exp();
            sum += *d;
        }
        d.iter_mut().for_each(|d| *d *= scale / sum);
        d[targets[t] as usize] -= scale;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{gradcheck, randn};

    #[test]
    fn crossentropy_value_and_gradcheck() {
        let (t, v) = (4, 5);
        let logits = randn(t * v, 1);
        let (targets, valid) = ([1u32, 4, 0, 2], [1u8, 1, 0, 1]);
        let mut losses = vec![0.0; t];
        crossentropy_forward(&mut losses, &logits, &targets, &valid, v);
        let z = &logits[..v];
        let p1 = z[1].exp() / z.iter().map(|x| x.exp()).sum::<f32>();
        assert!((losses[0] + p1.ln()).abs() < 1e-6);
        assert_eq!(losses[2], 0.0);
        let mut d = vec![0.0; t * v];
        crossentropy_backward(&mut d, &logits, &targets, &valid, 0.5, v);
        let loss = |z: &[f32]| {
            let mut l = vec![0.0; t];
            crossentropy_forward(&mut l, z, &targets, &valid, v);
            0.5 * l.iter().map(|&x| x as f64).sum::<f64>()
        };
        gradcheck("crossentropy.logits", loss, &logits, &d, 1e-2, 1e-4, 1e-3);
    }
}
