//! Model and MoE-block configurations with the Hugging Face field names, validated, for the four
//! architectures the model implements — Qwen3-MoE (the default), Qwen2-MoE, OLMoE and Mixtral —
//! and each one's `config.json` form so transformers loads our checkpoints. Internally every
//! architecture is one `ModelConfig` (Qwen3-MoE's names); what differs is derived from
//! `model_type` (`qk_norm`, renormalisation) or set by fields (shared expert, q/k/v bias, dense
//! layers, sliding windows). A valid Hugging Face setting this model does not implement is refused
//! with `UNSUPPORTED_MODEL` naming the field; an unknown field with `INVALID_CONFIG`.

use crate::error::{MoeError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The architecture (Hugging Face `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    #[default]
    Qwen3Moe,
    Qwen2Moe,
    Olmoe,
    Mixtral,
}

impl ModelType {
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Qwen3Moe => "qwen3_moe",
            ModelType::Qwen2Moe => "qwen2_moe",
            ModelType::Olmoe => "olmoe",
            ModelType::Mixtral => "mixtral",
        }
    }

    /// The transformers class whose checkpoints these are.
    pub fn class(self) -> &'static str {
        match self {
            ModelType::Qwen3Moe => "Qwen3MoeForCausalLM",
            ModelType::Qwen2Moe => "Qwen2MoeForCausalLM",
            ModelType::Olmoe => "OlmoeForCausalLM",
            ModelType::Mixtral => "MixtralForCausalLM",
        }
    }
}

/// Activation recomputation: what a stored forward keeps of each decoder layer for the backward,
/// the rest being computed again, layer by layer, just before that layer's backward (a training
/// setting, not part of the architecture). The recomputed forward is the first one bit for bit
/// (same inputs, same kernels, same order); its routing statistics are discarded, never added to
/// the step's counts a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recompute {
    /// keep every activation (fastest; attention probabilities cost B H S^2 floats per layer)
    #[default]
    None,
    /// keep all but the attention probabilities; the backward recomputes them from q, k
    Attention,
    /// keep only each layer's input (B S C floats); the backward recomputes the whole layer
    Full,
}

impl Recompute {
    /// "none", "attention" or "full": the name `from_str` reads.
    pub fn name(self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Attention => "attention",
            Recompute::Full => "full",
        }
    }
}

impl std::str::FromStr for Recompute {
    type Err = MoeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Recompute::None),
            "attention" => Ok(Recompute::Attention),
            "full" => Ok(Recompute::Full),
            _ => Err(MoeError::InvalidArgument(format!("recompute: expected none | attention | full, got \"{s}\""))),
        }
    }
}

/// The number format of the inputs of the model's large GEMMs — q/k/v, o_proj, the experts' and
/// dense MLPs' gate/up/down projections, lm_head — forward and backward (a training setting, like
/// PyTorch's autocast). `Bf16` rounds both operands of each such product to bfloat16 (round to
/// nearest, ties to even) and multiplies and adds in f32, as AVX-512 BF16's `vdpbf16ps` and tensor
/// cores do; weights, gradients, AdamW moments and every other op stay f32 (f32 master weights).
/// The routers' gates stay f32 (expert choice is sensitive to small changes of its logits), and so
/// does the attention core (scores, softmax, probabilities times values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// "f32" or "bf16": the name `from_str` reads.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = MoeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(MoeError::InvalidArgument(format!("precision: expected f32 | bf16, got \"{s}\""))),
        }
    }
}

/// Where the attention normalises q and k (RMSNorm) before the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// Qwen2-MoE, Mixtral
    None,
    /// Qwen3-MoE: over each head's D values, one weight (D) shared by the heads
    PerHead,
    /// OLMoE: over all H*D (q) and KV*D (k) values of a token
    Full,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// F of each routed expert (Mixtral and OLMoE call it `intermediate_size`)
    pub moe_intermediate_size: usize,
    /// F of the dense MLP of the layers without experts (`mlp_only_layers`, `decoder_sparse_step`)
    #[serde(default)]
    pub intermediate_size: usize,
    /// transformers >= 5 writes it as `num_local_experts`.
    #[serde(alias = "num_local_experts")]
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k weights to sum to 1 (always so in Mixtral).
    #[serde(default)]
    pub norm_topk_prob: bool,
    /// F of the shared expert beside the routed ones (Qwen2-MoE), gated by sigmoid(x · w); 0 = none
    #[serde(default)]
    pub shared_expert_intermediate_size: usize,
    /// Biases on the q, k and v projections (Qwen2-MoE)
    #[serde(default)]
    pub qkv_bias: bool,
    /// Layers with a dense MLP instead of experts
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    /// Experts in layers l with (l + 1) % decoder_sparse_step == 0 (and not in `mlp_only_layers`)
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    /// Positions a query sees, itself included, in the layers `sliding_layers` names
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// The layers with a sliding window (all of them when absent and `sliding_window` is set)
    #[serde(default)]
    pub sliding_layers: Option<Vec<usize>>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Seed of the weight initialisation (ours; transformers ignores it).
    #[serde(default)]
    pub seed: u64,
}

fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    4096
}
fn default_init_range() -> f64 {
    0.02
}

/// Hugging Face fields read but not modelled, with the only value implemented (None = any).
const HF_FIXED: &[(&str, Option<&str>)] = &[
    ("architectures", None),
    ("hidden_act", Some("\"silu\"")),
    ("attention_bias", Some("false")),
    ("attention_dropout", None),
    ("torch_dtype", None),
    ("dtype", None),
    ("transformers_version", None),
    ("use_cache", None),
    ("rope_scaling", Some("null")),
    ("router_aux_loss_coef", None),
    ("output_router_logits", None),
    ("router_jitter_noise", Some("0.0")),
    ("clip_qkv", Some("null")),
    ("bos_token_id", None),
    ("eos_token_id", None),
    ("pad_token_id", None),
    ("max_window_layers", None),
    ("use_sliding_window", None),
    ("layer_types", None),
];

fn unsupported(m: String) -> MoeError {
    MoeError::Unsupported(m)
}

/// The rope_theta of transformers >= 5's `rope_parameters` ({"rope_type": "default", "rope_theta": ..});
/// any other rotary scheme is refused.
fn rope_parameters(v: &Value) -> Result<Option<Value>> {
    match v {
        Value::Null => Ok(None),
        Value::Object(o) if o.get("rope_type").is_none_or(|t| t == "default") && o.keys().all(|k| k == "rope_type" || k == "rope_theta") => {
            Ok(o.get("rope_theta").cloned())
        }
        _ => Err(unsupported(format!("rope_parameters = {v} is not supported (only rope_type \"default\")"))),
    }
}

/// The layers with a sliding window from Hugging Face's fields, as each architecture's transformers
/// config derives them: Qwen2-MoE from `layer_types` ("sliding_attention"), else with
/// `use_sliding_window` the odd-numbered layers (1st, 3rd, ..) below `max_window_layers`; Qwen3-MoE
/// every layer with `use_sliding_window`; Mixtral every layer when `sliding_window` is set; OLMoE none.
fn sliding_layers(model_type: ModelType, obj: &Map<String, Value>, layers: usize) -> Result<Vec<usize>> {
    let all = (0..layers).collect();
    let enabled = obj.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
    match model_type {
        ModelType::Qwen2Moe => match obj.get("layer_types").filter(|v| !v.is_null()) {
            Some(types) => {
                let types = types.as_array().ok_or_else(|| MoeError::InvalidConfig("layer_types must be a list".into()))?;
                let mut out = Vec::new();
                for (l, t) in types.iter().enumerate() {
                    match t.as_str() {
                        Some("sliding_attention") => out.push(l),
                        Some("full_attention") => {}
                        _ => return Err(unsupported(format!("layer_types[{l}] = {t} is not supported (full_attention or sliding_attention)"))),
                    }
                }
                Ok(out)
            }
            None if enabled => {
                let max = obj.get("max_window_layers").and_then(Value::as_u64).unwrap_or(28) as usize;
                Ok((0..layers).filter(|&l| l % 2 == 0 && l < max).collect())
            }
            None => Ok(Vec::new()),
        },
        ModelType::Qwen3Moe if enabled => Ok(all),
        ModelType::Mixtral if obj.get("sliding_window").is_some_and(|w| !w.is_null()) => Ok(all),
        _ => Ok(Vec::new()),
    }
}

impl ModelConfig {
    /// Parses and validates a config object: ours (Qwen3-MoE names, `model_type` for the others) or
    /// a Hugging Face `config.json` of one of the four architectures. Unknown fields are refused
    /// (INVALID_CONFIG) unless they are Hugging Face fields with a value this model implements; a
    /// value it does not implement is UNSUPPORTED_MODEL naming the field.
    pub fn from_json(v: Value) -> Result<Self> {
        let bad = |m: String| MoeError::InvalidConfig(m);
        let Value::Object(mut obj) = v else { return Err(bad("the config must be an object".into())) };
        let model_type = match obj.get("model_type") {
            None => ModelType::Qwen3Moe,
            Some(t) => serde_json::from_value(t.clone()).map_err(|_| unsupported(format!("model_type = {t} is not supported (qwen3_moe, qwen2_moe, olmoe, mixtral)")))?,
        };
        // Names of the other architectures onto ours.
        if matches!(model_type, ModelType::Mixtral | ModelType::Olmoe) {
            if let Some(f) = obj.remove("intermediate_size") {
                obj.insert("moe_intermediate_size".into(), f);
            }
            if model_type == ModelType::Mixtral {
                obj.insert("norm_topk_prob".into(), json!(true));
            }
        }
        let layers = obj.get("num_hidden_layers").and_then(Value::as_u64).unwrap_or(0) as usize;
        // transformers' defaults for absent or null: one key/value head per head; head_dim = hidden / heads
        if obj.get("num_key_value_heads").is_none_or(Value::is_null) {
            if let Some(h) = obj.get("num_attention_heads").cloned() {
                obj.insert("num_key_value_heads".into(), h);
            }
        }
        if obj.get("head_dim").is_none_or(Value::is_null) {
            let (h, n) = (obj.get("hidden_size").and_then(Value::as_u64), obj.get("num_attention_heads").and_then(Value::as_u64));
            if let (Some(h), Some(n)) = (h, n.filter(|&n| n > 0)) {
                obj.insert("head_dim".into(), json!(h / n));
            }
        }
        if model_type == ModelType::Qwen2Moe && !obj.contains_key("qkv_bias") {
            obj.insert("qkv_bias".into(), json!(true));
        }
        if !obj.contains_key("sliding_layers") {
            match sliding_layers(model_type, &obj, layers)? {
                s if s.is_empty() => obj.insert("sliding_window".into(), Value::Null),
                s => obj.insert("sliding_layers".into(), json!(s)),
            };
        }
        let mut known = Map::new();
        let mut rope_theta = None;
        for (k, val) in obj {
            if k == "rope_parameters" {
                rope_theta = rope_parameters(&val)?;
            } else if let Some((_, want)) = HF_FIXED.iter().find(|(name, _)| *name == k) {
                if let Some(want) = want {
                    let same = val.to_string() == *want || (val.is_number() && val.as_f64() == want.parse::<f64>().ok());
                    if !same {
                        return Err(unsupported(format!("{k} = {val} is not supported (only {want})")));
                    }
                }
            } else if k == "mlp_only_layers" && val.is_null() {
                // transformers writes null for none
            } else {
                known.insert(k, val);
            }
        }
        if let Some(theta) = rope_theta {
            if known.get("rope_theta").is_some_and(|t| t.as_f64() != theta.as_f64()) {
                return Err(bad(format!("rope_theta = {} disagrees with rope_parameters.rope_theta = {theta}", known["rope_theta"])));
            }
            known.insert("rope_theta".into(), theta);
        }
        let cfg: ModelConfig = crate::error::from_json(Value::Object(known))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MoeError::InvalidConfig(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("decoder_sparse_step", self.decoder_sparse_step),
        ] {
            if v == 0 {
                return bad(format!("{name} must be >= 1"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim ({}) must be even for the rotary embedding", self.head_dim));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad("vocab_size must fit in 32 bits".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be > 0".into());
        }
        if let Some(&l) = self.mlp_only_layers.iter().find(|&&l| l >= self.num_hidden_layers) {
            return bad(format!("mlp_only_layers names layer {l} of {}", self.num_hidden_layers));
        }
        if (0..self.num_hidden_layers).any(|l| !self.is_moe_layer(l)) && self.intermediate_size == 0 {
            return bad("intermediate_size must be >= 1: some layers have a dense MLP (mlp_only_layers, decoder_sparse_step)".into());
        }
        if self.moe_layers().is_empty() {
            return bad("no layer has experts (mlp_only_layers, decoder_sparse_step)".into());
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be >= 1".into());
        }
        if let Some(&l) = self.sliding_layers.iter().flatten().find(|&&l| l >= self.num_hidden_layers) {
            return bad(format!("sliding_layers names layer {l} of {}", self.num_hidden_layers));
        }
        let arch = self.model_type.name();
        let some_layers = (0..self.num_hidden_layers).any(|l| self.window(l).is_some()) && (0..self.num_hidden_layers).any(|l| self.window(l).is_none());
        if some_layers && self.model_type != ModelType::Qwen2Moe {
            return Err(unsupported(format!("sliding_layers: {arch} has a sliding window in every layer or in none")));
        }
        if self.sliding_window.is_some() && self.model_type == ModelType::Olmoe {
            return Err(unsupported("sliding_window: olmoe attends to every earlier position".into()));
        }
        if self.shared_expert_intermediate_size > 0 && self.model_type != ModelType::Qwen2Moe {
            return Err(unsupported(format!("shared_expert_intermediate_size: a shared expert is part of qwen2_moe, not {arch}")));
        }
        if self.qkv_bias && self.model_type != ModelType::Qwen2Moe {
            return Err(unsupported(format!("qkv_bias: q/k/v biases are part of qwen2_moe, not {arch}")));
        }
        if matches!(self.model_type, ModelType::Mixtral | ModelType::Olmoe) && (!self.mlp_only_layers.is_empty() || self.decoder_sparse_step != 1) {
            return Err(unsupported(format!("mlp_only_layers / decoder_sparse_step: dense layers are part of the Qwen families, not {arch}")));
        }
        if self.model_type == ModelType::Olmoe && self.head_dim * self.num_attention_heads != self.hidden_size {
            return Err(unsupported(format!(
                "head_dim = {}: olmoe's attention uses hidden_size / num_attention_heads = {}",
                self.head_dim,
                self.hidden_size / self.num_attention_heads
            )));
        }
        if self.model_type == ModelType::Mixtral && !self.norm_topk_prob {
            return Err(unsupported("norm_topk_prob = false: Mixtral always renormalises its top-k weights".into()));
        }
        self.moe().validate()
    }

    /// Equal up to the initialisation settings (seed, initializer_range), which a checkpoint overrides.
    pub fn same_architecture(&self, other: &ModelConfig) -> bool {
        let norm = |c: &ModelConfig| ModelConfig { seed: 0, initializer_range: 0.0, ..c.clone() };
        norm(self) == norm(other)
    }

    /// Whether layer l has experts (else a dense MLP of `intermediate_size`).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        !self.mlp_only_layers.contains(&l) && (l + 1).is_multiple_of(self.decoder_sparse_step)
    }

    /// The layers with experts, in order: the rows of every per-layer routing statistic.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.num_hidden_layers).filter(|&l| self.is_moe_layer(l)).collect()
    }

    /// The sliding window of layer l: positions a query sees, itself included; None = all before it.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers.as_ref().is_none_or(|s| s.contains(&l)))
    }

    pub fn qk_norm(&self) -> QkNorm {
        match self.model_type {
            ModelType::Qwen3Moe => QkNorm::PerHead,
            ModelType::Olmoe => QkNorm::Full,
            ModelType::Qwen2Moe | ModelType::Mixtral => QkNorm::None,
        }
    }

    /// The MoE block of the layers with experts.
    pub fn moe(&self) -> MoeConfig {
        MoeConfig {
            hidden_size: self.hidden_size,
            moe_intermediate_size: self.moe_intermediate_size,
            num_experts: self.num_experts,
            num_experts_per_tok: self.num_experts_per_tok,
            norm_topk_prob: self.norm_topk_prob,
            shared_expert_intermediate_size: self.shared_expert_intermediate_size,
            initializer_range: self.initializer_range,
            seed: self.seed,
        }
    }

    /// The `config.json` that the architecture's transformers class reads.
    pub fn to_hf_json(&self) -> Value {
        let c = self;
        let mut v = json!({
            "model_type": c.model_type.name(),
            "architectures": [c.model_type.class()],
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "num_experts_per_tok": c.num_experts_per_tok,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "initializer_range": c.initializer_range,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "rope_scaling": null,
            "torch_dtype": "float32",
            "use_cache": true,
            "seed": c.seed,
        });
        let window = c.sliding_window.filter(|_| c.sliding_layers.as_ref().is_none_or(|s| !s.is_empty()));
        let layer_types: Vec<&str> = (0..c.num_hidden_layers).map(|l| if c.window(l).is_some() { "sliding_attention" } else { "full_attention" }).collect();
        let extra = match c.model_type {
            ModelType::Qwen3Moe | ModelType::Qwen2Moe => {
                let mut e = json!({
                    "num_experts": c.num_experts,
                    "moe_intermediate_size": c.moe_intermediate_size,
                    "norm_topk_prob": c.norm_topk_prob,
                    "decoder_sparse_step": c.decoder_sparse_step,
                    "mlp_only_layers": c.mlp_only_layers,
                    "use_sliding_window": window.is_some(),
                    "sliding_window": window,
                    "attention_bias": false,
                });
                if c.intermediate_size > 0 {
                    e["intermediate_size"] = json!(c.intermediate_size);
                }
                if c.model_type == ModelType::Qwen2Moe {
                    e["layer_types"] = json!(layer_types);
                    e["qkv_bias"] = json!(c.qkv_bias);
                    e["shared_expert_intermediate_size"] = json!(c.shared_expert_intermediate_size);
                }
                e
            }
            ModelType::Olmoe => json!({
                "num_experts": c.num_experts,
                "intermediate_size": c.moe_intermediate_size,
                "norm_topk_prob": c.norm_topk_prob,
                "attention_bias": false,
                "clip_qkv": null,
            }),
            ModelType::Mixtral => json!({
                "num_local_experts": c.num_experts,
                "intermediate_size": c.moe_intermediate_size,
                "sliding_window": window,
                "router_jitter_noise": 0.0,
            }),
        };
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }
}

/// One MoE block, with the Hugging Face `Qwen3MoeConfig` field names (the standalone `MoeLayer`'s
/// whole config; a model derives it from its `ModelConfig`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    pub hidden_size: usize,
    pub moe_intermediate_size: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
    /// F of a shared expert beside the routed ones (sigmoid-gated); 0 = none
    #[serde(default)]
    pub shared_expert_intermediate_size: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub seed: u64,
}

impl MoeConfig {
    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        let cfg: MoeConfig = crate::error::from_json(v)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_5_names_are_read() {
        let base = json!({
            "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 4, "moe_intermediate_size": 6, "num_experts_per_tok": 2
        });
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            ModelConfig::from_json(v)
        };
        let c = with(json!({"num_local_experts": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})).unwrap();
        assert_eq!((c.num_experts, c.rope_theta), (4, 5e5));
        assert!(with(json!({"num_experts": 4, "rope_parameters": {"rope_theta": 1e4}, "rope_theta": 10000})).is_ok());
        let code = |v: Value| with(v).err().map(|e| e.code());
        assert_eq!(code(json!({"num_experts": 4, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})), Some("UNSUPPORTED_MODEL"));
        assert_eq!(code(json!({"num_experts": 4, "rope_parameters": {"rope_theta": 1e4}, "rope_theta": 1e6})), Some("INVALID_CONFIG"));
        assert_eq!(code(json!({"num_experts": 4, "num_local_experts": 4})), Some("INVALID_CONFIG"));
    }

    fn hf(v: Value) -> Result<ModelConfig> {
        let mut base = json!({
            "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 4, "num_attention_heads": 2,
            "num_key_value_heads": 1, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5
        });
        base.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        ModelConfig::from_json(base)
    }

    #[test]
    fn each_architecture_reads_its_own_names_and_writes_them_back() {
        let mixtral = hf(json!({"model_type": "mixtral", "num_local_experts": 4, "intermediate_size": 6, "sliding_window": 3})).unwrap();
        assert_eq!((mixtral.num_experts, mixtral.moe_intermediate_size, mixtral.norm_topk_prob, mixtral.head_dim), (4, 6, true, 4));
        assert_eq!((0..4).map(|l| mixtral.window(l)).collect::<Vec<_>>(), vec![Some(3); 4]);
        let olmoe = hf(json!({"model_type": "olmoe", "num_experts": 4, "intermediate_size": 6, "num_key_value_heads": null, "clip_qkv": null})).unwrap();
        assert_eq!((olmoe.moe_intermediate_size, olmoe.num_key_value_heads, olmoe.qk_norm()), (6, 2, QkNorm::Full));
        let qwen2 = hf(json!({
            "model_type": "qwen2_moe", "num_experts": 4, "moe_intermediate_size": 6, "intermediate_size": 10,
            "shared_expert_intermediate_size": 12, "decoder_sparse_step": 2, "mlp_only_layers": [3],
            "use_sliding_window": true, "sliding_window": 5, "max_window_layers": 2
        }))
        .unwrap();
        assert!(qwen2.qkv_bias, "Qwen2-MoE has q/k/v biases by default");
        assert_eq!(qwen2.moe_layers(), vec![1], "layer 3 is named dense, 0 and 2 fall between sparse steps");
        assert_eq!((0..4).map(|l| qwen2.window(l)).collect::<Vec<_>>(), vec![Some(5), None, None, None]);
        let qwen3 = hf(json!({"num_experts": 4, "moe_intermediate_size": 6, "use_sliding_window": false, "sliding_window": 5})).unwrap();
        assert_eq!(qwen3.window(0), None);
        for c in [mixtral, olmoe, qwen2, qwen3] {
            assert_eq!(ModelConfig::from_json(c.to_hf_json()).unwrap(), c, "{:?} round trip", c.model_type);
        }
    }

    #[test]
    fn what_transformers_has_and_we_do_not_is_unsupported_and_named() {
        let msg = |v: Value| match hf(v) {
            Err(e) => format!("{}: {e}", e.code()),
            Ok(_) => "accepted".into(),
        };
        let m = msg(json!({"model_type": "deepseek_v3", "num_experts": 4, "moe_intermediate_size": 6}));
        assert!(m.starts_with("UNSUPPORTED_MODEL") && m.contains("model_type"), "{m}");
        let m = msg(json!({"num_experts": 4, "moe_intermediate_size": 6, "rope_scaling": {"type": "linear", "factor": 2.0}}));
        assert!(m.starts_with("UNSUPPORTED_MODEL") && m.contains("rope_scaling"), "{m}");
        let m = msg(json!({"model_type": "olmoe", "num_experts": 4, "intermediate_size": 6, "clip_qkv": 8.0}));
        assert!(m.starts_with("UNSUPPORTED_MODEL") && m.contains("clip_qkv"), "{m}");
        let m = msg(json!({"model_type": "olmoe", "num_experts": 4, "intermediate_size": 6, "head_dim": 16}));
        assert!(m.starts_with("UNSUPPORTED_MODEL") && m.contains("head_dim"), "{m}");
        let m = msg(json!({"num_experts": 4, "moe_intermediate_size": 6, "shared_expert_intermediate_size": 8}));
        assert!(m.starts_with("UNSUPPORTED_MODEL") && m.contains("shared_expert_intermediate_size"), "{m}");
        let m = msg(json!({"model_type": "mixtral", "num_local_experts": 4, "intermediate_size": 6, "hidden_act": "gelu"}));
        assert!(m.starts_with("UNSUPPORTED_MODEL") && m.contains("hidden_act"), "{m}");
        let m = msg(json!({"num_experts": 4, "moe_intermediate_size": 6, "mlp_only_layers": [0, 1, 2, 3], "intermediate_size": 4}));
        assert!(m.starts_with("INVALID_CONFIG") && m.contains("no layer has experts"), "{m}");
        let m = msg(json!({"num_experts": 4, "moe_intermediate_size": 6, "no_such_field": 1}));
        assert!(m.starts_with("INVALID_CONFIG") && m.contains("no_such_field"), "{m}");
    }
}
