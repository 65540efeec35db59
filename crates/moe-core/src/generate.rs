//! Autoregressive generation with a key/value cache: each new token runs the decoder layers on one
//! position, attending to the cached keys and values of all earlier positions.

use crate::cpu::attention::attention_decode;
use crate::cpu::embedding::embedding_forward;
use crate::cpu::matmul::matmul_forward;
use crate::cpu::model::{attention_inputs, layer_output, LayerActs, NormedQk};
use crate::cpu::rmsnorm::rmsnorm_forward;
use crate::cpu::rope::rope_tables;
use crate::error::{MoeError, Result};
use crate::layout::Layout;
use crate::model::Model;
use crate::stats::RoutingStats;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GenerateOptions {
    /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    #[serde(default = "one")]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (all when absent).
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f32 {
    1.0
}

/// Incremental decoding state of one sequence: per layer the rotated keys and the values (n, KV*D).
/// Each position runs the model's own layer steps (`cpu::model::attention_inputs`, `layer_output`)
/// on one token, with `attention_decode` over the cache as the attention core, in the model's
/// `precision`.
pub struct Decoder<'m> {
    model: &'m Model,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pos: usize,
    la: LayerActs,
    qk: NormedQk,
}

impl<'m> Decoder<'m> {
    pub fn new(model: &'m Model, max_len: usize) -> Self {
        let c = &model.cfg;
        let (cos, sin) = rope_tables(max_len, c.head_dim, c.rope_theta);
        let nl = c.num_hidden_layers;
        Decoder { model, k: vec![Vec::new(); nl], v: vec![Vec::new(); nl], cos, sin, pos: 0, la: LayerActs::default(), qk: NormedQk::default() }
    }

    /// Feeds one token at the next position; returns the logits (V) for the token after it.
    pub fn next_logits(&mut self, token: u32) -> Vec<f32> {
        let c = &self.model.cfg;
        let (d, h, kv, hd, e) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_experts);
        let moe_layers = c.moe_layers();
        let p = self.model.precision();
        let w = self.model.layout.views(&self.model.store.host.params);
        let la = &mut self.la;
        la.x.resize(d, 0.0);
        embedding_forward(&mut la.x, &[token], w.embed_tokens, d);
        let mut out = vec![0.0; d];
        for (l, lw) in w.layers.iter().enumerate() {
            attention_inputs(la, &mut self.qk, lw, c, &self.cos, &self.sin, 1, self.pos, p);
            self.k[l].extend_from_slice(&la.kr);
            self.v[l].extend_from_slice(&la.v);
            la.att.resize(h * hd, 0.0);
            attention_decode(&mut la.att, &la.qr, &self.k[l], &self.v[l], self.pos + 1, h, kv, hd, c.window(l));
            let bias = moe_layers.iter().position(|&m| m == l).map_or(&[][..], |m| &self.model.router_bias()[m * e..][..e]);
            layer_output(&mut out, &mut RoutingStats::default(), la, lw, bias, c, &[1], 1, 1, p);
            la.x.copy_from_slice(&out);
        }
        let (mut xf, mut rstd) = (vec![0.0; d], [0.0]);
        rmsnorm_forward(&mut xf, &mut rstd, &la.x, w.norm, d, c.rms_norm_eps as f32);
        let mut logits = vec![0.0; c.vocab_size];
        matmul_forward(&mut logits, &xf, w.head(), 1, d, c.vocab_size, p);
        self.pos += 1;
        logits
    }
}

/// Picks the next token from logits: argmax at temperature 0, else a draw from
/// softmax(logits / temperature) restricted to the top k.
fn sample(logits: &[f32], opts: &GenerateOptions, rng: &mut impl Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Stable sort: ties keep the lower token id first.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.temperature == 0.0 {
        return order[0] as u32;
    }
    order.truncate(opts.top_k.unwrap_or(logits.len()).clamp(1, logits.len()));
    let max = logits[order[0]];
    let p: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / opts.temperature) as f64).exp()).collect();
    let mut u = rng.random::<f64>() * p.iter().sum::<f64>();
    for (j, &pj) in p.iter().enumerate() {
        u -= pj;
        if u <= 0.0 {
            return order[j] as u32;
        }
    }
    order[p.len() - 1] as u32
}

/// Continues `prompt` by `max_new` tokens; returns the new tokens only. Decoding runs on the CPU,
/// from the host copy of the parameters (brought up to date from the GPU first).
pub fn generate(model: &mut Model, prompt: &[u32], max_new: usize, opts: &GenerateOptions) -> Result<Vec<u32>> {
    model.store.sync()?;
    let model = &*model;
    let c = &model.cfg;
    if prompt.is_empty() {
        return Err(MoeError::ShapeMismatch("the prompt needs at least one token".into()));
    }
    if let Some(i) = prompt.iter().position(|&t| t as usize >= c.vocab_size) {
        return Err(MoeError::TokenOutOfRange(format!("prompt[{i}] = {} but vocab_size is {}", prompt[i], c.vocab_size)));
    }
    let len = prompt.len() + max_new;
    if len > c.max_position_embeddings {
        return Err(MoeError::ShapeMismatch(format!("prompt + new tokens = {len} exceeds max_position_embeddings {}", c.max_position_embeddings)));
    }
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) || opts.top_k == Some(0) {
        return Err(MoeError::InvalidConfig("temperature must be >= 0 and topK >= 1".into()));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    crate::cpu::pool().install(|| {
        let mut dec = Decoder::new(model, len);
        let mut logits = Vec::new();
        for &t in prompt {
            logits = dec.next_logits(t);
        }
        let mut out = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let t = sample(&logits, opts, &mut rng);
            out.push(t);
            if out.len() < max_new {
                logits = dec.next_logits(t);
            }
        }
        Ok(out)
    })
}
