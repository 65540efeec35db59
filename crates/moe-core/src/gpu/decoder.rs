//! One decoder layer on the GPU: its activations (`LayerActs`) and its forward (`layer_forward`) and
//! backward (`layer_backward`), the steps of `cpu::model` with every op call replaced by its GPU
//! twin, in the same order. `gpu::model` runs them per layer: after one another for a forward, in
//! reverse for a backward, and a layer's forward again just before its backward when the stored
//! forward did not keep its activations (`Recompute`).

use super::attention::{attention_backward, attention_forward, Shape};
use super::elementwise::add_inplace;
use super::matmul::{gemm, Gemm, View};
use super::mlp::{mlp_backward, mlp_forward, GpuMlpActs};
use super::moe::{moe_backward, moe_forward, GpuMoeActs};
use super::rmsnorm::{rmsnorm_backward, rmsnorm_backward_into, rmsnorm_forward};
use super::rope::{rope_backward, rope_forward};
use super::{Buf, Encoder, Gpu};
use crate::config::{ModelConfig, Precision, QkNorm};
use crate::error::Result;
use crate::layout::{ExpertParams, LayerParams, MlpParams, MoeParams};

/// Sizes of one layer's attention: T tokens of H query and KV key/value heads of D.
#[derive(Clone, Copy)]
pub(super) struct Heads {
    pub(super) t: usize,
    pub(super) h: usize,
    pub(super) kv: usize,
    pub(super) d: usize,
}

impl Heads {
    pub(super) fn new(cfg: &ModelConfig, t: usize) -> Self {
        Heads { t, h: cfg.num_attention_heads, kv: cfg.num_key_value_heads, d: cfg.head_dim }
    }

    /// Columns of q | k | v.
    pub(super) fn qkv(&self) -> usize {
        (self.h + 2 * self.kv) * self.d
    }

    /// The sections q (T, H*D), k (T, KV*D), v (T, KV*D) of a q | k | v buffer.
    pub(super) fn split(self, buf: &Buf) -> [View<'_>; 3] {
        let Heads { t, h, kv, d } = self;
        [View { buf, off: 0 }, View { buf, off: t * h * d }, View { buf, off: t * (h + kv) * d }]
    }

    /// The q | k | v product's column sections (matmul.wgsl): widths of q and of k.
    pub(super) fn sections(&self) -> [usize; 2] {
        [self.h * self.d, self.kv * self.d]
    }
}

/// Activations of one decoder layer but its input and attention probabilities, named as in
/// `cpu::model::LayerActs`; q, k and v are the sections of `qkv` (`Heads::split`).
pub(super) struct LayerActs {
    xn: Buf,
    rstd1: Buf,
    qkv: Buf,
    rstd_q: Buf,
    rstd_k: Buf,
    qn: Buf,
    kn: Buf,
    qr: Buf,
    kr: Buf,
    att: Buf,
    h: Buf,
    hn: Buf,
    rstd2: Buf,
    /// the MoE block's (a layer with experts)
    moe: GpuMoeActs,
    /// the dense MLP's (allocated when `dense`)
    mlp: Option<GpuMlpActs>,
}

impl LayerActs {
    /// The buffers of a layer over T = B * S tokens; `dense`: room for a dense MLP too.
    pub(super) fn new(g: &Gpu, cfg: &ModelConfig, t: usize, dense: bool) -> Result<Self> {
        let d = cfg.hidden_size;
        let hs = Heads::new(cfg, t);
        let (h, kv, hd) = (hs.h, hs.kv, hs.d);
        Ok(LayerActs {
            xn: g.alloc(t * d)?,
            rstd1: g.alloc(t)?,
            qkv: g.alloc(t * hs.qkv())?,
            rstd_q: g.alloc(t * h)?,
            rstd_k: g.alloc(t * kv)?,
            qn: g.alloc(t * h * hd)?,
            kn: g.alloc(t * kv * hd)?,
            qr: g.alloc(t * h * hd)?,
            kr: g.alloc(t * kv * hd)?,
            att: g.alloc(t * h * hd)?,
            h: g.alloc(t * d)?,
            hn: g.alloc(t * d)?,
            rstd2: g.alloc(t)?,
            moe: GpuMoeActs::default(),
            mlp: if dense { Some(GpuMlpActs::new(g, t, cfg.intermediate_size)?) } else { None },
        })
    }
}

/// What every layer of one forward or backward reads besides its own buffers: B, S, the rotary
/// tables, the validity (T), the ones (T) the q/k/v biases use.
pub(super) struct Rows<'a> {
    pub b: usize,
    pub s: usize,
    pub cos: &'a Buf,
    pub sin: &'a Buf,
    pub valid: &'a Buf,
    pub ones: &'a Buf,
    /// the large GEMMs' input format
    pub precision: Precision,
}

/// The backward's gradient scratch a layer uses, named as in `cpu::model::model_backward`; the
/// residual stream's gradient dx is the model's (dh and dxin are dx at their points).
pub(super) struct LayerGrads {
    dhn: Buf,
    datt: Buf,
    dqr: Buf,
    dkr: Buf,
    /// (B, H, S, S) attention's dS
    ds: Buf,
    dqn: Buf,
    dkn: Buf,
    /// dq | dk | dv, sections as q | k | v
    dqkv: Buf,
    dxn: Buf,
}

impl LayerGrads {
    pub(super) fn new(g: &Gpu, cfg: &ModelConfig, b: usize, s: usize) -> Result<Self> {
        let (t, d) = (b * s, cfg.hidden_size);
        let hs = Heads::new(cfg, t);
        let (h, kv, hd) = (hs.h, hs.kv, hs.d);
        Ok(LayerGrads {
            dhn: g.alloc(t * d)?,
            datt: g.alloc(t * h * hd)?,
            dqr: g.alloc(t * h * hd)?,
            dkr: g.alloc(t * kv * hd)?,
            ds: g.alloc(b * h * s * s)?,
            dqn: g.alloc(t * h * hd)?,
            dkn: g.alloc(t * kv * hd)?,
            dqkv: g.alloc(t * hs.qkv())?,
            dxn: g.alloc(t * d)?,
        })
    }
}

/// The routing of an MoE layer's forward: where its statistics go and its selection biases (E).
pub(super) struct Routing<'a> {
    pub stats: View<'a>,
    pub bias: View<'a>,
}

/// One decoder layer forward: out (T, C) = the layer of x (T, C); attention probabilities into
/// `probs` (B, H, S, S). `routing` for a layer with experts. See `cpu::model::layer_forward`.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_forward(g: &Gpu, enc: &mut Encoder, p: &Buf, w: &LayerParams<usize>, cfg: &ModelConfig, r: &Rows, la: &mut LayerActs, x: &Buf, probs: &Buf, out: &Buf, routing: Option<Routing>, l: usize) -> Result<()> {
    let (b, s, d, eps) = (r.b, r.s, cfg.hidden_size, cfg.rms_norm_eps as f32);
    let t = b * s;
    let hs = Heads::new(cfg, t);
    let (h, kv, hd) = (hs.h, hs.kv, hs.d);
    let [(qrows, qd), (krows, kd)] = qk_norm_rows(cfg, t);
    rmsnorm_forward(g, enc, (&la.xn).into(), (&la.rstd1).into(), x.into(), v(p, w.input_layernorm), t, d, eps);
    // q | k | v = xn · [q_proj; k_proj; v_proj]^T, one GEMM (+ their biases)
    let qkv = Gemm { trans_b: true, c_sections: hs.sections(), precision: r.precision, ..Gemm::new(t, hs.qkv(), d) };
    gemm(g, enc, (&la.qkv).into(), (&la.xn).into(), v(p, w.q_proj), qkv);
    let [q, k, vv] = hs.split(&la.qkv);
    if let Some(bias) = &w.qkv_bias {
        bias_forward(g, enc, q, v(p, bias.q), r.ones, t, h * hd);
        bias_forward(g, enc, k, v(p, bias.k), r.ones, t, kv * hd);
        bias_forward(g, enc, vv, v(p, bias.v), r.ones, t, kv * hd);
    }
    // q_norm, k_norm where the architecture has them; the rotary embedding reads their output
    let (qn, kn) = match (w.q_norm, w.k_norm) {
        (Some(qw), Some(kw)) => {
            rmsnorm_forward(g, enc, (&la.qn).into(), (&la.rstd_q).into(), q, v(p, qw), qrows, qd, eps);
            rmsnorm_forward(g, enc, (&la.kn).into(), (&la.rstd_k).into(), k, v(p, kw), krows, kd, eps);
            ((&la.qn).into(), (&la.kn).into())
        }
        _ => (q, k),
    };
    rope_forward(g, enc, (&la.qr).into(), qn, r.cos.into(), r.sin.into(), t, s, h, hd, 0);
    rope_forward(g, enc, (&la.kr).into(), kn, r.cos.into(), r.sin.into(), t, s, kv, hd, 0);
    attention_core(g, enc, la, probs, cfg, r, l);
    // h = x + att · o_proj^T
    gemm(g, enc, (&la.h).into(), (&la.att).into(), v(p, w.o_proj), Gemm { trans_b: true, precision: r.precision, ..Gemm::new(t, d, h * hd) });
    add_inplace(g, enc, (&la.h).into(), x.into(), t * d);
    rmsnorm_forward(g, enc, (&la.hn).into(), (&la.rstd2).into(), (&la.h).into(), v(p, w.post_attention_layernorm), t, d, eps);
    match (&w.mlp, routing, la.mlp.as_ref()) {
        (MlpParams::Moe(mw), Some(rt), _) => moe_forward(g, enc, out.into(), rt.stats, &mut la.moe, (&la.hn).into(), r.valid, rt.bias, &views(p, mw), &cfg.moe(), b, s, r.precision)?,
        (MlpParams::Dense(dw), None, Some(acts)) => mlp_forward(g, enc, out.into(), acts, (&la.hn).into(), &mlp_views(p, dw), d, cfg.intermediate_size, r.precision),
        _ => unreachable!("the layout and the activations come from one config"),
    }
    add_inplace(g, enc, out.into(), (&la.h).into(), t * d);
    Ok(())
}

/// The attention core of layer l: att and probs from the layer's rotated q, k and its v.
pub(super) fn attention_core(g: &Gpu, enc: &mut Encoder, la: &LayerActs, probs: &Buf, cfg: &ModelConfig, r: &Rows, l: usize) {
    let hs = Heads::new(cfg, r.b * r.s);
    let [_, _, vv] = hs.split(&la.qkv);
    let shape = Shape { b: r.b, s: r.s, h: hs.h, kv: hs.kv, d: hs.d, window: cfg.window(l) };
    attention_forward(g, enc, (&la.att).into(), probs.into(), (&la.qr).into(), (&la.kr).into(), vv, shape);
}

/// Backward of `layer_forward`: dx holds d out on entry and d x on exit; accumulates into the
/// gradient buffer `gr`. pressure (B, E) for a layer with experts.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_backward(g: &Gpu, enc: &mut Encoder, p: &Buf, gr: &Buf, w: &LayerParams<usize>, cfg: &ModelConfig, r: &Rows, la: &mut LayerActs, x: &Buf, probs: &Buf, dx: View, gs: &LayerGrads, pressure: Option<View>, z_scale: f32, l: usize) -> Result<()> {
    let (b, s, d) = (r.b, r.s, cfg.hidden_size);
    let t = b * s;
    let hs = Heads::new(cfg, t);
    let (h, kv, hd) = (hs.h, hs.kv, hs.d);
    let [(qrows, qd), (krows, kd)] = qk_norm_rows(cfg, t);
    // out = h + MLP(hn): dx (= dout) becomes dh
    match (&w.mlp, pressure, la.mlp.as_mut()) {
        (MlpParams::Moe(mw), Some(pressure), _) => {
            moe_backward(g, enc, (&gs.dhn).into(), &views(gr, mw), &mut la.moe, dx, (&la.hn).into(), r.valid, pressure, z_scale, &views(p, mw), &cfg.moe(), r.precision)?
        }
        (MlpParams::Dense(dw), None, Some(acts)) => mlp_backward(g, enc, (&gs.dhn).into(), &mlp_views(gr, dw), acts, dx, (&la.hn).into(), &mlp_views(p, dw), d, cfg.intermediate_size, r.precision)?,
        _ => unreachable!("the layout and the activations come from one config"),
    }
    rmsnorm_backward(g, enc, dx, v(gr, w.post_attention_layernorm), (&gs.dhn).into(), (&la.h).into(), v(p, w.post_attention_layernorm), (&la.rstd2).into(), t, d);
    // h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v)): dx (= dh) becomes dxin
    gemm(g, enc, (&gs.datt).into(), dx, v(p, w.o_proj), Gemm { precision: r.precision, ..Gemm::new(t, h * hd, d) });
    gemm(g, enc, v(gr, w.o_proj), dx, (&la.att).into(), Gemm { trans_a: true, acc: true, precision: r.precision, ..Gemm::new(d, h * hd, t) });
    let ([q, k, vv], [dq, dk, dv]) = (hs.split(&la.qkv), hs.split(&gs.dqkv));
    let (dqr, dkr) = ((&gs.dqr).into(), (&gs.dkr).into());
    let shape = Shape { b, s, h, kv, d: hd, window: cfg.window(l) };
    attention_backward(g, enc, dqr, dkr, dv, (&gs.ds).into(), (&gs.datt).into(), (&la.att).into(), probs.into(), (&la.qr).into(), (&la.kr).into(), vv, shape);
    match (w.q_norm, w.k_norm) {
        (Some(qw), Some(kw)) => {
            rope_backward(g, enc, (&gs.dqn).into(), dqr, r.cos.into(), r.sin.into(), t, s, h, hd);
            rope_backward(g, enc, (&gs.dkn).into(), dkr, r.cos.into(), r.sin.into(), t, s, kv, hd);
            rmsnorm_backward_into(g, enc, dq, v(gr, qw), (&gs.dqn).into(), q, v(p, qw), (&la.rstd_q).into(), qrows, qd);
            rmsnorm_backward_into(g, enc, dk, v(gr, kw), (&gs.dkn).into(), k, v(p, kw), (&la.rstd_k).into(), krows, kd);
        }
        _ => {
            rope_backward(g, enc, dq, dqr, r.cos.into(), r.sin.into(), t, s, h, hd);
            rope_backward(g, enc, dk, dkr, r.cos.into(), r.sin.into(), t, s, kv, hd);
        }
    }
    if let Some(dbias) = &w.qkv_bias {
        bias_backward(g, enc, v(gr, dbias.q), dq, r.ones, t, h * hd);
        bias_backward(g, enc, v(gr, dbias.k), dk, r.ones, t, kv * hd);
        bias_backward(g, enc, v(gr, dbias.v), dv, r.ones, t, kv * hd);
    }
    // dxn = dq | dk | dv · [q_proj; k_proj; v_proj];  the weights += (dq | dk | dv)^T · xn
    let (dqkv, xn) = ((&gs.dqkv).into(), (&la.xn).into());
    gemm(g, enc, (&gs.dxn).into(), dqkv, v(p, w.q_proj), Gemm { a_sections: hs.sections(), precision: r.precision, ..Gemm::new(t, d, hs.qkv()) });
    let dw = Gemm { trans_a: true, acc: true, a_sections: hs.sections(), precision: r.precision, ..Gemm::new(hs.qkv(), d, t) };
    gemm(g, enc, v(gr, w.q_proj), dqkv, xn, dw);
    rmsnorm_backward(g, enc, dx, v(gr, w.input_layernorm), (&gs.dxn).into(), x.into(), v(p, w.input_layernorm), (&la.rstd1).into(), t, d);
    Ok(())
}

pub(super) fn v(buf: &Buf, off: usize) -> View<'_> {
    View { buf, off }
}

/// A block's tensors as views of a flat device buffer (params or grads).
pub(super) fn views<'a>(buf: &'a Buf, off: &MoeParams<usize>) -> MoeParams<View<'a>> {
    off.map(&mut |&o| View { buf, off: o })
}

/// A dense MLP's tensors as views of a flat device buffer.
pub(super) fn mlp_views<'a>(buf: &'a Buf, off: &ExpertParams<usize>) -> ExpertParams<View<'a>> {
    off.map(&mut |&o| View { buf, off: o })
}

/// x (T, n) += bias (n) on every row: ones (T, 1) · bias (1, n), accumulated.
fn bias_forward(g: &Gpu, enc: &mut Encoder, x: View, bias: View, ones: &Buf, t: usize, n: usize) {
    gemm(g, enc, x, ones.into(), bias, Gemm { acc: true, ..Gemm::new(t, n, 1) });
}

/// dbias (n) += the sum over rows of dx (T, n): ones (1, T) · dx, accumulated.
fn bias_backward(g: &Gpu, enc: &mut Encoder, dbias: View, dx: View, ones: &Buf, t: usize, n: usize) {
    gemm(g, enc, dbias, ones.into(), dx, Gemm { trans_a: true, acc: true, ..Gemm::new(1, n, t) });
}

/// Rows and width of the q and k norms: per head (T*H rows of D) or over the token (T rows of H*D).
pub(super) fn qk_norm_rows(cfg: &ModelConfig, t: usize) -> [(usize, usize); 2] {
    let (h, kv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    match cfg.qk_norm() {
        QkNorm::Full => [(t, h * d), (t, kv * d)],
        QkNorm::PerHead | QkNorm::None => [(t * h, d), (t * kv, d)],
    }
}

