//! CPU kernels, one op family per file, each `<op>_forward` beside its `<op>_backward`.
//! They are the reference every faster path (and, later, every WGSL kernel) is tested against.

pub mod experts;
pub mod matmul;
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
