//! The MoE layer end to end: finite-difference checks of every parameter and the input with router
//! pressure and z-loss on, explicit gradient accumulation, statistics-only forwards, and bad input.
//! f32 throughout, so the differences are central ones with eps = 1e-2 and the loss summed in f64.

use moe_core::{AdamWConfig, MoeConfig, MoeLayer};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| { let v: f32 = StandardNormal.sample(&mut rng); scale * v }).collect()
}

fn cfg(norm: bool) -> MoeConfig {
    with_shared(norm, 0)
}

/// `shared` > 0 adds Qwen2-MoE's sigmoid-gated shared expert of that intermediate size.
fn with_shared(norm: bool, shared: usize) -> MoeConfig {
    MoeConfig {
        hidden_size: 6,
        moe_intermediate_size: 5,
        num_experts: 5,
        num_experts_per_tok: 2,
        norm_topk_prob: norm,
        shared_expert_intermediate_size: shared,
        initializer_range: 0.5,
        seed: 7,
    }
}

const B: usize = 2;
const S: usize = 3;
const EPS: f32 = 1e-2;
const Z_SCALE: f32 = 0.05;

struct Problem {
    x: Vec<f32>,
    mask: Vec<u8>,
    dout: Vec<f32>,
    pressure: Vec<f32>,
}

fn problem(c: &MoeConfig) -> Problem {
    let t = B * S;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let u = Uniform::new(0.05f32, 0.5).unwrap();
    Problem {
        x: randn(t * c.hidden_size, 1, 1.0),
        mask: vec![1, 1, 0, 1, 1, 1],
        dout: randn(t * c.hidden_size, 2, 1.0),
        pressure: (0..B * c.num_experts).map(|_| u.sample(&mut rng)).collect(),
    }
}

/// L = <dout, y> + sum_{b,i} pressure_{b,i} * score_sums_{b,i} + z_scale * sum_b z_sums_b,
/// whose gradient is exactly what `backward(dout, pressure, z_scale)` accumulates.
fn loss(layer: &mut MoeLayer, p: &Problem, x: &[f32]) -> f64 {
    let o = layer.forward(x, Some(&p.mask), B, false).unwrap();
    let task: f64 = o.out.iter().zip(&p.dout).map(|(a, b)| *a as f64 * *b as f64).sum();
    let lbl: f64 = o.stats.score_sums.iter().zip(&p.pressure).map(|(a, b)| *a as f64 * *b as f64).sum();
    let z: f64 = o.stats.z_sums.iter().map(|&z| z as f64).sum();
    task + lbl + Z_SCALE as f64 * z
}

fn check(name: &str, analytic: f32, numeric: f64, worst: &mut f64) {
    let d = (analytic as f64 - numeric).abs();
    let tol = 2e-3 + 2e-2 * numeric.abs();
    assert!(d <= tol, "{name}: analytic {analytic} vs numeric {numeric} (|Δ| = {d:.2e})");
    *worst = worst.max(d);
}

fn gradcheck(c: MoeConfig) {
    let norm = c.norm_topk_prob;
    let mut layer = MoeLayer::new(c.clone()).unwrap();
    let p = problem(&c);
    let base_counts = layer.forward(&p.x, Some(&p.mask), B, true).unwrap().stats.counts;
    let dx = layer.backward(&p.dout, &p.pressure, Z_SCALE).unwrap();
    let mut worst = 0.0f64;
    for spec in layer.store.host().unwrap().specs.clone() {
        for i in spec.range() {
            let orig = layer.store.host().unwrap().params[i];
            layer.store.host_mut().unwrap().params[i] = orig + EPS;
            let lp = loss(&mut layer, &p, &p.x);
            layer.store.host_mut().unwrap().params[i] = orig - EPS;
            let lm = loss(&mut layer, &p, &p.x);
            layer.store.host_mut().unwrap().params[i] = orig;
            check(&format!("{}[{}]", spec.name, i - spec.offset), layer.store.host().unwrap().grads[i], (lp - lm) / (2.0 * EPS as f64), &mut worst);
        }
    }
    let mut x = p.x.clone();
    for i in 0..x.len() {
        let orig = x[i];
        x[i] = orig + EPS;
        let lp = loss(&mut layer, &p, &x);
        x[i] = orig - EPS;
        let lm = loss(&mut layer, &p, &x);
        x[i] = orig;
        check(&format!("x[{i}]"), dx[i], (lp - lm) / (2.0 * EPS as f64), &mut worst);
    }
    // The perturbations must not have changed the routing, or the check would mean nothing.
    assert_eq!(layer.forward(&p.x, Some(&p.mask), B, false).unwrap().stats.counts, base_counts);
    eprintln!("gradcheck norm_topk_prob={norm} shared={}: {} params + {} inputs, max |Δ| = {worst:.2e}", c.shared_expert_intermediate_size, layer.store.host().unwrap().params.len(), x.len());
}

#[test]
fn gradcheck_all_params_and_input_with_renormalisation() {
    gradcheck(cfg(true));
}

#[test]
fn gradcheck_all_params_and_input_without_renormalisation() {
    gradcheck(cfg(false));
}

#[test]
fn gradcheck_all_params_and_input_with_a_shared_expert() {
    gradcheck(with_shared(false, 4));
}

#[test]
fn backward_accumulates_parameter_grads() {
    let c = cfg(true);
    let mut layer = MoeLayer::new(c.clone()).unwrap();
    let p = problem(&c);
    layer.forward(&p.x, Some(&p.mask), B, true).unwrap();
    let dx1 = layer.backward(&p.dout, &p.pressure, Z_SCALE).unwrap();
    let once = layer.store.host().unwrap().grads.clone();
    // A stored forward serves one backward; the second needs its own forward.
    assert_eq!(layer.backward(&p.dout, &p.pressure, Z_SCALE).err().map(|e| e.code()), Some("INVALID_STATE"));
    assert_eq!(layer.store.host().unwrap().grads, once, "the refused backward added nothing");
    layer.forward(&p.x, Some(&p.mask), B, true).unwrap();
    let dx2 = layer.backward(&p.dout, &p.pressure, Z_SCALE).unwrap();
    assert_eq!(dx1, dx2, "dx is overwritten, not accumulated");
    for (g2, g1) in layer.store.host().unwrap().grads.iter().zip(&once) {
        assert!((g2 - 2.0 * g1).abs() <= 1e-6 * g1.abs().max(1.0));
    }
    layer.store.zero_grad().unwrap();
    assert!(layer.store.host().unwrap().grads.iter().all(|&g| g == 0.0));
}

#[test]
fn stats_only_forward_leaves_stored_activations_alone() {
    let c = cfg(false);
    let p = problem(&c);
    let mut a = MoeLayer::new(c.clone()).unwrap();
    let mut b = MoeLayer::new(c.clone()).unwrap();
    a.forward(&p.x, Some(&p.mask), B, true).unwrap();
    b.forward(&p.x, Some(&p.mask), B, true).unwrap();
    // An evaluation forward on other data, with another batch size, in between.
    b.forward(&randn(4 * S * c.hidden_size, 9, 1.0), None, 4, false).unwrap();
    assert_eq!(a.backward(&p.dout, &p.pressure, Z_SCALE).unwrap(), b.backward(&p.dout, &p.pressure, Z_SCALE).unwrap());
    assert_eq!(a.store.host().unwrap().grads, b.store.host().unwrap().grads);
}

#[test]
fn masked_tokens_do_not_count_but_still_flow() {
    let c = cfg(true);
    let p = problem(&c);
    let mut layer = MoeLayer::new(c.clone()).unwrap();
    let masked = layer.forward(&p.x, Some(&p.mask), B, false).unwrap();
    let full = layer.forward(&p.x, None, B, false).unwrap();
    assert_eq!(masked.out, full.out, "the loss mask does not change the forward");
    assert_eq!(masked.stats.valid_tokens, vec![2.0, 3.0]);
    assert_eq!(full.stats.valid_tokens, vec![3.0, 3.0]);
    let k = c.num_experts_per_tok as f32;
    for (b, n) in masked.stats.valid_tokens.iter().enumerate() {
        let counted: f32 = masked.stats.counts[b * c.num_experts..][..c.num_experts].iter().sum();
        assert_eq!(counted, k * n);
        let scores: f32 = masked.stats.score_sums[b * c.num_experts..][..c.num_experts].iter().sum();
        assert!((scores - n).abs() < 1e-5, "softmax rows sum to one");
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = cfg(true);
    let p = problem(&c);
    let mut layer = MoeLayer::new(c.clone()).unwrap();
    let before = layer.store.host().unwrap().params.clone();
    let code = |r: moe_core::Result<_>| r.err().map(|e: moe_core::MoeError| e.code());
    assert_eq!(code(layer.backward(&p.dout, &p.pressure, Z_SCALE).map(|_| ())), Some("INVALID_STATE"));
    assert_eq!(code(layer.forward(&p.x[1..], None, B, true).map(|_| ())), Some("SHAPE_MISMATCH"));
    assert_eq!(code(layer.forward(&p.x, Some(&p.mask[1..]), B, true).map(|_| ())), Some("SHAPE_MISMATCH"));
    let mut nan = p.x.clone();
    nan[4] = f32::NAN;
    assert_eq!(code(layer.forward(&nan, None, B, true).map(|_| ())), Some("NON_FINITE"));
    layer.forward(&p.x, Some(&p.mask), B, true).unwrap();
    assert_eq!(code(layer.backward(&p.dout, &p.pressure[1..], Z_SCALE).map(|_| ())), Some("SHAPE_MISMATCH"));
    assert_eq!(code(layer.store.host_mut().unwrap().set_param("gate.weight", &[1.0]).map(|_| ())), Some("SHAPE_MISMATCH"));
    assert_eq!(code(layer.store.host_mut().unwrap().set_param("nope", &[1.0]).map(|_| ())), Some("UNKNOWN_PARAMETER"));
    layer.store.host_mut().unwrap().grads[0] = f32::INFINITY;
    let opt = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, max_grad_norm: Some(1.0), schedule: None };
    assert_eq!(code(layer.store.step(&opt).map(|_| ())), Some("NON_FINITE"));
    assert_eq!(layer.store.host().unwrap().params, before);
    assert_eq!(layer.store.host().unwrap().opt.step, 0);
    let bad = MoeConfig { num_experts_per_tok: 9, ..c };
    assert_eq!(code(MoeLayer::new(bad).map(|_| ())), Some("INVALID_CONFIG"));
}
