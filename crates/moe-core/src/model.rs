//! The Qwen3-MoE language model on the CPU. Per layer: h = x + Attn(RMSNorm(x)),
//! out = h + MoE(RMSNorm(h)); then final RMSNorm, lm_head (optionally tied), cross-entropy.
//! `model_forward` is the per-layer list of op calls; `model_backward` is the same list reversed.
//! Position t of a sequence predicts token t + 1; it counts ("valid") when t < S - 1 and the
//! target token's mask is 1 — the same validity for the loss and every routing statistic.

use crate::config::ModelConfig;
use crate::cpu::attention::{attention_backward, attention_forward};
use crate::cpu::crossentropy::{crossentropy_backward, crossentropy_forward};
use crate::cpu::embedding::{embedding_backward, embedding_forward};
use crate::cpu::matmul::{matmul_backward, matmul_forward};
use crate::cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::cpu::rope::{rope_backward, rope_forward, rope_tables};
use crate::error::{check_finite, check_len, set_checked, MoeError, Result};
use crate::gpu::model::GpuModel;
use crate::gpu::Device;
use crate::placed::Placed;
use crate::moe::{moe_backward, moe_forward, sized, moe_param_specs, MoeActs, MoeConfig, MoeGrads, MoeWeights, RoutingStats};
use crate::params::{split_many, split_many_mut, ParamStore, SpecBuilder};

/// The flat buffer's parameters in order, with their Hugging Face names.
pub fn model_param_store(cfg: &ModelConfig) -> Result<ParamStore> {
    let (v, d, h, kv, hd) = (cfg.vocab_size, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let mut sb = SpecBuilder::new();
    sb.push("model.embed_tokens.weight".into(), vec![v, d]);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        sb.push(format!("{p}input_layernorm.weight"), vec![d]);
        sb.push(format!("{p}self_attn.q_proj.weight"), vec![h * hd, d]);
        sb.push(format!("{p}self_attn.k_proj.weight"), vec![kv * hd, d]);
        sb.push(format!("{p}self_attn.v_proj.weight"), vec![kv * hd, d]);
        sb.push(format!("{p}self_attn.o_proj.weight"), vec![d, h * hd]);
        sb.push(format!("{p}self_attn.q_norm.weight"), vec![hd]);
        sb.push(format!("{p}self_attn.k_norm.weight"), vec![hd]);
        sb.push(format!("{p}post_attention_layernorm.weight"), vec![d]);
        moe_param_specs(&mut sb, &cfg.moe(), &format!("{p}mlp."));
    }
    sb.push("model.norm.weight".into(), vec![d]);
    if !cfg.tie_word_embeddings {
        sb.push("lm_head.weight".into(), vec![v, d]);
    }
    ParamStore::init(sb.specs, cfg.initializer_range, cfg.seed)
}

/// Lengths of one decoder layer's pieces, in spec order:
/// input_layernorm, q, k, v, o, q_norm, k_norm, post_attention_layernorm, mlp.
pub(crate) fn layer_lens(cfg: &ModelConfig) -> Vec<usize> {
    let (d, h, kv, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let m = cfg.moe();
    let moe = m.num_experts * d + 3 * m.num_experts * m.moe_intermediate_size * d;
    vec![d, h * hd * d, kv * hd * d, kv * hd * d, d * h * hd, hd, hd, d, moe]
}

/// Lengths of the model's pieces: embed, each layer (whole), final norm, lm_head if untied.
pub(crate) fn model_lens(cfg: &ModelConfig) -> Vec<usize> {
    let layer: usize = layer_lens(cfg).iter().sum();
    let mut lens = vec![cfg.vocab_size * cfg.hidden_size];
    lens.extend(std::iter::repeat_n(layer, cfg.num_hidden_layers));
    lens.push(cfg.hidden_size);
    if !cfg.tie_word_embeddings {
        lens.push(cfg.vocab_size * cfg.hidden_size);
    }
    lens
}

/// Views of the whole model: (embed, layers, final norm, lm_head — the embedding when tied).
pub struct Views<T> {
    pub embed: T,
    pub layers: Vec<Vec<T>>,
    pub norm: T,
    pub lm_head: Option<T>,
}

pub fn views<'a>(flat: &'a [f32], cfg: &ModelConfig) -> Views<&'a [f32]> {
    let mut parts = split_many(flat, &model_lens(cfg)).into_iter();
    let embed = parts.next().unwrap();
    let layers = (0..cfg.num_hidden_layers).map(|_| split_many(parts.next().unwrap(), &layer_lens(cfg))).collect();
    Views { embed, layers, norm: parts.next().unwrap(), lm_head: parts.next() }
}

pub fn views_mut<'a>(flat: &'a mut [f32], cfg: &ModelConfig) -> Views<&'a mut [f32]> {
    let mut parts = split_many_mut(flat, &model_lens(cfg)).into_iter();
    let embed = parts.next().unwrap();
    let layers = (0..cfg.num_hidden_layers).map(|_| split_many_mut(parts.next().unwrap(), &layer_lens(cfg))).collect();
    Views { embed, layers, norm: parts.next().unwrap(), lm_head: parts.next() }
}

/// Activations of one decoder layer (T = B * S tokens).
#[derive(Default)]
struct LayerActs {
    x: Vec<f32>,     // (T, C) layer input
    xn: Vec<f32>,    // (T, C) input_layernorm(x)
    rstd1: Vec<f32>, // (T)
    q: Vec<f32>,     // (T, H*D) before q_norm
    k: Vec<f32>,     // (T, KV*D) before k_norm
    v: Vec<f32>,     // (T, KV*D)
    rstd_q: Vec<f32>, // (T*H)
    rstd_k: Vec<f32>, // (T*KV)
    qr: Vec<f32>,    // (T, H*D) normed and rotated
    kr: Vec<f32>,    // (T, KV*D)
    probs: Vec<f32>, // (B, H, S, S)
    att: Vec<f32>,   // (T, H*D)
    h: Vec<f32>,     // (T, C) x + attention
    hn: Vec<f32>,    // (T, C) post_attention_layernorm(h)
    rstd2: Vec<f32>, // (T)
    moe: MoeActs,
}

/// Everything the backward needs from a stored forward.
#[derive(Default)]
pub struct ModelActs {
    b: usize,
    s: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    valid: Vec<u8>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    layers: Vec<LayerActs>,
    qnorm: Vec<f32>,  // (T, H*D) scratch: q after q_norm, before rope
    knorm: Vec<f32>,  // (T, KV*D)
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
}

/// Per-layer, per-sequence routing statistics and the loss of one forward.
#[derive(Debug, Clone, Default)]
pub struct ModelStats {
    /// (L, B, E)
    pub counts: Vec<f32>,
    /// (L, B, E)
    pub score_sums: Vec<f32>,
    /// (L, B)
    pub topk_score_sums: Vec<f32>,
    /// (L, B)
    pub z_sums: Vec<f32>,
    /// (B) valid positions per sequence
    pub valid_tokens: Vec<f32>,
    /// (B) summed cross-entropy (nats) per sequence
    pub loss_sums: Vec<f32>,
    /// summed cross-entropy over all valid positions
    pub loss: f64,
}

/// Forward over tokens (B, S). Fills `acts` and returns the statistics and the logits are in
/// `acts.logits`. Fails with `NON_FINITE` naming the first layer whose output is not finite.
/// `bias` (L, E): the routers' selection biases (zero unless auxiliary-loss-free balancing is on).
#[allow(clippy::too_many_arguments)]
fn model_forward(a: &mut ModelActs, w: &Views<&[f32]>, bias: &[f32], cfg: &ModelConfig, tokens: &[u32], valid: Vec<u8>, b: usize, s: usize) -> Result<ModelStats> {
    let (d, h, kv, hd, v, e, nl) =
        (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
    let t = b * s;
    let eps = cfg.rms_norm_eps as f32;
    let moe_cfg: MoeConfig = cfg.moe();
    let mut stats = ModelStats {
        counts: vec![0.0; nl * b * e],
        score_sums: vec![0.0; nl * b * e],
        topk_score_sums: vec![0.0; nl * b],
        z_sums: vec![0.0; nl * b],
        ..Default::default()
    };
    // Every buffer of the previous forward is reused (each op overwrites its outputs): fresh
    // allocations of this size cost page faults on every step.
    (a.b, a.s, a.valid) = (b, s, valid);
    (a.cos, a.sin) = rope_tables(s, hd, cfg.rope_theta);
    a.tokens.clear();
    a.tokens.extend_from_slice(tokens);
    a.targets.clear();
    a.targets.extend((0..t).map(|i| if i % s + 1 < s { tokens[i + 1] } else { 0 }));
    a.layers.resize_with(nl, LayerActs::default);
    embedding_forward(sized(&mut a.layers[0].x, t * d), tokens, w.embed, d);
    let mut rs = RoutingStats::default();
    for (l, lw) in w.layers.iter().enumerate() {
        let [ln1, wq, wk, wv, wo, qn, kn, ln2, mlp] = lw[..] else { unreachable!() };
        let (cur, next) = a.layers.split_at_mut(l + 1);
        let la = &mut cur[l];
        rmsnorm_forward(sized(&mut la.xn, t * d), sized(&mut la.rstd1, t), &la.x, ln1, d, eps);
        matmul_forward(sized(&mut la.q, t * h * hd), &la.xn, wq, t, d, h * hd);
        matmul_forward(sized(&mut la.k, t * kv * hd), &la.xn, wk, t, d, kv * hd);
        matmul_forward(sized(&mut la.v, t * kv * hd), &la.xn, wv, t, d, kv * hd);
        let (qnorm, knorm) = (sized(&mut a.qnorm, t * h * hd), sized(&mut a.knorm, t * kv * hd));
        rmsnorm_forward(qnorm, sized(&mut la.rstd_q, t * h), &la.q, qn, hd, eps);
        rmsnorm_forward(knorm, sized(&mut la.rstd_k, t * kv), &la.k, kn, hd, eps);
        rope_forward(sized(&mut la.qr, t * h * hd), qnorm, &a.cos, &a.sin, s, h, hd, 0);
        rope_forward(sized(&mut la.kr, t * kv * hd), knorm, &a.cos, &a.sin, s, kv, hd, 0);
        attention_forward(sized(&mut la.att, t * h * hd), sized(&mut la.probs, b * h * s * s), &la.qr, &la.kr, &la.v, s, h, kv, hd);
        let hh = sized(&mut la.h, t * d);
        matmul_forward(hh, &la.att, wo, t, h * hd, d);
        hh.iter_mut().zip(&la.x).for_each(|(h, x)| *h += x);
        rmsnorm_forward(sized(&mut la.hn, t * d), sized(&mut la.rstd2, t), &la.h, ln2, d, eps);
        let out = sized(next.first_mut().map_or(&mut a.xlast, |n| &mut n.x), t * d);
        moe_forward(out, &mut rs, &mut la.moe, &la.hn, &a.valid, &bias[l * e..][..e], &MoeWeights::split(mlp, &moe_cfg), &moe_cfg, b, s);
        out.iter_mut().zip(&la.h).for_each(|(o, h)| *o += h);
        check_finite(&format!("output of layer {l}"), out)?;
        stats.counts[l * b * e..][..b * e].copy_from_slice(&rs.counts);
        stats.score_sums[l * b * e..][..b * e].copy_from_slice(&rs.score_sums);
        stats.topk_score_sums[l * b..][..b].copy_from_slice(&rs.topk_score_sums);
        stats.z_sums[l * b..][..b].copy_from_slice(&rs.z_sums);
    }
    stats.valid_tokens = rs.valid_tokens;
    rmsnorm_forward(sized(&mut a.xf, t * d), sized(&mut a.rstd_f, t), &a.xlast, w.norm, d, eps);
    matmul_forward(sized(&mut a.logits, t * v), &a.xf, w.lm_head.unwrap_or(w.embed), t, d, v);
    let mut losses = vec![0.0; t];
    crossentropy_forward(&mut losses, &a.logits, &a.targets, &a.valid, v);
    check_finite("loss", &losses)?;
    stats.loss_sums = losses.chunks(s).map(|c| c.iter().map(|&x| x as f64).sum::<f64>() as f32).collect();
    stats.loss = losses.iter().map(|&x| x as f64).sum();
    Ok(stats)
}

/// Backward of `model_forward`: accumulates all parameter gradients. pressure (L, B, E);
/// lm_scale multiplies the summed cross-entropy (1/T_glob); z_scale = beta / T_glob.
fn model_backward(g: &mut Views<&mut [f32]>, acts: &mut ModelActs, w: &Views<&[f32]>, cfg: &ModelConfig, pressure: &[f32], lm_scale: f32, z_scale: f32) {
    let (d, h, kv, hd, v, e) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.num_experts);
    let (b, s) = (acts.b, acts.s);
    let t = b * s;
    let moe_cfg = cfg.moe();
    // Gradient buffers are kept across steps like the activations; `zeroed` where an op accumulates.
    let gs = &mut acts.grads;
    crossentropy_backward(sized(&mut gs.dlogits, t * v), &acts.logits, &acts.targets, &acts.valid, lm_scale, v);
    let dlm: &mut [f32] = match g.lm_head.as_deref_mut() {
        Some(lm) => lm,
        None => g.embed,
    };
    matmul_backward(zeroed(&mut gs.dxf, t * d), dlm, &gs.dlogits, &acts.xf, w.lm_head.unwrap_or(w.embed), t, d, v);
    rmsnorm_backward(zeroed(&mut gs.dx, t * d), g.norm, &gs.dxf, &acts.xlast, w.norm, &acts.rstd_f, d);
    for (l, a) in acts.layers.iter_mut().enumerate().rev() {
        let [ln1, wq, wk, wv, wo, qn, kn, ln2, mlp] = w.layers[l][..] else { unreachable!() };
        let [gln1, gq, gk, gv, go, gqn, gkn, gln2, gmlp] = &mut g.layers[l][..] else { unreachable!() };
        // out = h + MoE(hn)
        let dh = sized(&mut gs.dh, t * d);
        dh.copy_from_slice(&gs.dx);
        let mut mg = MoeGrads::split(gmlp, &moe_cfg);
        moe_backward(sized(&mut gs.dhn, t * d), &mut mg, &mut a.moe, &gs.dx, &pressure[l * b * e..][..b * e], z_scale, &MoeWeights::split(mlp, &moe_cfg), &moe_cfg);
        rmsnorm_backward(dh, gln2, &gs.dhn, &a.h, ln2, &a.rstd2, d);
        // h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v)); dx becomes this layer's dx.
        gs.dx.copy_from_slice(&gs.dh);
        matmul_backward(zeroed(&mut gs.datt, t * h * hd), go, &gs.dh, &a.att, wo, t, h * hd, d);
        let (dqr, dkr, dv) = (sized(&mut gs.dqr, t * h * hd), sized(&mut gs.dkr, t * kv * hd), sized(&mut gs.dv, t * kv * hd));
        attention_backward(dqr, dkr, dv, &gs.datt, &a.probs, &a.qr, &a.kr, &a.v, s, h, kv, hd);
        rope_backward(sized(&mut gs.dqn, t * h * hd), dqr, &acts.cos, &acts.sin, s, h, hd);
        rope_backward(sized(&mut gs.dkn, t * kv * hd), dkr, &acts.cos, &acts.sin, s, kv, hd);
        let (dq, dk) = (zeroed(&mut gs.dq, t * h * hd), zeroed(&mut gs.dk, t * kv * hd));
        rmsnorm_backward(dq, gqn, &gs.dqn, &a.q, qn, &a.rstd_q, hd);
        rmsnorm_backward(dk, gkn, &gs.dkn, &a.k, kn, &a.rstd_k, hd);
        let dxn = zeroed(&mut gs.dxn, t * d);
        matmul_backward(dxn, gq, dq, &a.xn, wq, t, d, h * hd);
        matmul_backward(dxn, gk, dk, &a.xn, wk, t, d, kv * hd);
        matmul_backward(dxn, gv, &gs.dv, &a.xn, wv, t, d, kv * hd);
        rmsnorm_backward(&mut gs.dx, gln1, dxn, &a.x, ln1, &a.rstd1, d);
    }
    embedding_backward(g.embed, &gs.dx, &acts.tokens, d);
}

/// `v` resized to n and set to zero, for outputs that ops accumulate into.
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

/// The model on the CPU or the GPU: `store` holds parameters, gradients and moments where they
/// live (see `Placed`), `gpu` the device activations when on the GPU.
pub struct Model {
    pub cfg: ModelConfig,
    pub store: Placed,
    acts: ModelActs,
    /// B of the stored forward, once one succeeded
    stored: Option<usize>,
    gpu: Option<GpuModel>,
    /// (L, E) the routers' selection biases; see `set_router_bias`
    router_bias: Vec<f32>,
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let store = Placed::new(model_param_store(&cfg)?);
        let router_bias = vec![0.0; cfg.num_hidden_layers * cfg.num_experts];
        Ok(Model { cfg, store, acts: ModelActs::default(), stored: None, gpu: None, router_bias })
    }

    /// Moves the model to `requested` ("auto" | "gpu" | "cpu"; None reads MOE_DEVICE, default auto).
    pub fn to_device(&mut self, requested: Option<&str>) -> Result<Device> {
        let device = crate::gpu::select(requested)?;
        self.store.place(device)?;
        if device != self.device() {
            self.gpu = (device == Device::Gpu).then(|| GpuModel::new(&self.cfg));
            self.stored = None;
        }
        Ok(device)
    }

    pub fn device(&self) -> Device {
        if self.gpu.is_some() { Device::Gpu } else { Device::Cpu }
    }

    /// The routers' selection biases (L, E), zero by default.
    pub fn router_bias(&self) -> &[f32] {
        &self.router_bias
    }

    /// Sets the routers' selection biases (L, E): added to the softmax scores to choose the top-k
    /// experts, never to their weights (auxiliary-loss-free balancing, Wang et al. 2024). The
    /// trainer owns their updates; Qwen3-MoE checkpoints have no such tensor, so transformers
    /// routes a model trained with nonzero biases as if they were zero.
    pub fn set_router_bias(&mut self, bias: &[f32]) -> Result<()> {
        set_checked("router bias", &mut self.router_bias, bias)
    }

    /// Checks tokens (B, S) and the optional mask (B, S); returns S and the per-position validity.
    fn validate(&self, tokens: &[u32], mask: Option<&[u8]>, b: usize) -> Result<(usize, Vec<u8>)> {
        if b == 0 || tokens.is_empty() || tokens.len() % b != 0 {
            return Err(MoeError::ShapeMismatch(format!("{} tokens are not {b} sequences of equal length", tokens.len())));
        }
        let s = tokens.len() / b;
        if s > self.cfg.max_position_embeddings {
            return Err(MoeError::ShapeMismatch(format!("sequence length {s} exceeds max_position_embeddings {}", self.cfg.max_position_embeddings)));
        }
        if let Some(i) = tokens.iter().position(|&t| t as usize >= self.cfg.vocab_size) {
            return Err(MoeError::TokenOutOfRange(format!("tokens[{i}] = {} but vocab_size is {}", tokens[i], self.cfg.vocab_size)));
        }
        if let Some(m) = mask {
            check_len("mask", m.len(), tokens.len())?;
        }
        let valid = (0..tokens.len()).map(|i| u8::from(i % s + 1 < s && mask.is_none_or(|m| m[i + 1] != 0))).collect();
        Ok((s, valid))
    }

    /// Forward on B sequences. With `store` the activations are kept for `backward`; without, the
    /// stored ones are left untouched (evaluation and statistics-only forwards).
    pub fn forward(&mut self, tokens: &[u32], mask: Option<&[u8]>, b: usize, store: bool) -> Result<ModelStats> {
        let (s, valid) = self.validate(tokens, mask, b)?;
        if let (Some(gm), Some(dev)) = (&mut self.gpu, self.store.on_device()?) {
            let r = gm.forward(dev, &self.cfg, &self.router_bias, tokens, &valid, b, s, store, false).map(|(stats, _)| stats);
            if store {
                self.stored = r.is_ok().then_some(b);
            }
            return r;
        }
        let w = views(&self.store.host.params, &self.cfg);
        let mut scratch = ModelActs::default();
        let acts = if store { &mut self.acts } else { &mut scratch };
        let r = crate::cpu::pool().install(|| model_forward(acts, &w, &self.router_bias, &self.cfg, tokens, valid, b, s));
        if store {
            self.stored = r.is_ok().then_some(b);
        }
        r
    }

    /// Logits (T, V) of every position, nothing stored.
    pub fn logits(&mut self, tokens: &[u32], b: usize) -> Result<Vec<f32>> {
        let (s, valid) = self.validate(tokens, None, b)?;
        if let (Some(gm), Some(dev)) = (&mut self.gpu, self.store.on_device()?) {
            return Ok(gm.forward(dev, &self.cfg, &self.router_bias, tokens, &valid, b, s, false, true)?.1.unwrap_or_default());
        }
        let w = views(&self.store.host.params, &self.cfg);
        let mut acts = ModelActs::default();
        crate::cpu::pool().install(|| model_forward(&mut acts, &w, &self.router_bias, &self.cfg, tokens, valid, b, s))?;
        Ok(acts.logits)
    }

    /// Saves `config.json` + `model.safetensors`, and with `trainer` (the trainer's JSON state) the
    /// optimiser state too. See `checkpoint`.
    pub fn save(&mut self, dir: &std::path::Path, trainer: Option<&str>) -> Result<()> {
        crate::checkpoint::save(dir, &self.cfg, self.store.host()?, &self.router_bias, trainer)
    }

    /// A model built from a checkpoint, with its optimiser state when the checkpoint has one.
    /// Returns the trainer's saved state too.
    pub fn from_checkpoint(dir: &std::path::Path) -> Result<(Model, Option<String>)> {
        let loaded = crate::checkpoint::load(dir)?;
        let mut m = Model::new(loaded.cfg.clone())?;
        let trainer = m.apply(loaded);
        Ok((m, trainer))
    }

    /// Loads a checkpoint of the same architecture into this model. Everything is read and checked
    /// first: on any error the model is exactly as it was. Without a training state in the
    /// checkpoint the optimiser starts afresh. Returns the trainer's saved state.
    pub fn load_checkpoint(&mut self, dir: &std::path::Path) -> Result<Option<String>> {
        let loaded = crate::checkpoint::load(dir)?;
        if !loaded.cfg.same_architecture(&self.cfg) {
            return Err(MoeError::ShapeMismatch(format!(
                "{}: the checkpoint's architecture differs from this model's ({:?} vs {:?})",
                dir.display(),
                loaded.cfg,
                self.cfg
            )));
        }
        Ok(self.apply(loaded))
    }

    fn apply(&mut self, loaded: crate::checkpoint::Loaded) -> Option<String> {
        // Everything the device holds is replaced: the host copy becomes the newer one.
        self.store.replaced();
        self.stored = None;
        self.router_bias = loaded.router_bias;
        let host = &mut self.store.host;
        host.params = loaded.params;
        host.zero_grad();
        match loaded.state {
            Some(st) => {
                (host.opt.m, host.opt.v, host.opt.step) = (st.m, st.v, st.step);
                Some(st.trainer)
            }
            None => {
                host.opt = crate::adamw::AdamWState::new(host.params.len());
                None
            }
        }
    }

    /// Backward of the last stored forward; accumulates gradients. pressure (L, B, E).
    pub fn backward(&mut self, pressure: &[f32], lm_scale: f32, z_scale: f32) -> Result<()> {
        let Some(b) = self.stored else {
            return Err(MoeError::InvalidState("backward needs a successful forward with store = true first".into()));
        };
        check_len("pressure", pressure.len(), self.cfg.num_hidden_layers * b * self.cfg.num_experts)?;
        check_finite("pressure", pressure)?;
        if !(lm_scale.is_finite() && z_scale.is_finite()) {
            return Err(MoeError::NonFinite(format!("lm_scale = {lm_scale}, z_scale = {z_scale}")));
        }
        if let (Some(gm), Some(dev)) = (&mut self.gpu, self.store.on_device()?) {
            gm.backward(dev, &self.cfg, pressure, lm_scale, z_scale)?;
            self.store.device_wrote_grads();
            return Ok(());
        }
        let cfg = &self.cfg;
        let host = &mut self.store.host;
        let w = views(&host.params, cfg);
        let mut g = views_mut(&mut host.grads, cfg);
        let acts = &mut self.acts;
        crate::cpu::pool().install(|| model_backward(&mut g, acts, &w, cfg, pressure, lm_scale, z_scale));
        Ok(())
    }
}
