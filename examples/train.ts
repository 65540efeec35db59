// A complete training script: global-batch balance on the embedded corpus, a metric per step,
// then held-out evaluation, the specialisation of each layer, a checkpoint and a sample.
import { MoeModel, trainSteps, type TrainConfigInput } from 'moe-trainer';

const config: TrainConfigInput = {
  model: { hidden_size: 64, num_hidden_layers: 2, num_experts: 8, num_experts_per_tok: 2, moe_intermediate_size: 64 },
  data: { corpus: 'data', seqLen: 64, tokenizer: { kind: 'byte' } },
  batch: { ranks: 2, accumSteps: 2, microBatch: 4 },
  balance: { terms: [{ scope: 'global', coef: 0.05 }, { scope: 'micro', coef: 0.0005 }], zLoss: 1e-3 },
  optim: { lr: 3e-3, warmupSteps: 5 },
  train: { steps: 30, evalEvery: 30, evalTokens: 2048, progress: false },
};

// `force`: this script may run again into the same folder; a run folder is otherwise never replaced.
const steps = trainSteps(config, { outDir: 'runs/example', force: true });
let next = await steps.next();
while (!next.done) {
  const e = next.value; // a step's metrics, or an evaluation as it happens
  if (e.kind === 'step' && e.step % 10 === 0) console.log(`step ${e.step}: loss ${e.loss.toFixed(3)}, LBL global ${e.lblGlobal[0].toFixed(3)}`);
  if (e.kind === 'eval') console.log(`eval at step ${e.step}: ${e.mean.bitsPerByte.toFixed(3)} bits/byte`);
  next = await steps.next();
}
const run = next.value; // the RunResult: evaluations per domain and per layer
const last = run.evals[run.evals.length - 1];
for (const [domain, e] of Object.entries(last.perDomain)) console.log(`${domain}: ${e.bitsPerByte.toFixed(3)} bits/byte`);
last.layers.forEach((l, i) => console.log(`layer ${i}: MI(domain; expert) = ${l.mutualInformation.toFixed(3)} bits`));

const model = await MoeModel.fromCheckpoint(run.checkpoint!); // runs/example/checkpoints/step-00000030
const prompt = Uint32Array.from(Buffer.from('The '));
console.log('The ' + Buffer.from(await model.generate(prompt, 40, { temperature: 0.8, seed: 1 })).toString('latin1'));
