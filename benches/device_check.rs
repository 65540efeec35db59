//! moe-device-check: the adapter's facts, then the throughput of the GPU kernels next to the CPU
//! reference measured in the same run, every GPU result checked against the CPU, and where the GPU
//! time goes per kernel (timestamp queries).
//!
//!   bash scripts/device-run.sh                                                  (a GPU machine)
//!   MOE_GPU_ADAPTER=software target/release/moe-device-check --quick           (lavapipe smoke)
//!
//! Sections: adapter (name, driver, limits, features, cooperative-matrix shapes); GEMM at n³ on
//! both tile configurations; MoE layer forward + backward at the benchmark shapes of `npm run
//! bench`; a training step of the demo model. Each timed section runs with checked shader modules,
//! then trusted ones (no index clamps, no loop counters). Throughput: useful FLOPs / wall time of
//! `--iters` repetitions after one warm-up, each GPU repetition submitted and waited for (what a
//! training step sees). A failing section prints FAIL and the run goes on; the exit status is 1
//! when any section failed.

use clap::Parser;
use moe_core::gpu::matmul::{force, matmul_forward, Tiles, View, BIG, SMALL};
use moe_core::Precision;
use moe_core::gpu::moe::{moe_backward, moe_forward, stats_len, GpuMoeActs};
use moe_core::gpu::profile;
use moe_core::gpu::{gpu, Gpu};
use moe_core::{AdamWConfig, Model, ModelConfig, MoeConfig, MoeLayer};
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::panic::{catch_unwind, AssertUnwindSafe};
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

/// max |a - b| / max |b| over the rows (of `width` values) that `keep` selects.
fn rel_err(a: &[f32], b: &[f32], width: usize, keep: &[bool]) -> f64 {
    let rows = || a.chunks(width).zip(b.chunks(width)).zip(keep).filter(|(_, k)| **k).map(|(r, _)| r);
    let scale = rows().flat_map(|(_, y)| y).fold(0.0f64, |m, &y| m.max(y.abs() as f64)).max(1e-30);
    rows().flat_map(|(x, y)| x.iter().zip(y)).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}

fn row(name: &str, gpu_s: f64, cpu_s: f64, flops: f64, err: f64) {
    println!(
        "{name:<44} gpu {:>9.3} ms {:>9.1} GFLOP/s | cpu {:>9.3} ms {:>8.1} GFLOP/s | gpu/cpu speed {:>6.2}x | rel err {err:.1e}",
        gpu_s * 1e3,
        flops / gpu_s / 1e9,
        cpu_s * 1e3,
        flops / cpu_s / 1e9,
        cpu_s / gpu_s
    );
}

/// Shader modules of a timed run: with wgpu's runtime checks, then trusted.
const MODULES: [(&str, bool); 2] = [("checked", false), ("trusted", true)];

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

/// C (n, n) = A · B^T on both devices, on the tiles picked by size and on SMALL, checked and
/// trusted; the GPU result checked against the CPU's and on 256 entries in f64.
fn gemm(g: &Gpu, n: usize, iters: usize) -> Result<(), String> {
    let (a, b) = (randn(n * n, 1, 1.0), randn(n * n, 2, 1.0));
    let mut cpu_c = vec![0.0f32; n * n];
    let cpu_s = time(iters.min(3), || moe_core::cpu::pool().install(|| moe_core::cpu::matmul::matmul_forward(&mut cpu_c, &a, &b, n, n, n, Precision::F32)));
    let (ga, gb, gc) = (g.upload(&a).unwrap(), g.upload(&b).unwrap(), g.alloc(n * n).unwrap());
    let mut worst_err: f64 = 0.0;
    let picked = Tiles::pick(&moe_core::gpu::matmul::Gemm::new(n, n, n));
    for tiles in [picked, if picked == BIG { SMALL } else { BIG }] {
        force(Some(tiles));
        for (modules, trusted) in MODULES {
            g.set_trusted_shaders(trusted);
            let gpu_s = time(iters, || {
                let mut enc = g.encoder();
                matmul_forward(g, &mut enc, View::from(&gc), View::from(&ga), View::from(&gb), n, n, n, Precision::F32);
                g.finish(enc, &[]).unwrap();
            });
            let c = g.read_f32(&gc).unwrap();
            let (mut worst, mut scale) = (0.0f64, 0.0f64);
            for s in 0..256 {
                let (i, j) = ((s * 7919) % n, (s * 104729) % n);
                let want: f64 = (0..n).map(|k| a[i * n + k] as f64 * b[j * n + k] as f64).sum();
                worst = worst.max((c[i * n + j] as f64 - want).abs());
                scale = scale.max(want.abs());
            }
            let err = rel_err(&c, &cpu_c, n, &vec![true; n]).max(worst / scale);
            worst_err = worst_err.max(err);
            row(&format!("gemm {n}³ {}x{} {modules}", tiles.bm, tiles.bn), gpu_s, cpu_s, 2.0 * (n * n * n) as f64, err);
        }
    }
    force(Some(picked));
    profiled(g, &format!("gemm {n}³ {}x{} trusted", picked.bm, picked.bn), || {
        let mut enc = g.encoder();
        matmul_forward(g, &mut enc, View::from(&gc), View::from(&ga), View::from(&gb), n, n, n, Precision::F32);
        g.finish(enc, &[]).unwrap();
    });
    force(None);
    if worst_err < 1e-3 { Ok(()) } else { Err(format!("GPU GEMM disagrees with the CPU (rel err {worst_err:.1e})")) }
}

/// Tokens whose K chosen experts differ between the CPU and the GPU, split into near ties (the
/// CPU's K-th and (K+1)-th scores within 1e-5: a different `exp` or summation order may flip them)
/// and real mismatches; returns (per token: routed alike, near ties, mismatches).
fn routing(cfg: &MoeConfig, weights: &[f32], gate_off: usize, x: &[f32], gpu_idx: &[u32]) -> (Vec<bool>, usize, usize) {
    let (c, e, k) = (cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok);
    let t = x.len() / c;
    let mut logits = vec![0.0; t * e];
    moe_core::cpu::matmul::matmul_forward(&mut logits, x, &weights[gate_off..gate_off + e * c], t, c, e, Precision::F32);
    let (mut probs, mut lse, mut idx, mut w) = (vec![0.0; t * e], vec![0.0; t], vec![0u32; t * k], vec![0.0; t * k]);
    moe_core::cpu::router::router_forward(&mut probs, &mut lse, &mut idx, &mut w, &logits, &vec![0.0; e], e, k, cfg.norm_topk_prob);
    let (mut same, mut ties, mut mismatches) = (vec![true; t], 0, 0);
    for ti in 0..t {
        let (mut a, mut b) = (idx[ti * k..][..k].to_vec(), gpu_idx[ti * k..][..k].to_vec());
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            continue;
        }
        same[ti] = false;
        let p = &probs[ti * e..][..e];
        let kth = idx[ti * k..][..k].iter().map(|&i| p[i as usize]).fold(f32::INFINITY, f32::min);
        let next = (0..e).filter(|i| !a.contains(&(*i as u32))).map(|i| p[i]).fold(f32::NEG_INFINITY, f32::max);
        if kth - next <= 1e-5 { ties += 1 } else { mismatches += 1 }
    }
    (same, ties, mismatches)
}

/// The MoE layer forward + backward (T = b * s tokens) on both devices from the same weights and
/// inputs; output and input gradient checked on the tokens routed alike (routing flips between
/// near ties are counted apart). FLOPs: the router and the K chosen experts only, backward = 2x
/// forward (as `npm run bench` counts them).
fn moe_layer(g: &Gpu, cfg: &MoeConfig, b: usize, s: usize, iters: usize) -> Result<(), String> {
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
    let weights = layer.store.host().unwrap().params.clone();
    let (gw, gg) = (g.upload(&weights).unwrap(), g.zeros(weights.len()).unwrap());
    let (gx, gdout, gp) = (g.upload(&x).unwrap(), g.upload(&dout).unwrap(), g.upload(&pressure).unwrap());
    let (mask, bias) = (g.upload(&vec![1u32; t]).unwrap(), g.zeros(e).unwrap());
    let (gout, gdx, gstats) = (g.alloc(t * c).unwrap(), g.alloc(t * c).unwrap(), g.alloc(stats_len(b, e)).unwrap());
    let mut acts = GpuMoeActs::default();
    let (wv, gv) = (layer.layout.map(&mut |s| View { buf: &gw, off: s.offset }), layer.layout.map(&mut |s| View { buf: &gg, off: s.offset }));
    let flops = 3.0 * (2.0 * (t * c * e) as f64 + 6.0 * (t * k * c * f) as f64);
    let mut failed = Vec::new();
    let step = |acts: &mut GpuMoeActs| {
        let mut enc = g.encoder();
        moe_forward(g, &mut enc, (&gout).into(), (&gstats).into(), acts, (&gx).into(), &mask, (&bias).into(), &wv, cfg, b, s, Precision::F32).unwrap();
        moe_backward(g, &mut enc, (&gdx).into(), &gv, acts, (&gdout).into(), (&gx).into(), &mask, (&gp).into(), 1e-4, &wv, cfg, Precision::F32).unwrap();
        g.finish(enc, &[]).unwrap();
    };
    for (modules, trusted) in MODULES {
        g.set_trusted_shaders(trusted);
        let gpu_s = time(iters, || step(&mut acts));
        let (out, dx) = (g.read_f32(&gout).unwrap(), g.read_f32(&gdx).unwrap());
        let gpu_idx = g.read_u32(acts.routing().unwrap()).unwrap();
        let (same, ties, mismatches) = routing(cfg, &weights, layer.layout.gate.offset, &x, &gpu_idx);
        let err = rel_err(&out, &cpu_out, c, &same).max(rel_err(&dx, &cpu_dx, c, &same));
        row(&format!("moe layer T={t} d={c} F={f} E={e} K={k} {modules}"), gpu_s, cpu_s, flops, err);
        println!("{:<44} routing: {ties} of {t} tokens flipped between near ties, {mismatches} real mismatches", "");
        if mismatches > 0 || err >= 1e-3 {
            failed.push(format!("{modules}: {mismatches} routing mismatches, rel err {err:.1e} on the tokens routed alike"));
        }
    }
    profiled(g, &format!("moe layer T={t} E={e} K={k} trusted"), || step(&mut acts));
    if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
}

/// One training step (forward, backward, AdamW, zero_grad) of a model on each device, same data;
/// the step losses compared.
fn model_step(cfg: &ModelConfig, b: usize, s: usize, iters: usize) -> Result<(), String> {
    let tokens: Vec<u32> = (0..b * s).map(|i| ((i * 2654435761usize) >> 7) as u32 % cfg.vocab_size as u32).collect();
    let opt = AdamWConfig::from_json(serde_json::json!({ "lr": 1e-3, "maxGradNorm": 1.0 })).unwrap();
    let pressure = vec![1e-3f32; cfg.num_hidden_layers * b * cfg.num_experts];
    let step = |m: &mut Model| {
        let st = m.forward(&tokens, None, b, true).unwrap();
        m.backward(&pressure, 1.0 / (b * s) as f32, 1e-3 / (b * s) as f32).unwrap();
        m.store.step(&opt).unwrap();
        m.store.zero_grad().unwrap();
        st.loss
    };
    let run = |device: &str| {
        let mut m = Model::new(cfg.clone()).unwrap();
        m.to_device(Some(device)).unwrap();
        let mut losses = Vec::new();
        let secs = time(iters, || losses.push(step(&mut m)));
        (secs, losses, m)
    };
    let (cpu_s, cl, _) = run("cpu");
    let params = moe_core::layout::Layout::len(&moe_core::layout::ModelParams::layout(cfg)) as f64;
    // 6 FLOPs per parameter and token is the dense estimate; experts are sparse, so this is an
    // upper bound used only to put both devices on one scale.
    let flops = 6.0 * params * (b * s) as f64;
    let (mut worst, g) = (0.0f64, gpu().unwrap());
    for (modules, trusted) in MODULES {
        g.set_trusted_shaders(trusted);
        let (gpu_s, gl, mut m) = run("gpu");
        let err = gl.iter().zip(&cl).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max);
        worst = worst.max(err);
        row(&format!("train step B={b} S={s} {modules}"), gpu_s, cpu_s, flops, err);
        println!("{:<44} gpu {:>9.0} tok/s | cpu {:>9.0} tok/s", "", (b * s) as f64 / gpu_s, (b * s) as f64 / cpu_s);
        if trusted {
            profiled(g, &format!("train step B={b} S={s} trusted"), || {
                step(&mut m);
            });
        }
    }
    // Routing flips between near ties change a loss by far less than this.
    if worst < 1e-3 { Ok(()) } else { Err(format!("step losses differ by {worst:.1e} (relative)")) }
}

/// Runs `f` once more with timestamp queries and prints the GPU time per kernel (entry point and
/// MODE), largest first: where the time goes.
fn profiled(g: &Gpu, what: &str, f: impl FnOnce()) {
    if !profile::start(g) {
        return println!("profile {what}: the adapter offers no timestamp queries");
    }
    f();
    let (times, untimed) = profile::stop();
    let total: f64 = times.iter().map(|k| k.seconds).sum();
    println!("profile {what}: {:.3} ms of GPU time in {} dispatches ({untimed} untimed)", total * 1e3, times.iter().map(|k| k.dispatches).sum::<u64>());
    for k in &times {
        let name = match k.mode {
            Some(m) => format!("{}[MODE {m}]", k.entry),
            None => k.entry.to_string(),
        };
        println!("  {name:<28} {:>6} dispatches {:>10.3} ms {:>5.1}%", k.dispatches, k.seconds * 1e3, 100.0 * k.seconds / total.max(1e-30));
    }
}

/// Runs a section; a panic or an error prints FAIL and the run goes on. True when it passed.
fn section(name: &str, f: impl FnOnce() -> Result<(), String>) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            println!("FAIL {name}: {e}");
            false
        }
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            println!("FAIL {name}: panicked: {}", msg.unwrap_or_default());
            false
        }
    }
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
    let moe = |d: usize, f: usize, e: usize, k: usize| -> MoeConfig {
        serde_json::from_value(serde_json::json!({ "hidden_size": d, "moe_intermediate_size": f, "num_experts": e,
            "num_experts_per_tok": k, "norm_topk_prob": true })).unwrap()
    };
    // The benchmark shapes of `npm run bench` (T = 4096), or tiny ones with --quick.
    let (b, s) = if args.quick { (2, 32) } else { (8, 512) };
    let (d, scale) = if args.quick { (32, 8) } else { (512, 1) };
    let layers = [moe(d, 256 / scale, 16, 4), moe(d, 128 / scale, 64, 8)];
    let demo: ModelConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 1024, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "moe_intermediate_size": 128, "num_experts": 16,
        "num_experts_per_tok": 2, "norm_topk_prob": true
    }))
    .unwrap();
    let (mb, ms) = if args.quick { (2, 16) } else { (8, 128) };
    let mut ok = section("gemm", || gemm(g, n, iters));
    for cfg in &layers {
        ok &= section("moe layer", || moe_layer(g, cfg, b, s, iters));
    }
    ok &= section("train step", || model_step(&demo, mb, ms, iters));
    println!("device check: {}", if ok { "all sections passed" } else { "FAILED (see FAIL lines)" });
    std::process::exit(if ok { 0 } else { 1 });
}
