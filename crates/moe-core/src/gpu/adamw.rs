//! AdamW with global gradient-norm clipping on the GPU, in the convention of `crate::adamw` and
//! `ParamStore::step`: one step over the flat buffers params, grads, m, v without a readback in the
//! middle. The norm lands in the step's scalars buffer [norm | lr | 1 - beta1^t | 1 - beta2^t] that
//! the update reads to clip itself (and to skip itself when it is not finite); the host writes the
//! other three each step, so the update's uniforms and bind groups stay the same from step to step.

use super::matmul::View;
use super::{groups_1d, Buf, Encoder, Gpu, Kernel};
use crate::adamw::AdamWConfig;
use crate::layout::ParamSpec;

const SRC: &str = include_str!("shaders/adamw.wgsl");
const NORM_PARTIALS: Kernel = Kernel::checked(SRC, "grad_norm_partials");
const NORM_FINISH: Kernel = Kernel::checked(SRC, "grad_norm_finish");
const UPDATE: Kernel = Kernel::checked(SRC, "adamw_update");

// adamw.wgsl's two uniforms, one line per 16-byte row.

/// The norm kernels': n elements read at src_off, written at dst_off.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    n: u32, dst_off: u32, src_off: u32, _pad: u32,
}

/// The update's: n elements, the views' offsets, whether to clip, then f32 bits.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct UpdateParams {
    n: u32, p_off: u32, m_off: u32, v_off: u32,
    g_off: u32, s_off: u32, clip: u32, max_norm: u32,
    beta1: u32, beta2: u32, eps: u32, wd: u32,
}

/// Length of the step's scalars buffer: [norm | lr | 1 - beta1^t | 1 - beta2^t].
pub const STEP_SCALARS: usize = 4;

/// [lr, 1 - beta1^t, 1 - beta2^t]: what the host writes at scalars[1..4] before an update at step t
/// (bias corrections in f64 then f32, as adamw_update on the CPU).
pub fn step_scalars(cfg: &AdamWConfig, lr: f32, t: u64) -> [f32; 3] {
    [lr, (1.0 - (cfg.beta1 as f64).powi(t as i32)) as f32, (1.0 - (cfg.beta2 as f64).powi(t as i32)) as f32]
}

/// Gradient elements summed by one workgroup of `grad_norm_partials` (CHUNK in adamw.wgsl).
pub const NORM_CHUNK: usize = 1024;

/// Length of the `partials` scratch buffer that `grad_norm` needs for n gradients.
pub fn norm_partials_len(n: usize) -> usize {
    n.div_ceil(NORM_CHUNK)
}

/// norm (1 element) = sqrt(sum grads²) over grads (n). Overwrites norm and the scratch `partials`
/// (norm_partials_len(n) elements, caller-owned so that no pooled buffer is freed before the
/// encoder runs). f32 sums in a fixed order (CPU: f64), deterministic.
pub fn grad_norm(g: &Gpu, enc: &mut Encoder, norm: View, grads: View, partials: &Buf, n: usize) {
    let parts = norm_partials_len(n);
    assert!(partials.len >= parts, "grad_norm: partials holds {} of {parts} elements", partials.len);
    let p = NormParams { n: n as u32, dst_off: 0, src_off: grads.off as u32, _pad: 0 };
    g.dispatch(enc, &NORM_PARTIALS, &[partials, grads.buf], &p, groups_1d(n, NORM_CHUNK));
    let p = NormParams { n: parts as u32, dst_off: norm.off as u32, src_off: 0, _pad: 0 };
    g.dispatch(enc, &NORM_FINISH, &[norm.buf, partials], &p, [1, 1, 1]);
}

/// One AdamW update of params (N) from grads (N) clipped by the global norm read from scalars (4)
/// = [norm | lr | 1 - beta1^t | 1 - beta2^t] (scale min(1, max_grad_norm / norm), `clip_scale`),
/// moments m, v (N) at step t (1-based):
///   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  m̂ = m/(1-b1^t);  v̂ = v/(1-b2^t)
///   p -= lr (m̂ / (sqrt(v̂) + eps) + wd p)     (wd = weight_decay when `decay`, else 0)
/// Updates params, m, v in place; does nothing at all when the norm is not finite.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    g: &Gpu,
    enc: &mut Encoder,
    params: View,
    m: View,
    v: View,
    grads: View,
    scalars: View,
    cfg: &AdamWConfig,
    decay: bool,
    n: usize,
) {
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    let p = UpdateParams {
        n: n as u32,
        p_off: params.off as u32,
        m_off: m.off as u32,
        v_off: v.off as u32,
        g_off: grads.off as u32,
        s_off: scalars.off as u32,
        clip: cfg.max_grad_norm.is_some().into(),
        max_norm: cfg.max_grad_norm.unwrap_or(0.0).to_bits(),
        beta1: cfg.beta1.to_bits(),
        beta2: cfg.beta2.to_bits(),
        eps: cfg.eps.to_bits(),
        wd: wd.to_bits(),
    };
    g.dispatch(enc, &UPDATE, &[params.buf, m.buf, v.buf, grads.buf, scalars.buf], &p, groups_1d(n, 256));
}

/// The (offset, len, decay) ranges of `specs`: adjacent specs of the same kind merged, decay on
/// matrices (shape.len() >= 2) only, as `ParamStore::step` decides per spec.
pub fn decay_ranges(specs: &[ParamSpec]) -> Vec<(usize, usize, bool)> {
    let mut ranges: Vec<(usize, usize, bool)> = Vec::new();
    for s in specs {
        let decay = s.shape.len() >= 2;
        match ranges.last_mut() {
            Some((off, len, d)) if *d == decay && *off + *len == s.offset => *len += s.len(),
            _ => ranges.push((s.offset, s.len(), decay)),
        }
    }
    ranges
}

/// `ParamStore::step` on the GPU: scalars[0] = |grads|, then one clipped AdamW update per range of
/// `ranges` (`decay_ranges`); t is the step about to be taken (1-based), lr = opt.lr_at(t).
/// Reads nothing back. Afterwards the caller reads scalars[0]: when it is not finite, nothing
/// moved, the step must not count (t not advanced) and the step fails with NON_FINITE, as on the
/// CPU. The caller validates `opt`. params, grads, m, v (N) are the flat buffers, scalars
/// (STEP_SCALARS), `partials`: scratch of norm_partials_len(N) elements.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    g: &Gpu,
    enc: &mut Encoder,
    params: &Buf,
    grads: &Buf,
    m: &Buf,
    v: &Buf,
    scalars: &Buf,
    partials: &Buf,
    ranges: &[(usize, usize, bool)],
    opt: &AdamWConfig,
    lr: f32,
    t: u64,
) {
    g.write(scalars, 1, &step_scalars(opt, lr, t));
    grad_norm(g, enc, scalars.into(), grads.into(), partials, grads.len);
    for &(off, len, decay) in ranges {
        assert!(off + len <= grads.len.min(params.len).min(m.len).min(v.len), "adamw_step: range past the buffers");
        let at = |buf| View { buf, off };
        adamw_update(g, enc, at(params), at(m), at(v), at(grads), scalars.into(), opt, decay, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adamw::{adamw_update as cpu_update, clip_scale, grad_norm as cpu_grad_norm, AdamWState, LrSchedule};
    use crate::gpu::tests::{f32s, test_gpu};
    use crate::params::ParamStore;
    use crate::testutil::{assert_close, randn};

    fn specs() -> Vec<ParamSpec> {
        // Mixed kinds, adjacent vectors and matrices to merge, 4602 elements: 5 norm chunks, the
        // last one partial.
        let shapes = [("a.w", vec![13, 7]), ("a.n", vec![7]), ("b.n", vec![5]), ("b.w", vec![31, 40])];
        let mut offset = 0;
        let mut specs = Vec::new();
        for (name, shape) in shapes.into_iter().chain([("c.w", vec![17, 50]), ("c.n", vec![9]), ("d.w", vec![60, 40])]) {
            let spec = ParamSpec { name: name.to_string(), shape, offset };
            offset += spec.len();
            specs.push(spec);
        }
        specs
    }

    fn opt() -> AdamWConfig {
        AdamWConfig {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: Some(1.0),
            schedule: Some(LrSchedule { kind: Default::default(), warmup_steps: 2, total_steps: 6, min_lr: 0.001, decay_steps: None }),
        }
    }

    #[test]
    fn decay_ranges_merge_adjacent_specs_of_a_kind() {
        assert_eq!(decay_ranges(&specs()), vec![(0, 91, true), (91, 12, false), (103, 2090, true), (2193, 9, false), (2202, 2400, true)]);
    }

    #[test]
    fn adamw_step_matches_param_store_step() {
        let Some(g) = test_gpu("adamw_step_matches_param_store_step") else { return };
        let opt = opt();
        let mut store = ParamStore::init(&specs(), 0.5, 1).unwrap();
        let n = store.params.len();
        let ranges = decay_ranges(&store.specs);
        let (gp, gg, gm, gv) = (g.upload(&store.params).unwrap(), g.zeros(n).unwrap(), g.zeros(n).unwrap(), g.zeros(n).unwrap());
        let (gnorm, partials) = (g.zeros(STEP_SCALARS).unwrap(), g.zeros(norm_partials_len(n)).unwrap());
        // Gradient norms around 70 against max_grad_norm 1: clipping is active at every step; the
        // schedule warms up and decays over the 5 steps.
        for t in 1..=5u64 {
            let grads = randn(n, 10 + t);
            store.set_grads(&grads).unwrap();
            let norm = store.step(&opt).unwrap();
            assert!(clip_scale(norm, opt.max_grad_norm) < 0.1);
            g.write(&gg, 0, &grads);
            let mut enc = g.encoder();
            adamw_step(g, &mut enc, &gp, &gg, &gm, &gv, &gnorm, &partials, &ranges, &opt, opt.lr_at(t), t);
            let res = g.finish(enc, &[&gnorm, &gp, &gm, &gv]).unwrap();
            assert_close(&format!("adamw norm, step {t}"), &f32s(&res[0])[..1], &[norm as f32], 0.0, 1e-5);
            assert_close(&format!("adamw params, step {t}"), &f32s(&res[1]), &store.params, 1e-5, 1e-5);
            assert_close(&format!("adamw m, step {t}"), &f32s(&res[2]), &store.opt.m, 1e-6, 1e-5);
            assert_close(&format!("adamw v, step {t}"), &f32s(&res[3]), &store.opt.v, 1e-7, 1e-5);
        }
    }

    #[test]
    fn grad_norm_and_unclipped_update_match_cpu() {
        let Some(g) = test_gpu("grad_norm_and_unclipped_update_match_cpu") else { return };
        // No clipping, no decay, views at offsets; n spans 3 chunks and ends mid-workgroup.
        let (n, off, t, lr) = (2100, 5, 3, 0.02);
        let cfg = AdamWConfig { max_grad_norm: None, schedule: None, ..opt() };
        let (p0, gr) = (randn(n, 1), randn(n, 2));
        let mut st = AdamWState { m: randn(n, 3), v: randn(n, 4).iter().map(|x| x * x).collect(), step: 0 };
        let (m0, v0) = (st.m.clone(), st.v.clone());
        let mut p = p0.clone();
        let norm = cpu_grad_norm(&gr);
        cpu_update(&mut p, &mut st.m, &mut st.v, &gr, clip_scale(norm, None), &cfg, lr, t, false);

        let pad = |x: &[f32]| [vec![7.0; off], x.to_vec()].concat();
        let up = |x: &[f32]| g.upload(&pad(x)).unwrap();
        let (gp, gm, gv, gg) = (up(&p0), up(&m0), up(&v0), up(&gr));
        // The scalars at an offset of 2: [_, _, norm, lr, bc1, bc2].
        let (gnorm, partials) = (g.zeros(2 + STEP_SCALARS).unwrap(), g.zeros(norm_partials_len(n)).unwrap());
        g.write(&gnorm, 3, &step_scalars(&cfg, lr, t));
        let at = |buf| View { buf, off };
        let mut enc = g.encoder();
        grad_norm(g, &mut enc, View { buf: &gnorm, off: 2 }, at(&gg), &partials, n);
        adamw_update(g, &mut enc, at(&gp), at(&gm), at(&gv), at(&gg), View { buf: &gnorm, off: 2 }, &cfg, false, n);
        let res = g.finish(enc, &[&gnorm, &gp, &gm, &gv]).unwrap();
        assert_close("grad_norm", &f32s(&res[0])[2..3], &[norm as f32], 0.0, 1e-5);
        assert_close("adamw_update params", &f32s(&res[1])[off..], &p, 1e-5, 1e-5);
        assert_close("adamw_update m", &f32s(&res[2])[off..], &st.m, 1e-6, 1e-5);
        assert_close("adamw_update v", &f32s(&res[3])[off..], &st.v, 1e-6, 1e-5);
        assert_eq!(&f32s(&res[1])[..off], &[7.0; 5], "params outside the view are untouched");
    }

    #[test]
    fn non_finite_gradient_leaves_everything_untouched() {
        let Some(g) = test_gpu("non_finite_gradient_leaves_everything_untouched") else { return };
        let opt = opt();
        let store = ParamStore::init(&specs(), 0.5, 1).unwrap();
        let n = store.params.len();
        let ranges = decay_ranges(&store.specs);
        let (gp, gm, gv) = (g.upload(&store.params).unwrap(), g.upload(&randn(n, 3)).unwrap(), g.upload(&vec![0.5f32; n]).unwrap());
        let (gnorm, partials) = (g.zeros(STEP_SCALARS).unwrap(), g.zeros(norm_partials_len(n)).unwrap());
        let before = g.finish(g.encoder(), &[&gp, &gm, &gv]).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut grads = randn(n, 2);
            grads[3001] = bad;
            let gg = g.upload(&grads).unwrap();
            let mut enc = g.encoder();
            adamw_step(g, &mut enc, &gp, &gg, &gm, &gv, &gnorm, &partials, &ranges, &opt, opt.lr_at(1), 1);
            let res = g.finish(enc, &[&gnorm, &gp, &gm, &gv]).unwrap();
            let norm = f32s(&res[0])[0];
            assert!(!norm.is_finite(), "a gradient of {bad} gives the norm {norm}");
            assert_eq!(&res[1..], &before[..], "a gradient of {bad} moved params or moments");
        }
        eprintln!("non-finite gradients (NaN, inf): norm not finite, params and moments bit-identical");
    }
}
