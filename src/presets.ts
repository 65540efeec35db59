// Named model configurations. DEMO_MODEL is the small model of `npm run demo` and of the training
// step benchmark: 4 layers of 16 fine-grained experts (top-2), about 3.5 M parameters with the
// byte vocabulary (the trainer sets vocab_size from its tokenizer).

import type { ModelConfig } from '../index.js';

/** The byte tokenizer: end-of-text + 256 byte values. */
export const BYTE_VOCAB = 257;

export const DEMO_MODEL: ModelConfig = {
  vocab_size: BYTE_VOCAB,
  hidden_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  moe_intermediate_size: 128,
  num_experts: 16,
  num_experts_per_tok: 2,
  norm_topk_prob: true,
  rope_theta: 10000,
  max_position_embeddings: 1024,
  tie_word_embeddings: false,
  initializer_range: 0.02,
  seed: 0,
};

/** Sequence length and sequences per micro-batch the demo trains with. */
export const DEMO_SEQ_LEN = 128;
export const DEMO_MICRO_BATCH = 8;
