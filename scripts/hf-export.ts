// Writes a small trained checkpoint of one architecture and our logits on a batch, for
// scripts/hf_compat.py to compare with Hugging Face transformers (AutoModelForCausalLM).
// Usage: node --import tsx scripts/hf-export.ts OUT_DIR [qwen3_moe|qwen2_moe|olmoe|mixtral] [tied]

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MoeModel, type ModelConfig } from '../index.js';
import { rng } from '../src/rng.js';

const BASE: ModelConfig = {
  vocab_size: 64, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 16, moe_intermediate_size: 24, num_experts: 8, num_experts_per_tok: 2, norm_topk_prob: true,
  rope_theta: 10000, max_position_embeddings: 64, initializer_range: 0.1, seed: 3,
};
/** What sets each architecture apart, at a size that runs in a second. */
const ARCH: Record<string, Partial<ModelConfig>> = {
  qwen3_moe: {},
  // a shared expert, q/k/v biases, a dense first layer, a sliding window on the dense layer
  qwen2_moe: { model_type: 'qwen2_moe', shared_expert_intermediate_size: 40, decoder_sparse_step: 2, intermediate_size: 48, sliding_window: 8, sliding_layers: [0], norm_topk_prob: false },
  olmoe: { model_type: 'olmoe', head_dim: 8, norm_topk_prob: false }, // OLMoE's head_dim is hidden / heads
  mixtral: { model_type: 'mixtral', sliding_window: 8 },
};

const [out, arch = 'qwen3_moe', head] = process.argv.slice(2);
if (!out || !ARCH[arch]) throw new Error(`usage: hf-export.ts OUT_DIR [${Object.keys(ARCH).join('|')}] [tied]`);
const model = new MoeModel({ ...BASE, ...ARCH[arch], tie_word_embeddings: head === 'tied' });
const B = 2;
const S = 16;
const r = rng(1);
const tokens = Uint32Array.from({ length: B * S }, () => Math.floor(r() * 64));
// A few training steps so that every weight, norms and biases included, leaves its initial value.
const L = model.moeLayers.length;
const E = model.config.num_experts;
for (let step = 0; step < 5; step++) {
  await model.forward(tokens, B);
  await model.backward(new Float32Array(L * B * E).fill(0.01), { lmScale: 1 / (B * (S - 1)), zScale: 1e-3 });
  await model.step({ lr: 1e-2, weightDecay: 0.1 });
  model.zeroGrad();
}
await model.save(out);
const logits = await model.logits(tokens, B);
writeFileSync(join(out, 'ours.json'), JSON.stringify({ batch: B, seq: S, tokens: Array.from(tokens) }));
writeFileSync(join(out, 'ours_logits.f32'), Buffer.from(logits.buffer, logits.byteOffset, logits.byteLength));
console.log(`${arch} checkpoint and logits (${B}x${S}x${model.config.vocab_size}) written to ${out}`);
