// One process, one measurement: the training step (forward, backward with global-batch balance,
// AdamW) of the model in MODEL (JSON) on one sequence of SEQ tokens, with activation recomputation
// RECOMPUTE and GEMM input precision PRECISION (f32 | bf16), STEPS timed steps after one warm-up. Prints one JSON line: the median step time (s)
// and the parameter count. Run by benches/scale.ts, one process per measurement, under
// /usr/bin/time for its peak resident memory.

import { MoeModel, type ModelConfig } from '../index.js';
import { Balancer, LocalGroup } from '../src/balance/index.js';
import { rng } from '../src/rng.js';

const model = JSON.parse(process.env.MODEL!) as ModelConfig;
const [seq, steps] = [Number(process.env.SEQ), Number(process.env.STEPS ?? 3)];
const recompute = (process.env.RECOMPUTE ?? 'none') as 'none' | 'attention' | 'full';
const m = new MoeModel({ ...model, max_position_embeddings: seq }, { device: 'cpu' });
m.setRecompute(recompute);
m.setPrecision((process.env.PRECISION ?? 'f32') as 'f32' | 'bf16');
const r = rng(0);
const times: number[] = [];
for (let i = 0; i < steps + 1; i++) {
  const tokens = Uint32Array.from({ length: seq }, () => Math.floor(r() * model.vocab_size));
  const t0 = performance.now();
  const bal = new Balancer({ terms: [{ scope: 'global', coef: 1e-3 }], zLoss: 1e-3 }, { layers: m.moeLayers.length, experts: model.num_experts, topK: model.num_experts_per_tok, seqsPerMicro: 1, accumSteps: 1 }, new LocalGroup(1).comm(0));
  await bal.beginStep(seq - 1);
  const out = await m.forward(tokens, 1);
  const { pressure, zScale } = await bal.microStep(out);
  await m.backward(pressure, { lmScale: 1 / bal.globalTokens, zScale });
  await bal.endStep();
  await m.step({ lr: 1e-4, weightDecay: 0.1, maxGradNorm: 1 });
  m.zeroGrad();
  if (i > 0) times.push((performance.now() - t0) / 1000);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({ seconds: times[times.length >> 1], params: m.numParameters }));
