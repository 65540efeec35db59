// The sweep that chose the demo recipe (EXPERIMENTS.md): candidate recipes as overrides of the
// old demo config, each trained with micro and with global balance through the experiments runner
// (resumable: finished runs are kept), then one Markdown row per candidate: specialisation under
// both scopes and their ratio, balance over the global batch, held-out loss, time per run.
// Usage: node --import tsx scripts/recipe-sweep.ts [--out runs/sweep] [--seeds 0] [--only s1,s2] [--table]

import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { layerMean, mean, mi, readRuns, std, type Run } from './summarize-experiments.js';

/** The demo config before this sweep (4 sequences per micro-batch, 2 ranks x 2 accumulation steps). */
const OLD_DEMO = {
  model: { num_experts: 16, num_experts_per_tok: 2, num_hidden_layers: 4, hidden_size: 128, moe_intermediate_size: 128 },
  data: { corpus: 'data', seqLen: 128, tokenizer: { kind: 'bpe', vocabSize: 1024 } },
  batch: { ranks: 2, accumSteps: 2, microBatch: 4 },
  balance: { terms: [{ scope: 'global', coef: 0.05 }], zLoss: 0.001 },
  optim: { lr: 0.003, minLr: 0.0003, warmupSteps: 30 },
  train: { steps: 400, seed: 0, evalEvery: 100, evalTokens: 16384 },
};

interface Candidate {
  id: string;
  /** b, A (R = 1 unless given), alpha, steps, then optional model and sequence-length changes */
  b: number;
  A: number;
  coef: number;
  steps: number;
  R?: number;
  E?: number;
  K?: number;
  seqLen?: number;
}

const CANDIDATES: Candidate[] = [
  { id: 's1', b: 1, A: 16, coef: 0.05, steps: 400 },
  { id: 's2', b: 1, A: 16, coef: 0.1, steps: 400 },
  { id: 's3', b: 1, A: 16, coef: 0.2, steps: 400 },
  { id: 's4', b: 1, A: 32, coef: 0.1, steps: 300 },
  { id: 's5', b: 2, A: 16, coef: 0.1, steps: 300 },
  { id: 's6', b: 1, A: 32, coef: 0.05, steps: 400, seqLen: 64 },
  { id: 's7', b: 1, A: 16, coef: 0.02, steps: 400 },
  { id: 's8', b: 1, A: 32, coef: 0.02, steps: 400, seqLen: 64 },
];

function configOf(c: Candidate): object {
  return {
    ...OLD_DEMO,
    model: { ...OLD_DEMO.model, num_experts: c.E ?? 16, num_experts_per_tok: c.K ?? 2 },
    data: { ...OLD_DEMO.data, seqLen: c.seqLen ?? 128 },
    batch: { ranks: c.R ?? 1, accumSteps: c.A, microBatch: c.b },
    balance: { ...OLD_DEMO.balance, terms: [{ scope: 'global', coef: c.coef }] },
    train: { ...OLD_DEMO.train, steps: c.steps },
  };
}

const { values: o } = parseArgs({
  options: { out: { type: 'string', default: 'runs/sweep' }, seeds: { type: 'string', default: '0' }, only: { type: 'string' }, table: { type: 'boolean', default: false } },
});
const chosen = CANDIDATES.filter((c) => !o.only || o.only.split(',').includes(c.id));
mkdirSync(o.out!, { recursive: true });
if (!o.table) {
  for (const c of chosen) {
    const cfg = join(o.out!, `${c.id}.json`);
    writeFileSync(cfg, JSON.stringify(configOf(c), null, 1));
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/experiments.ts', '--config', cfg, '--runs', 'micro,global', '--seeds', o.seeds!, '--out', join(o.out!, c.id), '--checkpoint-every', '0'], { stdio: 'inherit' });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
}

const ms = (xs: number[], d: number): string => (xs.length > 1 ? `${mean(xs).toFixed(d)} ± ${std(xs).toFixed(d)}` : xs.length ? mean(xs).toFixed(d) : '–');
console.log('| recipe | b × A (× R) | α | E / K | S | steps | MI micro | MI global | MI global / micro | max/uniform micro → global | LBL global (micro run, global run) | Δ held-out loss global − micro | s per run |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const c of chosen) {
  const runs = readRuns(join(o.out!, c.id));
  const [m, g] = [runs.get('micro') ?? [], runs.get('global') ?? []];
  const pairs = g.map((x) => [x, m.find((y) => y.seed === x.seed)] as const).filter((p): p is readonly [Run, Run] => p[1] !== undefined);
  if (!pairs.length) {
    console.log(`| ${c.id} | not run |`);
    continue;
  }
  const lbl = (r: Run) => mean(r.tail.map((t) => mean(t.lblGlobal)));
  const mou = (r: Run) => layerMean(r, (l) => l.maxOverUniform);
  const loss = (r: Run) => r.result.evals.at(-1)!.mean.loss;
  console.log(
    `| ${c.id} | ${c.b} × ${c.A}${c.R ? ` × ${c.R}` : ''} | ${c.coef} | ${c.E ?? 16} / ${c.K ?? 2} | ${c.seqLen ?? 128} | ${c.steps} | ` +
      `${ms(pairs.map(([, y]) => mi(y)), 3)} | ${ms(pairs.map(([x]) => mi(x)), 3)} | ${ms(pairs.map(([x, y]) => mi(x) / mi(y)), 2)} | ` +
      `${ms(pairs.map(([, y]) => mou(y)), 2)} → ${ms(pairs.map(([x]) => mou(x)), 2)} | ${ms(pairs.map(([, y]) => lbl(y)), 3)}, ${ms(pairs.map(([x]) => lbl(x)), 3)} | ` +
      `${ms(pairs.map(([x, y]) => loss(x) - loss(y)), 4)} | ${ms(pairs.flatMap(([x, y]) => [x.result.seconds, y.result.seconds]), 0)} |`,
  );
}
