//! Helpers shared by the unit tests: seeded random tensors and closeness assertions.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// Asserts |a - b| <= atol + rtol * |b| elementwise and prints the worst difference.
pub fn assert_close(name: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) {
    assert_eq!(a.len(), b.len(), "{name}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        assert!(d <= atol + rtol * y.abs(), "{name}[{i}]: {x} vs {y} (|Δ| = {d})");
        if d > worst.1 {
            worst = (i, d);
        }
    }
    eprintln!("{name}: max |Δ| = {:.3e} at {}", worst.1, worst.0);
}

/// Central finite differences of the scalar `loss` at `x` against `analytic`, coordinate by coordinate:
/// |analytic - numeric| <= atol + rtol * |numeric|.
pub fn gradcheck(name: &str, loss: impl Fn(&[f32]) -> f64, x: &[f32], analytic: &[f32], eps: f32, atol: f64, rtol: f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut xp = x.to_vec();
    let mut worst = 0.0f64;
    for i in 0..x.len() {
        xp[i] = x[i] + eps;
        let lp = loss(&xp);
        xp[i] = x[i] - eps;
        let lm = loss(&xp);
        xp[i] = x[i];
        let num = (lp - lm) / (2.0 * eps as f64);
        let d = (analytic[i] as f64 - num).abs();
        assert!(d <= atol + rtol * num.abs(), "{name}[{i}]: analytic {} vs numeric {num} (|Δ| = {d:.2e})", analytic[i]);
        worst = worst.max(d);
    }
    eprintln!("gradcheck {name}: {} coordinates, max |Δ| = {worst:.2e}", x.len());
}

/// <a, b> in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}
