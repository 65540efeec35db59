//! Dense matmul in the llm.c convention: out = inp · weight^T, weight stored (out_features, in_features)
//! as in PyTorch/Hugging Face. Backed by the `gemm` crate, parallel on the current rayon pool.
//! With `Precision::Bf16` both operands of each product are first rounded to bfloat16 (copies; the
//! f32 arguments are untouched) and the f32 GEMM multiplies them: a product of two bf16 values is
//! exact in f32, so this is bf16 inputs with f32 accumulation. This CPU path computes in f32 on
//! every processor; it gives bf16's numerics, not its speed.

use crate::config::Precision;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// x as the GEMM reads it: itself (f32), or rounded to bfloat16 (nearest, ties to even) into `buf`.
fn operand<'a>(x: &'a [f32], p: Precision, buf: &'a mut Vec<f32>) -> &'a [f32] {
    match p {
        Precision::F32 => x,
        Precision::Bf16 => {
            buf.clear();
            buf.par_extend(x.par_iter().map(|&v| half::bf16::from_f32(v).to_f32()));
            buf
        }
    }
}

/// out (M, N) = inp (M, K) · weight (N, K)^T in precision `p`. Overwrites `out`.
pub fn matmul_forward(out: &mut [f32], inp: &[f32], weight: &[f32], m: usize, k: usize, n: usize, p: Precision) {
    debug_assert!(out.len() == m * n && inp.len() == m * k && weight.len() == n * k);
    if m == 0 || n == 0 {
        return;
    }
    let (mut ib, mut wb) = (Vec::new(), Vec::new());
    let (inp, weight) = (operand(inp, p, &mut ib), operand(weight, p, &mut wb));
    // gemm takes (column stride, row stride) pairs; weight^T is weight read with swapped strides.
    unsafe {
        gemm(
            m, n, k,
            out.as_mut_ptr(), 1, n as isize, false,
            inp.as_ptr(), 1, k as isize,
            weight.as_ptr(), k as isize, 1,
            0.0, 1.0, false, false, false, Parallelism::Rayon(0),
        );
    }
}

/// out (M, N) += bias (N) on every row (a linear layer's bias, Qwen2-MoE's q/k/v).
pub fn bias_forward(out: &mut [f32], bias: &[f32]) {
    use rayon::prelude::*;
    out.par_chunks_mut(bias.len()).for_each(|row| row.iter_mut().zip(bias).for_each(|(o, b)| *o += b));
}

/// dbias (N) += the sum over rows of dout (M, N); rows added in order (deterministic).
pub fn bias_backward(dbias: &mut [f32], dout: &[f32]) {
    let n = dbias.len();
    super::sum_row_blocks(dbias, dout.len() / n.max(1), |r, acc| acc.iter_mut().zip(&dout[r * n..]).for_each(|(a, d)| *a += d));
}

/// dinp (M, K) += dout (M, N) · weight (N, K);  dweight (N, K) += dout^T · inp (M, K), in precision
/// `p` (dout, inp and weight rounded). Both outputs accumulate in f32; the caller zeroes activation
/// gradients it wants overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    m: usize,
    k: usize,
    n: usize,
    p: Precision,
) {
    debug_assert!(dinp.len() == m * k && dweight.len() == n * k && dout.len() == m * n);
    if m == 0 || n == 0 {
        return;
    }
    let (mut db, mut ib, mut wb) = (Vec::new(), Vec::new(), Vec::new());
    let (dout, inp, weight) = (operand(dout, p, &mut db), operand(inp, p, &mut ib), operand(weight, p, &mut wb));
    unsafe {
        gemm(
            m, k, n,
            dinp.as_mut_ptr(), 1, k as isize, true,
            dout.as_ptr(), 1, n as isize,
            weight.as_ptr(), 1, k as isize,
            1.0, 1.0, false, false, false, Parallelism::Rayon(0),
        );
        gemm(
            n, k, m,
            dweight.as_mut_ptr(), 1, k as isize, true,
            dout.as_ptr(), n as isize, 1,
            inp.as_ptr(), 1, k as isize,
            1.0, 1.0, false, false, false, Parallelism::Rayon(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, randn};

    /// The specification: plain loops, f64 accumulation.
    fn matmul_forward_slow(out: &mut [f32], inp: &[f32], weight: &[f32], m: usize, k: usize, n: usize) {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| inp[i * k + p] as f64 * weight[j * k + p] as f64).sum();
                out[i * n + j] = s as f32;
            }
        }
    }

    /// bias_backward is the gradient of <dout, bias_forward(x, b)> in b, and accumulates.
    #[test]
    fn bias_gradcheck_and_accumulation() {
        let (m, n) = (9, 5);
        let (x, b, dout) = (randn(m * n, 1), randn(n, 2), randn(m * n, 3));
        let loss = |b: &[f32]| {
            let mut y = x.clone();
            bias_forward(&mut y, b);
            crate::testutil::dot(&y, &dout)
        };
        let mut db = vec![0.0; n];
        bias_backward(&mut db, &dout);
        crate::testutil::gradcheck("bias", loss, &b, &db, 1e-2, 1e-4, 1e-3);
        let once = db.clone();
        bias_backward(&mut db, &dout);
        assert_close("accumulates", &db, &once.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6, 1e-6);
    }

    #[test]
    fn matmul_forward_matches_slow() {
        let (m, k, n) = (37, 19, 23);
        let (inp, w) = (randn(m * k, 1), randn(n * k, 2));
        let (mut fast, mut slow) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_forward(&mut fast, &inp, &w, m, k, n, Precision::F32);
        matmul_forward_slow(&mut slow, &inp, &w, m, k, n);
        assert_close("out", &fast, &slow, 1e-5, 1e-5);
    }

    /// bf16 is the f32 product of operands rounded to bfloat16 (to nearest, ties to even): checked
    /// against the slow product of operands rounded bit by bit here, and against the f32 result it
    /// must differ from (the rounding is not a no-op) by about what 8 mantissa bits allow.
    #[test]
    fn bf16_is_the_product_of_rounded_operands() {
        // Round to nearest even by hand: the upper 16 bits, +1 when the dropped half is above the
        // midpoint or at it with an odd kept part.
        let round = |v: f32| {
            let b = v.to_bits();
            let (kept, dropped) = (b >> 16, b & 0xffff);
            let up = dropped > 0x8000 || (dropped == 0x8000 && kept & 1 == 1);
            f32::from_bits((kept + up as u32) << 16)
        };
        assert_eq!(round(1.0 + 3.0 / 512.0), 1.0 + 4.0 / 512.0, "a tie rounds to the even neighbour");
        assert_eq!(half::bf16::from_f32(1.0 + 3.0 / 512.0).to_f32(), 1.0 + 4.0 / 512.0);
        let (m, k, n) = (37, 19, 23);
        let (inp, w, dout) = (randn(m * k, 1), randn(n * k, 2), randn(m * n, 3));
        let r = |x: &[f32]| x.iter().map(|&v| round(v)).collect::<Vec<_>>();
        let (mut fast, mut slow, mut exact) = (vec![0.0; m * n], vec![0.0; m * n], vec![0.0; m * n]);
        matmul_forward(&mut fast, &inp, &w, m, k, n, Precision::Bf16);
        matmul_forward_slow(&mut slow, &r(&inp), &r(&w), m, k, n);
        matmul_forward_slow(&mut exact, &inp, &w, m, k, n);
        assert_close("bf16 forward", &fast, &slow, 1e-5, 1e-5);
        let worst = fast.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // each operand is off by at most 2^-9 relative; sums of K = 19 products of N(0, 1) values
        assert!(worst > 1e-3 && worst < 0.2, "bf16 vs f32: max |Δ| = {worst}");
        // The backward rounds dout, inp and weight: dinp = r(dout) · r(w), dweight = r(dout)^T · r(inp).
        let (mut dinp, mut dw) = (vec![0.0; m * k], vec![0.0; n * k]);
        matmul_backward(&mut dinp, &mut dw, &dout, &inp, &w, m, k, n, Precision::Bf16);
        let (mut dinp_ref, mut dw_ref) = (vec![0.0; m * k], vec![0.0; n * k]);
        matmul_backward(&mut dinp_ref, &mut dw_ref, &r(&dout), &r(&inp), &r(&w), m, k, n, Precision::F32);
        assert_close("bf16 dinp", &dinp, &dinp_ref, 1e-5, 1e-5);
        assert_close("bf16 dweight", &dw, &dw_ref, 1e-5, 1e-5);
    }

    #[test]
    fn matmul_backward_matches_slow_and_accumulates() {
        let (m, k, n) = (13, 7, 11);
        let (inp, w, dout) = (randn(m * k, 3), randn(n * k, 4), randn(m * n, 5));
        let (mut dinp, mut dw) = (vec![0.0; m * k], vec![0.0; n * k]);
        matmul_backward(&mut dinp, &mut dw, &dout, &inp, &w, m, k, n, Precision::F32);
        let mut dinp_ref = vec![0.0f32; m * k];
        let mut dw_ref = vec![0.0f32; n * k];
        for i in 0..m {
            for p in 0..k {
                dinp_ref[i * k + p] = (0..n).map(|j| dout[i * n + j] as f64 * w[j * k + p] as f64).sum::<f64>() as f32;
            }
        }
        for j in 0..n {
            for p in 0..k {
                dw_ref[j * k + p] = (0..m).map(|i| dout[i * n + j] as f64 * inp[i * k + p] as f64).sum::<f64>() as f32;
            }
        }
        assert_close("dinp", &dinp, &dinp_ref, 1e-5, 1e-5);
        assert_close("dweight", &dw, &dw_ref, 1e-5, 1e-5);
        // Habit 3: a second backward adds the same amount again.
        matmul_backward(&mut dinp, &mut dw, &dout, &inp, &w, m, k, n, Precision::F32);
        let twice: Vec<f32> = dw_ref.iter().map(|x| 2.0 * x).collect();
        assert_close("dweight twice", &dw, &twice, 1e-5, 1e-5);
    }
}

/// c (M, N) = scale · a (M, K) · b (K, N), or c += that when `acc`; single-threaded, for the small
/// products inside parallel loops (attention heads). c has row stride `c_rs` and unit column
/// stride; a and b are any strided views: element (r, j) of a is a[r * a_rs + j * a_cs].
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    c: &mut [f32],
    c_rs: usize,
    acc: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    m: usize,
    n: usize,
    k: usize,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The views must lie inside their slices: gemm reads and writes through raw pointers.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, c_rs, 1) < c.len(), "gemm_strided: c out of bounds");
    assert!(k == 0 || (last(m, k, a_rs, a_cs) < a.len() && last(k, n, b_rs, b_cs) < b.len()), "gemm_strided: a or b out of bounds");
    unsafe {
        gemm(
            m, n, k,
            c.as_mut_ptr(), 1, c_rs as isize, acc,
            a.as_ptr(), a_cs as isize, a_rs as isize,
            b.as_ptr(), b_cs as isize, b_rs as isize,
            if acc { 1.0 } else { 0.0 }, scale, false, false, false, Parallelism::None,
        );
    }
}

