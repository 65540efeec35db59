//! Sizes checked before anything is allocated, so that a size no machine can hold fails with a
//! coded error instead of aborting the process ("memory allocation of N bytes failed"). Products of
//! configuration sizes are computed in checked 128-bit arithmetic (`INVALID_CONFIG` on overflow), set
//! against the memory of the machine (`OUT_OF_MEMORY` past it: physical memory plus swap on Linux,
//! or `MOE_MEMORY_LIMIT` bytes), and the large buffers are reserved fallibly.

use crate::config::{ModelConfig, MoeConfig, Recompute};
use crate::error::{MoeError, Result};

/// Bytes this process may plan to hold: `MOE_MEMORY_LIMIT` when set, else memory + swap (Linux),
/// else no limit but the allocator's.
pub fn budget() -> u128 {
    if let Some(n) = std::env::var("MOE_MEMORY_LIMIT").ok().and_then(|v| v.trim().parse::<u128>().ok()) {
        return n;
    }
    system_memory().unwrap_or(u128::MAX)
}

/// MemTotal + SwapTotal from /proc/meminfo, in bytes.
fn system_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u128>().ok().map(|kb| kb * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

pub fn human(bytes: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 1024.0 { format!("{bytes} bytes") } else { format!("{v:.1} {}", units[u]) }
}

/// Fails unless `bytes` (None: the size arithmetic overflowed) fits the budget.
pub fn check(what: &str, bytes: Option<u128>) -> Result<()> {
    let Some(bytes) = bytes else {
        return Err(MoeError::InvalidConfig(format!("{what}: the sizes multiply past any machine's memory (overflow)")));
    };
    let limit = budget();
    if bytes > limit {
        return Err(MoeError::OutOfMemory(format!("{what} need {} ({bytes} bytes); this machine can hold {}", human(bytes), human(limit))));
    }
    Ok(())
}

/// A zeroed buffer of `n` floats, reserved fallibly.
pub fn zeros(what: &str, n: usize) -> Result<Vec<f32>> {
    check(what, (n as u128).checked_mul(4))?;
    let mut v: Vec<f32> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| MoeError::OutOfMemory(format!("{what}: {} could not be allocated", human(n as u128 * 4))))?;
    v.resize(n, 0.0);
    Ok(v)
}

fn mul(xs: &[usize]) -> Option<u128> {
    xs.iter().try_fold(1u128, |a, &x| a.checked_mul(x as u128))
}

fn sum(xs: &[Option<u128>]) -> Option<u128> {
    xs.iter().try_fold(0u128, |a, x| a.checked_add((*x)?))
}

/// An upper bound of the number of parameters of a model (every tensor of every layer, both
/// embedding matrices), None on overflow.
pub fn model_parameters(c: &ModelConfig) -> Option<u128> {
    let (d, hd) = (c.hidden_size, c.head_dim);
    let per_layer = sum(&[
        mul(&[c.num_attention_heads, hd, d, 2]),   // q, o
        mul(&[c.num_key_value_heads, hd, d, 2]),   // k, v
        mul(&[hd, 2]),                             // q/k norms
        mul(&[d, 2]),                              // layer norms
        mul(&[c.num_experts, d]),                  // router
        mul(&[c.num_experts, c.moe_intermediate_size, d, 3]), // experts
    ]);
    sum(&[mul(&[c.vocab_size, d, 2]), per_layer?.checked_mul(c.num_hidden_layers as u128), Some(d as u128)])
}

/// Bytes of a model's host state: parameters, gradients and the two AdamW moments (f32 each).
pub fn check_model(c: &ModelConfig) -> Result<()> {
    check("the model's parameters, gradients and AdamW moments", model_parameters(c).and_then(|n| n.checked_mul(16)))
}

/// An upper bound of the bytes a forward on B sequences of S tokens holds at once: per layer the
/// activations of every token and the attention probabilities — for every layer when they are
/// stored for the backward (`store`), else for one — plus the logits. Under recomputation a stored
/// forward keeps the layer inputs (`Full`) or all but the probabilities (`Attention`) of every
/// layer, and one layer's worth besides.
pub fn check_forward(c: &ModelConfig, b: usize, s: usize, store: Option<Recompute>) -> Result<()> {
    let t = b.checked_mul(s).map(|t| t as u128);
    let (d, h, kv, hd) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let per_token = sum(&[mul(&[d, 8]), mul(&[h, hd, 4]), mul(&[kv, hd, 4]), mul(&[c.num_experts_per_tok, c.moe_intermediate_size, 4]), mul(&[c.num_experts, 4])]);
    let acts = t.zip(per_token).and_then(|(t, p)| t.checked_mul(p));
    let probs = mul(&[b, h, s, s]);
    let nl = c.num_hidden_layers as u128;
    let kept = match store {
        None => Some(0),
        Some(Recompute::None) => sum(&[acts, probs]).and_then(|x| x.checked_mul(nl)),
        Some(Recompute::Attention) => acts.and_then(|x| x.checked_mul(nl)),
        Some(Recompute::Full) => t.and_then(|t| t.checked_mul(d as u128)).and_then(|x| x.checked_mul(nl)),
    };
    let layers = sum(&[kept, acts, probs]);
    let logits = t.zip(mul(&[c.vocab_size, 2]).zip(mul(&[d, 4])).and_then(|(a, b)| a.checked_add(b))).and_then(|(t, v)| t.checked_mul(v));
    check(&format!("a forward on {b} sequences of {s} tokens"), sum(&[layers, logits]).and_then(|f| f.checked_mul(4)))
}

/// Bytes of a standalone MoE layer's host state (router and experts; four f32 roles).
pub fn check_layer(c: &MoeConfig) -> Result<()> {
    let n = sum(&[mul(&[c.num_experts, c.hidden_size]), mul(&[c.num_experts, c.moe_intermediate_size, c.hidden_size, 3])]);
    check("the layer's parameters, gradients and AdamW moments", n.and_then(|n| n.checked_mul(16)))
}

/// An upper bound of the bytes a layer forward on T tokens holds.
pub fn check_layer_forward(c: &MoeConfig, t: usize) -> Result<()> {
    let per_token = sum(&[mul(&[c.hidden_size, 4]), mul(&[c.num_experts_per_tok, c.moe_intermediate_size, 4]), mul(&[c.num_experts, 4])]);
    check(&format!("a layer forward on {t} tokens"), per_token.and_then(|p| p.checked_mul(t as u128)).and_then(|f| f.checked_mul(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_the_budget_or_past_u128_are_refused_with_codes() {
        assert_eq!(check("x", None).unwrap_err().code(), "INVALID_CONFIG");
        assert_eq!(check("x", Some(u128::MAX - 1)).unwrap_err().code(), "OUT_OF_MEMORY");
        assert!(check("x", Some(1024)).is_ok());
        assert_eq!(mul(&[usize::MAX, usize::MAX, usize::MAX]), None);
        assert_eq!(zeros("x", usize::MAX).unwrap_err().code(), "OUT_OF_MEMORY");
        assert_eq!(zeros("x", 3).unwrap(), vec![0.0; 3]);
        assert_eq!(human(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
