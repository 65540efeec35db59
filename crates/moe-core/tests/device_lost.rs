//! A lost GPU device becomes a clear `DEVICE_LOST` error, never a panic or a hang. Its own test
//! binary (its own process): destroying the process-wide device would break every other GPU test.
//! Runs where an adapter exists (CI: lavapipe with MOE_GPU_ADAPTER=software); SKIPPED otherwise.

use moe_core::{Model, ModelConfig};

#[test]
fn a_destroyed_device_fails_the_next_step_with_device_lost() {
    let g = match moe_core::gpu::gpu() {
        Ok(g) => g,
        Err(e) if std::env::var("MOE_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("MOE_REQUIRE_GPU=1 but {e}"),
        Err(e) => return eprintln!("\n*** SKIPPED a_destroyed_device_fails_the_next_step_with_device_lost: {e} ***\n"),
    };
    let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 17, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 4, "moe_intermediate_size": 4, "num_experts": 3,
        "num_experts_per_tok": 1
    }))
    .unwrap();
    let mut m = Model::new(cfg).unwrap();
    m.to_device(Some("gpu")).unwrap();
    let tokens = [1u32, 2, 3, 4];
    m.forward(&tokens, None, 1, true).unwrap();
    g.device.destroy();
    let e = m.forward(&tokens, None, 1, true).unwrap_err();
    assert_eq!(e.code(), "DEVICE_LOST", "{e}");
    eprintln!("after destroy: {e}");
}
