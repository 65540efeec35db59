//! Activation recomputation changes memory, never results: for every setting, on the CPU and the
//! GPU, in f32 and with bf16 GEMM inputs, two training steps give bit for bit the losses, routing
//! statistics and gradients of the run that keeps every activation — with a selection bias on the
//! routers, a statistics-only forward between forward and backward, a dense layer, a sliding
//! window, and (Qwen2-MoE) a shared expert with q/k/v biases. The GPU half runs where an adapter exists (CI: lavapipe with
//! MOE_GPU_ADAPTER=software) and prints SKIPPED otherwise.

use moe_core::{AdamWConfig, Model, ModelConfig, ModelStats, Precision, Recompute};
use serde_json::json;

fn configs() -> Vec<ModelConfig> {
    let qwen3 = json!({
        "vocab_size": 41, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 4, "moe_intermediate_size": 8, "num_experts": 6,
        "num_experts_per_tok": 2, "norm_topk_prob": true, "initializer_range": 0.2, "seed": 9,
        "mlp_only_layers": [1], "intermediate_size": 12, "sliding_window": 5
    });
    let qwen2 = json!({
        "model_type": "qwen2_moe", "vocab_size": 41, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "moe_intermediate_size": 8,
        "num_experts": 6, "num_experts_per_tok": 2, "shared_expert_intermediate_size": 10,
        "qkv_bias": true, "initializer_range": 0.2, "seed": 3
    });
    [qwen3, qwen2].into_iter().map(|c| serde_json::from_value(c).unwrap()).collect()
}

/// Per step: the forward's statistics and the gradients; then the parameters after two steps.
type Trace = (Vec<(ModelStats, Vec<f32>)>, Vec<f32>);

fn two_steps(cfg: &ModelConfig, device: &str, recompute: Recompute, precision: Precision) -> Trace {
    let (b, s) = (2, 9);
    let mut m = Model::new(cfg.clone()).unwrap();
    m.to_device(Some(device)).unwrap();
    m.set_recompute(recompute);
    m.set_precision(precision);
    let nm = cfg.moe_layers().len();
    let bias: Vec<f32> = (0..nm * 6).map(|i| 0.05 * ((i * 5 % 7) as f32 - 3.0)).collect();
    m.set_router_bias(&bias).unwrap();
    let opt = AdamWConfig::from_json(json!({ "lr": 2e-2 })).unwrap();
    let mut steps = Vec::new();
    for step in 0..2u32 {
        let tokens: Vec<u32> = (0..(b * s) as u32).map(|i| (i * 7 + step * 3 + 1) % 41).collect();
        let mut mask = vec![1u8; b * s];
        mask[4] = 0;
        let stats = m.forward(&tokens, Some(&mask), b, true).unwrap();
        m.forward(&tokens[..s], None, 1, false).unwrap(); // must not disturb what is kept
        let pressure: Vec<f32> = (0..nm * b * 6).map(|i| 0.03 * ((i % 5) as f32 - 2.0)).collect();
        m.backward(&pressure, 1.0 / 16.0, 1e-3).unwrap();
        steps.push((stats, m.store.grads().unwrap().to_vec()));
        m.store.step(&opt).unwrap();
        m.store.zero_grad().unwrap();
    }
    (steps, m.store.host().unwrap().params.clone())
}

/// Every setting against `None`, in f32 and with bf16 GEMM inputs (whose rounding is as
/// deterministic as the rest).
fn check_device(device: &str) {
    for (cfg, p) in configs().into_iter().flat_map(|c| [(c.clone(), Precision::F32), (c, Precision::Bf16)]) {
        let kept = two_steps(&cfg, device, Recompute::None, p);
        for r in [Recompute::Attention, Recompute::Full] {
            let again = two_steps(&cfg, device, r, p);
            for (step, ((sa, ga), (sb, gb))) in kept.0.iter().zip(&again.0).enumerate() {
                let what = format!("{:?} on {device} in {}, {r:?}, step {step}", cfg.model_type, p.name());
                assert_eq!(sa, sb, "{what}: statistics");
                assert!(ga.iter().zip(gb).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: gradients differ");
            }
            assert!(kept.1.iter().zip(&again.1).all(|(x, y)| x.to_bits() == y.to_bits()), "{device} {r:?}: parameters after two steps");
        }
    }
}

#[test]
fn recomputation_is_bit_identical_on_the_cpu() {
    check_device("cpu");
}

#[test]
fn recomputation_is_bit_identical_on_the_gpu() {
    if let Err(e) = moe_core::gpu::gpu() {
        if std::env::var("MOE_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("MOE_REQUIRE_GPU=1 but {e}");
        }
        return eprintln!("\n*** SKIPPED recomputation_is_bit_identical_on_the_gpu: {e} ***\n");
    }
    check_device("gpu");
}

#[test]
fn recompute_and_precision_names() {
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
    assert_eq!("fp16".parse::<Precision>().unwrap_err().code(), "INVALID_ARGUMENT");
    assert_eq!("full".parse::<Recompute>().unwrap(), Recompute::Full);
    assert_eq!("attention".parse::<Recompute>().unwrap(), Recompute::Attention);
    assert_eq!("none".parse::<Recompute>().unwrap(), Recompute::None);
    assert_eq!("all".parse::<Recompute>().unwrap_err().code(), "INVALID_ARGUMENT");
}
