//! CPU benchmark of the MoE layer forward + backward, next to the large-matrix GEMM rate of the
//! `gemm` crate measured in the same run on the same thread pool (the practical peak of the
//! machine). Shapes: the foundation shape (T=4096, d=512, F=256, E=16, K=4), a fine-grained one
//! (E=64, K=8, F=128), step time against T, and against E at fixed K (dropless compute follows K);
//! then the ~100 M model's shapes at T = 1,024 tokens (configs/qwen3-moe-100m.json): its MoE layer
//! and each of its large GEMMs against the GEMM rate — the dense ones, and the experts' grouped
//! GEMMs alone (forward and backward, without routing, gathers and combine). Prints a readable line
//! and a JSON line per measurement. MOE_NUM_THREADS sets the threads.

use moe_core::cpu::experts::{experts_backward, experts_forward};
use moe_core::cpu::matmul::matmul_forward;
use moe_core::layout::ExpertParams;
use moe_core::Precision;
use moe_core::{MoeConfig, MoeLayer};
use std::time::Instant;

/// Median of `reps` timed runs after one warm-up, in seconds.
fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ts[reps / 2]
}

/// Forward + backward of one layer; returns (forward s, backward s, useful GFLOP per fwd+bwd).
fn layer(t: usize, d: usize, f: usize, e: usize, k: usize) -> (f64, f64, f64) {
    let cfg = MoeConfig { hidden_size: d, moe_intermediate_size: f, num_experts: e, num_experts_per_tok: k, norm_topk_prob: true, shared_expert_intermediate_size: 0, initializer_range: 0.02, seed: 1 };
    let mut layer = MoeLayer::new(cfg).unwrap();
    let x: Vec<f32> = (0..t * d).map(|i| (((i * 2_654_435_761usize) % 2001) as f32 - 1000.0) * 1e-3).collect();
    let dout: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let seqs = 4;
    let pressure = vec![1e-4f32; seqs * e];
    let fwd = time(5, || {
        layer.forward(&x, None, seqs, true).unwrap();
    });
    // A stored forward serves one backward: the backward is a forward + backward pair less a forward.
    let pair = time(5, || {
        layer.forward(&x, None, seqs, true).unwrap();
        layer.backward(&dout, &pressure, 1e-6).unwrap();
    });
    let bwd = pair - fwd;
    // Forward: router 2TdE + three expert GEMMs 3 * 2TKdF; backward twice that.
    let flops = 3.0 * (2.0 * (t * d * e) as f64 + 6.0 * (t * k * d * f) as f64);
    (fwd, bwd, flops / 1e9)
}

fn main() {
    let pool = moe_core::cpu::pool();
    let threads = pool.current_num_threads();
    println!("moe-core CPU benchmark, {threads} threads");
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3).collect();
    let mut out = vec![0.0f32; n * n];
    let gemm_s = pool.install(|| time(5, || matmul_forward(&mut out, &a, &b, n, n, n, Precision::F32)));
    let peak = 2.0 * (n as f64).powi(3) / gemm_s / 1e9;
    println!("gemm {n}x{n}x{n}: {:.1} ms, {peak:.1} GFLOP/s", gemm_s * 1e3);
    println!(r#"{{"kind":"gemm","n":{n},"seconds":{gemm_s},"gflops":{peak},"threads":{threads}}}"#);

    let mut shapes: Vec<(&str, [usize; 5])> = vec![("main", [4096, 512, 256, 16, 4]), ("fine", [4096, 512, 128, 64, 8])];
    shapes.extend([1024, 2048, 8192].map(|t| ("tokens", [t, 512, 256, 16, 4])));
    shapes.extend([8, 32, 64].map(|e| ("experts", [4096, 512, 256, e, 4])));
    shapes.push(("scale", [1024, 512, 128, 32, 4]));
    for (group, [t, d, f, e, k]) in shapes {
        let (fwd, bwd, gflop) = layer(t, d, f, e, k);
        let rate = gflop / (fwd + bwd);
        println!(
            "MoE layer T={t} d={d} F={f} E={e} K={k}: forward {:.1} ms + backward {:.1} ms = {:.1} ms, {rate:.1} GFLOP/s = {:.0}% of the GEMM rate",
            fwd * 1e3,
            bwd * 1e3,
            (fwd + bwd) * 1e3,
            100.0 * rate / peak
        );
        println!(r#"{{"kind":"layer","group":"{group}","T":{t},"d":{d},"F":{f},"E":{e},"K":{k},"forward":{fwd},"backward":{bwd},"gflop":{gflop}}}"#);
    }

    // The ~100 M model's dense GEMMs at T = 1,024: out (M, N) = inp (M, K) · weight (N, K)^T.
    for (name, m, k, n) in [("q|k|v projection", 1024, 512, 1024), ("o_proj", 1024, 512, 512), ("lm_head", 1024, 512, 16384)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3).collect();
        let mut out = vec![0.0f32; m * n];
        let s = pool.install(|| time(9, || matmul_forward(&mut out, &a, &b, m, k, n, Precision::F32)));
        let rate = 2.0 * (m * k * n) as f64 / s / 1e9;
        println!("gemm {name} {m}x{k}x{n}: {:.2} ms, {rate:.1} GFLOP/s = {:.0}% of the GEMM rate", s * 1e3, 100.0 * rate / peak);
        println!(r#"{{"kind":"gemm-shape","name":"{name}","M":{m},"K":{k},"N":{n},"seconds":{s},"gflops":{rate}}}"#);
    }

    // Its experts' grouped GEMMs: T*K = 4,096 routed rows over E = 32 experts, balanced (128 rows
    // each), C = 512, F = 128; gate, up and down forward, twice that backward (SwiGLU included).
    let (rows, e, c, f) = (4096, 32, 512, 128);
    let offsets: Vec<usize> = (0..=e).map(|i| i * rows / e).collect();
    let w: Vec<f32> = (0..3 * e * f * c).map(|i| (((i * 7919) % 1000) as f32 - 500.0) * 1e-4).collect();
    let wt = ExpertParams { gate_proj: &w[..e * f * c], up_proj: &w[e * f * c..2 * e * f * c], down_proj: &w[2 * e * f * c..] };
    let xs: Vec<f32> = (0..rows * c).map(|i| (((i * 104_729) % 1000) as f32 - 500.0) * 1e-3).collect();
    let (mut g, mut u, mut h, mut ys) = (vec![0.0; rows * f], vec![0.0; rows * f], vec![0.0; rows * f], vec![0.0; rows * c]);
    let (mut dxs, mut dh, mut dg, mut du) = (vec![0.0; rows * c], vec![0.0; rows * f], vec![0.0; rows * f], vec![0.0; rows * f]);
    let mut dw = vec![0.0f32; 3 * e * f * c];
    let fwd = pool.install(|| time(9, || experts_forward(&mut g, &mut u, &mut h, &mut ys, &xs, &wt, &offsets, c, f, Precision::F32)));
    let pair = pool.install(|| {
        time(9, || {
            experts_forward(&mut g, &mut u, &mut h, &mut ys, &xs, &wt, &offsets, c, f, Precision::F32);
            let (dgp, rest) = dw.split_at_mut(e * f * c);
            let (dup, ddp) = rest.split_at_mut(e * f * c);
            let mut grads = ExpertParams { gate_proj: dgp, up_proj: dup, down_proj: ddp };
            experts_backward(&mut dxs, &mut grads, &mut dh, &mut dg, &mut du, &ys, &xs, &g, &u, &h, &wt, &offsets, c, f, Precision::F32);
        })
    });
    let gflop = 3.0 * 6.0 * (rows * c * f) as f64 / 1e9;
    let rate = gflop / pair;
    println!(
        "experts' grouped GEMMs {rows} rows / {e} experts, C={c} F={f}: forward {:.2} ms + backward {:.2} ms, {rate:.1} GFLOP/s = {:.0}% of the GEMM rate",
        fwd * 1e3,
        (pair - fwd) * 1e3,
        100.0 * rate / peak
    );
    println!(r#"{{"kind":"gemm-shape","name":"experts' grouped gate|up|down fwd+bwd, {e} experts x {} rows","M":{rows},"K":{c},"N":{f},"seconds":{pair},"gflops":{rate}}}"#, rows / e);
}
