//! The Qwen3-MoE model on the GPU: `model_forward` and `model_backward` of `cpu::model` with every
//! op call replaced by its GPU twin, in the same order. Parameters, gradients and AdamW moments live
//! in four device buffers laid out exactly like `ParamStore`'s flat buffers, so a host copy is one
//! buffer read and views are the same offsets. A forward records every kernel in one command
//! encoder and reads back once: the routing statistics of all layers, the per-token losses and the
//! finiteness flags; a backward records one encoder and submits it without waiting. Neither
//! records a copy or a clear between its kernels, so each runs as one compute pass.
//!
//! Two fusions: q_proj, k_proj and v_proj (adjacent in the layout) are one GEMM whose output columns
//! land in the sections q | k | v of one buffer (and their backward two GEMMs over the sections of
//! one gradient buffer); the LM head runs by chunks of rows (`head`).

use super::attention::{attention_backward, attention_forward, Shape};
use super::embedding::{embedding_backward, embedding_forward, TokenIndex};
use super::head::{chunk_rows, head_backward, head_forward};
use super::matmul::{gemm, Gemm, View};
use super::mlp::{mlp_backward, mlp_forward, GpuMlpActs};
use super::moe::{moe_backward, moe_forward, stats_len, unpack_stats, GpuMoeActs};
use super::rmsnorm::{rmsnorm_backward, rmsnorm_backward_into, rmsnorm_forward};
use super::rope::{rope_backward, rope_forward};
use super::elementwise::{add_inplace, finite_flags};
use super::store::DeviceStore;
use super::{BindReservation, Buf, Encoder, Gpu};
use crate::config::{ModelConfig, QkNorm};
use crate::error::{MoeError, Result};
use crate::layout::{ExpertParams, LayerParams, Layout, MlpParams, ModelParams, MoeParams, ParamSpec};
use crate::stats::ModelStats;

/// Sizes of one layer's attention: T tokens of H query and KV key/value heads of D.
#[derive(Clone, Copy)]
struct Heads {
    t: usize,
    h: usize,
    kv: usize,
    d: usize,
}

impl Heads {
    fn new(cfg: &ModelConfig, t: usize) -> Self {
        Heads { t, h: cfg.num_attention_heads, kv: cfg.num_key_value_heads, d: cfg.head_dim }
    }

    /// Columns of q | k | v.
    fn qkv(&self) -> usize {
        (self.h + 2 * self.kv) * self.d
    }

    /// The sections q (T, H*D), k (T, KV*D), v (T, KV*D) of a q | k | v buffer.
    fn split(self, buf: &Buf) -> [View<'_>; 3] {
        let Heads { t, h, kv, d } = self;
        [View { buf, off: 0 }, View { buf, off: t * h * d }, View { buf, off: t * (h + kv) * d }]
    }

    /// The q | k | v product's column sections (matmul.wgsl): widths of q and of k.
    fn sections(&self) -> [usize; 2] {
        [self.h * self.d, self.kv * self.d]
    }
}

/// Activations of one decoder layer, named as in `cpu::model::LayerActs`; q, k and v are the
/// sections of `qkv` (`Heads::split`).
struct LayerActs {
    x: Buf,
    xn: Buf,
    rstd1: Buf,
    qkv: Buf,
    rstd_q: Buf,
    rstd_k: Buf,
    qn: Buf,
    kn: Buf,
    qr: Buf,
    kr: Buf,
    probs: Buf,
    att: Buf,
    h: Buf,
    hn: Buf,
    rstd2: Buf,
    /// the MoE block's (a layer with experts) or the dense MLP's
    moe: GpuMoeActs,
    mlp: Option<GpuMlpActs>,
}

/// Everything one forward of B sequences of S tokens writes, allocated once per (B, S).
struct Acts {
    b: usize,
    s: usize,
    tokens: Buf,
    targets: Buf,
    valid: Buf,
    index: TokenIndex,
    cos: Buf,
    sin: Buf,
    layers: Vec<LayerActs>,
    xlast: Buf,
    xf: Buf,
    rstd_f: Buf,
    /// rows of the head's chunks (`head::chunk_rows`)
    head_rows: usize,
    /// (head_rows, V): the last chunk's logits after a forward
    logits: Buf,
    losses: Buf,
    /// per MoE layer [counts (B,E) | score_sums (B,E) | topk sums (B) | z sums (B) | valid (B)]
    stats: Buf,
    /// one finiteness flag per layer output, then one for the losses
    flags: Buf,
    /// (L_moe, E) the routers' selection biases
    bias: Buf,
    /// (T) ones: the rows a bias is added to and summed over (q/k/v biases)
    ones: Buf,
    /// room in the bind-group cache for this forward's dispatches
    binds: BindReservation,
}

impl Acts {
    fn new(g: &Gpu, cfg: &ModelConfig, b: usize, s: usize) -> Result<Self> {
        let (d, v, e, nl) = (cfg.hidden_size, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
        let t = b * s;
        let hs = Heads::new(cfg, t);
        let (h, kv, hd) = (hs.h, hs.kv, hs.d);
        let (cos, sin) = crate::cpu::rope::rope_tables(s, hd, cfg.rope_theta);
        let nm = cfg.moe_layers().len();
        let layers = (0..nl)
            .map(|l| {
                Ok(LayerActs {
                    x: g.alloc(t * d)?,
                    xn: g.alloc(t * d)?,
                    rstd1: g.alloc(t)?,
                    qkv: g.alloc(t * hs.qkv())?,
                    rstd_q: g.alloc(t * h)?,
                    rstd_k: g.alloc(t * kv)?,
                    qn: g.alloc(t * h * hd)?,
                    kn: g.alloc(t * kv * hd)?,
                    qr: g.alloc(t * h * hd)?,
                    kr: g.alloc(t * kv * hd)?,
                    probs: g.alloc(b * h * s * s)?,
                    att: g.alloc(t * h * hd)?,
                    h: g.alloc(t * d)?,
                    hn: g.alloc(t * d)?,
                    rstd2: g.alloc(t)?,
                    moe: GpuMoeActs::default(),
                    mlp: if cfg.is_moe_layer(l) { None } else { Some(GpuMlpActs::new(g, t, cfg.intermediate_size)?) },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head_rows = chunk_rows(g, t, v);
        Ok(Acts {
            b,
            s,
            tokens: g.alloc(t)?,
            targets: g.alloc(t)?,
            valid: g.alloc(t)?,
            index: TokenIndex::new(g, t)?,
            cos: g.upload(&cos)?,
            sin: g.upload(&sin)?,
            layers,
            xlast: g.alloc(t * d)?,
            xf: g.alloc(t * d)?,
            rstd_f: g.alloc(t)?,
            head_rows,
            logits: g.alloc(head_rows * v)?,
            losses: g.alloc(t)?,
            stats: g.alloc(nm * stats_len(b, e))?,
            flags: g.alloc(nl + 1)?,
            bias: g.alloc(nm * e)?,
            ones: g.upload(&vec![1.0f32; t])?,
            binds: BindReservation::default(),
        })
    }
}

/// Gradient scratch of the backward, named as in `cpu::model::model_backward`. dx holds the
/// residual stream's gradient throughout (dh and dxin are dx at their points of the list).
struct Grads {
    b: usize,
    s: usize,
    /// (head_rows, V)
    dlogits: Buf,
    dxf: Buf,
    dx: Buf,
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
    pressure: Buf,
    binds: BindReservation,
}

impl Grads {
    fn new(g: &Gpu, cfg: &ModelConfig, b: usize, s: usize, head_rows: usize) -> Result<Self> {
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let t = b * s;
        let hs = Heads::new(cfg, t);
        let (h, kv, hd) = (hs.h, hs.kv, hs.d);
        Ok(Grads {
            b,
            s,
            dlogits: g.alloc(head_rows * v)?,
            dxf: g.alloc(t * d)?,
            dx: g.alloc(t * d)?,
            dhn: g.alloc(t * d)?,
            datt: g.alloc(t * h * hd)?,
            dqr: g.alloc(t * h * hd)?,
            dkr: g.alloc(t * kv * hd)?,
            ds: g.alloc(b * h * s * s)?,
            dqn: g.alloc(t * h * hd)?,
            dkn: g.alloc(t * kv * hd)?,
            dqkv: g.alloc(t * hs.qkv())?,
            dxn: g.alloc(t * d)?,
            pressure: g.alloc(cfg.moe_layers().len() * b * cfg.num_experts)?,
            binds: BindReservation::default(),
        })
    }
}

/// The device activations of a `Model` on the GPU; its parameters are the `DeviceStore` passed in.
pub struct GpuModel {
    /// every parameter's offset in the flat device buffers, by name
    off: ModelParams<usize>,
    /// the stored forward (for `backward`) and the scratch of `store = false` forwards
    acts: Option<Acts>,
    scratch: Option<Acts>,
    grad_scratch: Option<Grads>,
}

fn v(buf: &Buf, off: usize) -> View<'_> {
    View { buf, off }
}

/// A block's tensors as views of a flat device buffer (params or grads).
fn views<'a>(buf: &'a Buf, off: &MoeParams<usize>) -> MoeParams<View<'a>> {
    off.map(&mut |&o| View { buf, off: o })
}

/// A dense MLP's tensors as views of a flat device buffer.
fn mlp_views<'a>(buf: &'a Buf, off: &ExpertParams<usize>) -> ExpertParams<View<'a>> {
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
fn qk_norm_rows(cfg: &ModelConfig, t: usize) -> [(usize, usize); 2] {
    let (h, kv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    match cfg.qk_norm() {
        QkNorm::Full => [(t, h * d), (t, kv * d)],
        QkNorm::PerHead | QkNorm::None => [(t * h, d), (t * kv, d)],
    }
}

impl GpuModel {
    /// Checks that each layer's q_proj, k_proj and v_proj follow one another in the flat buffers:
    /// they are read as one (H + 2 KV) * D by C weight.
    pub fn new(layout: &ModelParams<ParamSpec>) -> Self {
        for LayerParams { q_proj, k_proj, v_proj, .. } in &layout.layers {
            assert!(
                k_proj.offset == q_proj.offset + q_proj.len() && v_proj.offset == k_proj.offset + k_proj.len(),
                "q_proj, k_proj, v_proj must be adjacent in the layout"
            );
        }
        GpuModel { off: layout.offsets(), acts: None, scratch: None, grad_scratch: None }
    }

    /// Forward over tokens (B, S) with validity `valid` (T); see `cpu::model::model_forward`. With `store`
    /// the activations are kept for `backward`. Returns the statistics and, with `want_logits`, the
    /// logits (T, V), which must then fit one chunk of the head.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&mut self, dev: &DeviceStore, cfg: &ModelConfig, bias: &[f32], tokens: &[u32], valid: &[u8], b: usize, s: usize, store: bool, want_logits: bool) -> Result<(ModelStats, Option<Vec<f32>>)> {
        let g = dev.g;
        let slot = if store { &mut self.acts } else { &mut self.scratch };
        if !matches!(slot, Some(a) if a.b == b && a.s == s) {
            *slot = None; // free the old shape's buffers before allocating the new ones
            *slot = Some(Acts::new(g, cfg, b, s)?);
        }
        let a = slot.as_mut().unwrap();
        let (d, vs, e, nl) = (cfg.hidden_size, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
        let t = b * s;
        let hs = Heads::new(cfg, t);
        let (h, kv, hd) = (hs.h, hs.kv, hs.d);
        if want_logits && a.head_rows < t {
            return Err(MoeError::OutOfMemory(format!("logits of {t} x {vs} values exceed one storage binding; ask for at most {} tokens", a.head_rows)));
        }
        let eps = cfg.rms_norm_eps as f32;
        let moe_cfg = cfg.moe();
        let targets: Vec<u32> = (0..t).map(|i| if i % s + 1 < s { tokens[i + 1] } else { 0 }).collect();
        let valid_u32: Vec<u32> = valid.iter().map(|&x| x as u32).collect();
        g.write(&a.tokens, 0, tokens);
        g.write(&a.targets, 0, &targets);
        g.write(&a.valid, 0, &valid_u32);
        g.write(&a.bias, 0, bias);
        a.index.set(g, tokens);
        let (p, off) = (&dev.params, &self.off);
        let mut enc = g.encoder();
        g.clear(&mut enc, &a.flags);
        embedding_forward(g, &mut enc, (&a.layers[0].x).into(), &a.tokens, v(p, off.embed_tokens), t, d);
        let stat_len = stats_len(b, e);
        let moe_layers = cfg.moe_layers();
        let [(qrows, qd), (krows, kd)] = qk_norm_rows(cfg, t);
        for (l, w) in off.layers.iter().enumerate() {
            let (cur, rest) = a.layers.split_at_mut(l + 1);
            let la = &mut cur[l];
            rmsnorm_forward(g, &mut enc, (&la.xn).into(), (&la.rstd1).into(), (&la.x).into(), v(p, w.input_layernorm), t, d, eps);
            // q | k | v = xn · [q_proj; k_proj; v_proj]^T, one GEMM (+ their biases)
            let qkv = Gemm { trans_b: true, c_sections: hs.sections(), ..Gemm::new(t, hs.qkv(), d) };
            gemm(g, &mut enc, (&la.qkv).into(), (&la.xn).into(), v(p, w.q_proj), qkv);
            let [q, k, vv] = hs.split(&la.qkv);
            if let Some(bias) = &w.qkv_bias {
                bias_forward(g, &mut enc, q, v(p, bias.q), &a.ones, t, h * hd);
                bias_forward(g, &mut enc, k, v(p, bias.k), &a.ones, t, kv * hd);
                bias_forward(g, &mut enc, vv, v(p, bias.v), &a.ones, t, kv * hd);
            }
            // q_norm, k_norm where the architecture has them; the rotary embedding reads their output
            let (qn, kn) = match (w.q_norm, w.k_norm) {
                (Some(qw), Some(kw)) => {
                    rmsnorm_forward(g, &mut enc, (&la.qn).into(), (&la.rstd_q).into(), q, v(p, qw), qrows, qd, eps);
                    rmsnorm_forward(g, &mut enc, (&la.kn).into(), (&la.rstd_k).into(), k, v(p, kw), krows, kd, eps);
                    ((&la.qn).into(), (&la.kn).into())
                }
                _ => (q, k),
            };
            rope_forward(g, &mut enc, (&la.qr).into(), qn, (&a.cos).into(), (&a.sin).into(), t, s, h, hd, 0);
            rope_forward(g, &mut enc, (&la.kr).into(), kn, (&a.cos).into(), (&a.sin).into(), t, s, kv, hd, 0);
            let shape = Shape { b, s, h, kv, d: hd, window: cfg.window(l) };
            attention_forward(g, &mut enc, (&la.att).into(), (&la.probs).into(), (&la.qr).into(), (&la.kr).into(), vv, shape);
            // h = x + att · o_proj^T
            gemm(g, &mut enc, (&la.h).into(), (&la.att).into(), v(p, w.o_proj), Gemm { trans_b: true, ..Gemm::new(t, d, h * hd) });
            add_inplace(g, &mut enc, (&la.h).into(), (&la.x).into(), t * d);
            rmsnorm_forward(g, &mut enc, (&la.hn).into(), (&la.rstd2).into(), (&la.h).into(), v(p, w.post_attention_layernorm), t, d, eps);
            let out = if l + 1 < nl { &rest[0].x } else { &a.xlast };
            match (&w.mlp, moe_layers.iter().position(|&m| m == l), la.mlp.as_ref()) {
                (MlpParams::Moe(mw), Some(m), _) => {
                    moe_forward(g, &mut enc, out.into(), v(&a.stats, m * stat_len), &mut la.moe, (&la.hn).into(), &a.valid, v(&a.bias, m * e), &views(p, mw), &moe_cfg, b, s)?
                }
                (MlpParams::Dense(dw), None, Some(acts)) => mlp_forward(g, &mut enc, out.into(), acts, (&la.hn).into(), &mlp_views(p, dw), d, cfg.intermediate_size),
                _ => unreachable!("the layout and the activations come from one config"),
            }
            add_inplace(g, &mut enc, out.into(), (&la.h).into(), t * d);
            finite_flags(g, &mut enc, &a.flags, l, out);
        }
        rmsnorm_forward(g, &mut enc, (&a.xf).into(), (&a.rstd_f).into(), (&a.xlast).into(), v(p, off.norm), t, d, eps);
        head_forward(g, &mut enc, (&a.losses).into(), &a.logits, (&a.xf).into(), v(p, *off.head()), &a.targets, &a.valid, t, d, vs, a.head_rows);
        finite_flags(g, &mut enc, &a.flags, nl, &a.losses);
        a.binds.fit(g, enc.dispatches());
        let mut reads = vec![&a.stats, &a.losses, &a.flags];
        if want_logits {
            reads.push(&a.logits);
        }
        let r = g.finish(enc, &reads)?;
        let flags = &r[2];
        if let Some(l) = flags.iter().position(|&f| f != 0) {
            let what = if l < nl { format!("output of layer {l}") } else { "loss".to_string() };
            return Err(MoeError::NonFinite(format!("{what} is not finite (GPU)")));
        }
        let st: &[f32] = bytemuck::cast_slice(&r[0]);
        let losses: &[f32] = bytemuck::cast_slice(&r[1]);
        let nm = moe_layers.len();
        let mut stats = ModelStats::zeros(nm, b, e);
        for m in 0..nm {
            stats.set_layer(m, &unpack_stats(&st[m * stat_len..][..stat_len], b, e));
        }
        stats.set_losses(losses, s);
        let logits = want_logits.then(|| bytemuck::cast_slice(&r[3][..t * vs]).to_vec());
        Ok((stats, logits))
    }

    /// Backward of the stored forward; accumulates into the gradient buffer. See `cpu::model::model_backward`.
    /// Submitted without a wait: whatever reads the gradients next runs after it.
    pub fn backward(&mut self, dev: &DeviceStore, cfg: &ModelConfig, pressure: &[f32], lm_scale: f32, z_scale: f32) -> Result<()> {
        let g = dev.g;
        let a = self.acts.as_mut().ok_or_else(|| MoeError::InvalidState("backward needs a stored forward".into()))?;
        let (b, s) = (a.b, a.s);
        if !matches!(&self.grad_scratch, Some(gs) if (gs.b, gs.s) == (b, s)) {
            self.grad_scratch = None;
            self.grad_scratch = Some(Grads::new(g, cfg, b, s, a.head_rows)?);
        }
        let gs = self.grad_scratch.as_mut().unwrap();
        let (d, vs, e) = (cfg.hidden_size, cfg.vocab_size, cfg.num_experts);
        let t = b * s;
        let hs = Heads::new(cfg, t);
        let (h, kv, hd) = (hs.h, hs.kv, hs.d);
        let moe_cfg = cfg.moe();
        let (p, gr, off) = (&dev.params, &dev.grads, &self.off);
        g.write(&gs.pressure, 0, pressure);
        let mut enc = g.encoder();
        dev.grads_ready(&mut enc);
        let (dx, dxf) = ((&gs.dx).into(), (&gs.dxf).into());
        head_backward(g, &mut enc, dxf, v(gr, *off.head()), &gs.dlogits, &a.logits, (&a.xf).into(), v(p, *off.head()), &a.targets, &a.valid, lm_scale, t, d, vs, a.head_rows);
        rmsnorm_backward_into(g, &mut enc, dx, v(gr, off.norm), dxf, (&a.xlast).into(), v(p, off.norm), (&a.rstd_f).into(), t, d);
        let moe_layers = cfg.moe_layers();
        let [(qrows, qd), (krows, kd)] = qk_norm_rows(cfg, t);
        for (l, w) in off.layers.iter().enumerate().rev() {
            let la = &mut a.layers[l];
            // out = h + MLP(hn): dx (= dout) becomes dh
            match (&w.mlp, moe_layers.iter().position(|&m| m == l), la.mlp.as_mut()) {
                (MlpParams::Moe(mw), Some(m), _) => {
                    let pressure = v(&gs.pressure, m * b * e);
                    moe_backward(g, &mut enc, (&gs.dhn).into(), &views(gr, mw), &mut la.moe, dx, (&la.hn).into(), &a.valid, pressure, z_scale, &views(p, mw), &moe_cfg)?
                }
                (MlpParams::Dense(dw), None, Some(acts)) => {
                    mlp_backward(g, &mut enc, (&gs.dhn).into(), &mlp_views(gr, dw), acts, dx, (&la.hn).into(), &mlp_views(p, dw), d, cfg.intermediate_size)?
                }
                _ => unreachable!("the layout and the activations come from one config"),
            }
            rmsnorm_backward(g, &mut enc, dx, v(gr, w.post_attention_layernorm), (&gs.dhn).into(), (&la.h).into(), v(p, w.post_attention_layernorm), (&la.rstd2).into(), t, d);
            // h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v)): dx (= dh) becomes dxin
            gemm(g, &mut enc, (&gs.datt).into(), dx, v(p, w.o_proj), Gemm::new(t, h * hd, d));
            gemm(g, &mut enc, v(gr, w.o_proj), dx, (&la.att).into(), Gemm { trans_a: true, acc: true, ..Gemm::new(d, h * hd, t) });
            let ([q, k, vv], [dq, dk, dv]) = (hs.split(&la.qkv), hs.split(&gs.dqkv));
            let (dqr, dkr, datt, att, probs) = ((&gs.dqr).into(), (&gs.dkr).into(), (&gs.datt).into(), (&la.att).into(), (&la.probs).into());
            let shape = Shape { b, s, h, kv, d: hd, window: cfg.window(l) };
            attention_backward(g, &mut enc, dqr, dkr, dv, (&gs.ds).into(), datt, att, probs, (&la.qr).into(), (&la.kr).into(), vv, shape);
            match (w.q_norm, w.k_norm) {
                (Some(qw), Some(kw)) => {
                    rope_backward(g, &mut enc, (&gs.dqn).into(), dqr, (&a.cos).into(), (&a.sin).into(), t, s, h, hd);
                    rope_backward(g, &mut enc, (&gs.dkn).into(), dkr, (&a.cos).into(), (&a.sin).into(), t, s, kv, hd);
                    rmsnorm_backward_into(g, &mut enc, dq, v(gr, qw), (&gs.dqn).into(), q, v(p, qw), (&la.rstd_q).into(), qrows, qd);
                    rmsnorm_backward_into(g, &mut enc, dk, v(gr, kw), (&gs.dkn).into(), k, v(p, kw), (&la.rstd_k).into(), krows, kd);
                }
                _ => {
                    rope_backward(g, &mut enc, dq, dqr, (&a.cos).into(), (&a.sin).into(), t, s, h, hd);
                    rope_backward(g, &mut enc, dk, dkr, (&a.cos).into(), (&a.sin).into(), t, s, kv, hd);
                }
            }
            if let Some(dbias) = &w.qkv_bias {
                bias_backward(g, &mut enc, v(gr, dbias.q), dq, &a.ones, t, h * hd);
                bias_backward(g, &mut enc, v(gr, dbias.k), dk, &a.ones, t, kv * hd);
                bias_backward(g, &mut enc, v(gr, dbias.v), dv, &a.ones, t, kv * hd);
            }
            // dxn = dq | dk | dv · [q_proj; k_proj; v_proj];  the weights += (dq | dk | dv)^T · xn
            let (dqkv, xn) = ((&gs.dqkv).into(), (&la.xn).into());
            gemm(g, &mut enc, (&gs.dxn).into(), dqkv, v(p, w.q_proj), Gemm { a_sections: hs.sections(), ..Gemm::new(t, d, hs.qkv()) });
            let dw = Gemm { trans_a: true, acc: true, a_sections: hs.sections(), ..Gemm::new(hs.qkv(), d, t) };
            gemm(g, &mut enc, v(gr, w.q_proj), dqkv, xn, dw);
            rmsnorm_backward(g, &mut enc, dx, v(gr, w.input_layernorm), (&gs.dxn).into(), (&la.x).into(), v(p, w.input_layernorm), (&la.rstd1).into(), t, d);
        }
        embedding_backward(g, &mut enc, v(gr, off.embed_tokens), dx, &a.index, d);
        gs.binds.fit(g, enc.dispatches());
        // Nothing to read back: the queue runs it before whatever reads the gradients next.
        g.submit(enc)
    }
}

#[cfg(test)]
mod tests {
    use crate::gpu::tests::test_gpu;
    use crate::gpu::Counters;
    use crate::testutil::assert_close;
    use crate::{AdamWConfig, Model, ModelConfig};

    fn cfg(tied: bool) -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 37, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 4, "moe_intermediate_size": 10, "num_experts": 5,
            "num_experts_per_tok": 2, "norm_topk_prob": true, "initializer_range": 0.1, "seed": 4,
            "tie_word_embeddings": tied
        }))
        .unwrap()
    }

    /// Two full training steps (forward, backward with pressure and z-loss, AdamW with clipping)
    /// on both devices from the same initialisation; a statistics-only forward in between must not
    /// disturb the stored activations.
    #[test]
    fn training_step_matches_cpu() {
        let Some(g) = test_gpu("training_step_matches_cpu") else { return };
        for tied in [false, true] {
            let (b, s) = (2, 7);
            let tokens: Vec<u32> = (0..b * s).map(|i| (i * 7 + 3) as u32 % 37).collect();
            let mut mask = vec![1u8; b * s];
            mask[3] = 0;
            let pressure: Vec<f32> = (0..2 * b * 5).map(|i| 0.02 * ((i % 7) as f32 - 3.0)).collect();
            let opt = AdamWConfig::from_json(serde_json::json!({ "lr": 1e-2, "weightDecay": 0.1, "maxGradNorm": 0.5 })).unwrap();
            let mut cpu = Model::new(cfg(tied)).unwrap();
            let mut gpu = Model::new(cfg(tied)).unwrap();
            gpu.to_device(Some("gpu")).unwrap();
            // A selection bias on the tied model's routers: both devices must route alike with it.
            if tied {
                let bias: Vec<f32> = (0..2 * 5).map(|i| 0.03 * ((i * 3 % 7) as f32 - 3.0)).collect();
                cpu.set_router_bias(&bias).unwrap();
                gpu.set_router_bias(&bias).unwrap();
            }
            for step in 0..2 {
                let sc = cpu.forward(&tokens, Some(&mask), b, true).unwrap();
                let (maps, binds) = (g.readbacks(), g.bind_groups_created());
                let sg = gpu.forward(&tokens, Some(&mask), b, true).unwrap();
                assert_eq!(g.readbacks() - maps, 1, "a forward reads back once");
                gpu.forward(&tokens[..s], None, 1, false).unwrap();
                assert_eq!(sg.counts, sc.counts, "step {step}: routing differs");
                assert_eq!(sg.valid_tokens, sc.valid_tokens);
                assert!(((sg.loss - sc.loss) / sc.loss).abs() < 1e-5, "loss {} vs {}", sg.loss, sc.loss);
                assert_close("score_sums", &sg.score_sums, &sc.score_sums, 1e-5, 1e-4);
                assert_close("z_sums", &sg.z_sums, &sc.z_sums, 1e-5, 1e-4);
                assert_close("loss_sums", &sg.loss_sums, &sc.loss_sums, 1e-4, 1e-5);
                cpu.backward(&pressure, 1.0 / 12.0, 1e-3).unwrap();
                let maps = g.readbacks();
                gpu.backward(&pressure, 1.0 / 12.0, 1e-3).unwrap();
                assert_eq!(g.readbacks(), maps, "a backward reads nothing back");
                let gc = cpu.store.host().unwrap().grads.clone();
                assert_close(&format!("grads (tied = {tied}, step {step})"), &gpu.store.host().unwrap().grads, &gc, 1e-5, 1e-3);
                let maps = g.readbacks();
                let (nc, ng) = (cpu.store.step(&opt).unwrap(), gpu.store.step(&opt).unwrap());
                assert_eq!(g.readbacks() - maps, 1, "a step reads back the norm alone");
                assert!(((ng - nc) / nc).abs() < 1e-5, "grad norm {ng} vs {nc}");
                cpu.store.zero_grad().unwrap();
                gpu.store.zero_grad().unwrap();
                if step == 1 {
                    assert_eq!(g.bind_groups_created(), binds, "the second step reuses every bind group");
                }
            }
            let (pc, mc) = (cpu.store.host().unwrap().params.clone(), cpu.store.host().unwrap().opt.m.clone());
            assert_close("adam m after 2 steps", &gpu.store.host().unwrap().opt.m, &mc, 1e-6, 1e-3);
            // AdamW moves each weight by about lr * m / sqrt(v) whatever the gradient's size, so a
            // weight whose gradient is rounding noise (~1e-9) may move differently on each device:
            // the bound is a tenth of lr, far below the lr * steps a real difference would show.
            assert_close("params after 2 steps", &gpu.store.host().unwrap().params, &pc, 1e-3, 1e-4);
            let lc = cpu.logits(&tokens, b).unwrap();
            assert_close("logits", &gpu.logits(&tokens, b).unwrap(), &lc, 1e-4, 1e-4);
        }
    }

    fn demo() -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 1024, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "moe_intermediate_size": 128, "num_experts": 16,
            "num_experts_per_tok": 2, "norm_topk_prob": true
        }))
        .unwrap()
    }

    /// What a training step (forward, backward, AdamW, zero_grad) asks of the device, on the device
    /// check's demo model from its second step: one compute pass per part, two submissions that wait
    /// (the forward's statistics, the step's norm), a backward and a zero_grad that wait for nothing,
    /// no new staging buffer or bind group. Before this accounting the same step took 264 dispatches,
    /// 33 passes, 4 submissions and 4 waits (each part waited; zero_grad submitted a clear).
    #[test]
    fn training_step_counts() {
        let Some(g) = test_gpu("training_step_counts") else { return };
        let (b, s) = (2, 16);
        let tokens: Vec<u32> = (0..b * s).map(|i| (i * 37 + 5) as u32 % 1024).collect();
        let opt = AdamWConfig::from_json(serde_json::json!({ "lr": 1e-3 })).unwrap();
        let mut m = Model::new(demo()).unwrap();
        m.to_device(Some("gpu")).unwrap();
        let pressure = vec![0.0; 4 * b * 16];
        for step in 0..2 {
            let c0 = g.counters();
            m.forward(&tokens, None, b, true).unwrap();
            let c1 = g.counters();
            m.backward(&pressure, 1.0 / 32.0, 1e-4).unwrap();
            let c2 = g.counters();
            m.store.step(&opt).unwrap();
            let c3 = g.counters();
            m.store.zero_grad().unwrap();
            let c4 = g.counters();
            let (fwd, bwd, adamw, zero, all) = (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c4 - c0);
            eprintln!("step {step}: forward {fwd:?}\n  backward {bwd:?}\n  adamw {adamw:?}\n  zero_grad {zero:?}\n  total {all:?}");
            if step == 0 {
                continue;
            }
            assert_eq!((fwd.dispatches, fwd.passes, fwd.submits, fwd.waits, fwd.readbacks), (101, 1, 1, 1, 1), "forward");
            assert_eq!((bwd.dispatches, bwd.passes, bwd.submits, bwd.waits, bwd.readbacks), (114, 1, 1, 0, 0), "backward");
            assert_eq!((adamw.dispatches, adamw.passes, adamw.submits, adamw.waits, adamw.readbacks), (21, 1, 1, 1, 1), "adamw");
            assert_eq!(zero, Counters::default(), "zero_grad is recorded into the next encoder");
            assert_eq!((all.dispatches, all.passes, all.submits, all.waits), (236, 3, 3, 2), "step");
            assert_eq!((all.staging_buffers, all.bind_groups), (0, 0), "staging buffers and bind groups are reused");
        }
    }

    /// The LM head by chunks of 5 rows (3 chunks of 14 positions; the backward recomputes the logits
    /// of two): loss and every gradient as on the CPU (the tolerances of `training_step_matches_cpu`),
    /// tied and untied; logits of more positions than a chunk are refused, of fewer returned.
    #[test]
    fn chunked_head_matches_cpu() {
        let Some(_) = test_gpu("chunked_head_matches_cpu") else { return };
        crate::gpu::head::cap_rows(Some(5));
        for tied in [false, true] {
            let (b, s) = (2, 7);
            let tokens: Vec<u32> = (0..b * s).map(|i| (i * 5 + 2) as u32 % 37).collect();
            let pressure: Vec<f32> = (0..2 * b * 5).map(|i| 0.01 * ((i % 5) as f32 - 2.0)).collect();
            let mut cpu = Model::new(cfg(tied)).unwrap();
            let mut gpu = Model::new(cfg(tied)).unwrap();
            gpu.to_device(Some("gpu")).unwrap();
            let (sc, sg) = (cpu.forward(&tokens, None, b, true).unwrap(), gpu.forward(&tokens, None, b, true).unwrap());
            assert!(((sg.loss - sc.loss) / sc.loss).abs() < 1e-5, "loss {} vs {}", sg.loss, sc.loss);
            assert_close("loss_sums (chunked head)", &sg.loss_sums, &sc.loss_sums, 1e-4, 1e-5);
            cpu.backward(&pressure, 1.0 / 12.0, 1e-3).unwrap();
            gpu.backward(&pressure, 1.0 / 12.0, 1e-3).unwrap();
            let gc = cpu.store.host().unwrap().grads.clone();
            assert_close(&format!("grads (chunked head, tied = {tied})"), &gpu.store.host().unwrap().grads, &gc, 1e-5, 1e-3);
            assert_eq!(gpu.logits(&tokens, b).unwrap_err().code(), "OUT_OF_MEMORY");
            let lc = cpu.logits(&tokens[..4], 1).unwrap();
            assert_close("logits within one chunk", &gpu.logits(&tokens[..4], 1).unwrap(), &lc, 1e-4, 1e-4);
        }
        crate::gpu::head::cap_rows(None);
    }

    /// A model of 100 thin layers records more dispatches per step than the cache's 4,096 entries
    /// without reservations: it still creates no bind group after its first step.
    #[test]
    fn deep_model_reuses_its_bind_groups() {
        let Some(g) = test_gpu("deep_model_reuses_its_bind_groups") else { return };
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 17, "hidden_size": 8, "num_hidden_layers": 100, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 4, "moe_intermediate_size": 4, "num_experts": 3,
            "num_experts_per_tok": 1
        }))
        .unwrap();
        let mut m = Model::new(cfg).unwrap();
        m.to_device(Some("gpu")).unwrap();
        let tokens = [1u32, 2, 3, 4];
        let mut created = Vec::new();
        for _ in 0..2 {
            let c0 = g.counters();
            m.forward(&tokens, None, 1, true).unwrap();
            m.backward(&[0.0; 300], 0.25, 0.0).unwrap();
            created.push((g.counters() - c0).bind_groups);
        }
        assert!(created[0] > 4096, "the model should need more than 4,096 bind groups ({})", created[0]);
        assert_eq!(created[1], 0, "the second step finds every bind group again");
    }

    /// The all-reduce path: read the gradients, write back a changed copy, step; as on the CPU.
    #[test]
    fn gradients_written_from_the_host_drive_the_step() {
        let Some(_) = test_gpu("gradients_written_from_the_host_drive_the_step") else { return };
        let tokens: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % 37).collect();
        let opt = AdamWConfig::from_json(serde_json::json!({ "lr": 1e-2 })).unwrap();
        let mut cpu = Model::new(cfg(false)).unwrap();
        let mut gpu = Model::new(cfg(false)).unwrap();
        gpu.to_device(Some("gpu")).unwrap();
        for m in [&mut cpu, &mut gpu] {
            m.forward(&tokens, None, 2, true).unwrap();
            m.backward(&[0.0; 20], 0.1, 0.0).unwrap();
            let doubled: Vec<f32> = m.store.grads().unwrap().iter().map(|g| 2.0 * g).collect();
            m.store.set_grads(&doubled).unwrap();
            m.store.step(&opt).unwrap();
        }
        let (gc, mc) = (cpu.store.host().unwrap().grads.clone(), cpu.store.host().unwrap().opt.m.clone());
        assert_close("grads as written", gpu.store.grads().unwrap(), &gc, 1e-6, 1e-4);
        assert_close("adam m", &gpu.store.host().unwrap().opt.m, &mc, 1e-7, 1e-4);
    }

    #[test]
    fn non_finite_layer_output_is_reported() {
        let Some(_) = test_gpu("non_finite_layer_output_is_reported") else { return };
        let mut m = Model::new(cfg(false)).unwrap();
        m.to_device(Some("gpu")).unwrap();
        let st = m.store.host_mut().unwrap();
        let r = st.spec("model.layers.1.self_attn.o_proj.weight").unwrap().range();
        st.params[r].fill(f32::MAX);
        let e = m.forward(&[1, 2, 3, 4], None, 1, true).unwrap_err();
        assert_eq!(e.code(), "NON_FINITE");
        assert!(e.to_string().contains("layer 1"), "{e}");
        assert_eq!(m.backward(&[0.0; 10], 1.0, 0.0).unwrap_err().code(), "INVALID_STATE");
    }
}
