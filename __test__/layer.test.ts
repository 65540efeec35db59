// The napi MoeLayer as a TypeScript user sees it: Hugging Face parameter names, Promises, gradients,
// AdamW, and every bad input rejected with a stable `code` and no change to the layer.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { MoeLayer } from '../index.js';
import { CFG, D, randn } from './helpers.js';

const E = CFG.num_experts;
const F = CFG.moe_intermediate_size;

test('config is validated with Hugging Face field names', (t) => {
  const layer = new MoeLayer(CFG);
  t.deepEqual(layer.config, { ...CFG, norm_topk_prob: true, shared_expert_intermediate_size: 0 });
  t.is(layer.numParameters, E * D + 3 * E * F * D);
  const bad = (cfg: unknown, what: RegExp) => {
    const err = t.throws(() => new MoeLayer(cfg as never), { code: 'INVALID_CONFIG' });
    t.regex(err!.message, what);
  };
  bad({ ...CFG, num_experts_per_tok: 5 }, /must not exceed num_experts/);
  bad({ ...CFG, hidden_size: 0 }, /hidden_size must be >= 1/);
  bad({ ...CFG, hidden_size: 2.5 }, /hidden_size|integer|floating/);
  bad({ ...CFG, hiddenSize: 8 }, /unknown field `hiddenSize`/);
  const { num_experts: _, ...missing } = CFG;
  bad(missing, /missing field `num_experts`/);
});

test('parameters are addressed by Hugging Face names, row-major', (t) => {
  const layer = new MoeLayer(CFG);
  const params = layer.parameters();
  t.deepEqual(params[0], { name: 'gate.weight', shape: [E, D] });
  t.truthy(params.find((p) => p.name === 'experts.3.gate_proj.weight' && p.shape.join() === `${F},${D}`));
  t.truthy(params.find((p) => p.name === 'experts.0.up_proj.weight' && p.shape.join() === `${F},${D}`));
  t.truthy(params.find((p) => p.name === 'experts.2.down_proj.weight' && p.shape.join() === `${D},${F}`));
  t.is(params.length, 1 + 3 * E);
  const w = randn(F * D, 5);
  layer.setParameter('experts.1.up_proj.weight', w);
  t.deepEqual(layer.getParameter('experts.1.up_proj.weight'), w);
  t.throws(() => layer.setParameter('experts.1.up_proj.weight', new Float32Array(3)), { code: 'SHAPE_MISMATCH' });
  t.throws(() => layer.getParameter('experts.9.up_proj.weight'), { code: 'UNKNOWN_PARAMETER' });
  const nan = w.slice();
  nan[7] = NaN;
  t.throws(() => layer.setParameter('experts.1.up_proj.weight', nan), { code: 'NON_FINITE' });
  t.deepEqual(layer.getParameter('experts.1.up_proj.weight'), w, 'a refused write changes nothing');
});

test('forward and backward return Promises; gradients read by name agree with the flat buffer', async (t) => {
  const layer = new MoeLayer(CFG);
  const x = randn(2 * 4 * D, 1);
  const pending = layer.forward(x, 2);
  t.true(pending instanceof Promise);
  const { output, stats } = await pending;
  t.is(output.length, x.length);
  t.deepEqual(Array.from(stats.validTokens), [4, 4]);
  t.is(stats.counts.reduce((a, v) => a + v, 0), 8 * CFG.num_experts_per_tok);
  const dx = await layer.backward(randn(x.length, 2), new Float32Array(2 * E).fill(0.01), 0.001);
  t.is(dx.length, x.length);
  const flat = layer.getGrads();
  let off = 0;
  for (const p of layer.parameters()) {
    const n = p.shape[0] * p.shape[1];
    t.deepEqual(layer.getGrad(p.name), flat.subarray(off, off + n));
    off += n;
  }
  t.is(off, flat.length);
  layer.zeroGrad();
  t.true(layer.getGrads().every((g) => g === 0));
});

test('AdamW steps fit a target: the loss falls', async (t) => {
  const layer = new MoeLayer({ ...CFG, initializer_range: 0.1 });
  const x = randn(16 * D, 3);
  const y = randn(16 * D, 4).map((v) => 0.5 * v);
  const mse = (out: Float32Array) => out.reduce((a, v, i) => a + (v - y[i]) ** 2, 0) / out.length;
  let first = 0;
  let last = 0;
  for (let step = 0; step < 60; step++) {
    const { output } = await layer.forward(x, 1);
    last = mse(output);
    if (step === 0) first = last;
    layer.zeroGrad();
    await layer.backward(output.map((v, i) => (2 * (v - y[i])) / output.length), new Float32Array(E), 0);
    await layer.step({ lr: 0.01, weightDecay: 0.0, maxGradNorm: 1 });
  }
  t.log(`MSE ${first.toFixed(4)} -> ${last.toFixed(4)}`);
  t.true(last < 0.5 * first);
});

test('bad calls reject with stable codes and leave the layer as it was', async (t) => {
  const layer = new MoeLayer(CFG);
  const before = layer.getParameter('gate.weight');
  const x = randn(4 * D, 1);
  await t.throwsAsync(layer.backward(x, new Float32Array(E), 0), { code: 'INVALID_STATE' });
  await t.throwsAsync(layer.forward(x.subarray(1), 1), { code: 'SHAPE_MISMATCH' });
  await t.throwsAsync(layer.forward(x, 3), { code: 'SHAPE_MISMATCH' });
  await t.throwsAsync(layer.forward(x, 1, { mask: new Uint8Array(3) }), { code: 'SHAPE_MISMATCH' });
  await t.throwsAsync(layer.forward(x.map((v, i) => (i === 5 ? Infinity : v)), 1), { code: 'NON_FINITE' });
  await layer.forward(x, 1);
  await t.throwsAsync(layer.backward(x, new Float32Array(E - 1), 0), { code: 'SHAPE_MISMATCH' });
  await t.throwsAsync(layer.backward(x, new Float32Array(E).fill(NaN), 0), { code: 'NON_FINITE' });
  await t.throwsAsync(layer.step({ lr: -1 }), { code: 'INVALID_CONFIG' });
  await t.throwsAsync(layer.step({ lr: 1, beta: 0.9 } as never), { code: 'INVALID_CONFIG' });
  t.throws(() => layer.setGrads(new Float32Array(layer.numParameters).fill(NaN)), { code: 'NON_FINITE' });
  t.throws(() => layer.setGrads(new Float32Array(2)), { code: 'SHAPE_MISMATCH' });
  t.deepEqual(layer.getParameter('gate.weight'), before);
  layer.dispose();
  t.throws(() => layer.getParameter('gate.weight'), { code: 'INVALID_STATE' });
  await t.throwsAsync(layer.forward(x, 1), { code: 'INVALID_STATE' });
});

test('a Rust panic becomes an INTERNAL error, not a crash', (t) => {
  // A failpoint makes the core panic inside a real forward (test hooks stay out of the public API).
  const script = `
    import { MoeLayer } from './index.js';
    const l = new MoeLayer({ hidden_size: 8, moe_intermediate_size: 4, num_experts: 4, num_experts_per_tok: 2 });
    try { await l.forward(new Float32Array(16), 2); console.log('no error'); }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
  const env = { ...process.env, MOE_FAILPOINTS: 'layer.forward=panic(deliberate test panic)' };
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env });
  t.is(r.status, 0, r.stderr);
  const err = JSON.parse(r.stdout.trim()) as { code: string; message: string };
  t.is(err.code, 'INTERNAL');
  t.regex(err.message, /deliberate test panic/);
});

test('a process using the addon exits cleanly', (t) => {
  const script = `
    import { MoeLayer } from './index.js';
    const l = new MoeLayer({ hidden_size: 8, moe_intermediate_size: 4, num_experts: 4, num_experts_per_tok: 2 });
    const { output } = await l.forward(new Float32Array(64).fill(0.5), 2);
    await l.backward(output, new Float32Array(8), 0);
    console.log('done', output.length);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.signal, null, r.stderr);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), 'done 64');
});
