//! The MoE block on the CPU: router linear -> softmax -> top-k (-> renormalise) -> dropless SwiGLU experts as
//! grouped GEMMs over tokens sorted by expert -> weighted combine (-> + a sigmoid-gated shared
//! expert, Qwen2-MoE). `moe_forward` is the list of op calls, `moe_backward` the same list
//! reversed. Shared by the standalone `MoeLayer` and the model.

use super::experts::*;
use super::sized;
use super::matmul::{matmul_backward, matmul_forward};
use super::mlp::{sigmoid_gate_backward, sigmoid_gate_forward, MlpActs};
use super::router::{router_backward, router_forward, router_stats};
use crate::config::{MoeConfig, Precision};
use crate::layout::MoeParams;
use crate::stats::RoutingStats;

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
    shared: SharedActs,
    scratch: Scratch,
}

/// The shared expert's activations: its MLP, the gate logits (T), and the backward's dm (T, C),
/// dlogits (T).
#[derive(Debug, Default)]
struct SharedActs {
    mlp: MlpActs,
    logits: Vec<f32>,
    dm: Vec<f32>,
    dlogits: Vec<f32>,
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

impl MoeActs {
    /// The experts the last forward chose (T, K), in rank order per token.
    pub fn selected(&self) -> &[u32] {
        &self.idx
    }
}

/// Forward of the block on B sequences of S tokens. out (T, C) and stats are overwritten; `acts`
/// receives everything the backward needs. x (T, C), mask (T) with 1 = valid token, bias (E) the
/// router's selection bias (zero unless auxiliary-loss-free balancing is on); wt the block's weights.
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    out: &mut [f32],
    stats: &mut RoutingStats,
    acts: &mut MoeActs,
    x: &[f32],
    mask: &[u8],
    bias: &[f32],
    wt: &MoeParams<&[f32]>,
    cfg: &MoeConfig,
    b: usize,
    s: usize,
    p: Precision,
) {
    let (c, f, e, k) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let t = b * s;
    (acts.b, acts.s) = (b, s);
    acts.x.clear();
    acts.x.extend_from_slice(x);
    acts.mask.clear();
    acts.mask.extend_from_slice(mask);
    let logits = &mut acts.scratch.dlogits; // reused: the logits are dead once softmax ran
    matmul_forward(sized(logits, t * e), x, wt.gate, t, c, e, Precision::F32);
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
        &acts.xs, &wt.experts, &acts.offsets, c, f, p,
    );
    combine_forward(out, &acts.ys, &acts.w, &acts.pos, c, k);
    if let Some(sw) = &wt.shared {
        let sh = &mut acts.shared;
        sh.mlp.forward(x, &sw.mlp, c, cfg.shared_expert_intermediate_size, p);
        sigmoid_gate_forward(out, sized(&mut sh.logits, t), x, sw.gate, &sh.mlp.y, c);
    }
}

/// Backward of the block. Overwrites dx (T, C); accumulates into `grads`.
/// dout (T, C): gradient of the output; pressure (B, E) and z_scale: see `router_backward`.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward(
    dx: &mut [f32],
    grads: &mut MoeParams<&mut [f32]>,
    acts: &mut MoeActs,
    dout: &[f32],
    pressure: &[f32],
    z_scale: f32,
    wt: &MoeParams<&[f32]>,
    cfg: &MoeConfig,
    p: Precision,
) {
    let (c, f, e, k) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok);
    let t = acts.b * acts.s;
    dx.fill(0.0);
    if let (Some(sw), Some(sg)) = (&wt.shared, grads.shared.as_mut()) {
        let sh = &mut acts.shared;
        let (dm, dl) = (sized(&mut sh.dm, t * c), sized(&mut sh.dlogits, t));
        sigmoid_gate_backward(dx, sg.gate, dm, dl, dout, &acts.x, sw.gate, &sh.mlp.y, &sh.logits, c);
        sh.mlp.backward(&mut sg.mlp, &sh.dm, &acts.x, &sw.mlp, c, cfg.shared_expert_intermediate_size, p);
        dx.iter_mut().zip(&sh.mlp.dx).for_each(|(a, b)| *a += b);
    }
    let sc = &mut acts.scratch;
    combine_backward(sized(&mut sc.dys, t * k * c), sized(&mut sc.dw, t * k), dout, &acts.ys, &acts.w, &acts.rows, &acts.pos, c, k);
    experts_backward(
        sized(&mut sc.dxs, t * k * c), &mut grads.experts,
        sized(&mut sc.dh, t * k * f), sized(&mut sc.dg, t * k * f), sized(&mut sc.du, t * k * f),
        &sc.dys, &acts.xs, &acts.g, &acts.u, &acts.h, &wt.experts, &acts.offsets, c, f, p,
    );
    gather_backward(dx, &sc.dxs, &acts.pos, c, k);
    router_backward(
        sized(&mut sc.dlogits, t * e), &sc.dw, &acts.probs, &acts.lse, &acts.idx, &acts.w, &acts.mask,
        pressure, z_scale, acts.s, e, k, cfg.norm_topk_prob,
    );
    matmul_backward(dx, grads.gate, &sc.dlogits, &acts.x, wt.gate, t, c, e, Precision::F32);
}
