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
use crate::adamw::AdamWConfig;
use crate::error::{check_finite, check_len, MoeError, Result};
use crate::gpu::model::GpuModel;
use crate::gpu::Device;
use crate::moe::{moe_backward, moe_forward, moe_param_specs, MoeActs, MoeConfig, MoeGrads, MoeWeights, RoutingStats};
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
    xlast: Vec<f32>,  // (T, C) output of the last layer
    xf: Vec<f32>,     // (T, C) after the final norm
    rstd_f: Vec<f32>, // (T)
    logits: Vec<f32>, // (T, V)
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
fn model_forward(acts: &mut ModelActs, w: &Views<&[f32]>, cfg: &ModelConfig, tokens: &[u32], valid: Vec<u8>, b: usize, s: usize) -> Result<ModelStats> {
    let (d, h, kv, hd, v, e, nl) =
        (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
    let t = b * s;
    let eps = cfg.rms_norm_eps as f32;
    let moe_cfg: MoeConfig = cfg.moe();
    let (cos, sin) = rope_tables(s, hd, cfg.rope_theta);
    let mut stats = ModelStats {
        counts: vec![0.0; nl * b * e],
        score_sums: vec![0.0; nl * b * e],
        topk_score_sums: vec![0.0; nl * b],
        z_sums: vec![0.0; nl * b],
        ..Default::default()
    };
    let mut x = vec![0.0; t * d];
    embedding_forward(&mut x, tokens, w.embed, d);
    let mut layers = Vec::with_capacity(nl);
    let mut rs = RoutingStats::default();
    for (l, lw) in w.layers.iter().enumerate() {
        let [ln1, wq, wk, wv, wo, qn, kn, ln2, mlp] = lw[..] else { unreachable!() };
        let mut a = LayerActs { x, ..Default::default() };
        a.xn = vec![0.0; t * d];
        a.rstd1 = vec![0.0; t];
        rmsnorm_forward(&mut a.xn, &mut a.rstd1, &a.x, ln1, d, eps);
        a.q = vec![0.0; t * h * hd];
        a.k = vec![0.0; t * kv * hd];
        a.v = vec![0.0; t * kv * hd];
        matmul_forward(&mut a.q, &a.xn, wq, t, d, h * hd);
        matmul_forward(&mut a.k, &a.xn, wk, t, d, kv * hd);
        matmul_forward(&mut a.v, &a.xn, wv, t, d, kv * hd);
        let mut qnorm = vec![0.0; t * h * hd];
        let mut knorm = vec![0.0; t * kv * hd];
        a.rstd_q = vec![0.0; t * h];
        a.rstd_k = vec![0.0; t * kv];
        rmsnorm_forward(&mut qnorm, &mut a.rstd_q, &a.q, qn, hd, eps);
        rmsnorm_forward(&mut knorm, &mut a.rstd_k, &a.k, kn, hd, eps);
        a.qr = vec![0.0; t * h * hd];
        a.kr = vec![0.0; t * kv * hd];
        rope_forward(&mut a.qr, &qnorm, &cos, &sin, s, h, hd, 0);
        rope_forward(&mut a.kr, &knorm, &cos, &sin, s, kv, hd, 0);
        a.att = vec![0.0; t * h * hd];
        a.probs = vec![0.0; b * h * s * s];
        attention_forward(&mut a.att, &mut a.probs, &a.qr, &a.kr, &a.v, s, h, kv, hd);
        a.h = vec![0.0; t * d];
        matmul_forward(&mut a.h, &a.att, wo, t, h * hd, d);
        a.h.iter_mut().zip(&a.x).for_each(|(h, x)| *h += x);
        a.hn = vec![0.0; t * d];
        a.rstd2 = vec![0.0; t];
        rmsnorm_forward(&mut a.hn, &mut a.rstd2, &a.h, ln2, d, eps);
        let mut out = vec![0.0; t * d];
        moe_forward(&mut out, &mut rs, &mut a.moe, &a.hn, &valid, &MoeWeights::split(mlp, &moe_cfg), &moe_cfg, b, s);
        out.iter_mut().zip(&a.h).for_each(|(o, h)| *o += h);
        check_finite(&format!("output of layer {l}"), &out)?;
        stats.counts[l * b * e..][..b * e].copy_from_slice(&rs.counts);
        stats.score_sums[l * b * e..][..b * e].copy_from_slice(&rs.score_sums);
        stats.topk_score_sums[l * b..][..b].copy_from_slice(&rs.topk_score_sums);
        stats.z_sums[l * b..][..b].copy_from_slice(&rs.z_sums);
        layers.push(a);
        x = out;
    }
    stats.valid_tokens = rs.valid_tokens;
    let mut xf = vec![0.0; t * d];
    let mut rstd_f = vec![0.0; t];
    rmsnorm_forward(&mut xf, &mut rstd_f, &x, w.norm, d, eps);
    let mut logits = vec![0.0; t * v];
    matmul_forward(&mut logits, &xf, w.lm_head.unwrap_or(w.embed), t, d, v);
    let targets: Vec<u32> = (0..t).map(|i| if i % s + 1 < s { tokens[i + 1] } else { 0 }).collect();
    let mut losses = vec![0.0; t];
    crossentropy_forward(&mut losses, &logits, &targets, &valid, v);
    check_finite("loss", &losses)?;
    stats.loss_sums = losses.chunks(s).map(|c| c.iter().map(|&x| x as f64).sum::<f64>() as f32).collect();
    stats.loss = losses.iter().map(|&x| x as f64).sum();
    *acts = ModelActs { b, s, tokens: tokens.to_vec(), targets, valid, cos, sin, layers, xlast: x, xf, rstd_f, logits };
    Ok(stats)
}

/// Backward of `model_forward`: accumulates all parameter gradients. pressure (L, B, E);
/// lm_scale multiplies the summed cross-entropy (1/T_glob); z_scale = beta / T_glob.
fn model_backward(g: &mut Views<&mut [f32]>, acts: &mut ModelActs, w: &Views<&[f32]>, cfg: &ModelConfig, pressure: &[f32], lm_scale: f32, z_scale: f32) {
    let (d, h, kv, hd, v, e) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size, cfg.num_experts);
    let (b, s) = (acts.b, acts.s);
    let t = b * s;
    let moe_cfg = cfg.moe();
    let mut dlogits = vec![0.0; t * v];
    crossentropy_backward(&mut dlogits, &acts.logits, &acts.targets, &acts.valid, lm_scale, v);
    let mut dxf = vec![0.0; t * d];
    let dlm: &mut [f32] = match g.lm_head.as_deref_mut() {
        Some(lm) => lm,
        None => g.embed,
    };
    matmul_backward(&mut dxf, dlm, &dlogits, &acts.xf, w.lm_head.unwrap_or(w.embed), t, d, v);
    let mut dx = vec![0.0; t * d];
    rmsnorm_backward(&mut dx, g.norm, &dxf, &acts.xlast, w.norm, &acts.rstd_f, d);
    for (l, a) in acts.layers.iter_mut().enumerate().rev() {
        let [ln1, wq, wk, wv, wo, qn, kn, ln2, mlp] = w.layers[l][..] else { unreachable!() };
        let [gln1, gq, gk, gv, go, gqn, gkn, gln2, gmlp] = &mut g.layers[l][..] else { unreachable!() };
        // out = h + MoE(hn)
        let mut dh = dx.clone();
        let mut dhn = vec![0.0; t * d];
        let mut mg = MoeGrads::split(gmlp, &moe_cfg);
        moe_backward(&mut dhn, &mut mg, &mut a.moe, &dx, &pressure[l * b * e..][..b * e], z_scale, &MoeWeights::split(mlp, &moe_cfg), &moe_cfg);
        rmsnorm_backward(&mut dh, gln2, &dhn, &a.h, ln2, &a.rstd2, d);
        // h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))
        let mut dxin = dh.clone();
        let mut datt = vec![0.0; t * h * hd];
        matmul_backward(&mut datt, go, &dh, &a.att, wo, t, h * hd, d);
        let (mut dqr, mut dkr, mut dv) = (vec![0.0; t * h * hd], vec![0.0; t * kv * hd], vec![0.0; t * kv * hd]);
        attention_backward(&mut dqr, &mut dkr, &mut dv, &datt, &a.probs, &a.qr, &a.kr, &a.v, s, h, kv, hd);
        let (mut dqn, mut dkn) = (vec![0.0; t * h * hd], vec![0.0; t * kv * hd]);
        rope_backward(&mut dqn, &dqr, &acts.cos, &acts.sin, s, h, hd);
        rope_backward(&mut dkn, &dkr, &acts.cos, &acts.sin, s, kv, hd);
        let (mut dq, mut dk) = (vec![0.0; t * h * hd], vec![0.0; t * kv * hd]);
        rmsnorm_backward(&mut dq, gqn, &dqn, &a.q, qn, &a.rstd_q, hd);
        rmsnorm_backward(&mut dk, gkn, &dkn, &a.k, kn, &a.rstd_k, hd);
        let mut dxn = vec![0.0; t * d];
        matmul_backward(&mut dxn, gq, &dq, &a.xn, wq, t, d, h * hd);
        matmul_backward(&mut dxn, gk, &dk, &a.xn, wk, t, d, kv * hd);
        matmul_backward(&mut dxn, gv, &dv, &a.xn, wv, t, d, kv * hd);
        rmsnorm_backward(&mut dxin, gln1, &dxn, &a.x, ln1, &a.rstd1, d);
        dx = dxin;
    }
    embedding_backward(g.embed, &dx, &acts.tokens, d);
}

/// The model on the CPU, or on the GPU with `store` as the host copy. On the GPU, parameters,
/// gradients and moments leave the device only when the host copy is asked for (checkpoints,
/// parameter and gradient I/O for all-reduce), and go back before the next device op.
pub struct Model {
    pub cfg: ModelConfig,
    pub(crate) store: ParamStore,
    acts: ModelActs,
    /// B of the stored forward, once one succeeded
    stored: Option<usize>,
    gpu: Option<GpuModel>,
    /// which copy is newer: the device's after a device op, the host's after `store_mut`
    device_newer: bool,
    host_newer: bool,
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let store = model_param_store(&cfg)?;
        Ok(Model { cfg, store, acts: ModelActs::default(), stored: None, gpu: None, device_newer: false, host_newer: false })
    }

    /// Moves the model to `requested` ("auto" | "gpu" | "cpu"; None reads MOE_DEVICE, default auto).
    pub fn to_device(&mut self, requested: Option<&str>) -> Result<Device> {
        let device = crate::gpu::select(requested)?;
        match device {
            Device::Gpu if self.gpu.is_none() => {
                self.sync()?;
                self.gpu = Some(GpuModel::new(crate::gpu::gpu()?, &self.store)?);
                self.host_newer = false;
            }
            Device::Cpu if self.gpu.is_some() => {
                self.sync()?;
                self.gpu = None;
            }
            _ => {}
        }
        self.stored = None;
        Ok(device)
    }

    pub fn device(&self) -> Device {
        if self.gpu.is_some() { Device::Gpu } else { Device::Cpu }
    }

    /// The host copy, brought up to date from the device.
    pub fn store(&mut self) -> Result<&ParamStore> {
        self.sync()?;
        Ok(&self.store)
    }

    /// The host copy for writing; the device copy is replaced by it before the next device op.
    pub fn store_mut(&mut self) -> Result<&mut ParamStore> {
        self.sync()?;
        self.host_newer = self.gpu.is_some();
        Ok(&mut self.store)
    }

    /// Brings the host copy up to date (a no-op on the CPU).
    pub fn sync(&mut self) -> Result<()> {
        if let (Some(gm), true) = (&self.gpu, self.device_newer) {
            gm.download(&mut self.store)?;
            self.device_newer = false;
        }
        Ok(())
    }

    /// The device copy, brought up to date from the host.
    fn device_model(&mut self) -> Result<Option<&mut GpuModel>> {
        if let (Some(gm), true) = (&mut self.gpu, self.host_newer) {
            gm.upload(&self.store)?;
            self.host_newer = false;
        }
        Ok(self.gpu.as_mut())
    }

    /// One AdamW step; see `ParamStore::step`. On the GPU only the gradient norm comes back.
    pub fn step(&mut self, opt: &AdamWConfig) -> Result<f64> {
        opt.validate()?;
        let t = self.store.opt.step + 1;
        let Some(gm) = self.device_model()? else { return self.store.step(opt) };
        let norm = gm.step(opt, t)?;
        if !norm.is_finite() {
            return Err(MoeError::NonFinite(format!("gradient norm is {norm}")));
        }
        self.store.opt.step = t;
        self.device_newer = true;
        Ok(norm)
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        self.store.zero_grad();
        if let Some(gm) = self.device_model()? {
            gm.zero_grad()?;
        }
        Ok(())
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
        let cfg = self.cfg.clone();
        if let Some(gm) = self.device_model()? {
            let r = gm.forward(&cfg, tokens, &valid, b, s, store, false).map(|(stats, _)| stats);
            if store {
                self.stored = r.is_ok().then_some(b);
            }
            return r;
        }
        let w = views(&self.store.params, &self.cfg);
        let mut scratch = ModelActs::default();
        let acts = if store { &mut self.acts } else { &mut scratch };
        let r = crate::cpu::pool().install(|| model_forward(acts, &w, &self.cfg, tokens, valid, b, s));
        if store {
            self.stored = r.is_ok().then_some(b);
        }
        r
    }

    /// Logits (T, V) of every position, nothing stored.
    pub fn logits(&mut self, tokens: &[u32], b: usize) -> Result<Vec<f32>> {
        let (s, valid) = self.validate(tokens, None, b)?;
        let cfg = self.cfg.clone();
        if let Some(gm) = self.device_model()? {
            return Ok(gm.forward(&cfg, tokens, &valid, b, s, false, true)?.1.unwrap_or_default());
        }
        let w = views(&self.store.params, &self.cfg);
        let mut acts = ModelActs::default();
        crate::cpu::pool().install(|| model_forward(&mut acts, &w, &self.cfg, tokens, valid, b, s))?;
        Ok(acts.logits)
    }

    /// Saves `config.json` + `model.safetensors`, and with `trainer` (the trainer's JSON state) the
    /// optimiser state too. See `checkpoint`.
    pub fn save(&mut self, dir: &std::path::Path, trainer: Option<&str>) -> Result<()> {
        self.sync()?;
        crate::checkpoint::save(dir, &self.cfg, &self.store, trainer)
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
        (self.device_newer, self.host_newer) = (false, self.gpu.is_some());
        self.store.params = loaded.params;
        self.store.zero_grad();
        self.stored = None;
        match loaded.state {
            Some(st) => {
                (self.store.opt.m, self.store.opt.v, self.store.opt.step) = (st.m, st.v, st.step);
                Some(st.trainer)
            }
            None => {
                self.store.opt = crate::adamw::AdamWState::new(self.store.params.len());
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
        let cfg = self.cfg.clone();
        if let Some(gm) = self.device_model()? {
            gm.backward(&cfg, pressure, lm_scale, z_scale)?;
            self.device_newer = true;
            return Ok(());
        }
        let cfg = &self.cfg;
        let w = views(&self.store.params, cfg);
        let mut g = views_mut(&mut self.store.grads, cfg);
        let acts = &mut self.acts;
        crate::cpu::pool().install(|| model_backward(&mut g, acts, &w, cfg, pressure, lm_scale, z_scale));
        Ok(())
    }
}
