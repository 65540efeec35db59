// Summarises the run folders of scripts/experiments.ts (OUT/seed<S>/<run>/result.json and
// metrics.jsonl), whatever finished: for every ablation of scripts/ablations.ts one Markdown table
// of mean ± std over seeds, with the differences to `micro` paired by seed, and the per-domain
// held-out perplexity of the main comparison. Reads only the folders; domain names come from them.
// Usage: node --import tsx scripts/summarize-experiments.ts [runs/experiments] [configs/experiments.json]

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { EvalResult, RunResult, StepMetrics } from '../src/results.js';
import { readStepRows } from '../src/trainer/runfolder.js';
import { ablations, type Ablation } from './ablations.js';

export interface Run {
  seed: number;
  result: RunResult;
  /** the last 20 steps' metrics */
  tail: StepMetrics[];
}

/** Every finished run under `root`, by run name. */
export function readRuns(root: string): Map<string, Run[]> {
  const byName = new Map<string, Run[]>();
  if (!existsSync(root)) return byName;
  for (const s of readdirSync(root).filter((d) => /^seed\d+$/.test(d)).sort()) {
    for (const v of readdirSync(join(root, s))) {
      const dir = join(root, s, v);
      if (!existsSync(join(dir, 'result.json'))) continue;
      const result = JSON.parse(readFileSync(join(dir, 'result.json'), 'utf8')) as RunResult;
      const tail = readStepRows(join(dir, 'metrics.jsonl')).slice(-20);
      const list = byName.get(result.name) ?? [];
      list.push({ seed: Number(s.slice(4)), result, tail });
      byName.set(result.name, list);
    }
  }
  return byName;
}

export const mean = (xs: number[]): number => xs.reduce((a, v) => a + v, 0) / xs.length;
export const std = (xs: number[]): number => (xs.length > 1 ? Math.sqrt(xs.reduce((a, v) => a + (v - mean(xs)) ** 2, 0) / (xs.length - 1)) : 0);
const ms = (xs: number[], d: number): string => (xs.length ? `${mean(xs).toFixed(d)} ± ${std(xs).toFixed(d)}` : '–');
const last = (r: Run): EvalResult => r.result.evals[r.result.evals.length - 1];
/** Mean over layers of a layer figure at the last eval. */
export const layerMean = (r: Run, f: (l: EvalResult['layers'][number]) => number): number => mean(last(r).layers.map(f));
export const mi = (r: Run): number => layerMean(r, (l) => l.mutualInformation);
const topk = (r: Run): number => layerMean(r, (l) => mean(l.topkScore));
/** Largest selection frequency of any (domain, expert), mean over layers. */
const maxFreq = (r: Run): number => layerMean(r, (l) => Math.max(...l.frequency.flat().filter(Number.isFinite)));
const lblGlobal = (r: Run): number => mean(r.tail.map((m) => mean(m.lblGlobal)));
const lblMicro = (r: Run): number => mean(r.tail.map((m) => mean(m.lblMicro)));

/** The Markdown of every ablation over the runs found under `root`. */
export function summarize(root: string, groups: Ablation[]): string {
  const runs = readRuns(root);
  const any = [...runs.values()][0]?.[0];
  if (!any) return 'No finished runs yet.\n';
  const out: string[] = [];
  const seeds = [...new Set([...runs.values()].flat().map((r) => r.seed))].sort((a, b) => a - b);
  const K = any.result.topK;
  const E = any.result.numExperts;
  out.push(`Seeds ${seeds.join(', ')}; ${any.result.stepsDone} steps per run; E = ${E}, K = ${K} (uniform frequency ${(K / E).toFixed(4)}); machine: ${any.result.machine}.`);
  out.push('Held-out figures at the last evaluation (validation split); LBL: mean over layers and over the last 20 steps. ± is the standard deviation over seeds; Δ and ratios are paired by seed against `micro`.');
  const micro = new Map((runs.get('micro') ?? []).map((r) => [r.seed, r]));
  const paired = (rs: Run[], f: (r: Run, m: Run) => number): number[] => rs.filter((r) => micro.has(r.seed)).map((r) => f(r, micro.get(r.seed)!));
  for (const g of groups) {
    out.push('', `### ${g.title}`, '');
    out.push('| run | seeds | held-out loss (nats) | Δ loss vs micro | MI(domain; expert), bits | MI / micro | max-freq / uniform | largest frequency | top-k score sum | LBL global | LBL micro | time (s) |');
    out.push('|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const name of g.runs) {
      const rs = runs.get(name) ?? [];
      if (!rs.length) {
        out.push(`| ${name} | 0 | not run yet |  |  |  |  |  |  |  |  |  |`);
        continue;
      }
      const dl = paired(rs, (r, m) => last(r).mean.loss - last(m).mean.loss);
      const lower = dl.filter((d) => d < 0).length;
      out.push(
        `| ${name} | ${rs.length} | ${ms(rs.map((r) => last(r).mean.loss), 4)} | ${name === 'micro' ? '' : `${ms(dl, 4)} (${lower} of ${dl.length} lower)`} | ` +
          `${ms(rs.map(mi), 3)} | ${name === 'micro' ? '' : ms(paired(rs, (r, m) => mi(r) / mi(m)), 2)} | ${ms(rs.map((r) => layerMean(r, (l) => l.maxOverUniform)), 2)} | ` +
          `${ms(rs.map(maxFreq), 3)} | ${ms(rs.map(topk), 3)} | ${ms(rs.map(lblGlobal), 3)} | ${ms(rs.map(lblMicro), 3)} | ${ms(rs.map((r) => r.result.seconds), 0)} |`,
      );
    }
  }
  const main = groups.find((g) => g.id === 'main');
  if (main) {
    const domains = any.result.domains;
    out.push('', '### Held-out perplexity per domain (main comparison)', '');
    out.push(`| run | ${domains.join(' | ')} | mean |`, `|---|${domains.map(() => '---|').join('')}---|`);
    for (const name of main.runs) {
      const rs = runs.get(name) ?? [];
      if (rs.length) out.push(`| ${name} | ${domains.map((d) => ms(rs.map((r) => last(r).perDomain[d].perplexity), 2)).join(' | ')} | ${ms(rs.map((r) => last(r).mean.perplexity), 2)} |`);
    }
  }
  return out.join('\n') + '\n';
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const root = process.argv[2] ?? 'runs/experiments';
  const base = JSON.parse(readFileSync(process.argv[3] ?? 'configs/experiments.json', 'utf8'));
  process.stdout.write(summarize(root, ablations(base)));
}
