//! Autoregressive generation with a key/value cache: each new token runs the decoder layers on one
//! position, attending to the cached keys and values of all earlier positions.

use crate::cpu::attention::attention_decode;
use crate::cpu::embedding::embedding_forward;
use crate::cpu::matmul::matmul_forward;
use crate::cpu::rmsnorm::rmsnorm_forward;
use crate::cpu::rope::{rope_forward, rope_tables};
use crate::error::{MoeError, Result};
use crate::model::{views, Model};
use crate::moe::{moe_forward, MoeActs, MoeWeights, RoutingStats};
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
pub struct Decoder<'m> {
    model: &'m Model,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pos: usize,
}

impl<'m> Decoder<'m> {
    pub fn new(model: &'m Model, max_len: usize) -> Self {
        let c = &model.cfg;
        let (cos, sin) = rope_tables(max_len, c.head_dim, c.rope_theta);
        Decoder { model, k: vec![Vec::new(); c.num_hidden_layers], v: vec![Vec::new(); c.num_hidden_layers], cos, sin, pos: 0 }
    }

    /// Feeds one token at the next position; returns the logits (V) for the token after it.
    pub fn next_logits(&mut self, token: u32) -> Vec<f32> {
        let c = &self.model.cfg;
        let (d, h, kv, hd, eps) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps as f32);
        let moe_cfg = c.moe();
        let w = views(&self.model.store.host.params, c);
        let mut x = vec![0.0; d];
        embedding_forward(&mut x, &[token], w.embed, d);
        let (mut xn, mut r) = (vec![0.0; d], vec![0.0; h.max(1)]);
        for (l, lw) in w.layers.iter().enumerate() {
            let [ln1, wq, wk, wv, wo, qn, kn, ln2, mlp] = lw[..] else { unreachable!() };
            rmsnorm_forward(&mut xn, &mut r[..1], &x, ln1, d, eps);
            let (mut q, mut k, mut v) = (vec![0.0; h * hd], vec![0.0; kv * hd], vec![0.0; kv * hd]);
            matmul_forward(&mut q, &xn, wq, 1, d, h * hd);
            matmul_forward(&mut k, &xn, wk, 1, d, kv * hd);
            matmul_forward(&mut v, &xn, wv, 1, d, kv * hd);
            let (mut qn_, mut kn_) = (vec![0.0; h * hd], vec![0.0; kv * hd]);
            rmsnorm_forward(&mut qn_, &mut r[..h], &q, qn, hd, eps);
            rmsnorm_forward(&mut kn_, &mut r[..kv], &k, kn, hd, eps);
            rope_forward(&mut q, &qn_, &self.cos, &self.sin, 1, h, hd, self.pos);
            rope_forward(&mut k, &kn_, &self.cos, &self.sin, 1, kv, hd, self.pos);
            self.k[l].extend_from_slice(&k);
            self.v[l].extend_from_slice(&v);
            let mut att = vec![0.0; h * hd];
            attention_decode(&mut att, &q, &self.k[l], &self.v[l], self.pos + 1, h, kv, hd);
            let mut hres = vec![0.0; d];
            matmul_forward(&mut hres, &att, wo, 1, h * hd, d);
            hres.iter_mut().zip(&x).for_each(|(a, b)| *a += b);
            let mut hn = vec![0.0; d];
            rmsnorm_forward(&mut hn, &mut r[..1], &hres, ln2, d, eps);
            let bias = &self.model.router_bias()[l * moe_cfg.num_experts..][..moe_cfg.num_experts];
            moe_forward(&mut x, &mut RoutingStats::default(), &mut MoeActs::default(), &hn, &[1], bias, &MoeWeights::split(mlp, &moe_cfg), &moe_cfg, 1, 1);
            x.iter_mut().zip(&hres).for_each(|(a, b)| *a += b);
        }
        rmsnorm_forward(&mut xn, &mut r[..1], &x, w.norm, d, eps);
        let mut logits = vec![0.0; c.vocab_size];
        matmul_forward(&mut logits, &xn, w.lm_head.unwrap_or(w.embed), 1, d, c.vocab_size);
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
