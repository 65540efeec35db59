//! A device wait that outlasts MOE_GPU_TIMEOUT_S becomes DEVICE_LOST, never a hang, and so does
//! every later call (the queue is stuck behind the work). Its own test binary (its own process): the
//! timeout is read when the process-wide device opens, and the failure poisons it. Runs where an
//! adapter exists (CI: lavapipe with MOE_GPU_ADAPTER=software); SKIPPED otherwise.

use moe_core::gpu::matmul::{matmul_forward, View};

#[test]
fn a_wait_past_the_timeout_is_device_lost() {
    // A microsecond: any GEMM of 512³ takes longer, on any device.
    std::env::set_var("MOE_GPU_TIMEOUT_S", "0.000001");
    let g = match moe_core::gpu::gpu() {
        Ok(g) => g,
        Err(e) if std::env::var("MOE_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("MOE_REQUIRE_GPU=1 but {e}"),
        Err(e) => return eprintln!("\n*** SKIPPED a_wait_past_the_timeout_is_device_lost: {e} ***\n"),
    };
    let n = 512;
    let (a, b, c) = (g.zeros(n * n).unwrap(), g.zeros(n * n).unwrap(), g.alloc(n * n).unwrap());
    let mut enc = g.encoder();
    matmul_forward(g, &mut enc, View::from(&c), View::from(&a), View::from(&b), n, n, n, moe_core::Precision::F32);
    let e = g.finish(enc, &[&c]).unwrap_err();
    assert_eq!(e.code(), "DEVICE_LOST", "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(g.read_u32(&a).unwrap_err().code(), "DEVICE_LOST", "later calls fail too");
    eprintln!("after the timeout: {e}");
}
