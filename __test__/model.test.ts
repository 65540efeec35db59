// The napi MoeModel as a TypeScript trainer uses it: Hugging Face config, forward statistics per
// layer and sequence, the balance engine over L layers, checkpoints, generation, and bad input.

import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel, type ModelConfig } from '../index.js';
import { Balancer, SOLO } from '../src/balance/index.js';
import { rng } from '../src/rng.js';

const CFG: ModelConfig = {
  vocab_size: 32, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 4, moe_intermediate_size: 12, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true,
  max_position_embeddings: 64, initializer_range: 0.1, seed: 1,
};
const B = 2;
const S = 16;
const r = rng(5);
const TOKENS = Uint32Array.from({ length: B * S }, () => Math.floor(r() * 32));
const L = CFG.num_hidden_layers;
const E = CFG.num_experts;

test('forward returns per-layer, per-sequence statistics and the summed loss', async (t) => {
  const m = new MoeModel(CFG);
  const mask = new Uint8Array(B * S).fill(1);
  mask[S + 5] = 0; // token 5 of sequence 1 is no target: position 4 does not count
  const out = await m.forward(TOKENS, B, { mask });
  t.deepEqual(Array.from(out.validTokens), [S - 1, S - 2]);
  t.is(out.counts.length, L * B * E);
  t.is(out.zSums.length, L * B);
  for (let l = 0; l < L; l++) {
    const n = out.counts.subarray(l * B * E, (l + 1) * B * E).reduce((a, v) => a + v, 0);
    t.is(n, CFG.num_experts_per_tok * (2 * S - 3));
  }
  t.true(Math.abs(out.lossSum - (out.lossSums[0] + out.lossSums[1])) < 1e-3);
  t.true(Math.abs(out.lossSum / (2 * S - 3) - Math.log(32)) < 0.5, 'an untrained model is near uniform');
  t.is((await m.logits(TOKENS, B)).length, B * S * 32);
});

test('training with the global balance engine lowers the loss', async (t) => {
  const m = new MoeModel(CFG);
  const bal = new Balancer({ terms: [{ scope: 'global', coef: 0.01 }], zLoss: 1e-3 }, { layers: L, experts: E, topK: 2, seqsPerMicro: B, accumSteps: 1 }, SOLO);
  const losses: number[] = [];
  for (let step = 0; step < 30; step++) {
    await bal.beginStep(B * (S - 1));
    const out = await m.forward(TOKENS, B);
    const { pressure, zScale } = await bal.microStep(out);
    await m.backward(pressure, { lmScale: 1 / (B * (S - 1)), zScale });
    const st = await bal.endStep();
    t.is(st.lbl.global.length, L);
    await m.step({ lr: 1e-2, weightDecay: 0.1, maxGradNorm: 1, schedule: { warmupSteps: 3, totalSteps: 30, minLr: 1e-3 } });
    m.zeroGrad();
    losses.push(out.lossSum / (B * (S - 1)));
  }
  t.log(`loss ${losses[0].toFixed(3)} -> ${losses.at(-1)!.toFixed(3)}`);
  t.true(losses.at(-1)! < 0.5 * losses[0]);
  t.is(m.optimizerStep, 30);
});

test('gradients read and write back as one flat array', async (t) => {
  const m = new MoeModel(CFG);
  await m.forward(TOKENS, B);
  await m.backward(new Float32Array(L * B * E), { lmScale: 0.1 });
  const g = m.getGrads();
  t.is(g.length, m.numParameters);
  t.deepEqual(m.getGrad('model.layers.1.mlp.gate.weight').length, E * CFG.hidden_size);
  m.setGrads(g.map((v) => 2 * v));
  t.deepEqual(m.getGrads(), g.map((v) => 2 * v));
  // Into a reused buffer: the same values, the same array back; a wrong length is refused.
  const buf = new Float32Array(m.numParameters);
  t.is(m.getGrads(buf), buf);
  t.deepEqual(buf, g.map((v) => 2 * v));
  t.is((t.throws(() => m.getGrads(new Float32Array(3))) as { code?: string }).code, 'SHAPE_MISMATCH');
  t.truthy(m.parameters().find((p) => p.name === 'model.layers.0.self_attn.q_norm.weight' && p.shape[0] === 4));
});

test('checkpoints round-trip through safetensors with the trainer state', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-model-'));
  const m = new MoeModel(CFG);
  await m.forward(TOKENS, B);
  await m.backward(new Float32Array(L * B * E), { lmScale: 0.1 });
  await m.step({ lr: 1e-2 });
  await m.save(dir, JSON.stringify({ step: 1 }));
  const back = await MoeModel.fromCheckpoint(dir);
  t.is(back.trainerState, '{"step":1}');
  t.is(back.optimizerStep, 1);
  t.deepEqual(await back.logits(TOKENS, B), await m.logits(TOKENS, B));
  const other = new MoeModel({ ...CFG, seed: 9 });
  t.is(await other.loadCheckpoint(dir), '{"step":1}');
  t.deepEqual(await other.logits(TOKENS, B), await m.logits(TOKENS, B));
  writeFileSync(join(dir, 'model.safetensors'), 'garbage');
  const before = await other.logits(TOKENS, B);
  await t.throwsAsync(other.loadCheckpoint(dir), { code: 'CHECKPOINT_CORRUPT' });
  t.deepEqual(await other.logits(TOKENS, B), before);
  await t.throwsAsync(MoeModel.fromCheckpoint(join(dir, 'nope')), { code: 'CHECKPOINT_MISSING' });
  rmSync(dir, { recursive: true });
});

test('generate continues a prompt, greedy or seeded', async (t) => {
  const m = new MoeModel(CFG);
  const greedy = await m.generate(Uint32Array.of(1, 2, 3), 6, { temperature: 0 });
  t.is(greedy.length, 6);
  t.deepEqual(await m.generate(Uint32Array.of(1, 2, 3), 6, { temperature: 0 }), greedy);
  const a = await m.generate(Uint32Array.of(4), 8, { temperature: 1, topK: 5, seed: 3 });
  t.deepEqual(await m.generate(Uint32Array.of(4), 8, { temperature: 1, topK: 5, seed: 3 }), a);
  await t.throwsAsync(m.generate(Uint32Array.of(99), 2), { code: 'TOKEN_OUT_OF_RANGE' });
  await t.throwsAsync(m.generate(Uint32Array.of(1), 2, { temprature: 1 } as never), { code: 'INVALID_CONFIG' });
});

test('a non-finite forward names the layer and leaves no activations to backpropagate', async (t) => {
  const m = new MoeModel(CFG);
  // Every expert of layer 1 overflows (silu(g) * u with g, u ~ 1e38), whichever the router picks.
  for (let e = 0; e < E; e++) {
    for (const kind of ['gate_proj', 'up_proj']) {
      const name = `model.layers.1.mlp.experts.${e}.${kind}.weight`;
      m.setParameter(name, new Float32Array(m.getParameter(name).length).fill(1e38));
    }
  }
  const err = await t.throwsAsync(m.forward(TOKENS, B), { code: 'NON_FINITE' });
  t.regex(err!.message, /layer 1/);
  await t.throwsAsync(m.backward(new Float32Array(L * B * E), { lmScale: 1 }), { code: 'INVALID_STATE' });
});

test('bad configs and inputs fail with stable codes', async (t) => {
  t.throws(() => new MoeModel({ ...CFG, num_key_value_heads: 3 }), { code: 'INVALID_CONFIG', message: /multiple of num_key_value_heads/ });
  t.throws(() => new MoeModel({ ...CFG, head_dim: 5 }), { code: 'INVALID_CONFIG' });
  t.throws(() => new MoeModel({ ...CFG, vocab_size: 0 }), { code: 'INVALID_CONFIG' });
  const m = new MoeModel(CFG);
  await t.throwsAsync(m.backward(new Float32Array(L * B * E), { lmScale: 1 }), { code: 'INVALID_STATE' });
  await t.throwsAsync(m.forward(Uint32Array.of(1, 2, 40), 1), { code: 'TOKEN_OUT_OF_RANGE' });
  await t.throwsAsync(m.forward(TOKENS, 3), { code: 'SHAPE_MISMATCH' });
  await m.forward(TOKENS, B);
  await t.throwsAsync(m.backward(new Float32Array(3), { lmScale: 1 }), { code: 'SHAPE_MISMATCH' });
  await t.throwsAsync(m.backward(new Float32Array(L * B * E), { lmScale: NaN }), { code: 'NON_FINITE' });
  m.dispose();
  await t.throwsAsync(m.forward(TOKENS, B), { code: 'INVALID_STATE' });
});
