// End-to-end CPU training step of the demo model through the Node binding, the path a user runs:
// forward -> balance engine (global scope) -> backward -> AdamW, on one micro-batch of the demo
// shape. Prints step time, tokens/s and the split between forward, backward and optimiser.
// Run: npm run bench (after the Rust layer benchmark).

import { MoeModel } from '../index.js';
import { Balancer, SOLO } from '../src/balance/index.js';
import { DEMO_MICRO_BATCH as B, DEMO_MODEL, DEMO_SEQ_LEN as S } from '../src/presets.js';
import { rng } from '../src/rng.js';

const model = new MoeModel(DEMO_MODEL);
const L = DEMO_MODEL.num_hidden_layers;
const E = DEMO_MODEL.num_experts;
const r = rng(0);
const tokens = Uint32Array.from({ length: B * S }, () => Math.floor(r() * 256));
const balancer = new Balancer({ terms: [{ scope: 'global', coef: 0.01 }], zLoss: 1e-3 }, { layers: L, experts: E, topK: DEMO_MODEL.num_experts_per_tok, seqsPerMicro: B, accumSteps: 1 }, SOLO);
const t = { fwd: 0, bwd: 0, opt: 0 };
const now = () => performance.now();
const WARMUP = 2;
const STEPS = 8;
for (let step = 0; step < WARMUP + STEPS; step++) {
  const t0 = now();
  const out = await model.forward(tokens, B);
  await balancer.beginStep(B * (S - 1));
  const { pressure, zScale } = await balancer.microStep(out);
  const t1 = now();
  await model.backward(pressure, { lmScale: 1 / (B * (S - 1)), zScale });
  await balancer.endStep();
  const t2 = now();
  await model.step({ lr: 1e-3, weightDecay: 0.1, maxGradNorm: 1 });
  model.zeroGrad();
  const t3 = now();
  if (step >= WARMUP) [t.fwd, t.bwd, t.opt] = [t.fwd + t1 - t0, t.bwd + t2 - t1, t.opt + t3 - t2];
}
const stepMs = (t.fwd + t.bwd + t.opt) / STEPS;
console.log(`\nTraining step, demo model (${(model.numParameters / 1e6).toFixed(2)} M parameters, L=${L} E=${E} K=${DEMO_MODEL.num_experts_per_tok}), micro-batch ${B} x ${S} tokens, CPU:`);
console.log(`  step ${stepMs.toFixed(1)} ms = forward ${(t.fwd / STEPS).toFixed(1)} + backward ${(t.bwd / STEPS).toFixed(1)} + AdamW ${(t.opt / STEPS).toFixed(1)} ms`);
console.log(`  ${((B * S) / (stepMs / 1000)).toFixed(0)} tokens/s`);
model.dispose();
