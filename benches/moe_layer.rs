//! CPU benchmark of the MoE layer forward + backward at the foundation shape
//! (T=4096, d=512, F=256, E=16, K=4), printed next to the large-matrix GEMM rate of the `gemm`
//! crate measured in the same run on the same thread pool: the practical peak of this machine.
//! Run: `npm run bench` (= cargo bench -p moe-core --bench moe_layer). MOE_NUM_THREADS sets threads.

use moe_core::cpu::matmul::matmul_forward;
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

fn main() {
    let pool = moe_core::cpu::pool();
    println!("moe-core CPU benchmark, {} threads", pool.current_num_threads());

    // Large GEMM: out (n, n) = a (n, n) · b (n, n)^T.
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3).collect();
    let mut out = vec![0.0f32; n * n];
    let gemm_s = pool.install(|| time(5, || matmul_forward(&mut out, &a, &b, n, n, n)));
    let gemm_gflops = 2.0 * (n as f64).powi(3) / gemm_s / 1e9;
    println!("gemm {n}x{n}x{n}: {:.1} ms, {gemm_gflops:.1} GFLOP/s", gemm_s * 1e3);

    let (t, d, f, e, k) = (4096usize, 512usize, 256usize, 16usize, 4usize);
    let cfg = MoeConfig {
        hidden_size: d,
        moe_intermediate_size: f,
        num_experts: e,
        num_experts_per_tok: k,
        norm_topk_prob: true,
        initializer_range: 0.02,
        seed: 1,
    };
    let mut layer = MoeLayer::new(cfg).unwrap();
    let x: Vec<f32> = (0..t * d).map(|i| (((i * 2_654_435_761usize) % 2001) as f32 - 1000.0) * 1e-3).collect();
    let dout: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let seqs = 4;
    let pressure = vec![1e-4f32; seqs * e];
    let fwd_s = time(5, || {
        layer.forward(&x, None, seqs, true).unwrap();
    });
    let bwd_s = time(5, || {
        layer.backward(&dout, &pressure, 1e-6).unwrap();
    });
    let counts = layer.forward(&x, None, seqs, false).unwrap().stats.counts;
    let per_expert: Vec<f32> = (0..e).map(|i| (0..seqs).map(|s| counts[s * e + i]).sum()).collect();
    let max_load = per_expert.iter().cloned().fold(0.0, f32::max) / (t * k / e) as f32;
    // Forward: router 2TdE + three expert GEMMs 3 * 2TKdF; backward twice that.
    let fwd_flops = 2.0 * (t * d * e) as f64 + 6.0 * (t * k * d * f) as f64;
    let total_s = fwd_s + bwd_s;
    let gflops = 3.0 * fwd_flops / total_s / 1e9;
    println!("MoE layer T={t} d={d} F={f} E={e} K={k} (max expert load {max_load:.2}x mean):");
    println!("  forward  {:.1} ms, {:.1} GFLOP/s", fwd_s * 1e3, fwd_flops / fwd_s / 1e9);
    println!("  backward {:.1} ms, {:.1} GFLOP/s", bwd_s * 1e3, 2.0 * fwd_flops / bwd_s / 1e9);
    println!("  forward+backward {:.1} ms, {gflops:.1} GFLOP/s = {:.0}% of the large-GEMM rate", total_s * 1e3, 100.0 * gflops / gemm_gflops);
}
