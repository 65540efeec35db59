//! moe-device-check: the adapter's facts, then the throughput of the GPU kernels next to the CPU
//! reference measured in the same run, every GPU result checked against the CPU.
//!
//!   cargo build --release -p moe-bench && target/release/moe-device-check          (a GPU machine)
//!   MOE_GPU_ADAPTER=software target/release/moe-device-check --quick             (lavapipe smoke)
//!
//! Sections: adapter (name, driver, limits, features, cooperative-matrix shapes); GEMM at n³;
//! MoE layer forward + backward at the benchmark shapes of `npm run bench`; a training step of the
//! demo model. Throughput: useful FLOPs / wall time of `--iters` repetitions after one warm-up,
//! each GPU repetition submitted and waited for (what a training step sees).

use clap::Parser;
use moe_core::gpu::matmul::{matmul_forward, View};
use moe_core::gpu::moe::{moe_backward, moe_forward, stats_len, GpuMoeActs};
use moe_core::gpu::{gpu, Gpu};
use moe_core::{AdamWConfig, Model, ModelConfig, MoeConfig, MoeLayer};
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "GPU adapter facts and kernel throughput against the CPU reference")]
struct Args {
    /// tiny shapes (a software adapter runs under 1 GFLOP/s)
    #[arg(long)]
    quick: bool,
    /// timed repetitions after one warm-up
    #[arg(long, default_value_t = 5)]
    iters: usize,
}

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| scale * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)).collect()
}

/// Seconds per call of `f`: one warm-up, then the mean of `iters` calls.
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    t0.elapsed().as_secs_f64() / iters as f64
}

/// max |a - b| / max |b|: one relative figure for a whole tensor.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64)).max(1e-30);
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}

fn row(name: &str, gpu_s: f64, cpu_s: f64, flops: f64, err: f64) {
    println!(
        "{name:<34} gpu {:>9.3} ms {:>9.1} GFLOP/s | cpu {:>9.3} ms {:>8.1} GFLOP/s | gpu/cpu speed {:>6.2}x | rel err {err:.1e}",
        gpu_s * 1e3,
        flops / gpu_s / 1e9,
        cpu_s * 1e3,
        flops / cpu_s / 1e9,
        cpu_s / gpu_s
    );
}

fn adapter(g: &Gpu) {
    let l = &g.limits;
    println!("adapter: {}", g.describe());
    println!(
        "limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations/workgroup, {} workgroups/dim, subgroup {}..{}",
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_compute_workgroup_storage_size >> 10,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroups_per_dimension,
        g.info.subgroup_min_size,
        g.info.subgroup_max_size
    );
    println!("features used: {:?}", g.features);
    if g.cooperative_matrix.is_empty() {
        println!("cooperative matrix: none offered");
    }
    for p in &g.cooperative_matrix {
        println!("cooperative matrix: {p:?}");
    }
}

/// C (n, n) = A · B^T on both devices; the GPU result checked on 256 sampled entries in f64.
fn gemm(g: &Gpu, n: usize, iters: usize) {
    let (a, b) = (randn(n * n, 1, 1.0), randn(n * n, 2, 1.0));
    let (ga, gb, gc) = (g.upload(&a).unwrap(), g.upload(&b).unwrap(), g.alloc(n * n).unwrap());
    let gpu_s = time(iters, || {
        let mut enc = g.encoder();
        matmul_forward(g, &mut enc, View::from(&gc), View::from(&ga), View::from(&gb), n, n, n);
        g.finish(enc, &[]).unwrap();
    });
    let c = g.read_f32(&gc).unwrap();
    let mut cpu_c = vec![0.0f32; n * n];
    let cpu_s = time(iters.min(3), || moe_core::cpu::pool().install(|| moe_core::cpu::matmul::matmul_forward(&mut cpu_c, &a, &b, n, n, n)));
    let (mut worst, mut scale) = (0.0f64, 0.0f64);
    for s in 0..256 {
        let (i, j) = ((s * 7919) % n, (s * 104729) % n);
        let want: f64 = (0..n).map(|k| a[i * n + k] as f64 * b[j * n + k] as f64).sum();
        worst = worst.max((c[i * n + j] as f64 - want).abs());
        scale = scale.max(want.abs());
    }
    row(&format!("gemm {n}x{n}x{n}"), gpu_s, cpu_s, 2.0 * (n * n * n) as f64, worst / scale);
    assert!(rel_err(&c, &cpu_c) < 1e-3, "GPU GEMM disagrees with the CPU");
}

/// The MoE layer forward + backward (T = b * s tokens) on both devices from the same weights and
/// inputs; output and input gradient checked. FLOPs: the router and the K chosen experts only,
/// backward = 2x forward (as `npm run bench` counts them).
fn moe_layer(g: &Gpu, cfg: &MoeConfig, b: usize, s: usize, iters: usize) {
    let (t, c, f, e, k) = (b * s, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let (x, dout) = (randn(t * c, 3, 1.0), randn(t * c, 4, 1.0));
    let pressure = vec![1e-3f32; b * e];
    let mut layer = MoeLayer::new(cfg.clone()).unwrap();
    let mut cpu_out = Vec::new();
    let mut cpu_dx = Vec::new();
    let cpu_s = time(iters.min(3), || {
        cpu_out = layer.forward(&x, None, b, true).unwrap().out;
        cpu_dx = layer.backward(&dout, &pressure, 1e-4).unwrap();
    });
    let weights = &layer.store.host().unwrap().params;
    let (gw, gg) = (g.upload(weights).unwrap(), g.zeros(weights.len()).unwrap());
    let (gx, gdout, gp) = (g.upload(&x).unwrap(), g.upload(&dout).unwrap(), g.upload(&pressure).unwrap());
    let (mask, bias) = (g.upload(&vec![1u32; t]).unwrap(), g.zeros(e).unwrap());
    let (gout, gdx, gstats) = (g.alloc(t * c).unwrap(), g.alloc(t * c).unwrap(), g.alloc(stats_len(b, e)).unwrap());
    let mut acts = GpuMoeActs::default();
    let (wv, gv) = (layer.layout.map(&mut |s| View { buf: &gw, off: s.offset }), layer.layout.map(&mut |s| View { buf: &gg, off: s.offset }));
    let gpu_s = time(iters, || {
        let mut enc = g.encoder();
        moe_forward(g, &mut enc, (&gout).into(), (&gstats).into(), &mut acts, (&gx).into(), &mask, (&bias).into(), &wv, cfg, b, s).unwrap();
        moe_backward(g, &mut enc, (&gdx).into(), &gv, &mut acts, (&gdout).into(), (&gx).into(), &mask, (&gp).into(), 1e-4, &wv, cfg).unwrap();
        g.finish(enc, &[]).unwrap();
    });
    let (out, dx) = (g.read_f32(&gout).unwrap(), g.read_f32(&gdx).unwrap());
    let flops = 3.0 * (2.0 * (t * c * e) as f64 + 6.0 * (t * k * c * f) as f64);
    let err = rel_err(&out, &cpu_out).max(rel_err(&dx, &cpu_dx));
    row(&format!("moe layer T={t} d={c} F={f} E={e} K={k}"), gpu_s, cpu_s, flops, err);
    assert!(err < 1e-3, "GPU MoE layer disagrees with the CPU");
}

/// One training step (forward, backward, AdamW) of a model on each device, same data.
fn model_step(cfg: &ModelConfig, b: usize, s: usize, iters: usize) {
    let tokens: Vec<u32> = (0..b * s).map(|i| ((i * 2654435761usize) >> 7) as u32 % cfg.vocab_size as u32).collect();
    let opt = AdamWConfig::from_json(serde_json::json!({ "lr": 1e-3, "maxGradNorm": 1.0 })).unwrap();
    let pressure = vec![1e-3f32; cfg.num_hidden_layers * b * cfg.num_experts];
    let run = |device: &str| {
        let mut m = Model::new(cfg.clone()).unwrap();
        m.to_device(Some(device)).unwrap();
        let mut losses = Vec::new();
        let secs = time(iters, || {
            let st = m.forward(&tokens, None, b, true).unwrap();
            m.backward(&pressure, 1.0 / (b * s) as f32, 1e-3 / (b * s) as f32).unwrap();
            m.store.step(&opt).unwrap();
            m.store.zero_grad().unwrap();
            losses.push(st.loss);
        });
        (secs, losses)
    };
    let (gpu_s, gl) = run("gpu");
    let (cpu_s, cl) = run("cpu");
    let params = moe_core::layout::Layout::len(&moe_core::layout::ModelParams::layout(cfg)) as f64;
    // 6 FLOPs per parameter and token is the dense estimate; experts are sparse, so this is an
    // upper bound used only to put both devices on one scale.
    let flops = 6.0 * params * (b * s) as f64;
    let err = gl.iter().zip(&cl).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max);
    row(&format!("train step B={b} S={s}"), gpu_s, cpu_s, flops, err);
    println!("{:<34} gpu {:>9.0} tok/s | cpu {:>9.0} tok/s", "", (b * s) as f64 / gpu_s, (b * s) as f64 / cpu_s);
}

fn main() {
    let args = Args::parse();
    let g = match gpu() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("moe-device-check: {e}");
            std::process::exit(2);
        }
    };
    adapter(g);
    let (n, iters) = if args.quick { (256, 1) } else { (4096, args.iters) };
    gemm(g, n, iters);
    let moe = |d: usize, f: usize, e: usize, k: usize| -> MoeConfig {
        serde_json::from_value(serde_json::json!({ "hidden_size": d, "moe_intermediate_size": f, "num_experts": e,
            "num_experts_per_tok": k, "norm_topk_prob": true })).unwrap()
    };
    // The benchmark shapes of `npm run bench` (T = 4096), or tiny ones with --quick.
    let (b, s) = if args.quick { (2, 32) } else { (8, 512) };
    let (d, scale) = if args.quick { (32, 8) } else { (512, 1) };
    moe_layer(g, &moe(d, 256 / scale, 16, 4), b, s, iters);
    moe_layer(g, &moe(d, 128 / scale, 64, 8), b, s, iters);
    let demo: ModelConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 1024, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "moe_intermediate_size": 128, "num_experts": 16,
        "num_experts_per_tok": 2, "norm_topk_prob": true
    }))
    .unwrap();
    let (b, s) = if args.quick { (2, 16) } else { (8, 128) };
    model_step(&demo, b, s, iters);
}
