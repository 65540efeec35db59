//! What a forward returns, on either device: per-sequence routing statistics of an MoE block, the
//! model's statistics over all layers with its loss, and the standalone layer's output. These are
//! the "statistics out" of the native boundary (DESIGN §3); the balance engine reads nothing else.

/// Per-sequence routing statistics of one block, over valid tokens only.
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

/// Per-layer, per-sequence routing statistics and the loss of one model forward.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// summed cross-entropy over all valid positions (nats)
    pub loss: f64,
}

impl ModelStats {
    /// Zeroed statistics for L layers of B sequences of E experts.
    pub fn zeros(l: usize, b: usize, e: usize) -> Self {
        ModelStats {
            counts: vec![0.0; l * b * e],
            score_sums: vec![0.0; l * b * e],
            topk_score_sums: vec![0.0; l * b],
            z_sums: vec![0.0; l * b],
            ..Default::default()
        }
    }

    /// Copies one block's statistics into layer l's rows (and the valid-token counts, equal in every layer).
    pub fn set_layer(&mut self, l: usize, rs: &RoutingStats) {
        let (b, be) = (rs.topk_score_sums.len(), rs.counts.len());
        self.counts[l * be..][..be].copy_from_slice(&rs.counts);
        self.score_sums[l * be..][..be].copy_from_slice(&rs.score_sums);
        self.topk_score_sums[l * b..][..b].copy_from_slice(&rs.topk_score_sums);
        self.z_sums[l * b..][..b].copy_from_slice(&rs.z_sums);
        self.valid_tokens.clone_from(&rs.valid_tokens);
    }

    /// Sets `loss_sums` (per sequence of S positions) and `loss` from per-position losses (B*S), in f64.
    pub fn set_losses(&mut self, losses: &[f32], s: usize) {
        self.loss_sums = losses.chunks(s).map(|c| c.iter().map(|&x| x as f64).sum::<f64>() as f32).collect();
        self.loss = losses.iter().map(|&x| x as f64).sum();
    }
}

/// What a standalone layer's forward returns: the output (T, C) and the per-sequence statistics.
pub struct ForwardOutput {
    pub out: Vec<f32>,
    pub stats: RoutingStats,
}
