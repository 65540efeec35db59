//! CPU kernels, one op family per file, each `<op>_forward` beside its `<op>_backward`.
//! They are the reference every faster path (and every WGSL kernel) is tested against. `moe`,
//! `layer` and `model` compose them into the MoE block, the standalone layer and the whole model.

pub mod attention;
pub mod crossentropy;
pub mod embedding;
pub mod experts;
pub mod layer;
pub mod matmul;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod rmsnorm;
pub mod rope;
pub mod router;

use std::sync::OnceLock;

/// The rayon pool the addon owns. rayon's global pool is never used: its detached threads have
/// crashed Node at exit. Size: `MOE_NUM_THREADS`, else the number of available cores.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::env::var("MOE_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("moe-cpu-{i}"))
            .build()
            .expect("cannot start the CPU thread pool")
    })
}

/// <a, b> with 8 independent partial sums, so the compiler can keep them in one SIMD register
/// (a single running sum is a dependency chain it may not reorder).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// dst (C) += the sum over rows 0..n of the contributions `f(row, acc)` adds into `acc`. Blocks of
/// rows run in parallel and their partial sums are added in block order, so the result does not
/// depend on thread scheduling (training must resume bit-exactly).
pub fn sum_row_blocks(dst: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    const BLOCK: usize = 64;
    let c = dst.len();
    let partial: Vec<Vec<f32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f32; c];
            (blk * BLOCK..n.min((blk + 1) * BLOCK)).for_each(|row| f(row, &mut acc));
            acc
        })
        .collect();
    for p in partial {
        dst.iter_mut().zip(&p).for_each(|(d, v)| *d += v);
    }
}

/// `v` resized to n (contents unspecified: callers overwrite), its allocation kept across calls.
pub(crate) fn sized<T: Default + Clone>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.resize(n, T::default());
    v
}

/// `v` resized to n and set to zero, for outputs that ops accumulate into.
pub(crate) fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}
