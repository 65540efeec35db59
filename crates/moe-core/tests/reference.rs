//! End-to-end reference (STYLE habit 7), per architecture: a tiny model written by Hugging Face
//! transformers (Qwen3-MoE with and without dense layers, Qwen2-MoE with its shared expert, OLMoE,
//! Mixtral with a sliding window) is loaded with `Model::from_checkpoint`, and our forward, backward
//! and AdamW are compared with PyTorch's tensor by tensor: logits, loss, routing statistics, every
//! gradient by its HF name, and the losses of 5 AdamW steps — on the CPU and on the GPU. Every
//! tolerance sits in `TOLERANCES` below. The checkpoints come as transformers writes them: one file,
//! shards with an index, and fused expert tensors.
//!
//! The fixtures, tests/fixtures/reference/<case>/ (the checkpoint, and reference.safetensors; its
//! layout is documented at the top of the script), are committed because CI has no PyTorch.
//! Regenerate them, with the pinned peers of scripts/install-peers.sh, by running from the
//! repository root:
//!
//!     .venv/bin/python scripts/make_reference.py
//!
//! Our API does not expose per-token router probabilities, so the fixture's (B*S, E) probabilities
//! are compared through what ModelStats exposes: their per-sequence sums over valid positions
//! (`score_sums`) and the sums of each valid position's top-k probabilities (`topk_score_sums`).

use moe_core::{AdamWConfig, Model, Precision};
use safetensors::{Dtype, SafeTensors};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;

/// A comparison passes when |ours - reference| <= atol + rtol * |reference| everywhere, or, for a
/// tolerance `by_norm`, when the tensor's error norm ||ours - reference||_2 <= atol + rtol *
/// ||reference||_2 (rounding errors of a lower precision are small relative to a whole tensor,
/// not to each of its near-zero entries).
struct Tolerance {
    quantity: &'static str,
    atol: f64,
    rtol: f64,
    by_norm: bool,
    reason: &'static str,
}

const TOLERANCES: [Tolerance; 7] = [
    Tolerance { quantity: "logits", atol: 1e-5, rtol: 0.0, by_norm: false, reason: "fp32 on both sides, |logit| < 3: only summation order differs" },
    Tolerance { quantity: "loss", atol: 5e-6, rtol: 0.0, by_norm: false, reason: "mean CE near 4.5, where one f32 ulp is 4.8e-7" },
    Tolerance { quantity: "expert counts", atol: 0.0, rtol: 0.0, by_norm: false, reason: "integers; every top-k choice is >= 1e-4 from a tie (fixture's min_topk_gap)" },
    Tolerance { quantity: "router score sums", atol: 5e-6, rtol: 0.0, by_norm: false, reason: "per-sequence sums of <= 8 fp32 probabilities, values <= 8" },
    Tolerance { quantity: "router top-k sums", atol: 5e-6, rtol: 0.0, by_norm: false, reason: "the same sums over the top-k probabilities only" },
    Tolerance { quantity: "gradients", atol: 2e-6, rtol: 1e-5, by_norm: false, reason: "fp32 backward; gradients up to about 1" },
    Tolerance { quantity: "AdamW losses", atol: 1e-5, rtol: 0.0, by_norm: false, reason: "losses 2.1-4.9; dropping weight decay moves steps 2-5 by 1e-4 to 3e-3" },
];

/// bf16 GEMM inputs (`Precision::Bf16`) against the same f32 reference: each operand of the large
/// GEMMs carries a relative rounding error up to 2^-9, so the bounds follow the numbers' sizes, not
/// f32 summation order; tensors are compared by the norm of their error. The worst cases over the
/// five fixtures (CPU and GPU alike), printed by `cargo test --test reference bf16 -- --nocapture`:
/// logits 0.75% of their norm, loss 1.9e-3, score sums 1.7e-2, top-k sums 8.1e-3, gradients 6.4%
/// of their norm (a k_norm weight: sums over every position with cancellation; the projections'
/// stay under 5%), AdamW losses 4.6e-2.
const BF16_TOLERANCES: [Tolerance; 7] = [
    Tolerance { quantity: "logits", atol: 0.0, rtol: 1e-2, by_norm: true, reason: "each GEMM input off by up to 2^-9 relative" },
    Tolerance { quantity: "loss", atol: 4e-3, rtol: 0.0, by_norm: false, reason: "mean CE near 4.5: the logits' errors average out" },
    Tolerance { quantity: "expert counts", atol: 0.0, rtol: 0.0, by_norm: false, reason: "the routers stay f32 and every top-k choice is >= 1e-4 from a tie" },
    Tolerance { quantity: "router score sums", atol: 4e-2, rtol: 0.0, by_norm: false, reason: "the routers' inputs come from bf16 projections; sums of <= 8 probabilities" },
    Tolerance { quantity: "router top-k sums", atol: 2e-2, rtol: 0.0, by_norm: false, reason: "the same sums over the top-k probabilities only" },
    Tolerance { quantity: "gradients", atol: 0.0, rtol: 1e-1, by_norm: true, reason: "bf16 inputs in every backward GEMM, errors compounding over the layers" },
    Tolerance { quantity: "AdamW losses", atol: 1e-1, rtol: 0.0, by_norm: false, reason: "five steps of lr 1e-2 on bf16 gradients, losses 2.1-4.9" },
];

/// The fixtures' folders (scripts/make_reference.py's CASES) and how each stores its weights.
const CASES: [(&str, &str); 5] =
    [("qwen3_moe", "per_expert"), ("qwen3_moe_dense", "sharded"), ("qwen2_moe", "fused"), ("olmoe", "sharded"), ("mixtral", "per_expert")];

/// The optimiser the script used (torch.optim.AdamW, decay on rank >= 2 tensors, no clipping).
fn adamw_json() -> serde_json::Value {
    json!({"lr": 1e-2, "weightDecay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8})
}

const MAGIC: &str = "moe-trainer-reference";
const VERSION: &str = "2";

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference").join(case)
}

/// Compares tensor by tensor, prints max |Δ| of each, and remembers every failure.
struct Report {
    tolerances: &'static [Tolerance],
    failures: Vec<String>,
    worst: HashMap<&'static str, f64>,
}

impl Report {
    fn check(&mut self, quantity: &'static str, name: &str, ours: &[f32], reference: &[f32]) {
        let tol = self.tolerances.iter().find(|t| t.quantity == quantity).expect("quantity in the tolerances");
        if ours.len() != reference.len() {
            self.failures.push(format!("{name}: {} values, the reference has {}", ours.len(), reference.len()));
            return;
        }
        let (mut worst, mut at, mut bad) = (0.0f64, 0, None);
        let (mut err2, mut ref2) = (0.0f64, 0.0f64);
        for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
            let d = (a as f64 - b as f64).abs();
            (err2, ref2) = (err2 + d * d, ref2 + b as f64 * b as f64);
            if d > worst || d.is_nan() {
                (worst, at) = (d, i);
            }
            let within = d <= tol.atol + tol.rtol * (b as f64).abs(); // false for NaN too
            if !tol.by_norm && !within && bad.is_none() {
                bad = Some(format!("{name}[{i}]: ours {a} vs reference {b} (|Δ| = {d:.3e}; {quantity}: atol {:e}, rtol {:e})", tol.atol, tol.rtol));
            }
        }
        let (err, norm) = (err2.sqrt(), ref2.sqrt());
        eprintln!("{name:<52} max |Δ| = {worst:.3e} at {at}, ||Δ|| / ||reference|| = {:.3e}", err / norm);
        // by_norm: the worst is the relative error norm (the absolute one for an all-zero reference)
        let measure = if tol.by_norm { if norm > 0.0 { err / norm } else { err } } else { worst };
        if tol.by_norm && !(err <= tol.atol + tol.rtol * norm) {
            bad = Some(format!("{name}: ||Δ|| = {err:.3e} for ||reference|| = {norm:.3e} ({quantity}: atol {:e}, rtol {:e} of the norm)", tol.atol, tol.rtol));
        }
        let w = self.worst.entry(quantity).or_insert(0.0);
        *w = w.max(measure);
        self.failures.extend(bad);
    }
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("reference.safetensors has no {name}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    bytemuck::pod_collect_to_vec(t.data())
}

/// The tolerances of a precision's comparisons with the f32 reference.
fn tolerances(p: Precision) -> &'static [Tolerance] {
    match p {
        Precision::F32 => &TOLERANCES,
        Precision::Bf16 => &BF16_TOLERANCES,
    }
}

/// One case on one device ("cpu" or "gpu") in precision `p`; returns the report of every comparison.
fn check_case(case: &str, layout: &str, device: &str, p: Precision) -> Report {
    let dir = fixture(case);
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("fixture present (see the header to regenerate)");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    assert_eq!(meta.get("magic").map(String::as_str), Some(MAGIC), "not a moe-trainer reference file");
    assert_eq!(meta.get("version").map(String::as_str), Some(VERSION), "reference format version; regenerate the fixture");
    assert_eq!(meta.get("layout").map(String::as_str), Some(layout), "{case}: the weights' layout changed");
    eprintln!("\n== {case} on the {device} in {} ({} weights; torch {}, transformers {})", p.name(), layout, meta["torch"], meta["transformers"]);
    let opt_json: serde_json::Value = serde_json::from_str(&meta["adamw"]).unwrap();
    assert_eq!(opt_json, adamw_json(), "the script's AdamW settings changed");
    let opt = AdamWConfig::from_json(adamw_json()).unwrap();
    assert!(opt.max_grad_norm.is_none() && opt.schedule.is_none());
    let n_steps: usize = meta["adamw_steps"].parse().unwrap();

    let tok = st.tensor("tokens").unwrap();
    assert_eq!(tok.dtype(), Dtype::I32);
    let (b, s) = (tok.shape()[0], tok.shape()[1]);
    let tokens: Vec<u32> = bytemuck::pod_collect_to_vec::<u8, i32>(tok.data()).into_iter().map(|t| t as u32).collect();
    let mask = st.tensor("mask").unwrap().data().to_vec();
    let valid = st.tensor("valid").unwrap().data().to_vec();
    assert_eq!((mask.len(), valid.len()), (b * s, b * s));

    let (mut m, trainer) = Model::from_checkpoint(&dir).expect("the transformers checkpoint loads");
    assert!(trainer.is_none());
    assert_eq!(m.cfg.model_type.name(), meta["model_type"]);
    m.to_device(Some(device)).unwrap();
    m.set_precision(p);
    let moe_layers = m.cfg.moe_layers();
    let moe_layers_json: Vec<usize> = serde_json::from_str(&meta["moe_layers"]).unwrap();
    assert_eq!(moe_layers, moe_layers_json, "our MoE layers are transformers'");
    let (e, k) = (m.cfg.num_experts, m.cfg.num_experts_per_tok);
    let mut r = Report { tolerances: tolerances(p), failures: Vec::new(), worst: HashMap::new() };

    // Forward: logits, loss (summed CE / valid targets), routing statistics (a row per MoE layer).
    let stats = m.forward(&tokens, Some(&mask), b, true).unwrap();
    let per_seq: Vec<f32> = valid.chunks(s).map(|c| c.iter().map(|&v| v as f32).sum()).collect();
    assert_eq!(stats.valid_tokens, per_seq, "our valid positions are the script's");
    let t_valid: f32 = per_seq.iter().sum();
    r.check("loss", "loss", &[(stats.loss / t_valid as f64) as f32], &f32s(&st, "loss"));
    let logits = m.logits(&tokens, b).unwrap();
    r.check("logits", "logits", &logits, &f32s(&st, "logits"));
    for (row, layer) in moe_layers.iter().enumerate() {
        let ours: Vec<f32> = (0..e).map(|i| (0..b).map(|bb| stats.counts[(row * b + bb) * e + i]).sum()).collect();
        r.check("expert counts", &format!("counts.{layer}"), &ours, &f32s(&st, &format!("counts.{layer}")));
        // The reference's per-position probabilities, reduced as ModelStats reduces ours.
        let probs = f32s(&st, &format!("router_probs.{layer}"));
        let (mut sums, mut topk) = (vec![0.0f64; b * e], vec![0.0f64; b]);
        for t in (0..b * s).filter(|&t| valid[t] != 0) {
            let p = &probs[t * e..][..e];
            p.iter().enumerate().for_each(|(i, &x)| sums[t / s * e + i] += x as f64);
            let mut sorted = p.to_vec();
            sorted.sort_by(|x, y| y.total_cmp(x));
            topk[t / s] += sorted[..k].iter().map(|&x| x as f64).sum::<f64>();
        }
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        r.check("router score sums", &format!("router_probs.{layer} summed per sequence"), &stats.score_sums[row * b * e..][..b * e], &f(sums));
        r.check("router top-k sums", &format!("router_probs.{layer} top-{k} summed per sequence"), &stats.topk_score_sums[row * b..][..b], &f(topk));
    }

    // Backward of the mean loss: lm_scale = 1 / T_valid, no router pressure, no z-loss.
    let zeros = vec![0.0f32; moe_layers.len() * b * e];
    m.backward(&zeros, 1.0 / t_valid, 0.0).unwrap();
    let host = m.store.host().unwrap();
    let grad_names: Vec<&str> = st.names().into_iter().filter_map(|n| n.strip_prefix("grad.")).collect();
    assert_eq!(grad_names.len(), host.specs.len(), "one reference gradient per parameter");
    for spec in &host.specs {
        r.check("gradients", &format!("grad.{}", spec.name), host.grad(&spec.name).unwrap(), &f32s(&st, &format!("grad.{}", spec.name)));
    }

    // AdamW on the same batch: the loss before each step, then after the last.
    let mut losses = Vec::new();
    for _ in 0..n_steps {
        m.store.zero_grad().unwrap();
        losses.push((m.forward(&tokens, Some(&mask), b, true).unwrap().loss / t_valid as f64) as f32);
        m.backward(&zeros, 1.0 / t_valid, 0.0).unwrap();
        m.store.step(&opt).unwrap();
    }
    r.check("AdamW losses", "adamw_losses", &losses, &f32s(&st, "adamw_losses"));
    let after = (m.forward(&tokens, Some(&mask), b, false).unwrap().loss / t_valid as f64) as f32;
    r.check("AdamW losses", "adamw_loss_after", &[after], &f32s(&st, "adamw_loss_after"));
    eprintln!("losses: ours {losses:?} then {after}");
    r
}

/// Every case on `device`; fails listing every comparison out of tolerance.
fn check_all(device: &str, p: Precision) {
    let mut failures = Vec::new();
    let mut worst: HashMap<&'static str, f64> = HashMap::new();
    for (case, layout) in CASES {
        let r = check_case(case, layout, device, p);
        failures.extend(r.failures.into_iter().map(|f| format!("{case} on the {device} in {}: {f}", p.name())));
        for (q, w) in r.worst {
            let x = worst.entry(q).or_insert(0.0);
            *x = x.max(w);
        }
    }
    eprintln!("\nmax |Δ| per quantity over every case on the {device} in {} (tolerance):", p.name());
    for t in tolerances(p) {
        let how = if t.by_norm { "of the norm" } else { "" };
        eprintln!("  {:<18} {:.3e}  (atol {:e}, rtol {:e} {how}: {})", t.quantity, worst.get(t.quantity).copied().unwrap_or(f64::NAN), t.atol, t.rtol, t.reason);
    }
    assert!(failures.is_empty(), "{} comparisons failed:\n{}", failures.len(), failures.join("\n"));
}

/// Skips loudly (or fails under MOE_REQUIRE_GPU=1) when there is no GPU adapter.
fn gpu_or_skip(test: &str) -> bool {
    if let Err(e) = moe_core::gpu::select(Some("gpu")) {
        assert!(std::env::var("MOE_REQUIRE_GPU").as_deref() != Ok("1"), "MOE_REQUIRE_GPU=1 but {e}");
        eprintln!("\n*** SKIPPED {test}: {e} ***\n");
        return false;
    }
    true
}

#[test]
fn matches_transformers_and_torch_adamw_on_the_cpu() {
    check_all("cpu", Precision::F32);
}

#[test]
fn matches_transformers_and_torch_adamw_on_the_gpu() {
    if gpu_or_skip("matches_transformers_and_torch_adamw_on_the_gpu") {
        check_all("gpu", Precision::F32);
    }
}

#[test]
fn bf16_stays_near_transformers_f32_on_the_cpu() {
    check_all("cpu", Precision::Bf16);
}

#[test]
fn bf16_stays_near_transformers_f32_on_the_gpu() {
    if gpu_or_skip("bf16_stays_near_transformers_f32_on_the_gpu") {
        check_all("gpu", Precision::Bf16);
    }
}
