// The model and the MoE layer on the GPU through the binding: training steps (loss, statistics,
// gradients, AdamW) against the same steps on the CPU, checkpoints written from the device, and the
// device choice. Runs on any GPU; CI runs it on Mesa lavapipe (MOE_GPU_ADAPTER=software). Without an
// adapter every test prints SKIPPED loudly, and fails instead when MOE_REQUIRE_GPU=1.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeLayer, MoeModel, type ModelConfig } from '../index.js';
import { rng } from '../src/rng.js';
import { readStepRows } from '../src/trainer/runfolder.js';
import { CFG as LAYER_CFG, randn } from './helpers.js';

const CFG: ModelConfig = {
  vocab_size: 40, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 4, moe_intermediate_size: 12, num_experts: 6, num_experts_per_tok: 2, norm_topk_prob: true,
  max_position_embeddings: 64, initializer_range: 0.1, seed: 3,
};
const B = 2;
const S = 9;
const r = rng(8);
const TOKENS = Uint32Array.from({ length: B * S }, () => Math.floor(r() * CFG.vocab_size));
const PRESSURE = Float32Array.from({ length: CFG.num_hidden_layers * B * CFG.num_experts }, () => 0.05 * (r() - 0.5));
const OPT = { lr: 1e-2, weightDecay: 0.1, maxGradNorm: 0.5 };

/** `make()`, an object on the GPU, or null after a loud SKIPPED (a failure when MOE_REQUIRE_GPU=1). */
function onGpu<T>(t: ExecutionContext, make: () => T): T | null {
  try {
    return make();
  } catch (e) {
    if ((e as { code?: string }).code !== 'NO_DEVICE' || process.env.MOE_REQUIRE_GPU === '1') throw e;
    const line = `*** SKIPPED ${t.title}: ${(e as Error).message} ***`;
    console.error(`\n${line}\n`);
    t.log(line);
    t.pass();
    return null;
  }
}

/** max |a - b| / max |b| */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 1e-30;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

test('a training step on the GPU matches the CPU: loss, statistics, gradients, parameters', async (t) => {
  const gpu = onGpu(t, () => new MoeModel(CFG, { device: 'gpu' }));
  if (!gpu) return;
  const cpu = new MoeModel(CFG, { device: 'cpu' });
  t.is(gpu.device, 'gpu');
  t.is(cpu.device, 'cpu');
  const mask = new Uint8Array(B * S).fill(1);
  mask[4] = 0;
  for (let step = 0; step < 2; step++) {
    const [g, c] = [await gpu.forward(TOKENS, B, { mask }), await cpu.forward(TOKENS, B, { mask })];
    t.true(Math.abs(g.lossSum - c.lossSum) / c.lossSum < 1e-4, `loss ${g.lossSum} vs ${c.lossSum}`);
    t.deepEqual(Array.from(g.counts), Array.from(c.counts), 'same experts chosen');
    t.deepEqual(Array.from(g.validTokens), Array.from(c.validTokens));
    t.true(relErr(g.scoreSums, c.scoreSums) < 1e-4);
    t.true(relErr(g.zSums, c.zSums) < 1e-4);
    const scales = { lmScale: 1 / 15, zScale: 1e-3 };
    await gpu.backward(PRESSURE, scales);
    await cpu.backward(PRESSURE, scales);
    t.true(relErr(gpu.getGrads(), cpu.getGrads()) < 1e-3, `gradients differ by ${relErr(gpu.getGrads(), cpu.getGrads())}`);
    const [ng, nc] = [await gpu.step(OPT), await cpu.step(OPT)];
    t.true(Math.abs(ng - nc) / nc < 1e-4, `grad norm ${ng} vs ${nc}`);
    gpu.zeroGrad();
    cpu.zeroGrad();
  }
  t.true(relErr(gpu.getParams(), cpu.getParams()) < 1e-4);
  t.is(gpu.optimizerStep, 2);
});

test('a MoeLayer on the GPU matches one on the CPU: output, statistics, dx, gradients, parameters', async (t) => {
  const gpu = onGpu(t, () => new MoeLayer(LAYER_CFG, { device: 'gpu' }));
  if (!gpu) return;
  const cpu = new MoeLayer(LAYER_CFG, { device: 'cpu' });
  t.is(gpu.device, 'gpu');
  t.is(cpu.device, 'cpu');
  const [b, s, d, e] = [2, 5, LAYER_CFG.hidden_size, LAYER_CFG.num_experts];
  const [x, dOut] = [randn(b * s * d, 21), randn(b * s * d, 22)];
  const pressure = randn(b * e, 23).map((v) => 0.1 * v);
  const mask = new Uint8Array(b * s).fill(1);
  mask[3] = 0;
  const worst: Record<string, number> = {};
  const close = (what: string, got: Float32Array, want: Float32Array, tol: number) => {
    const err = relErr(got, want);
    worst[what] = Math.max(worst[what] ?? 0, err);
    t.true(err < tol, `${what} differs by ${err}`);
  };
  for (let step = 0; step < 2; step++) {
    const [g, c] = [await gpu.forward(x, b, { mask }), await cpu.forward(x, b, { mask })];
    t.deepEqual(Array.from(g.stats.counts), Array.from(c.stats.counts), 'same experts chosen');
    t.deepEqual(Array.from(g.stats.validTokens), Array.from(c.stats.validTokens));
    close('output', g.output, c.output, 1e-4);
    close('scoreSums', g.stats.scoreSums, c.stats.scoreSums, 1e-4);
    close('zSums', g.stats.zSums, c.stats.zSums, 1e-4);
    close('dx', await gpu.backward(dOut, pressure, 0.05), await cpu.backward(dOut, pressure, 0.05), 1e-4);
    close('grads', gpu.getGrads(), cpu.getGrads(), 1e-3);
    const [ng, nc] = [await gpu.step(OPT), await cpu.step(OPT)];
    t.true(Math.abs(ng - nc) / nc < 1e-4, `grad norm ${ng} vs ${nc}`);
    gpu.zeroGrad();
    cpu.zeroGrad();
  }
  // A weight whose gradient is rounding noise may still move by up to lr on either device.
  for (const { name } of cpu.parameters()) close('params', gpu.getParameter(name), cpu.getParameter(name), 1e-3);
  t.log('max rel |Δ|:', Object.entries(worst).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(', '));
});

test('a checkpoint written from the GPU loads on the CPU with the same logits', async (t) => {
  const gpu = onGpu(t, () => new MoeModel(CFG, { device: 'gpu' }));
  if (!gpu) return;
  await gpu.forward(TOKENS, B);
  await gpu.backward(PRESSURE, { lmScale: 0.1 });
  await gpu.step(OPT);
  const dir = mkdtempSync(join(tmpdir(), 'moe-gpu-'));
  try {
    await gpu.save(dir, '{}');
    const back = await MoeModel.fromCheckpoint(dir, { device: 'cpu' });
    t.is(back.optimizerStep, 1);
    t.true(relErr(await gpu.logits(TOKENS, B), await back.logits(TOKENS, B)) < 1e-4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('parameters written from JS reach the device before its next step', async (t) => {
  const gpu = onGpu(t, () => new MoeModel(CFG, { device: 'gpu' }));
  if (!gpu) return;
  const cpu = new MoeModel(CFG, { device: 'cpu' });
  const p = cpu.getParams().map((x) => x * 0.5);
  gpu.setParams(p);
  cpu.setParams(p);
  t.true(relErr(await gpu.logits(TOKENS, B), await cpu.logits(TOKENS, B)) < 1e-4);
});

test('auto never picks a software adapter, and a bad device name is refused', (t) => {
  const m = new MoeModel(CFG, { device: 'auto' });
  if (process.env.MOE_GPU_ADAPTER === 'software') t.is(m.device, 'cpu');
  const err = t.throws(() => new MoeModel(CFG, { device: 'tpu' as never }));
  t.is((err as { code?: string }).code, 'INVALID_CONFIG');
});

test('the trainer runs the same steps on the GPU: losses, gradient all-reduce over 2 ranks, checkpoint', async (t) => {
  const { train } = await import('../src/trainer/train.js');
  if (!onGpu(t, () => new MoeModel(CFG, { device: 'gpu' }))) return;
  const cfg = (device: 'gpu' | 'cpu') => ({
    model: { hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2 },
    data: { seqLen: 16, tokenizer: { kind: 'byte' } },
    batch: { ranks: 2, accumSteps: 2, microBatch: 1 },
    balance: { terms: [{ scope: 'global', coef: 0.05 }], zLoss: 1e-3, lossFree: { scope: 'global', rate: 1e-2 } },
    optim: { lr: 1e-2, warmupSteps: 1 },
    train: { steps: 3, evalEvery: 3, evalTokens: 64, progress: false, seed: 2, device },
  });
  const runs: number[][] = [];
  for (const device of ['gpu', 'cpu'] as const) {
    const dir = mkdtempSync(join(tmpdir(), `moe-train-${device}-`));
    try {
      await train(cfg(device), { outDir: dir });
      runs.push(readStepRows(join(dir, 'metrics.jsonl')).map((r) => r.loss));
      const back = await MoeModel.fromCheckpoint(join(dir, 'checkpoints', 'step-' + String(cfg(device).train.steps).padStart(8, '0')), { device: 'cpu' });
      t.is(back.optimizerStep, 3);
      t.true(back.routerBias.some((b) => b !== 0), 'the loss-free biases were saved');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  t.log(`losses gpu ${runs[0].map((l) => l.toFixed(5))} cpu ${runs[1].map((l) => l.toFixed(5))}`);
  t.true(relErr(runs[0], runs[1]) < 1e-4, 'same losses on both devices');
});
