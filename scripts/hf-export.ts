// Writes a small trained checkpoint and our logits on a batch, for scripts/hf_compat.py to compare
// with Hugging Face transformers. Usage: node --import tsx scripts/hf-export.ts OUT_DIR [tied]

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import { rng } from '../src/rng.js';

const [out, tied] = [process.argv[2], process.argv[3] === 'tied'];
if (!out) throw new Error('usage: hf-export.ts OUT_DIR [tied]');
const model = new MoeModel({
  vocab_size: 64, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 16, moe_intermediate_size: 24, num_experts: 8, num_experts_per_tok: 2, norm_topk_prob: true,
  rope_theta: 10000, max_position_embeddings: 64, tie_word_embeddings: tied, initializer_range: 0.1, seed: 3,
});
const B = 2;
const S = 16;
const r = rng(1);
const tokens = Uint32Array.from({ length: B * S }, () => Math.floor(r() * 64));
// A few training steps so that every weight, norms included, leaves its initial value.
const L = model.config.num_hidden_layers;
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
console.log(`checkpoint and logits (${B}x${S}x${model.config.vocab_size}) written to ${out}`);
