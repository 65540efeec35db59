//! The MoE block: router linear -> softmax -> top-k (-> renormalise) -> dropless SwiGLU experts as
//! grouped GEMMs over tokens sorted by expert -> weighted combine. `moe_forward` is the list of op
//! calls, `moe_backward` the same list reversed. Shared by the standalone `MoeLayer` and the model.

use crate::cpu::experts::*;
use crate::cpu::matmul::{matmul_backward, matmul_forward};
use crate::cpu::router::{router_backward, router_forward, router_stats};
use crate::error::{MoeError, Result};
use crate::params::SpecBuilder;
use serde::{Deserialize, Serialize};

/// Configuration with the Hugging Face `Qwen3MoeConfig` field names.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    pub hidden_size: usize,
    pub moe_intermediate_size: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_init_range() -> f64 {
    0.02
}

impl MoeConfig {
    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        let cfg: MoeConfig = serde_json::from_value(v).map_err(|e| MoeError::InvalidConfig(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MoeError::InvalidConfig(m));
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
        ] {
            if v == 0 {
                return bad(format!("{name} must be >= 1"));
            }
        }
        if self.num_experts_per_tok > self.num_experts {
            return bad(format!(
                "num_experts_per_tok ({}) must not exceed num_experts ({})",
                self.num_experts_per_tok, self.num_experts
            ));
        }
        if !(self.initializer_range > 0.0 && self.initializer_range.is_finite()) {
            return bad("initializer_range must be > 0".into());
        }
        Ok(())
    }
}

/// The parameters of one MoE block, names prefixed with `prefix` (e.g. "model.layers.0.mlp.").
/// Each kind is contiguous over experts, so the grouped GEMMs read one block per kind:
/// gate.weight (E, C); all gate_proj (E x (F, C)); all up_proj (E x (F, C)); all down_proj (E x (C, F)).
pub fn moe_param_specs(sb: &mut SpecBuilder, cfg: &MoeConfig, prefix: &str) {
    let (c, f, e) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts);
    sb.push(format!("{prefix}gate.weight"), vec![e, c]);
    for (kind, shape) in [("gate_proj", [f, c]), ("up_proj", [f, c]), ("down_proj", [c, f])] {
        for i in 0..e {
            sb.push(format!("{prefix}experts.{i}.{kind}.weight"), shape.to_vec());
        }
    }
}

/// Number of parameters of one MoE block.
pub fn moe_param_count(cfg: &MoeConfig) -> usize {
    let (c, f, e) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts);
    e * c + 3 * e * f * c
}

/// Views of one block's weights inside a flat buffer laid out by `moe_param_specs`.
pub struct MoeWeights<'a> {
    pub gate: &'a [f32],
    pub experts: ExpertWeights<'a>,
}

impl<'a> MoeWeights<'a> {
    pub fn split(flat: &'a [f32], cfg: &MoeConfig) -> Self {
        let (c, f, e) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts);
        let (gate, rest) = flat.split_at(e * c);
        let (gate_proj, rest) = rest.split_at(e * f * c);
        let (up_proj, down_proj) = rest.split_at(e * f * c);
        MoeWeights { gate, experts: ExpertWeights { gate_proj, up_proj, down_proj: &down_proj[..e * c * f] } }
    }
}

/// Mutable views of the gradients, same layout as `MoeWeights`.
pub struct MoeGrads<'a> {
    pub gate: &'a mut [f32],
    pub experts: ExpertGrads<'a>,
}

impl<'a> MoeGrads<'a> {
    pub fn split(flat: &'a mut [f32], cfg: &MoeConfig) -> Self {
        let (c, f, e) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts);
        let (gate, rest) = flat.split_at_mut(e * c);
        let (gate_proj, rest) = rest.split_at_mut(e * f * c);
        let (up_proj, down_proj) = rest.split_at_mut(e * f * c);
        MoeGrads { gate, experts: ExpertGrads { gate_proj, up_proj, down_proj: &mut down_proj[..e * c * f] } }
    }
}

/// Per-sequence routing statistics of one block (DESIGN §3), over valid tokens only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingStats {
    /// (B, E) tokens that chose expert i
    pub counts: Vec<f32>,
    /// (B, E) sum of softmax scores s_{t,i}
    pub score_sums: Vec<f32>,
    /// (B) sum of each token's top-k scores
    pub topk_score_sums: Vec<f32>,
    /// (B) sum of logsumexp(z_t)^2
    pub z_sums: Vec<f32>,
    /// (B) valid tokens
    pub valid_tokens: Vec<f32>,
}

/// Activations saved by the forward for the backward, plus the backward's scratch.
/// T = B * S tokens, K slots each; "sorted" buffers have T*K rows in expert order.
#[derive(Debug, Default)]
pub struct MoeActs {
    pub b: usize,
    pub s: usize,
    x: Vec<f32>,       // (T, C) input
    mask: Vec<u8>,     // (T)
    probs: Vec<f32>,   // (T, E)
    lse: Vec<f32>,     // (T)
    idx: Vec<u32>,     // (T, K)
    w: Vec<f32>,       // (T, K) combine weights
    offsets: Vec<usize>, // (E + 1)
    rows: Vec<u32>,    // (T*K) sorted position -> t*K + k
    pos: Vec<u32>,     // (T*K) t*K + k -> sorted position
    xs: Vec<f32>,      // (T*K, C) sorted inputs
    g: Vec<f32>,       // (T*K, F)
    u: Vec<f32>,       // (T*K, F)
    h: Vec<f32>,       // (T*K, F)
    ys: Vec<f32>,      // (T*K, C) expert outputs
    scratch: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    dys: Vec<f32>,     // (T*K, C)
    dxs: Vec<f32>,     // (T*K, C)
    dh: Vec<f32>,      // (T*K, F)
    dg: Vec<f32>,      // (T*K, F)
    du: Vec<f32>,      // (T*K, F)
    dw: Vec<f32>,      // (T, K)
    dlogits: Vec<f32>, // (T, E)
}

/// `v` resized to n (contents unspecified: callers overwrite), its allocation kept across calls.
pub(crate) fn sized<T: Default + Clone>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.resize(n, T::default());
    v
}

/// Forward of the block on B sequences of S tokens. out (T, C) and stats are overwritten; `acts`
/// receives everything the backward needs. x (T, C), mask (T) with 1 = valid token, bias (E) the
/// router's selection bias (zero unless auxiliary-loss-free balancing is on).
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    out: &mut [f32],
    stats: &mut RoutingStats,
    acts: &mut MoeActs,
    x: &[f32],
    mask: &[u8],
    bias: &[f32],
    wt: &MoeWeights,
    cfg: &MoeConfig,
    b: usize,
    s: usize,
) {
    let (c, f, e, k) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let t = b * s;
    (acts.b, acts.s) = (b, s);
    acts.x.clear();
    acts.x.extend_from_slice(x);
    acts.mask.clear();
    acts.mask.extend_from_slice(mask);
    let logits = &mut acts.scratch.dlogits; // reused: the logits are dead once softmax ran
    matmul_forward(sized(logits, t * e), x, wt.gate, t, c, e);
    router_forward(sized(&mut acts.probs, t * e), sized(&mut acts.lse, t), sized(&mut acts.idx, t * k), sized(&mut acts.w, t * k), logits, bias, e, k, cfg.norm_topk_prob);
    router_stats(
        sized(&mut stats.counts, b * e),
        sized(&mut stats.score_sums, b * e),
        sized(&mut stats.topk_score_sums, b),
        sized(&mut stats.z_sums, b),
        sized(&mut stats.valid_tokens, b),
        &acts.probs, &acts.lse, &acts.idx, mask, s, e, k,
    );
    permute_forward(sized(&mut acts.offsets, e + 1), sized(&mut acts.rows, t * k), sized(&mut acts.pos, t * k), &acts.idx, e);
    gather_forward(sized(&mut acts.xs, t * k * c), x, &acts.rows, c, k);
    experts_forward(
        sized(&mut acts.g, t * k * f), sized(&mut acts.u, t * k * f), sized(&mut acts.h, t * k * f), sized(&mut acts.ys, t * k * c),
        &acts.xs, &wt.experts, &acts.offsets, c, f,
    );
    combine_forward(out, &acts.ys, &acts.w, &acts.pos, c, k);
}

/// Backward of the block. Overwrites dx (T, C); accumulates into `grads`.
/// dout (T, C): gradient of the output; pressure (B, E) and z_scale: see `router_backward`.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward(
    dx: &mut [f32],
    grads: &mut MoeGrads,
    acts: &mut MoeActs,
    dout: &[f32],
    pressure: &[f32],
    z_scale: f32,
    wt: &MoeWeights,
    cfg: &MoeConfig,
) {
    let (c, f, e, k) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let t = acts.b * acts.s;
    let sc = &mut acts.scratch;
    combine_backward(sized(&mut sc.dys, t * k * c), sized(&mut sc.dw, t * k), dout, &acts.ys, &acts.w, &acts.rows, &acts.pos, c, k);
    experts_backward(
        sized(&mut sc.dxs, t * k * c), &mut grads.experts,
        sized(&mut sc.dh, t * k * f), sized(&mut sc.dg, t * k * f), sized(&mut sc.du, t * k * f),
        &sc.dys, &acts.xs, &acts.g, &acts.u, &acts.h, &wt.experts, &acts.offsets, c, f,
    );
    dx.fill(0.0);
    gather_backward(dx, &sc.dxs, &acts.pos, c, k);
    router_backward(
        sized(&mut sc.dlogits, t * e), &sc.dw, &acts.probs, &acts.lse, &acts.idx, &acts.w, &acts.mask,
        pressure, z_scale, acts.s, e, k, cfg.norm_topk_prob,
    );
    matmul_backward(dx, grads.gate, &sc.dlogits, &acts.x, wt.gate, t, c, e);
}
