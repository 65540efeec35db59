//! The Qwen3-MoE model on the GPU: `model_forward` and `model_backward` of `cpu::model` with every
//! op call replaced by its GPU twin, in the same order; a decoder layer's are in `decoder`.
//! Parameters, gradients and AdamW moments live in four device buffers laid out exactly like
//! `ParamStore`'s flat buffers, so a host copy is one buffer read and views are the same offsets.
//! A forward records every kernel in one command encoder and reads back once: the routing
//! statistics of all layers, the per-token losses and the finiteness flags; a backward records one
//! encoder and submits it without waiting. Neither records a copy or a clear between its kernels,
//! so each runs as one compute pass.
//!
//! Two fusions: q_proj, k_proj and v_proj (adjacent in the layout) are one GEMM whose output columns
//! land in the sections q | k | v of one buffer (and their backward two GEMMs over the sections of
//! one gradient buffer); the LM head runs by chunks of rows (`head`).
//!
//! Recomputation (`Recompute`) as on the CPU: `Attention` keeps one probabilities buffer for all
//! layers and runs the attention core again before a layer's backward; `Full` keeps the layer
//! inputs and one `LayerActs` for all layers, and runs the whole layer again, its routing
//! statistics written to a scratch buffer nobody reads.

use super::decoder::{attention_core, layer_backward, layer_forward, v, LayerActs, LayerGrads, Routing, Rows};
use super::elementwise::finite_flags;
use super::embedding::{embedding_backward, embedding_forward, TokenIndex};
use super::head::{chunk_rows, head_backward, head_forward};
use super::moe::{stats_len, unpack_stats};
use super::rmsnorm::{rmsnorm_backward_into, rmsnorm_forward};
use super::store::DeviceStore;
use super::{BindReservation, Buf, Gpu};
use crate::config::{ModelConfig, Precision, Recompute};
use crate::error::{MoeError, Result};
use crate::layout::{LayerParams, Layout, ModelParams, ParamSpec};
use crate::stats::ModelStats;

/// Everything one forward of B sequences of S tokens writes, allocated once per (B, S, recompute).
struct Acts {
    b: usize,
    s: usize,
    recompute: Recompute,
    /// the large GEMMs' input format of the last forward, and so of its backward
    precision: Precision,
    tokens: Buf,
    targets: Buf,
    valid: Buf,
    index: TokenIndex,
    cos: Buf,
    sin: Buf,
    /// (T, C) each layer's input
    inputs: Vec<Buf>,
    /// each layer's other activations (`None`, `Attention`), or one set for all (`Full`)
    layers: Vec<LayerActs>,
    /// (B, H, S, S) attention probabilities: each layer's (`None`) or one for all
    probs: Vec<Buf>,
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
    /// one layer's statistics from a recomputed forward: written, never read
    recomputed_stats: Buf,
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
    fn new(g: &Gpu, cfg: &ModelConfig, b: usize, s: usize, recompute: Recompute) -> Result<Self> {
        let (d, v, e, nl) = (cfg.hidden_size, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
        let (t, h, hd) = (b * s, cfg.num_attention_heads, cfg.head_dim);
        let (cos, sin) = crate::cpu::rope::rope_tables(s, hd, cfg.rope_theta);
        let nm = cfg.moe_layers().len();
        let layers = match recompute {
            Recompute::None | Recompute::Attention => (0..nl).map(|l| LayerActs::new(g, cfg, t, !cfg.is_moe_layer(l))).collect::<Result<Vec<_>>>()?,
            Recompute::Full => vec![LayerActs::new(g, cfg, t, nm < nl)?],
        };
        let n_probs = if recompute == Recompute::None { nl } else { 1 };
        let head_rows = chunk_rows(g, t, v);
        Ok(Acts {
            b,
            s,
            recompute,
            precision: Precision::F32,
            tokens: g.alloc(t)?,
            targets: g.alloc(t)?,
            valid: g.alloc(t)?,
            index: TokenIndex::new(g, t)?,
            cos: g.upload(&cos)?,
            sin: g.upload(&sin)?,
            inputs: (0..nl).map(|_| g.alloc(t * d)).collect::<Result<Vec<_>>>()?,
            layers,
            probs: (0..n_probs).map(|_| g.alloc(b * h * s * s)).collect::<Result<Vec<_>>>()?,
            xlast: g.alloc(t * d)?,
            xf: g.alloc(t * d)?,
            rstd_f: g.alloc(t)?,
            head_rows,
            logits: g.alloc(head_rows * v)?,
            losses: g.alloc(t)?,
            stats: g.alloc(nm * stats_len(b, e))?,
            recomputed_stats: g.alloc(stats_len(b, e))?,
            flags: g.alloc(nl + 1)?,
            bias: g.alloc(nm * e)?,
            ones: g.upload(&vec![1.0f32; t])?,
            binds: BindReservation::default(),
        })
    }

    /// The slot of layer l in `layers` and in `probs`.
    fn slots(&self, l: usize) -> (usize, usize) {
        match self.recompute {
            Recompute::None => (l, l),
            Recompute::Attention => (l, 0),
            Recompute::Full => (0, 0),
        }
    }
}

/// Gradient scratch of the backward, named as in `cpu::model::model_backward`; dx holds the
/// residual stream's gradient throughout, `layer` the rest a decoder layer uses.
struct Grads {
    b: usize,
    s: usize,
    /// (head_rows, V)
    dlogits: Buf,
    dxf: Buf,
    dx: Buf,
    layer: LayerGrads,
    /// (T, C) a recomputed layer's output (`Recompute::Full`)
    out: Buf,
    pressure: Buf,
    binds: BindReservation,
}

impl Grads {
    fn new(g: &Gpu, cfg: &ModelConfig, b: usize, s: usize, head_rows: usize) -> Result<Self> {
        let (t, d) = (b * s, cfg.hidden_size);
        Ok(Grads {
            b,
            s,
            dlogits: g.alloc(head_rows * cfg.vocab_size)?,
            dxf: g.alloc(t * d)?,
            dx: g.alloc(t * d)?,
            layer: LayerGrads::new(g, cfg, b, s)?,
            out: g.alloc(t * d)?,
            pressure: g.alloc(cfg.moe_layers().len() * b * cfg.num_experts)?,
            binds: BindReservation::default(),
        })
    }
}

/// The device activations of a `Model` on the GPU; its parameters are the `DeviceStore` passed in.
pub struct GpuModel {
    /// every parameter's offset in the flat device buffers, by name
    off: ModelParams<usize>,
    /// the stored forward (for `backward`) and the scratch of `store = None` forwards
    acts: Option<Acts>,
    scratch: Option<Acts>,
    grad_scratch: Option<Grads>,
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

    /// Forward over tokens (B, S) with validity `valid` (T); see `cpu::model::model_forward`. With
    /// `store` the activations are kept for `backward` as it says; without, the forward holds one
    /// layer's at a time. Returns the statistics and, with `want_logits`, the logits (T, V), which
    /// must then fit one chunk of the head.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&mut self, dev: &DeviceStore, cfg: &ModelConfig, bias: &[f32], tokens: &[u32], valid: &[u8], b: usize, s: usize, store: Option<Recompute>, precision: Precision, want_logits: bool) -> Result<(ModelStats, Option<Vec<f32>>)> {
        let g = dev.g;
        let (slot, recompute) = match store {
            Some(r) => (&mut self.acts, r),
            None => (&mut self.scratch, Recompute::Full),
        };
        if !matches!(slot, Some(a) if (a.b, a.s, a.recompute) == (b, s, recompute)) {
            *slot = None; // free the old shape's buffers before allocating the new ones
            *slot = Some(Acts::new(g, cfg, b, s, recompute)?);
        }
        let a = slot.as_mut().unwrap();
        a.precision = precision;
        let (d, vs, e, nl) = (cfg.hidden_size, cfg.vocab_size, cfg.num_experts, cfg.num_hidden_layers);
        let t = b * s;
        if want_logits && a.head_rows < t {
            return Err(MoeError::OutOfMemory(format!("logits of {t} x {vs} values exceed one storage binding; ask for at most {} tokens", a.head_rows)));
        }
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
        embedding_forward(g, &mut enc, (&a.inputs[0]).into(), &a.tokens, v(p, off.embed_tokens), t, d);
        let stat_len = stats_len(b, e);
        let moe_layers = cfg.moe_layers();
        let rows = Rows { b, s, cos: &a.cos, sin: &a.sin, valid: &a.valid, ones: &a.ones, precision: a.precision };
        for (l, w) in off.layers.iter().enumerate() {
            let (ls, ps) = a.slots(l);
            let out = a.inputs.get(l + 1).unwrap_or(&a.xlast);
            let routing = moe_layers.iter().position(|&m| m == l).map(|m| Routing { stats: v(&a.stats, m * stat_len), bias: v(&a.bias, m * e) });
            layer_forward(g, &mut enc, p, w, cfg, &rows, &mut a.layers[ls], &a.inputs[l], &a.probs[ps], out, routing, l)?;
            finite_flags(g, &mut enc, &a.flags, l, out);
        }
        rmsnorm_forward(g, &mut enc, (&a.xf).into(), (&a.rstd_f).into(), (&a.xlast).into(), v(p, off.norm), t, d, cfg.rms_norm_eps as f32);
        head_forward(g, &mut enc, (&a.losses).into(), &a.logits, (&a.xf).into(), v(p, *off.head()), &a.targets, &a.valid, t, d, vs, a.head_rows, a.precision);
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
        let (p, gr, off) = (&dev.params, &dev.grads, &self.off);
        g.write(&gs.pressure, 0, pressure);
        let mut enc = g.encoder();
        dev.grads_ready(&mut enc);
        let (dx, dxf) = ((&gs.dx).into(), (&gs.dxf).into());
        head_backward(g, &mut enc, dxf, v(gr, *off.head()), &gs.dlogits, &a.logits, (&a.xf).into(), v(p, *off.head()), &a.targets, &a.valid, lm_scale, t, d, vs, a.head_rows, a.precision);
        rmsnorm_backward_into(g, &mut enc, dx, v(gr, off.norm), dxf, (&a.xlast).into(), v(p, off.norm), (&a.rstd_f).into(), t, d);
        let moe_layers = cfg.moe_layers();
        let rows = Rows { b, s, cos: &a.cos, sin: &a.sin, valid: &a.valid, ones: &a.ones, precision: a.precision };
        for (l, w) in off.layers.iter().enumerate().rev() {
            let (ls, ps) = a.slots(l);
            let m = moe_layers.iter().position(|&m| m == l);
            let (la, x, probs) = (&mut a.layers[ls], &a.inputs[l], &a.probs[ps]);
            match a.recompute {
                Recompute::None => {}
                Recompute::Attention => attention_core(g, &mut enc, la, probs, cfg, &rows, l),
                Recompute::Full => {
                    let routing = m.map(|m| Routing { stats: (&a.recomputed_stats).into(), bias: v(&a.bias, m * e) });
                    layer_forward(g, &mut enc, p, w, cfg, &rows, la, x, probs, &gs.out, routing, l)?;
                }
            }
            let pressure = m.map(|m| v(&gs.pressure, m * b * e));
            layer_backward(g, &mut enc, p, gr, w, cfg, &rows, la, x, probs, dx, &gs.layer, pressure, z_scale, l)?;
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
