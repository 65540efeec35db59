//! The parameter layout: one list of named tensors per decoder layer, with the Hugging Face names
//! and shapes, from which everything else is derived — the offsets into the flat host buffers
//! (params, grads, AdamW moments), the slices the CPU ops read, the offsets the GPU kernels bind and
//! the tensor names of checkpoints. Code reads a tensor through its field (`layer.attn.q_proj`),
//! never by position.
//!
//! The same structs hold any per-tensor value `T`: the layout itself (`ParamSpec`), weights
//! (`&[f32]`), gradients (`&mut [f32]`) or device offsets (`usize`). `map` visits the fields in
//! layout order, which is also the order of the flat buffer (tested: the views tile it exactly).

use crate::config::{ModelConfig, ModelType, MoeConfig, QkNorm};

/// One tensor of the flat buffer: Hugging Face name, shape, offset. An expert bank is one tensor of
/// shape (E, ..) whose name holds `{e}`: checkpoints store it as E tensors, one per expert.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
    /// The Hugging Face tensors this entry stands for: itself, or one per expert of a bank.
    pub fn hf_tensors(&self) -> Vec<ParamSpec> {
        if !self.name.contains("{e}") {
            return vec![self.clone()];
        }
        let per: usize = self.shape[1..].iter().product();
        (0..self.shape[0])
            .map(|e| ParamSpec { name: self.name.replace("{e}", &e.to_string()), shape: self.shape[1..].to_vec(), offset: self.offset + e * per })
            .collect()
    }
}

/// SwiGLU weights: gate_proj, up_proj (F, C) and down_proj (C, F) of one MLP, or of a bank of E
/// experts stacked over experts (E, F, C) / (E, C, F) so that the grouped GEMMs read one block per
/// kind.
#[derive(Debug, Clone)]
pub struct ExpertParams<T> {
    pub gate_proj: T,
    pub up_proj: T,
    pub down_proj: T,
}

/// A shared expert beside the routed ones (Qwen2-MoE): a SwiGLU MLP (F_s) whose output is scaled by
/// sigmoid(x · gate), gate (1, C).
#[derive(Debug, Clone)]
pub struct SharedExpertParams<T> {
    pub mlp: ExpertParams<T>,
    pub gate: T,
}

/// One MoE block: the router `gate` (E, C), its experts, and an optional shared expert.
#[derive(Debug, Clone)]
pub struct MoeParams<T> {
    pub gate: T,
    pub experts: ExpertParams<T>,
    pub shared: Option<SharedExpertParams<T>>,
}

/// A decoder layer's feed-forward part: routed experts, or a dense SwiGLU MLP (`mlp_only_layers`,
/// `decoder_sparse_step`).
#[derive(Debug, Clone)]
pub enum MlpParams<T> {
    Moe(MoeParams<T>),
    Dense(ExpertParams<T>),
}

/// The q, k, v projection biases (H*D), (KV*D), (KV*D) of Qwen2-MoE.
#[derive(Debug, Clone)]
pub struct QkvBias<T> {
    pub q: T,
    pub k: T,
    pub v: T,
}

/// One decoder layer: attention, then the MLP; the optional parts per architecture.
#[derive(Debug, Clone)]
pub struct LayerParams<T> {
    /// (C)
    pub input_layernorm: T,
    /// (H*D, C)
    pub q_proj: T,
    /// (KV*D, C)
    pub k_proj: T,
    /// (KV*D, C)
    pub v_proj: T,
    /// Qwen2-MoE
    pub qkv_bias: Option<QkvBias<T>>,
    /// (C, H*D)
    pub o_proj: T,
    /// (D) per head (Qwen3-MoE) or (H*D) over the token (OLMoE); absent in Qwen2-MoE and Mixtral
    pub q_norm: Option<T>,
    /// (D) or (KV*D), as q_norm
    pub k_norm: Option<T>,
    /// (C)
    pub post_attention_layernorm: T,
    pub mlp: MlpParams<T>,
}

/// The whole model. `lm_head` is None when tied to `embed_tokens`.
#[derive(Debug, Clone)]
pub struct ModelParams<T> {
    /// (V, C)
    pub embed_tokens: T,
    pub layers: Vec<LayerParams<T>>,
    /// (C)
    pub norm: T,
    /// (V, C)
    pub lm_head: Option<T>,
}

impl<T> ExpertParams<T> {
    pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> ExpertParams<U> {
        ExpertParams { gate_proj: f(&self.gate_proj), up_proj: f(&self.up_proj), down_proj: f(&self.down_proj) }
    }
}

impl<T> MoeParams<T> {
    pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> MoeParams<U> {
        MoeParams {
            gate: f(&self.gate),
            experts: self.experts.map(f),
            shared: self.shared.as_ref().map(|s| SharedExpertParams { mlp: s.mlp.map(f), gate: f(&s.gate) }),
        }
    }
}

impl<T> MlpParams<T> {
    pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> MlpParams<U> {
        match self {
            MlpParams::Moe(m) => MlpParams::Moe(m.map(f)),
            MlpParams::Dense(d) => MlpParams::Dense(d.map(f)),
        }
    }

    /// The MoE block, or None for a dense layer.
    pub fn moe(&self) -> Option<&MoeParams<T>> {
        match self {
            MlpParams::Moe(m) => Some(m),
            MlpParams::Dense(_) => None,
        }
    }
}

impl<T> LayerParams<T> {
    pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> LayerParams<U> {
        LayerParams {
            input_layernorm: f(&self.input_layernorm),
            q_proj: f(&self.q_proj),
            k_proj: f(&self.k_proj),
            v_proj: f(&self.v_proj),
            qkv_bias: self.qkv_bias.as_ref().map(|b| QkvBias { q: f(&b.q), k: f(&b.k), v: f(&b.v) }),
            o_proj: f(&self.o_proj),
            q_norm: self.q_norm.as_ref().map(&mut *f),
            k_norm: self.k_norm.as_ref().map(&mut *f),
            post_attention_layernorm: f(&self.post_attention_layernorm),
            mlp: self.mlp.map(f),
        }
    }
}

impl<T> ModelParams<T> {
    pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> ModelParams<U> {
        ModelParams {
            embed_tokens: f(&self.embed_tokens),
            layers: self.layers.iter().map(|l| l.map(f)).collect(),
            norm: f(&self.norm),
            lm_head: self.lm_head.as_ref().map(f),
        }
    }

    /// The output projection: `lm_head`, or the embedding when tied.
    pub fn head(&self) -> &T {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

/// Hands out consecutive specs from offset 0: the order of `add` calls is the buffer's order.
struct Builder {
    at: usize,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize]) -> ParamSpec {
        let spec = ParamSpec { name, shape: shape.to_vec(), offset: self.at };
        self.at += spec.len();
        spec
    }

    /// A SwiGLU MLP of width f under `prefix` with the names `names` (gate, up, down), stacked over
    /// `experts` when given (the names then hold `{e}`).
    fn mlp(&mut self, prefix: &str, names: [&str; 3], c: usize, f: usize, experts: Option<usize>) -> ExpertParams<ParamSpec> {
        let stack = |shape: [usize; 2]| experts.map_or(shape.to_vec(), |e| vec![e, shape[0], shape[1]]);
        ExpertParams {
            gate_proj: self.add(format!("{prefix}{}.weight", names[0]), &stack([f, c])),
            up_proj: self.add(format!("{prefix}{}.weight", names[1]), &stack([f, c])),
            down_proj: self.add(format!("{prefix}{}.weight", names[2]), &stack([c, f])),
        }
    }

    /// An MoE block under `prefix`; Mixtral names its experts' matrices w1 (gate), w3 (up), w2 (down).
    fn moe(&mut self, cfg: &MoeConfig, prefix: &str, mixtral: bool) -> MoeParams<ParamSpec> {
        let (c, f, e, fs) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.shared_expert_intermediate_size);
        let names = if mixtral { ["experts.{e}.w1", "experts.{e}.w3", "experts.{e}.w2"] } else { ["experts.{e}.gate_proj", "experts.{e}.up_proj", "experts.{e}.down_proj"] };
        MoeParams {
            gate: self.add(format!("{prefix}gate.weight"), &[e, c]),
            experts: self.mlp(prefix, names, c, f, Some(e)),
            shared: (fs > 0).then(|| SharedExpertParams {
                mlp: self.mlp(&format!("{prefix}shared_expert."), ["gate_proj", "up_proj", "down_proj"], c, fs, None),
                gate: self.add(format!("{prefix}shared_expert_gate.weight"), &[1, c]),
            }),
        }
    }
}

/// Views of `flat` for every spec of a layout, in layout order. Panics if the specs do not tile
/// the buffer from offset 0 in that order (a layout bug, caught by the tiling tests).
fn slicer<'a>(flat: &'a [f32]) -> impl FnMut(&ParamSpec) -> &'a [f32] {
    let mut at = 0;
    move |s: &ParamSpec| {
        assert_eq!(s.offset, at, "layout order: {} is not at the next offset", s.name);
        at += s.len();
        &flat[s.range()]
    }
}

/// Mutable views, as `slicer`.
fn slicer_mut<'a>(flat: &'a mut [f32]) -> impl FnMut(&ParamSpec) -> &'a mut [f32] {
    let mut rest = flat;
    let mut at = 0;
    move |s: &ParamSpec| {
        assert_eq!(s.offset, at, "layout order: {} is not at the next offset", s.name);
        at += s.len();
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(s.len());
        rest = tail;
        mine
    }
}

/// What every layout offers, derived from its `map` over specs in buffer order.
pub trait Layout {
    /// The same structure holding a `U` per tensor.
    type Of<U>;

    /// Visits every spec in buffer order.
    fn map_specs<U>(&self, f: &mut impl FnMut(&ParamSpec) -> U) -> Self::Of<U>;

    /// Every spec in buffer order.
    fn specs(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        self.map_specs(&mut |s| out.push(s.clone()));
        out
    }

    /// Elements of the flat buffer.
    fn len(&self) -> usize {
        self.specs().last().map_or(0, |s| s.offset + s.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Views of a flat buffer (params, grads) by name.
    fn views<'a>(&self, flat: &'a [f32]) -> Self::Of<&'a [f32]> {
        self.map_specs(&mut slicer(flat))
    }

    /// Mutable views of a flat buffer by name.
    fn views_mut<'a>(&self, flat: &'a mut [f32]) -> Self::Of<&'a mut [f32]> {
        self.map_specs(&mut slicer_mut(flat))
    }

    /// The offset of every tensor, for the GPU kernels.
    fn offsets(&self) -> Self::Of<usize> {
        self.map_specs(&mut |s| s.offset)
    }
}

impl Layout for MoeParams<ParamSpec> {
    type Of<U> = MoeParams<U>;
    fn map_specs<U>(&self, f: &mut impl FnMut(&ParamSpec) -> U) -> MoeParams<U> {
        self.map(f)
    }
}

impl Layout for ModelParams<ParamSpec> {
    type Of<U> = ModelParams<U>;
    fn map_specs<U>(&self, f: &mut impl FnMut(&ParamSpec) -> U) -> ModelParams<U> {
        self.map(f)
    }
}

impl MoeParams<ParamSpec> {
    /// The standalone MoE layer: names without a prefix (`gate.weight`, `experts.{e}.up_proj.weight`).
    pub fn layout(cfg: &MoeConfig) -> Self {
        Builder { at: 0 }.moe(cfg, "", false)
    }
}

impl ModelParams<ParamSpec> {
    /// The model's layout with the Hugging Face names of its architecture (`Qwen3MoeForCausalLM`,
    /// `Qwen2MoeForCausalLM`, `OlmoeForCausalLM`, `MixtralForCausalLM`).
    pub fn layout(cfg: &ModelConfig) -> Self {
        let (v, d, h, kv, hd) = (cfg.vocab_size, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let moe = cfg.moe();
        let mixtral = cfg.model_type == ModelType::Mixtral;
        let (qn, kn) = match cfg.qk_norm() {
            QkNorm::None => (None, None),
            QkNorm::PerHead => (Some(hd), Some(hd)),
            QkNorm::Full => (Some(h * hd), Some(kv * hd)),
        };
        let mut b = Builder { at: 0 };
        let embed_tokens = b.add("model.embed_tokens.weight".into(), &[v, d]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}.");
                LayerParams {
                    input_layernorm: b.add(format!("{p}input_layernorm.weight"), &[d]),
                    q_proj: b.add(format!("{p}self_attn.q_proj.weight"), &[h * hd, d]),
                    k_proj: b.add(format!("{p}self_attn.k_proj.weight"), &[kv * hd, d]),
                    v_proj: b.add(format!("{p}self_attn.v_proj.weight"), &[kv * hd, d]),
                    qkv_bias: cfg.qkv_bias.then(|| QkvBias {
                        q: b.add(format!("{p}self_attn.q_proj.bias"), &[h * hd]),
                        k: b.add(format!("{p}self_attn.k_proj.bias"), &[kv * hd]),
                        v: b.add(format!("{p}self_attn.v_proj.bias"), &[kv * hd]),
                    }),
                    o_proj: b.add(format!("{p}self_attn.o_proj.weight"), &[d, h * hd]),
                    q_norm: qn.map(|n| b.add(format!("{p}self_attn.q_norm.weight"), &[n])),
                    k_norm: kn.map(|n| b.add(format!("{p}self_attn.k_norm.weight"), &[n])),
                    post_attention_layernorm: b.add(format!("{p}post_attention_layernorm.weight"), &[d]),
                    mlp: if cfg.is_moe_layer(l) {
                        MlpParams::Moe(b.moe(&moe, &format!("{p}{}", if mixtral { "block_sparse_moe." } else { "mlp." }), mixtral))
                    } else {
                        MlpParams::Dense(b.mlp(&format!("{p}mlp."), ["gate_proj", "up_proj", "down_proj"], d, cfg.intermediate_size, None))
                    },
                }
            })
            .collect();
        let norm = b.add("model.norm.weight".into(), &[d]);
        let lm_head = (!cfg.tie_word_embeddings).then(|| b.add("lm_head.weight".into(), &[v, d]));
        ModelParams { embed_tokens, layers, norm, lm_head }
    }
}

/// The Hugging Face tensors of a layout, in buffer order (expert banks expanded per expert).
pub fn hf_tensors(specs: &[ParamSpec]) -> Vec<ParamSpec> {
    specs.iter().flat_map(ParamSpec::hf_tensors).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tied: bool) -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 37, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 4, "moe_intermediate_size": 10, "num_experts": 5,
            "num_experts_per_tok": 2, "tie_word_embeddings": tied
        }))
        .unwrap()
    }

    /// The named views cover the flat buffer exactly once, in order, for the layout and its
    /// Hugging Face expansion, and a view by field is the buffer at that field's offset.
    #[test]
    fn named_views_tile_the_flat_buffer() {
        for tied in [false, true] {
            let layout = ModelParams::layout(&cfg(tied));
            for specs in [layout.specs(), hf_tensors(&layout.specs())] {
                let mut at = 0;
                for s in &specs {
                    assert_eq!(s.offset, at, "{} does not follow its predecessor", s.name);
                    at += s.len();
                }
                assert_eq!(at, layout.len());
            }
            let flat: Vec<f32> = (0..layout.len()).map(|i| i as f32).collect();
            let w = layout.views(&flat);
            let l1 = &layout.layers[1];
            assert_eq!(w.layers[1].q_proj[0], flat[l1.q_proj.offset]);
            assert_eq!(w.layers[2].mlp.moe().unwrap().experts.down_proj.len(), 5 * 16 * 10);
            assert_eq!(w.head()[0], flat[layout.head().offset]);
            let mut g = flat.clone();
            let gv = layout.views_mut(&mut g);
            assert_eq!(gv.norm.len(), 16);
            let n = hf_tensors(&layout.specs()).len();
            assert_eq!(n, 1 + 3 * (8 + 1 + 3 * 5) + 1 + usize::from(!tied));
        }
        let moe = MoeParams::layout(&cfg(false).moe());
        assert_eq!(hf_tensors(&moe.specs())[1].name, "experts.0.gate_proj.weight");
        assert_eq!(moe.views(&vec![0.0; moe.len()]).experts.up_proj.len(), 5 * 10 * 16);
    }
}
