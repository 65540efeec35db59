// Fault 4 of the reliability review: calls not awaited ran out of order with no error. Now calls on
// one model or layer run in the order they are made (asynchronous ones queue behind each other), a
// synchronous call made while an asynchronous one is pending fails with INVALID_STATE and changes
// nothing, and a stored forward serves one backward (fault 8's second backward).

import test from 'ava';
import { MoeLayer, MoeModel, type ModelConfig } from '../index.js';
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
const PRESSURE = new Float32Array(2 * B * 4).fill(0.01);
const OPT = { lr: 1e-2, weightDecay: 0.1 };

test('step then zeroGrad without await: zeroGrad is refused and the step uses the real gradients', async (t) => {
  for (let i = 0; i < 20; i++) {
    const a = new MoeModel(CFG);
    await a.forward(TOKENS, B);
    await a.backward(PRESSURE, { lmScale: 0.05 });
    const p = a.step(OPT);
    const err = t.throws(() => a.zeroGrad(), { code: 'INVALID_STATE' });
    t.regex(err!.message, /MoeModel\.zeroGrad was called while MoeModel\.step/);
    await p;
    const b = new MoeModel(CFG);
    await b.forward(TOKENS, B);
    await b.backward(PRESSURE, { lmScale: 0.05 });
    await b.step(OPT);
    t.deepEqual(a.getParams(), b.getParams(), 'the step saw the gradients, not zeros');
    a.dispose();
    b.dispose();
  }
});

test('Promise.all([forward, backward, step]) runs in call order, every time', async (t) => {
  const ref = new MoeModel(CFG);
  await ref.forward(TOKENS, B);
  await ref.backward(PRESSURE, { lmScale: 0.05 });
  await ref.step(OPT);
  const want = ref.getParams();
  for (let i = 0; i < 20; i++) {
    const m = new MoeModel(CFG);
    await Promise.all([m.forward(TOKENS, B), m.backward(PRESSURE, { lmScale: 0.05 }), m.step(OPT)]);
    t.deepEqual(m.getParams(), want, `run ${i}`);
    m.dispose();
  }
});

test('a synchronous setParams during a forward is refused: the forward sees the parameters it was called with', async (t) => {
  const m = new MoeModel(CFG);
  const want = (await m.forward(TOKENS, B, { store: false })).lossSum;
  const zeros = new Float32Array(m.numParameters);
  for (let i = 0; i < 50; i++) {
    const p = m.forward(TOKENS, B, { store: false });
    t.throws(() => m.setParams(zeros), { code: 'INVALID_STATE' });
    t.throws(() => m.getParams(), { code: 'INVALID_STATE' });
    t.is((await p).lossSum, want);
  }
  // Fixed facts stay readable while a call runs.
  const p = m.forward(TOKENS, B);
  t.is(m.config.num_experts, 4);
  t.is(m.device, 'cpu');
  t.true(m.numParameters > 0);
  await p;
});

test('the same holds for MoeLayer, and dispose waits for the calls made before it', async (t) => {
  const layer = new MoeLayer({ hidden_size: 8, moe_intermediate_size: 6, num_experts: 4, num_experts_per_tok: 2, seed: 3 });
  const x = Float32Array.from({ length: 2 * 4 * 8 }, (_, i) => Math.sin(i));
  const fwd = layer.forward(x, 2);
  t.throws(() => layer.zeroGrad(), { code: 'INVALID_STATE' });
  const bwd = layer.backward(new Float32Array(x.length).fill(0.1), new Float32Array(2 * 4), 0);
  layer.dispose();
  await t.notThrowsAsync(Promise.all([fwd, bwd]), 'calls made before dispose complete');
  await t.throwsAsync(layer.forward(x, 2), { code: 'INVALID_STATE' });
});

test('a second backward on one forward is refused and adds nothing (fault 8)', async (t) => {
  const m = new MoeModel(CFG);
  await m.forward(TOKENS, B);
  await m.backward(PRESSURE, { lmScale: 0.05 });
  const once = m.getGrads();
  const err = await t.throwsAsync(m.backward(PRESSURE, { lmScale: 0.05 }), { code: 'INVALID_STATE' });
  t.regex(err!.message, /since the last backward/);
  t.deepEqual(m.getGrads(), once);
  // Accumulation over micro-batches is forward, backward, forward, backward.
  await m.forward(TOKENS, B);
  await m.backward(PRESSURE, { lmScale: 0.05 });
  const twice = m.getGrads();
  t.true(twice.every((g, i) => Math.abs(g - 2 * once[i]) <= 1e-6 * Math.max(1, Math.abs(once[i]))));
});
