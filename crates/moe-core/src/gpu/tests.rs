//! Every GPU kernel against its CPU reference on tiny shapes (lavapipe runs under 1 GFLOP/s), and
//! the helpers the op files' tests share. Without an adapter each test prints SKIPPED loudly and
//! returns; CI sets MOE_GPU_ADAPTER=software and MOE_REQUIRE_GPU=1, which turns a missing adapter
//! into a failure.

use super::*;
use crate::testutil::{assert_close, randn};

/// The GPU, or None after a loud SKIPPED line (a failure when MOE_REQUIRE_GPU=1).
pub(crate) fn test_gpu(test: &str) -> Option<&'static Gpu> {
    match gpu() {
        Ok(g) => Some(g),
        Err(e) if std::env::var("MOE_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("MOE_REQUIRE_GPU=1 but {e}"),
        Err(e) => {
            eprintln!("\n*** SKIPPED {test}: {e} ***\n");
            None
        }
    }
}

/// Raw readback words as f32.
pub(crate) fn f32s(w: &[u32]) -> Vec<f32> {
    bytemuck::cast_slice(w).to_vec()
}

/// `v` behind `pad` filler values: views at odd offsets, as in a flat parameter buffer.
pub(crate) fn padded(g: &Gpu, pad: usize, v: &[f32]) -> Buf {
    g.upload(&[vec![7.0; pad], v.to_vec()].concat()).unwrap()
}

/// Every fourth token masked out.
pub(crate) fn mask_of(t: usize) -> Vec<u8> {
    (0..t).map(|i| u8::from(i % 4 != 3)).collect()
}

pub(crate) fn upload_mask(g: &Gpu, mask: &[u8]) -> Buf {
    g.upload(&mask.iter().map(|&m| m as u32).collect::<Vec<u32>>()).unwrap()
}

/// A block's statistics view (`moe::stats_len(B, E)`, laid out as in `router`) against the CPU's.
pub(crate) fn check_stats(got: &[f32], want: &crate::stats::RoutingStats, b: usize, e: usize) {
    let be = b * e;
    assert_eq!(&got[..be], &want.counts[..], "stats counts");
    assert_close("stats score_sums", &got[be..2 * be], &want.score_sums, 1e-5, 1e-5);
    assert_close("stats topk_score_sums", &got[2 * be..2 * be + b], &want.topk_score_sums, 1e-5, 1e-5);
    assert_close("stats z_sums", &got[2 * be + b..2 * be + 2 * b], &want.z_sums, 1e-5, 1e-5);
    assert_eq!(&got[2 * be + 2 * b..], &want.valid_tokens[..], "stats valid");
}

#[test]
fn adapter_is_described() {
    let Some(g) = test_gpu("adapter_is_described") else { return };
    eprintln!("adapter: {}", g.describe());
    assert!(!g.info.name.is_empty());
}

/// The naive reference of `matmul::gemm` on flat buffers: c[c_off + z * c_bs..] (= or +=) op(a) · op(b).
fn gemm_ref(c: &mut [f32], a: &[f32], b: &[f32], offs: [usize; 3], s: &matmul::Gemm) {
    let [sa, sb, sc] = s.strides;
    for z in 0..s.batch {
        let (a, b) = (&a[offs[0] + z * sa..], &b[offs[1] + z * sb..]);
        for i in 0..s.m {
            for j in 0..s.n {
                let mut sum = 0.0;
                for l in 0..s.k {
                    let x = if s.trans_a { a[l * s.m + i] } else { a[i * s.k + l] };
                    let y = if s.trans_b { b[j * s.k + l] } else { b[l * s.n + j] };
                    sum += x * y;
                }
                let at = offs[2] + z * sc + i * s.n + j;
                c[at] = if s.acc { c[at] + sum } else { sum };
            }
        }
    }
}

#[test]
fn matmul_matches_cpu() {
    use crate::cpu::matmul as cpu;
    use crate::config::Precision;
    use matmul::*;
    let Some(g) = test_gpu("matmul_matches_cpu") else { return };
    // Sizes straddle the 64-wide tiles and the 16-deep slices. In bf16 both sides round the same
    // operands, so they agree as closely as in f32.
    let (m, k, n) = (70, 37, 65);
    let (x, w, dy) = (randn(m * k, 1), randn(n * k, 2), randn(m * n, 3));
    let (dx0, dw0) = (randn(m * k, 4), randn(n * k, 5));
    for p in [Precision::F32, Precision::Bf16] {
        let mut y = vec![0.0; m * n];
        cpu::matmul_forward(&mut y, &x, &w, m, k, n, p);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu::matmul_backward(&mut dx, &mut dw, &dy, &x, &w, m, k, n, p);

        // Views at odd offsets inside larger buffers, as parameters sit in one flat buffer.
        let pad = |v: &[f32]| [vec![7.0; 3], v.to_vec()].concat();
        let (gx, gw, gdy) = (g.upload(&pad(&x)).unwrap(), g.upload(&pad(&w)).unwrap(), g.upload(&dy).unwrap());
        let (gdx, gdw, gy) = (g.upload(&dx0).unwrap(), g.upload(&pad(&dw0)).unwrap(), g.zeros(m * n).unwrap());
        let v = |b, off| View { buf: b, off };
        let mut enc = g.encoder();
        matmul_forward(g, &mut enc, (&gy).into(), v(&gx, 3), v(&gw, 3), m, k, n, p);
        matmul_backward(g, &mut enc, (&gdx).into(), v(&gdw, 3), (&gdy).into(), v(&gx, 3), v(&gw, 3), m, k, n, p);
        let out = g.finish(enc, &[&gy, &gdx, &gdw]).unwrap();
        let f = |w: &Vec<u32>| bytemuck::cast_slice::<u32, f32>(w).to_vec();
        let name = p.name();
        assert_close(&format!("matmul y {name}"), &f(&out[0]), &y, 1e-4, 1e-4);
        assert_close(&format!("matmul dx {name}"), &f(&out[1]), &dx, 1e-4, 1e-4);
        assert_close(&format!("matmul dw {name}"), &f(&out[2])[3..], &dw, 1e-4, 1e-4);
    }

    // Both tile configurations, every transpose and accumulate combination, two products of a batch
    // with gaps between them, views at odd offsets; sizes straddle each configuration's block edges
    // in M and N and its slices in K. c is checked whole: the gaps and the padding stay untouched.
    for (t, (m, n, k)) in [(SMALL, (70, 65, 37)), (BIG, (135, 131, 21))] {
        for flags in 0..8u64 {
            let (trans_a, trans_b, acc) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
            let (offs, gap) = ([3, 5, 7], 11);
            let strides = [m * k + gap, k * n + gap, m * n + gap];
            let s = Gemm { trans_a, trans_b, acc, batch: 2, strides, ..Gemm::new(m, n, k) };
            let len = |i: usize| offs[i] + 2 * strides[i];
            let (a, b, c0) = (randn(len(0), 10 + flags), randn(len(1), 20 + flags), randn(len(2), 30 + flags));
            let mut want = c0.clone();
            gemm_ref(&mut want, &a, &b, offs, &s);
            let (ga, gb, gc) = (g.upload(&a).unwrap(), g.upload(&b).unwrap(), g.upload(&c0).unwrap());
            let mut enc = g.encoder();
            gemm_tiled(g, &mut enc, View::from(&gc).at(offs[2]), View::from(&ga).at(offs[0]), View::from(&gb).at(offs[1]), s, t);
            let got = f32s(&g.finish(enc, &[&gc]).unwrap()[0]);
            assert_close(&format!("gemm {}x{} tiles, flags {flags}", t.bm, t.bn), &got, &want, 1e-4, 1e-4);
        }
    }
}

#[test]
fn gemm_tiles_follow_problem_size() {
    use matmul::*;
    assert_eq!(Tiles::pick(&Gemm::new(4096, 4096, 4096)), BIG);
    assert_eq!(Tiles::pick(&Gemm { batch: 4, ..Gemm::new(1024, 1024, 64) }), BIG);
    assert_eq!(Tiles::pick(&Gemm::new(1024, 1024, 4096)), SMALL);
    assert_eq!(Tiles::pick(&Gemm::new(70, 65, 37)), SMALL);
    assert_eq!(Tiles::pick(&Gemm::new(65536, 256, 1024)), SMALL);
}

#[test]
fn oversized_buffer_is_a_clear_error() {
    let Some(g) = test_gpu("oversized_buffer_is_a_clear_error") else { return };
    let too_many = g.limits.max_storage_buffer_binding_size as usize / 4 + 1;
    let e = g.alloc(too_many).err().expect("allocation past the binding limit must fail");
    assert_eq!(e.code(), "OUT_OF_MEMORY", "{e}");
    // The device stays usable.
    assert_eq!(g.read_u32(&g.upload(&[7u32, 8]).unwrap()).unwrap(), vec![7, 8]);
}

/// The bind-group cache keeps what was used within its window and drops the rest only once it holds
/// twice the window: a reservation (a larger window) keeps a long step's entries.
#[test]
fn bind_cache_keeps_its_window() {
    let mut cache = BindCache::default();
    let key = |i: u64| (0, vec![i], Vec::new());
    let made = std::cell::Cell::new(0);
    let get = |c: &mut BindCache<u64>, i: u64, window: u64| c.get(key(i), window, || { made.set(made.get() + 1); i });
    for i in 0..8 {
        get(&mut cache, i, 4);
    }
    assert_eq!(made.get(), 8);
    // Full (8 = 2 * 4): the entries unused in the last 4 lookups (this one included) go: 0..5.
    get(&mut cache, 8, 4);
    assert_eq!((cache.map.len(), made.get()), (4, 9));
    for i in 5..9 {
        assert_eq!(get(&mut cache, i, 4), i);
    }
    assert_eq!(made.get(), 9, "5..9 were kept");
    // A window of 16 (a reservation): everything used within it is kept.
    for i in 9..20 {
        get(&mut cache, i, 16);
    }
    let before = made.get();
    for i in 5..20 {
        get(&mut cache, i, 16);
    }
    assert_eq!(made.get(), before, "nothing used within the window is made again");
}

/// While a thread profiles, each dispatch runs in a timed pass of its own and its time is added to
/// its entry point's; the submission waits to read the timestamps. Afterwards nothing is timed.
#[test]
fn profiling_times_each_dispatch() {
    let Some(g) = test_gpu("profiling_times_each_dispatch") else { return };
    if !profile::start(g) {
        return eprintln!("\n*** SKIPPED profiling_times_each_dispatch: {} has no timestamp queries ***\n", g.describe());
    }
    let n = 64;
    let (a, b, c) = (g.upload(&randn(n * n, 1)).unwrap(), g.upload(&randn(n * n, 2)).unwrap(), g.alloc(n * n).unwrap());
    let c0 = g.counters();
    let mut enc = g.encoder();
    matmul::matmul_forward(g, &mut enc, (&c).into(), (&a).into(), (&b).into(), n, n, n, crate::config::Precision::F32);
    matmul::matmul_forward(g, &mut enc, (&c).into(), (&a).into(), (&b).into(), n, n, n, crate::config::Precision::F32);
    g.submit(enc).unwrap();
    let d = g.counters() - c0;
    let (times, untimed) = profile::stop();
    assert_eq!((d.dispatches, d.passes, d.waits), (2, 2, 1), "a pass per dispatch, a wait to read the times");
    assert_eq!(untimed, 0);
    assert_eq!(times.len(), 1, "{times:?}");
    assert_eq!((times[0].entry, times[0].mode, times[0].dispatches), ("gemm", None, 2));
    assert!(times[0].seconds > 0.0 && times[0].seconds < 10.0, "{times:?}");
    eprintln!("profiled: {times:?}");
    let c0 = g.counters();
    let mut enc = g.encoder();
    matmul::matmul_forward(g, &mut enc, (&c).into(), (&a).into(), (&b).into(), n, n, n, crate::config::Precision::F32);
    g.submit(enc).unwrap();
    assert_eq!((g.counters() - c0).waits, 0, "not profiling: no wait");
}

#[test]
fn bad_device_name_is_refused() {
    assert_eq!(select(Some("tpu")).unwrap_err().code(), "INVALID_CONFIG");
    assert_eq!(select(Some("cpu")).unwrap(), Device::Cpu);
}
