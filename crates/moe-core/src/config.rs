//! Model and MoE-block configurations with the Hugging Face `Qwen3MoeConfig` field names, validated,
//! and the model's `config.json` form (model_type "qwen3_moe") so transformers loads our checkpoints.

use crate::error::{MoeError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub moe_intermediate_size: usize,
    /// transformers >= 5 writes it as `num_local_experts`.
    #[serde(alias = "num_local_experts")]
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
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

/// Hugging Face fields we accept and write but do not model: each with the only value we support
/// (None = any value).
const HF_FIXED: &[(&str, Option<&str>)] = &[
    ("model_type", Some("\"qwen3_moe\"")),
    ("architectures", None),
    ("hidden_act", Some("\"silu\"")),
    ("attention_bias", Some("false")),
    ("decoder_sparse_step", Some("1")),
    ("mlp_only_layers", Some("[]")),
    ("intermediate_size", None),
    ("attention_dropout", None),
    ("torch_dtype", None),
    ("dtype", None),
    ("transformers_version", None),
    ("use_cache", None),
    ("use_sliding_window", Some("false")),
    ("sliding_window", None),
    ("max_window_layers", None),
    ("rope_scaling", Some("null")),
    ("router_aux_loss_coef", None),
    ("output_router_logits", None),
    ("bos_token_id", None),
    ("eos_token_id", None),
    ("pad_token_id", None),
];

/// The rope_theta of transformers >= 5's `rope_parameters` ({"rope_type": "default", "rope_theta": ..});
/// any other rotary scheme is refused.
fn rope_parameters(v: &Value) -> Result<Option<Value>> {
    let bad = || MoeError::InvalidConfig(format!("rope_parameters = {v} is not supported (only rope_type \"default\")"));
    match v {
        Value::Null => Ok(None),
        Value::Object(o) if o.get("rope_type").is_none_or(|t| t == "default") && o.keys().all(|k| k == "rope_type" || k == "rope_theta") => {
            Ok(o.get("rope_theta").cloned())
        }
        _ => Err(bad()),
    }
}

impl ModelConfig {
    /// Parses and validates a config object; unknown fields are refused unless they are Hugging Face
    /// fields with a value this model implements (e.g. `"hidden_act": "silu"`).
    pub fn from_json(v: Value) -> Result<Self> {
        let bad = |m: String| MoeError::InvalidConfig(m);
        let Value::Object(obj) = v else { return Err(bad("the config must be an object".into())) };
        let mut known = Map::new();
        let mut rope_theta = None;
        for (k, val) in obj {
            if k == "rope_parameters" {
                rope_theta = rope_parameters(&val)?;
            } else if let Some((_, want)) = HF_FIXED.iter().find(|(name, _)| *name == k) {
                if let Some(want) = want {
                    if val.to_string() != *want {
                        return Err(bad(format!("{k} = {val} is not supported (only {want})")));
                    }
                }
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
        ] {
            if v == 0 {
                return bad(format!("{name} must be >= 1"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim ({}) must be even for the rotary embedding", self.head_dim));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad("vocab_size must fit in 32 bits".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be > 0".into());
        }
        self.moe().validate()
    }

    /// Equal up to the initialisation settings (seed, initializer_range), which a checkpoint overrides.
    pub fn same_architecture(&self, other: &ModelConfig) -> bool {
        let norm = |c: &ModelConfig| ModelConfig { seed: 0, initializer_range: 0.0, ..c.clone() };
        norm(self) == norm(other)
    }

    /// The MoE block of every decoder layer.
    pub fn moe(&self) -> MoeConfig {
        MoeConfig {
            hidden_size: self.hidden_size,
            moe_intermediate_size: self.moe_intermediate_size,
            num_experts: self.num_experts,
            num_experts_per_tok: self.num_experts_per_tok,
            norm_topk_prob: self.norm_topk_prob,
            initializer_range: self.initializer_range,
            seed: self.seed,
        }
    }

    /// The `config.json` that `Qwen3MoeForCausalLM.from_pretrained` reads.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let extra = json!({
            "model_type": "qwen3_moe",
            "architectures": ["Qwen3MoeForCausalLM"],
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "intermediate_size": self.moe_intermediate_size,
            "use_sliding_window": false,
            "rope_scaling": null,
            "torch_dtype": "float32",
            "use_cache": true,
        });
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
        assert_eq!(code(json!({"num_experts": 4, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})), Some("INVALID_CONFIG"));
        assert_eq!(code(json!({"num_experts": 4, "rope_parameters": {"rope_theta": 1e4}, "rope_theta": 1e6})), Some("INVALID_CONFIG"));
        assert_eq!(code(json!({"num_experts": 4, "num_local_experts": 4})), Some("INVALID_CONFIG"));
    }
}
