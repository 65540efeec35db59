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
