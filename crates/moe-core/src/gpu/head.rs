//! The language-model head and its loss on the GPU, over chunks of rows: logits (rows, V) = xf ·
//! W^T and the cross-entropy of each chunk in turn, so that no binding ever holds T x V logits (wgpu
//! caps a storage binding at the adapter's limit, 2 GiB on NVIDIA: a vocabulary of 151,936 passes it
//! beyond 3,533 tokens). The forward leaves the last chunk's logits in place; the backward takes that
//! chunk first and recomputes the logits of the others (one more head GEMM each). One chunk, when
//! the logits fit, costs nothing more than an unchunked head.

use super::crossentropy::{crossentropy_backward, crossentropy_forward};
use super::matmul::{gemm, matmul_forward, Gemm, View};
use super::{Buf, Encoder, Gpu};
use crate::config::Precision;

#[cfg(test)]
thread_local! {
    static CAP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Caps the rows of a chunk on this thread (tests: several chunks on tiny shapes).
#[cfg(test)]
pub(crate) fn cap_rows(rows: Option<usize>) {
    CAP.with(|c| c.set(rows));
}

/// Rows per chunk for T positions and V logits: as many as one binding holds.
pub fn chunk_rows(g: &Gpu, t: usize, v: usize) -> usize {
    let fit = (g.limits.max_storage_buffer_binding_size as usize / 4 / v.max(1)).max(1);
    #[cfg(test)]
    let fit = CAP.with(|c| c.get()).map_or(fit, |cap| fit.min(cap));
    t.min(fit)
}

/// The chunks (first row, rows) of T rows by `rows`.
fn chunks(t: usize, rows: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> + ExactSizeIterator {
    (0..t.div_ceil(rows)).map(move |i| (i * rows, rows.min(t - i * rows)))
}

/// losses (T) of xf (T, C) through the head w (V, C): per chunk of `rows` rows, logits (rows, V)
/// = xf[chunk] · w^T, then `crossentropy_forward` with targets, valid (T) u32. Overwrites losses
/// and logits, which ends with the last chunk's.
#[allow(clippy::too_many_arguments)]
pub fn head_forward(g: &Gpu, enc: &mut Encoder, losses: View, logits: &Buf, xf: View, w: View, targets: &Buf, valid: &Buf, t: usize, c: usize, v: usize, rows: usize, p: Precision) {
    for (r0, n) in chunks(t, rows) {
        matmul_forward(g, enc, logits.into(), xf.at(r0 * c), w, n, c, v, p);
        crossentropy_forward(g, enc, losses.at(r0), logits.into(), targets, valid, r0, n, v);
    }
}

/// Backward of `head_forward` with the loss scaled by `scale`: overwrites dxf (T, C) and the scratch
/// dlogits (rows, V); accumulates into dw (V, C). logits (rows, V) as the forward left it (the
/// other chunks' are recomputed into it).
#[allow(clippy::too_many_arguments)]
pub fn head_backward(
    g: &Gpu,
    enc: &mut Encoder,
    dxf: View,
    dw: View,
    dlogits: &Buf,
    logits: &Buf,
    xf: View,
    w: View,
    targets: &Buf,
    valid: &Buf,
    scale: f32,
    t: usize,
    c: usize,
    v: usize,
    rows: usize,
    p: Precision,
) {
    let last = t.div_ceil(rows) - 1;
    for (i, (r0, n)) in chunks(t, rows).enumerate().rev() {
        if i != last {
            matmul_forward(g, enc, logits.into(), xf.at(r0 * c), w, n, c, v, p);
        }
        crossentropy_backward(g, enc, dlogits.into(), logits.into(), targets, valid, scale, r0, n, v);
        // dxf rows = dlogits · w (each chunk its own rows);  dw += dlogits^T · xf rows
        gemm(g, enc, dxf.at(r0 * c), dlogits.into(), w, Gemm { precision: p, ..Gemm::new(n, c, v) });
        gemm(g, enc, dw, dlogits.into(), xf.at(r0 * c), Gemm { trans_a: true, acc: true, precision: p, ..Gemm::new(v, c, n) });
    }
}
