// Summarises the runs of scripts/experiments.sh: for every variant, mean ± std over seeds of the
// held-out perplexity per domain and of the routing specialisation, as Markdown tables.
// Usage: node --import tsx scripts/summarize-experiments.ts runs/experiments [run,run,...] (row order)

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RunResult, StepMetrics } from '../src/results.js';

const root = process.argv[2] ?? 'runs/experiments';
const seeds = readdirSync(root).filter((d) => d.startsWith('seed')).sort();
const byVariant = new Map<string, { result: RunResult; last: StepMetrics }[]>();
for (const s of seeds) {
  for (const v of readdirSync(join(root, s))) {
    const dir = join(root, s, v);
    if (!existsSync(join(dir, 'result.json'))) continue;
    const result = JSON.parse(readFileSync(join(dir, 'result.json'), 'utf8')) as RunResult;
    const lines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').filter((l) => !l.includes('"kind":"eval"'));
    const list = byVariant.get(result.name) ?? [];
    list.push({ result, last: JSON.parse(lines[lines.length - 1]) });
    byVariant.set(result.name, list);
  }
}
const ms = (xs: number[], d: number) => {
  const m = xs.reduce((a, v) => a + v, 0) / xs.length;
  const sd = Math.sqrt(xs.reduce((a, v) => a + (v - m) ** 2, 0) / Math.max(1, xs.length - 1));
  return `${m.toFixed(d)} ± ${sd.toFixed(d)}`;
};
const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
// Rows in the order asked for (the order of scripts/experiments.sh by default), the rest after.
const order = (process.argv[3] ?? 'micro,global,global+micro,bsz=1,bsz=2,bsz=4,bsz=8,mixed,mixed-global').split(',');
const rank = (n: string) => (order.includes(n) ? order.indexOf(n) : order.length);
const sorted = new Map([...byVariant].sort(([a], [b]) => rank(a) - rank(b)));
byVariant.clear();
sorted.forEach((v, k) => byVariant.set(k, v));
const first = [...byVariant.values()][0][0].result;
const domains = first.domains;
const out: string[] = [];
out.push(`Seeds: ${seeds.length} (${seeds.join(', ')}); ${first.stepsDone} steps per run; machine: ${first.machine}.`);
out.push('');
out.push('Held-out (validation) perplexity per domain, mean ± std over seeds:');
out.push('');
out.push(`| run | ${domains.join(' | ')} | mean loss (nats/token) |`);
out.push(`|---|${domains.map(() => '---').join('|')}|---|`);
for (const [name, runs] of byVariant) {
  const last = runs.map((r) => r.result.evals[r.result.evals.length - 1]);
  out.push(`| ${name} | ${domains.map((d) => ms(last.map((e) => e.perDomain[d].perplexity), 2)).join(' | ')} | ${ms(last.map((e) => e.mean.loss), 4)} |`);
}
out.push('');
out.push('Routing specialisation on held-out data (mean over layers) and balance at the last step, mean ± std over seeds:');
out.push('');
out.push('| run | max-freq / uniform | MI(domain; expert), bits | global imbalance (max/mean − 1) | LBL at global scope | LBL at micro scope | time per run (s) |');
out.push('|---|---|---|---|---|---|---|');
for (const [name, runs] of byVariant) {
  const last = runs.map((r) => r.result.evals[r.result.evals.length - 1]);
  out.push(
    `| ${name} | ${ms(last.map((e) => mean(e.layers.map((l) => l.maxOverUniform))), 2)} | ${ms(last.map((e) => mean(e.layers.map((l) => l.mutualInformation))), 3)} | ${ms(runs.map((r) => mean(r.last.globalImbalance)), 3)} | ${ms(runs.map((r) => mean(r.last.lblGlobal)), 3)} | ${ms(runs.map((r) => mean(r.last.lblMicro)), 3)} | ${ms(runs.map((r) => r.result.seconds), 0)} |`,
  );
}
// Paired by seed against micro balance: the seeds share initialisation and data order.
const base = byVariant.get('micro');
if (base) {
  const bySeed = (runs: { result: RunResult }[]) => new Map(runs.map((r) => [(r.result.config as { train: { seed: number } }).train.seed, r.result.evals[r.result.evals.length - 1]]));
  const micro = bySeed(base);
  out.push('');
  out.push('Paired by seed against `micro` (same initialisation and data): difference of held-out loss and ratio of mutual information, mean ± std:');
  out.push('');
  out.push('| run | Δ loss vs micro (nats/token) | MI / MI of micro | seeds with lower loss than micro |');
  out.push('|---|---|---|---|');
  for (const [name, runs] of byVariant) {
    if (name === 'micro') continue;
    const pairs = [...bySeed(runs)].filter(([s]) => micro.has(s)).map(([s, e]) => [e, micro.get(s)!] as const);
    const dl = pairs.map(([e, m]) => e.mean.loss - m.mean.loss);
    const mi = (e: (typeof pairs)[number][0]) => mean(e.layers.map((l) => l.mutualInformation));
    out.push(`| ${name} | ${ms(dl, 4)} | ${ms(pairs.map(([e, m]) => mi(e) / mi(m)), 2)} | ${dl.filter((d) => d < 0).length} of ${dl.length} |`);
  }
}
console.log(out.join('\n'));
