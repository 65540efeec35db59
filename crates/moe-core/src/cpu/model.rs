//! The Qwen3-MoE language model on the CPU. Per layer: h = x + Attn(RMSNorm(x)),
//! out = h + MoE(RMSNorm(h)); then final RMSNorm, lm_head (optionally tied), cross-entropy.
//! A decoder layer is three steps, each forward beside its backward: `attention_inputs` (norm,
//! q/k/v, q/k norm, rotary), the attention core, and `layer_output` (o_proj, residual, norm, MoE,
//! residual). `model_forward` is the per-layer loop of those steps; `model_backward` the same list
//! reversed. Generation (`crate::generate`) runs the same steps on one position with a cache.
//! Position t of a sequence predicts token t + 1; it counts ("valid") when t < S - 1 and the
//! target token's mask is 1 — the same validity for the loss and every routing statistic.

use super::attention::{attention_backward, attention_forward};
use super::crossentropy::{crossentropy_backward, crossentropy_forward};
use super::embedding::{embedding_backward, embedding_forward};
use super::matmul::{bias_backward, bias_forward, matmul_backward, matmul_forward};
use super::mlp::MlpActs;
use super::moe::{moe_backward, moe_forward, MoeActs};
use super::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use super::rope::{rope_backward, rope_forward, rope_tables};
use super::{sized, zeroed};
use crate::config::{ModelConfig, Precision, QkNorm, Recompute};
use crate::error::{check_finite, Result};
use crate::layout::{LayerParams, MlpParams, ModelParams};
use crate::stats::{ModelStats, RoutingStats};

/// Activations of one decoder layer (T = B * S tokens).
#[derive(Default)]
pub(crate) struct LayerActs {
    pub x: Vec<f32>,  // (T, C) layer input
    xn: Vec<f32>,     // (T, C) input_layernorm(x)
    rstd1: Vec<f32>,  // (T)
    q: Vec<f32>,      // (T, H*D) before q_norm
    k: Vec<f32>,      // (T, KV*D) before k_norm
    pub v: Vec<f32>,  // (T, KV*D)
    rstd_q: Vec<f32>, // (T*H) per head, (T) over the token
    rstd_k: Vec<f32>, // (T*KV) per head, (T) over the token
    pub qr: Vec<f32>, // (T, H*D) normed and rotated
    pub kr: Vec<f32>, // (T, KV*D)
    pub att: Vec<f32>, // (T, H*D) attention output
    h: Vec<f32>,      // (T, C) x + attention
    hn: Vec<f32>,     // (T, C) post_attention_layernorm(h)
    rstd2: Vec<f32>,  // (T)
    moe: MoeActs,     // a layer with experts
    mlp: MlpActs,     // a dense layer
}

/// q and k after their norms, before rotary: scratch shared by all layers.
#[derive(Default)]
pub(crate) struct NormedQk {
    q: Vec<f32>, // (T, H*D)
    k: Vec<f32>, // (T, KV*D)
}

/// Everything the backward needs from a stored forward, and the backward's scratch. What is kept
/// per layer follows `recompute`: with `None` every activation (`layers`, `probs` per layer), with
/// `Attention` all but the probabilities (one `probs` buffer, reused), with `Full` only the layer
/// inputs `layers[l].x`, every other activation of the layer being computed in `work`.
#[derive(Default)]
pub struct ModelActs {
    b: usize,
    s: usize,
    recompute: Recompute,
    /// the GEMM inputs' format of the stored forward, and so of its backward
    precision: Precision,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    valid: Vec<u8>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    layers: Vec<LayerActs>,
    /// (B, H, S, S) attention probabilities: one per layer (`None`) or one for all
    probs: Vec<Vec<f32>>,
    /// the layer being computed when a layer's activations are not kept (`Full`)
    work: LayerActs,
    /// `Full`: the experts the forward chose per MoE layer (T, K) and the selection biases it used
    selected: Vec<Vec<u32>>,
    bias: Vec<f32>,
    qk: NormedQk,
    xlast: Vec<f32>,  // (T, C) output of the last layer
    xf: Vec<f32>,     // (T, C) after the final norm
    rstd_f: Vec<f32>, // (T)
    logits: Vec<f32>, // (T, V)
    grads: Grads,
}

/// The backward's activation gradients, named after the activations.
#[derive(Default)]
struct Grads {
    dlogits: Vec<f32>,
    dxf: Vec<f32>,
    dx: Vec<f32>,
    dh: Vec<f32>,
    dhn: Vec<f32>,
    datt: Vec<f32>,
    dqr: Vec<f32>,
    dkr: Vec<f32>,
    dv: Vec<f32>,
    dqn: Vec<f32>,
    dkn: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dxn: Vec<f32>,
    /// a recomputation's attention output (T, H*D) and layer output (T, C), checked against the
    /// forward's
    att: Vec<f32>,
    out: Vec<f32>,
}

/// The q or k normalisation of `cfg.qk_norm()` (rows of `dim` values: D per head, or the whole
/// token) of x (T, n) into out; None copies x. rstd: one per row.
fn qk_norm_forward(out: &mut [f32], rstd: &mut Vec<f32>, x: &[f32], w: Option<&[f32]>, dim: usize, eps: f32) {
    match w {
        Some(w) => rmsnorm_forward(out, sized(rstd, x.len() / dim), x, w, dim, eps),
        None => out.copy_from_slice(x),
    }
}

/// Backward of `qk_norm_forward`: dx (overwritten) from dout.
fn qk_norm_backward(dx: &mut [f32], dw: Option<&mut [f32]>, dout: &[f32], x: &[f32], w: Option<&[f32]>, rstd: &[f32], dim: usize) {
    match (w, dw) {
        (Some(w), Some(dw)) => {
            dx.fill(0.0);
            rmsnorm_backward(dx, dw, dout, x, w, rstd, dim);
        }
        _ => dx.copy_from_slice(dout),
    }
}

/// Rows of q and k values each q/k norm normalises: D (per head) or the whole token.
fn qk_norm_dims(cfg: &ModelConfig) -> (usize, usize) {
    let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    match cfg.qk_norm() {
        QkNorm::Full => (h * hd, kv * hd),
        QkNorm::PerHead | QkNorm::None => (hd, hd),
    }
}

/// The attention core's inputs from the layer input `la.x`: xn = input_layernorm(x); q, k, v
/// projections (+ biases, Qwen2-MoE); q_norm, k_norm (per head or over the token, when the
/// architecture has them); rotary embedding at positions pos0..pos0+S of every sequence. Writes
/// la.{xn, rstd1, q, k, v, rstd_q, rstd_k, qr, kr}; T = la.x.len() / C tokens.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_inputs(la: &mut LayerActs, qk: &mut NormedQk, w: &LayerParams<&[f32]>, cfg: &ModelConfig, cos: &[f32], sin: &[f32], s: usize, pos0: usize, p: Precision) {
    let (d, h, kv, hd, eps) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps as f32);
    let t = la.x.len() / d;
    rmsnorm_forward(sized(&mut la.xn, t * d), sized(&mut la.rstd1, t), &la.x, w.input_layernorm, d, eps);
    matmul_forward(sized(&mut la.q, t * h * hd), &la.xn, w.q_proj, t, d, h * hd, p);
    matmul_forward(sized(&mut la.k, t * kv * hd), &la.xn, w.k_proj, t, d, kv * hd, p);
    matmul_forward(sized(&mut la.v, t * kv * hd), &la.xn, w.v_proj, t, d, kv * hd, p);
    if let Some(b) = &w.qkv_bias {
        bias_forward(&mut la.q, b.q);
        bias_forward(&mut la.k, b.k);
        bias_forward(&mut la.v, b.v);
    }
    let (qd, kd) = qk_norm_dims(cfg);
    let (qn, kn) = (sized(&mut qk.q, t * h * hd), sized(&mut qk.k, t * kv * hd));
    qk_norm_forward(qn, &mut la.rstd_q, &la.q, w.q_norm, qd, eps);
    qk_norm_forward(kn, &mut la.rstd_k, &la.k, w.k_norm, kd, eps);
    rope_forward(sized(&mut la.qr, t * h * hd), qn, cos, sin, s, h, hd, pos0);
    rope_forward(sized(&mut la.kr, t * kv * hd), kn, cos, sin, s, kv, hd, pos0);
}

/// Backward of `attention_inputs`: from d qr, d kr, d v to the layer input, added into dx (T, C);
/// accumulates the gradients of the norms, projections and biases. Uses gs.{dqn, dkn, dq, dk, dxn}
/// as scratch.
#[allow(clippy::too_many_arguments)]
fn attention_inputs_backward(gs: &mut Grads, g: &mut LayerParams<&mut [f32]>, la: &LayerActs, w: &LayerParams<&[f32]>, cfg: &ModelConfig, cos: &[f32], sin: &[f32], s: usize, p: Precision) {
    let (d, h, kv, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let t = la.x.len() / d;
    rope_backward(sized(&mut gs.dqn, t * h * hd), &gs.dqr, cos, sin, s, h, hd);
    rope_backward(sized(&mut gs.dkn, t * kv * hd), &gs.dkr, cos, sin, s, kv, hd);
    let (qd, kd) = qk_norm_dims(cfg);
    let (dq, dk) = (sized(&mut gs.dq, t * h * hd), sized(&mut gs.dk, t * kv * hd));
    qk_norm_backward(dq, g.q_norm.as_deref_mut(), &gs.dqn, &la.q, w.q_norm, &la.rstd_q, qd);
    qk_norm_backward(dk, g.k_norm.as_deref_mut(), &gs.dkn, &la.k, w.k_norm, &la.rstd_k, kd);
    if let Some(b) = g.qkv_bias.as_mut() {
        bias_backward(b.q, dq);
        bias_backward(b.k, dk);
        bias_backward(b.v, &gs.dv);
    }
    let dxn = zeroed(&mut gs.dxn, t * d);
    matmul_backward(dxn, g.q_proj, dq, &la.xn, w.q_proj, t, d, h * hd, p);
    matmul_backward(dxn, g.k_proj, dk, &la.xn, w.k_proj, t, d, kv * hd, p);
    matmul_backward(dxn, g.v_proj, &gs.dv, &la.xn, w.v_proj, t, d, kv * hd, p);
    rmsnorm_backward(&mut gs.dx, g.input_layernorm, dxn, &la.x, w.input_layernorm, &la.rstd1, d);
}

/// The rest of a decoder layer after the attention core: h = x + o_proj(att);
/// hn = post_attention_layernorm(h); out (T, C) = h + MLP(hn), overwritten, the MLP being the MoE
/// block or a dense one. In an MoE layer `rs` receives the block's routing statistics over the
/// valid positions (`valid`, T) and bias (E) is the router's selection bias; a dense layer leaves
/// `rs` untouched.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_output(out: &mut [f32], rs: &mut RoutingStats, la: &mut LayerActs, w: &LayerParams<&[f32]>, bias: &[f32], cfg: &ModelConfig, valid: &[u8], b: usize, s: usize, p: Precision) {
    let (d, h, hd, eps) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.rms_norm_eps as f32);
    let t = b * s;
    let hh = sized(&mut la.h, t * d);
    matmul_forward(hh, &la.att, w.o_proj, t, h * hd, d, p);
    hh.iter_mut().zip(&la.x).for_each(|(h, x)| *h += x);
    rmsnorm_forward(sized(&mut la.hn, t * d), sized(&mut la.rstd2, t), &la.h, w.post_attention_layernorm, d, eps);
    match &w.mlp {
        MlpParams::Moe(m) => moe_forward(out, rs, &mut la.moe, &la.hn, valid, bias, m, &cfg.moe(), b, s, p),
        MlpParams::Dense(m) => {
            la.mlp.forward(&la.hn, m, d, cfg.intermediate_size, p);
            out.copy_from_slice(&la.mlp.y);
        }
    }
    out.iter_mut().zip(&la.h).for_each(|(o, h)| *o += h);
}

/// Backward of `layer_output`: gs.dx holds d out on entry and d x through the residual on exit;
/// overwrites gs.datt (d att). pressure (B, E) and z_scale: see `cpu::router::router_backward`
/// (unused in a dense layer).
#[allow(clippy::too_many_arguments)]
fn layer_output_backward(gs: &mut Grads, g: &mut LayerParams<&mut [f32]>, la: &mut LayerActs, w: &LayerParams<&[f32]>, cfg: &ModelConfig, pressure: &[f32], z_scale: f32, p: Precision) {
    let (d, h, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim);
    let t = la.x.len() / d;
    // out = h + MoE(hn)
    let dh = sized(&mut gs.dh, t * d);
    dh.copy_from_slice(&gs.dx);
    let dhn = sized(&mut gs.dhn, t * d);
    match (&mut g.mlp, &w.mlp) {
        (MlpParams::Moe(gm), MlpParams::Moe(m)) => moe_backward(dhn, gm, &mut la.moe, &gs.dx, pressure, z_scale, m, &cfg.moe(), p),
        (MlpParams::Dense(gm), MlpParams::Dense(m)) => {
            la.mlp.backward(gm, &gs.dx, &la.hn, m, d, cfg.intermediate_size, p);
            dhn.copy_from_slice(&la.mlp.dx);
        }
        _ => unreachable!("gradients and weights come from one layout"),
    }
    rmsnorm_backward(dh, g.post_attention_layernorm, &gs.dhn, &la.h, w.post_attention_layernorm, &la.rstd2, d);
    // h = x + o_proj(att)
    gs.dx.copy_from_slice(&gs.dh);
    matmul_backward(zeroed(&mut gs.datt, t * h * hd), g.o_proj, &gs.dh, &la.att, w.o_proj, t, h * hd, d, p);
}

/// One decoder layer of the forward: `attention_inputs`, the attention core (probabilities into
/// `probs`), `layer_output` into out (T, C). The stored forward's step and the recomputation's.
#[allow(clippy::too_many_arguments)]
fn layer_forward(out: &mut [f32], rs: &mut RoutingStats, la: &mut LayerActs, qk: &mut NormedQk, probs: &mut Vec<f32>, w: &LayerParams<&[f32]>, bias: &[f32], cfg: &ModelConfig, rope: (&[f32], &[f32]), valid: &[u8], b: usize, s: usize, l: usize, p: Precision) {
    let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    attention_inputs(la, qk, w, cfg, rope.0, rope.1, s, 0, p);
    attention_forward(sized(&mut la.att, b * s * h * hd), sized(probs, b * h * s * s), &la.qr, &la.kr, &la.v, s, h, kv, hd, cfg.window(l));
    layer_output(out, rs, la, w, bias, cfg, valid, b, s, p);
}

/// Forward over tokens (B, S) with per-position validity `valid` (B*S). Fills `a` and returns the
/// statistics (a row per MoE layer); the logits are in `a.logits`. Fails with `NON_FINITE` naming
/// the first layer whose output is not finite. bias (L_moe, E): the routers' selection biases.
#[allow(clippy::too_many_arguments)]
fn model_forward(a: &mut ModelActs, w: &ModelParams<&[f32]>, bias: &[f32], cfg: &ModelConfig, tokens: &[u32], valid: &[u8], b: usize, s: usize) -> Result<ModelStats> {
    let (d, hd, v, e, nl) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
    let t = b * s;
    let moe_layers = cfg.moe_layers();
    let mut stats = ModelStats::zeros(moe_layers.len(), b, e);
    // Every buffer of the previous forward is reused (each op overwrites its outputs): fresh
    // allocations of this size cost page faults on every step.
    (a.b, a.s) = (b, s);
    a.valid.clear();
    a.valid.extend_from_slice(valid);
    (a.cos, a.sin) = rope_tables(s, hd, cfg.rope_theta);
    a.tokens.clear();
    a.tokens.extend_from_slice(tokens);
    a.targets.clear();
    a.targets.extend((0..t).map(|i| if i % s + 1 < s { tokens[i + 1] } else { 0 }));
    a.layers.resize_with(nl, LayerActs::default);
    a.probs.resize_with(if a.recompute == Recompute::None { nl } else { 1 }, Vec::new);
    a.bias.clear();
    a.bias.extend_from_slice(bias);
    a.selected.resize_with(moe_layers.len(), Vec::new);
    embedding_forward(sized(&mut a.layers[0].x, t * d), tokens, w.embed_tokens, d);
    let mut rs = RoutingStats::default();
    let full = a.recompute == Recompute::Full;
    for (l, lw) in w.layers.iter().enumerate() {
        let (cur, next) = a.layers.split_at_mut(l + 1);
        // Full: the layer computes in `work`, its input swapped in and back out.
        if full {
            std::mem::swap(&mut cur[l].x, &mut a.work.x);
        }
        let la = if full { &mut a.work } else { &mut cur[l] };
        let out = sized(next.first_mut().map_or(&mut a.xlast, |n| &mut n.x), t * d);
        // Routing statistics, pressure and selection biases have a row per MoE layer only.
        let m = moe_layers.iter().position(|&ml| ml == l);
        let bias_l = m.map_or(&[][..], |m| &bias[m * e..][..e]);
        let probs = &mut a.probs[if full || a.recompute == Recompute::Attention { 0 } else { l }];
        layer_forward(out, &mut rs, la, &mut a.qk, probs, lw, bias_l, cfg, (&a.cos, &a.sin), &a.valid, b, s, l, a.precision);
        check_finite(&format!("output of layer {l}"), out)?;
        if let Some(m) = m {
            stats.set_layer(m, &rs);
            if full {
                a.selected[m].clear();
                a.selected[m].extend_from_slice(la.moe.selected());
            }
        }
        if full {
            std::mem::swap(&mut cur[l].x, &mut a.work.x);
        }
    }
    rmsnorm_forward(sized(&mut a.xf, t * d), sized(&mut a.rstd_f, t), &a.xlast, w.norm, d, cfg.rms_norm_eps as f32);
    matmul_forward(sized(&mut a.logits, t * v), &a.xf, w.head(), t, d, v, a.precision);
    let mut losses = vec![0.0; t];
    crossentropy_forward(&mut losses, &a.logits, &a.targets, &a.valid, v);
    check_finite("loss", &losses)?;
    stats.set_losses(&losses, s);
    Ok(stats)
}

/// Backward of `model_forward`: accumulates all parameter gradients. pressure (L_moe, B, E);
/// lm_scale multiplies the summed cross-entropy (1/T_glob); z_scale = beta / T_glob.
fn model_backward(g: &mut ModelParams<&mut [f32]>, a: &mut ModelActs, w: &ModelParams<&[f32]>, cfg: &ModelConfig, pressure: &[f32], lm_scale: f32, z_scale: f32) {
    let (d, h, kv, hd, v, e) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.num_experts);
    let (b, s) = (a.b, a.s);
    let t = b * s;
    // Gradient buffers are kept across steps like the activations; `zeroed` where an op accumulates.
    let gs = &mut a.grads;
    crossentropy_backward(sized(&mut gs.dlogits, t * v), &a.logits, &a.targets, &a.valid, lm_scale, v);
    let dhead: &mut [f32] = match g.lm_head.as_deref_mut() {
        Some(lm) => lm,
        None => g.embed_tokens,
    };
    matmul_backward(zeroed(&mut gs.dxf, t * d), dhead, &gs.dlogits, &a.xf, w.head(), t, d, v, a.precision);
    rmsnorm_backward(zeroed(&mut gs.dx, t * d), g.norm, &gs.dxf, &a.xlast, w.norm, &a.rstd_f, d);
    let moe_layers = cfg.moe_layers();
    for l in (0..a.layers.len()).rev() {
        let (lw, lg) = (&w.layers[l], &mut g.layers[l]);
        let m = moe_layers.iter().position(|&ml| ml == l);
        let pressure_l = m.map_or(&[][..], |m| &pressure[m * b * e..][..b * e]);
        let window = cfg.window(l);
        let (cur, next) = a.layers.split_at_mut(l + 1);
        let probs = match a.recompute {
            Recompute::None => &mut a.probs[l],
            Recompute::Attention | Recompute::Full => &mut a.probs[0],
        };
        let la = match a.recompute {
            Recompute::None => &mut cur[l],
            // The attention core again from the kept q, k, v: the same probabilities and output.
            Recompute::Attention => {
                let la = &mut cur[l];
                attention_forward(sized(&mut gs.att, t * h * hd), sized(probs, b * h * s * s), &la.qr, &la.kr, &la.v, s, h, kv, hd, window);
                assert!(gs.att == la.att, "layer {l}: the recomputed attention differs from the forward's");
                la
            }
            // The whole layer again from its kept input, with the forward's selection biases; its
            // routing statistics are dropped. Output and expert choice must match the forward's.
            Recompute::Full => {
                std::mem::swap(&mut cur[l].x, &mut a.work.x);
                let bias_l = m.map_or(&[][..], |m| &a.bias[m * e..][..e]);
                let out = sized(&mut gs.out, t * d);
                layer_forward(out, &mut RoutingStats::default(), &mut a.work, &mut a.qk, probs, lw, bias_l, cfg, (&a.cos, &a.sin), &a.valid, b, s, l, a.precision);
                let stored_out = next.first().map_or(&a.xlast, |n| &n.x);
                assert!(*out == stored_out[..], "layer {l}: the recomputed layer output differs from the forward's");
                if let Some(m) = m {
                    assert!(a.work.moe.selected() == &a.selected[m][..], "layer {l}: the recomputed routing differs from the forward's");
                }
                &mut a.work
            }
        };
        layer_output_backward(gs, lg, la, lw, cfg, pressure_l, z_scale, a.precision);
        let (dqr, dkr, dv) = (sized(&mut gs.dqr, t * h * hd), sized(&mut gs.dkr, t * kv * hd), sized(&mut gs.dv, t * kv * hd));
        attention_backward(dqr, dkr, dv, &gs.datt, probs, &la.qr, &la.kr, &la.v, s, h, kv, hd, window);
        attention_inputs_backward(gs, lg, la, lw, cfg, &a.cos, &a.sin, s, a.precision);
        if a.recompute == Recompute::Full {
            std::mem::swap(&mut cur[l].x, &mut a.work.x);
        }
    }
    embedding_backward(g.embed_tokens, &gs.dx, &a.tokens, d);
}

/// The CPU side of a `Model`: the stored forward's activations, reused from step to step.
#[derive(Default)]
pub struct CpuModel {
    acts: ModelActs,
}

impl CpuModel {
    /// Forward over tokens (B, S) with validity `valid` (B*S). With `store` the activations are
    /// kept for `backward` as `recompute` says; without, the stored ones are untouched and the
    /// forward holds one layer's activations at a time. The large GEMMs take inputs in `precision`,
    /// and so does the backward of a stored forward. Returns the statistics and, with
    /// `want_logits`, the logits (B*S, V).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&mut self, w: &ModelParams<&[f32]>, bias: &[f32], cfg: &ModelConfig, tokens: &[u32], valid: &[u8], b: usize, s: usize, store: Option<Recompute>, precision: Precision, want_logits: bool) -> Result<(ModelStats, Option<Vec<f32>>)> {
        let mut scratch = ModelActs { recompute: Recompute::Full, ..ModelActs::default() };
        let a = match store {
            Some(r) => {
                if self.acts.recompute != r {
                    // another setting keeps other buffers: free the old ones
                    self.acts = ModelActs { recompute: r, ..ModelActs::default() };
                }
                &mut self.acts
            }
            None => &mut scratch,
        };
        a.precision = precision;
        let stats = super::pool().install(|| model_forward(a, w, bias, cfg, tokens, valid, b, s))?;
        Ok((stats, want_logits.then(|| a.logits.clone())))
    }

    /// Backward of the stored forward; accumulates into `g`. See `model_backward`.
    pub fn backward(&mut self, g: &mut ModelParams<&mut [f32]>, w: &ModelParams<&[f32]>, cfg: &ModelConfig, pressure: &[f32], lm_scale: f32, z_scale: f32) {
        let a = &mut self.acts;
        super::pool().install(|| model_backward(g, a, w, cfg, pressure, lm_scale, z_scale));
    }
}
