//! Checkpoints and generation: save -> load gives identical logits, a resumed run is bit-identical to
//! a straight one, every bad checkpoint is refused with the model untouched, and the key/value-cache
//! decoder reproduces the full forward.

use moe_core::adamw::{AdamWConfig, LrSchedule, ScheduleKind};
use moe_core::generate::{generate, Decoder, GenerateOptions};
use moe_core::{Model, ModelConfig};
use serde_json::json;
use std::path::PathBuf;

fn cfg() -> ModelConfig {
    ModelConfig::from_json(json!({
        "vocab_size": 13, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 4, "moe_intermediate_size": 6, "num_experts": 4,
        "num_experts_per_tok": 2, "norm_topk_prob": false, "max_position_embeddings": 32,
        "initializer_range": 0.2, "seed": 3
    }))
    .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const TOKENS: [u32; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn opt() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        max_grad_norm: Some(1.0),
        schedule: Some(LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 2, total_steps: 10, min_lr: 1e-3, decay_steps: None }),
    }
}

/// One training step on a batch that depends on the step number; returns the loss.
fn train_step(m: &mut Model, step: usize) -> f64 {
    let toks: Vec<u32> = TOKENS.iter().map(|&t| (t + step as u32) % 13).collect();
    let s = m.forward(&toks, None, 2, true).unwrap();
    let pressure = vec![0.01f32; 2 * 2 * 4];
    m.backward(&pressure, 1.0 / 10.0, 1e-3).unwrap();
    m.store.step(&opt()).unwrap();
    m.store.zero_grad().unwrap();
    s.loss
}

#[test]
fn save_then_load_gives_identical_logits_and_hf_layout() {
    let dir = tmp("roundtrip");
    let mut m = Model::new(cfg()).unwrap();
    m.save(&dir, None, &[]).unwrap();
    let (mut back, trainer) = Model::from_checkpoint(&dir).unwrap();
    assert!(trainer.is_none());
    assert_eq!(m.logits(&TOKENS, 2).unwrap(), back.logits(&TOKENS, 2).unwrap());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "qwen3_moe");
    assert_eq!(config["architectures"][0], "Qwen3MoeForCausalLM");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in ["model.embed_tokens.weight", "model.layers.1.self_attn.q_norm.weight", "model.layers.0.mlp.experts.3.down_proj.weight", "lm_head.weight"] {
        assert!(st.names().contains(&name), "{name}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resume_is_bit_exact() {
    let dir = tmp("resume");
    let mut straight = Model::new(cfg()).unwrap();
    let losses: Vec<f64> = (0..7).map(|s| train_step(&mut straight, s)).collect();
    assert!(losses[6] < losses[0], "training lowers the loss: {losses:?}");

    let mut first = Model::new(cfg()).unwrap();
    (0..4).for_each(|s| {
        train_step(&mut first, s);
    });
    first.save(&dir, Some(r#"{"data":{"position":4}}"#), &[]).unwrap();
    drop(first);
    let (mut resumed, trainer) = Model::from_checkpoint(&dir).unwrap();
    assert_eq!(trainer.as_deref(), Some(r#"{"data":{"position":4}}"#));
    let tail: Vec<f64> = (4..7).map(|s| train_step(&mut resumed, s)).collect();
    assert_eq!(&losses[4..], &tail[..]);
    assert_eq!(straight.store.host().unwrap().params, resumed.store.host().unwrap().params);
    assert_eq!(straight.store.host().unwrap().opt.m, resumed.store.host().unwrap().opt.m);
    assert_eq!(straight.store.host().unwrap().opt.step, resumed.store.host().unwrap().opt.step);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_checkpoints_are_refused_and_leave_the_model_alone() {
    let good = tmp("good");
    let mut saved = Model::new(cfg()).unwrap();
    train_step(&mut saved, 0);
    saved.save(&good, Some("{}"), &[]).unwrap();
    let mut live = Model::new(ModelConfig { seed: 99, ..cfg() }).unwrap();
    let before = live.logits(&TOKENS, 2).unwrap();
    let before_m = live.store.host().unwrap().opt.m.clone();
    let case = |name: &str, edit: &dyn Fn(&PathBuf)| {
        let d = tmp(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors", "training_state.safetensors"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        edit(&d);
        d
    };
    // `alone`: the checkpoint is bad in itself, so loading it into a fresh model fails too.
    let mut expect = |name: &str, code: &str, alone: bool, edit: &dyn Fn(&PathBuf)| {
        let d = case(name, edit);
        let err = live.load_checkpoint(&d).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
        assert_eq!(Model::from_checkpoint(&d).err().map(|e| e.code()), alone.then_some(code), "{name}");
        assert_eq!(live.logits(&TOKENS, 2).unwrap(), before, "{name}: the live model changed");
        assert_eq!(live.store.host().unwrap().opt.m, before_m);
        std::fs::remove_dir_all(d).unwrap();
    };
    let model = |d: &PathBuf| d.join("model.safetensors");
    expect("truncated", "CHECKPOINT_CORRUPT", true, &|d| {
        let b = std::fs::read(model(d)).unwrap();
        std::fs::write(model(d), &b[..b.len() - 100]).unwrap();
    });
    expect("garbage", "CHECKPOINT_CORRUPT", true, &|d| std::fs::write(model(d), b"not a safetensors file").unwrap());
    expect("missing-file", "CHECKPOINT_MISSING", true, &|d| std::fs::remove_file(model(d)).unwrap());
    expect("missing-shard", "CHECKPOINT_MISSING", true, &|d| {
        std::fs::rename(model(d), d.join("model-00001-of-00002.safetensors")).unwrap();
        let index = r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    });
    expect("unsupported-architecture", "UNSUPPORTED_MODEL", true, &|d| {
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        c["model_type"] = "deepseek_v3".into();
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    });
    expect("unknown-field", "UNSUPPORTED_MODEL", true, &|d| {
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        c["n_group"] = 8.into();
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    });
    expect("bad-config", "CHECKPOINT_CORRUPT", true, &|d| std::fs::write(d.join("config.json"), "{ nope").unwrap());
    expect("torn-write", "CHECKPOINT_CORRUPT", true, &|d| {
        // A training state from another save next to this model file.
        let other = tmp("other");
        Model::new(cfg()).unwrap().save(&other, Some("{}"), &[]).unwrap();
        std::fs::copy(other.join("training_state.safetensors"), d.join("training_state.safetensors")).unwrap();
        std::fs::remove_dir_all(other).unwrap();
    });
    expect("other-architecture", "SHAPE_MISMATCH", false, &|d| {
        // Same names, wider MoE: the config and tensors agree with each other but not with `live`.
        Model::new(ModelConfig { moe_intermediate_size: 7, ..cfg() }).unwrap().save(d, None, &[]).unwrap();
    });
    expect("wrong-shape", "SHAPE_MISMATCH", true, &|d| {
        // config.json says 6 but the tensors were written for 7.
        Model::new(ModelConfig { moe_intermediate_size: 7, ..cfg() }).unwrap().save(d, None, &[]).unwrap();
        std::fs::copy(good.join("config.json"), d.join("config.json")).unwrap();
        // As a folder written by another tool would be: no manifest, so the shapes are what fails.
        std::fs::remove_file(d.join("moe_checkpoint.json")).unwrap();
    });
    let nowhere = std::env::temp_dir().join("moe-ckpt-no-such-folder");
    assert_eq!(Model::from_checkpoint(&nowhere).err().map(|e| e.code()), Some("CHECKPOINT_MISSING"));
    // And the good one loads into the live model, optimiser included.
    assert_eq!(live.load_checkpoint(&good).unwrap().as_deref(), Some("{}"));
    assert_eq!(live.logits(&TOKENS, 2).unwrap(), saved.logits(&TOKENS, 2).unwrap());
    assert_eq!(live.store.host().unwrap().opt.step, 1);
    std::fs::remove_dir_all(good).unwrap();
}

/// Rewrites a saved model.safetensors in a 16-bit float type `H` (as Hugging Face ships weights)
/// and checks that it loads widened exactly.
fn half_checkpoint_loads_widened<H: bytemuck::Pod>(dtype: safetensors::Dtype, narrow: fn(f32) -> H, widen: fn(H) -> f32) {
    let dir = tmp(&format!("{dtype:?}"));
    let mut m = Model::new(cfg()).unwrap();
    m.save(&dir, None, &[]).unwrap();
    let st = m.store.host().unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<H>)> = st.specs.iter().map(|s| (s.name.clone(), s.shape.clone(), st.params[s.range()].iter().map(|&x| narrow(x)).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        halves.iter().map(|(n, shape, d)| (n.clone(), safetensors::tensor::TensorView::new(dtype, shape.clone(), bytemuck::cast_slice(d)).unwrap())).collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    // A folder as Hugging Face would ship it: no manifest of ours.
    std::fs::remove_file(dir.join("moe_checkpoint.json")).unwrap();
    let (mut back, _) = Model::from_checkpoint(&dir).unwrap();
    let st = back.store.host().unwrap();
    for (s, (_, _, d)) in st.specs.iter().zip(&halves) {
        let want: Vec<f32> = d.iter().map(|&x| widen(x)).collect();
        assert_eq!(&st.params[s.range()], &want[..], "{}", s.name);
    }
    let (a, b) = (m.logits(&TOKENS, 2).unwrap(), back.logits(&TOKENS, 2).unwrap());
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d < 0.05, "{dtype:?} rounding moves logits by {d}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bf16_and_f16_checkpoints_load_widened_to_f32() {
    half_checkpoint_loads_widened(safetensors::Dtype::BF16, half::bf16::from_f32, f32::from);
    half_checkpoint_loads_widened(safetensors::Dtype::F16, half::f16::from_f32, f32::from);
}

#[test]
fn kv_cache_decoder_reproduces_the_full_forward() {
    let mut m = Model::new(cfg()).unwrap();
    let full = m.logits(&TOKENS, 1).unwrap();
    let mut dec = Decoder::new(&m, TOKENS.len());
    for (p, &t) in TOKENS.iter().enumerate() {
        let l = dec.next_logits(t);
        let want = &full[p * 13..][..13];
        let d = l.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-5, "position {p}: max |Δ| = {d}");
    }
}

#[test]
fn generation_is_greedy_at_temperature_zero_and_seeded_otherwise() {
    let mut m = Model::new(cfg()).unwrap();
    let greedy = GenerateOptions { temperature: 0.0, top_k: None, seed: 0 };
    let out = generate(&mut m, &[1, 2, 3], 5, &greedy).unwrap();
    // Greedy = argmax of the full forward over prompt + what was generated so far.
    let mut seq = vec![1u32, 2, 3];
    for &t in &out {
        let logits = m.logits(&seq, 1).unwrap();
        let last = &logits[(seq.len() - 1) * 13..];
        let arg = (0..13).max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a))).unwrap();
        assert_eq!(t as usize, arg);
        seq.push(t);
    }
    let hot = GenerateOptions { temperature: 1.5, top_k: Some(5), seed: 7 };
    assert_eq!(generate(&mut m, &[1], 8, &hot).unwrap(), generate(&mut m, &[1], 8, &hot).unwrap());
    assert_eq!(generate(&mut m, &[13], 2, &hot).err().map(|e| e.code()), Some("TOKEN_OUT_OF_RANGE"));
    assert_eq!(generate(&mut m, &[1], 40, &hot).err().map(|e| e.code()), Some("SHAPE_MISMATCH"));
}

#[test]
fn router_biases_are_saved_only_when_set_and_restore_the_routing() {
    let dir = tmp("bias");
    let mut m = Model::new(cfg()).unwrap();
    m.save(&dir, None, &[]).unwrap();
    let names = |dir: &PathBuf| -> Vec<String> {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect()
    };
    assert!(!names(&dir).iter().any(|n| n.contains("e_score_correction_bias")), "no bias tensors while all zero");
    let bias: Vec<f32> = (0..2 * 4).map(|i| [0.3, -0.2, 0.0, 0.1][i % 4]).collect();
    m.set_router_bias(&bias).unwrap();
    let routed = m.forward(&TOKENS, None, 2, false).unwrap().counts;
    m.save(&dir, None, &[]).unwrap();
    assert!(names(&dir).contains(&"model.layers.1.mlp.gate.e_score_correction_bias".to_string()));
    let (mut back, _) = Model::from_checkpoint(&dir).unwrap();
    assert_eq!(back.router_bias(), &bias[..]);
    assert_eq!(back.forward(&TOKENS, None, 2, false).unwrap().counts, routed, "the same routing after loading");
    assert_eq!(m.set_router_bias(&[1.0]).unwrap_err().code(), "SHAPE_MISMATCH");
    assert_eq!(m.set_router_bias(&[f32::NAN; 8]).unwrap_err().code(), "NON_FINITE");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_flipped_byte_inside_tensor_data_is_caught_by_the_checksum() {
    let dir = tmp("flip");
    let mut m = Model::new(cfg()).unwrap();
    m.save(&dir, Some("{}"), &[("tokenizer.json".into(), b"{}".to_vec())]).unwrap();
    assert!(dir.join("moe_checkpoint.json").exists() && dir.join("tokenizer.json").exists());
    Model::from_checkpoint(&dir).unwrap();
    for file in ["model.safetensors", "training_state.safetensors", "tokenizer.json"] {
        let good = std::fs::read(dir.join(file)).unwrap();
        let mut bad = good.clone();
        let at = bad.len().saturating_sub(7); // inside the data (the header comes first), for the safetensors files
        bad[at] ^= 0x10;
        std::fs::write(dir.join(file), &bad).unwrap();
        let e = Model::from_checkpoint(&dir).err().expect("a damaged file is refused");
        assert_eq!(e.code(), "CHECKPOINT_CORRUPT", "{file}: {e}");
        assert!(e.to_string().contains(file), "{file}: the message names the file: {e}");
        std::fs::write(dir.join(file), &good).unwrap();
    }
    Model::from_checkpoint(&dir).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sizes_a_config_json_asks_for_are_checked_before_allocation() {
    let dir = tmp("huge");
    let mut m = Model::new(cfg()).unwrap();
    m.save(&dir, None, &[]).unwrap();
    std::fs::remove_file(dir.join("moe_checkpoint.json")).unwrap();
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    c["vocab_size"] = json!(1u64 << 31);
    c["num_experts"] = json!(1u64 << 20);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = Model::from_checkpoint(&dir).err().unwrap();
    assert_eq!(e.code(), "OUT_OF_MEMORY", "{e}");
    c["hidden_size"] = json!(u64::MAX / 2);
    c["moe_intermediate_size"] = json!(u64::MAX / 2);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = Model::from_checkpoint(&dir).err().unwrap();
    assert_eq!(e.code(), "CHECKPOINT_CORRUPT", "{e}");
    assert!(e.to_string().contains("overflow"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_save_replaces_the_folder_whole_and_a_model_only_save_drops_the_training_state() {
    let dir = tmp("whole");
    let mut m = Model::new(cfg()).unwrap();
    m.save(&dir, Some("{}"), &[("tokenizer.json".into(), b"{}".to_vec())]).unwrap();
    m.save(&dir, None, &[]).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors", "moe_checkpoint.json"]);
    let parent: Vec<String> = std::fs::read_dir(dir.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.contains("whole")).collect();
    assert_eq!(parent.len(), 1, "no temporary folder stays: {parent:?}");
    assert_eq!(m.save(std::path::Path::new(""), None, &[]).err().map(|e| e.code()), Some("INVALID_ARGUMENT"));
    std::fs::remove_dir_all(dir).unwrap();
}
