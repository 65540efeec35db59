// `moe compare`: several balance configurations trained on the same data with the same seed, one
// after the other or a few at once, then one table of per-domain perplexity and routing specialisation.

import { join } from 'node:path';
import { MoeTrainerError } from './errors.js';
import type { RunResult } from './results.js';
import { train, type RunOptions } from './trainer/train.js';
import { datasetOf, parseTrainConfig, withCheckpointModel } from './trainer/config.js';

/**
 * A named variant of the base config:
 * - `micro`, `dp`, `global`, `global-exact`, `sequence`, `shuffle`: one LBL term at that scope;
 * - `global+micro`: global plus micro at 1% of the coefficient (the paper's speed fix);
 * - `bsz=N`: balanceSequences N (through the buffer when N > R b); `bsz=N-exact`: each group of N
 *   counted in full from a statistics pre-pass (no buffer);
 * - `mixed`, `mixed-global`: micro or global balance on mixed-domain micro-batches (the control);
 * - `micro-to-global`, `global-to-micro`: a switch of scope mid-training, at step `:S` when given
 *   (`micro-to-global:150`), else at half the steps (balance.phases);
 * - `free-<scope>`: auxiliary-loss-free balancing at that scope instead of loss terms;
 * - any of these with `@alpha`: that coefficient instead of the base config's (`micro@0.0125`).
 */
export function variant(base: Record<string, unknown>, fullName: string): Record<string, unknown> {
  const cfg = parseTrainConfig(base);
  const [name, coefText, extra] = fullName.split('@');
  const coef = coefText === undefined ? (cfg.balance.terms[0]?.coef ?? 0.05) : Number(coefText);
  if (extra !== undefined || !(coef >= 0)) throw new MoeTrainerError('INVALID_CONFIG', `run "${fullName}": expected NAME@alpha with alpha >= 0`);
  const free = /^free-(sequence|micro|dp|global|global-exact)$/.exec(name);
  const lossFree = free ? { scope: free[1], rate: cfg.balance.lossFree?.rate ?? 1e-3 } : undefined;
  const sw = /^(micro|global)-to-(micro|global)(?::(\d+))?$/.exec(name);
  const switchStep = sw ? (sw[3] === undefined ? Math.floor(cfg.train.steps / 2) : Number(sw[3])) : 0;
  const terms = (() => {
    if (['micro', 'dp', 'global', 'global-exact', 'sequence', 'shuffle'].includes(name)) return [{ scope: name, coef }];
    if (name === 'global+micro') return [{ scope: 'global', coef }, { scope: 'micro', coef: coef / 100 }];
    if (name === 'mixed') return [{ scope: 'micro', coef }];
    if (name === 'mixed-global') return [{ scope: 'global', coef }];
    if (sw && sw[1] !== sw[2]) {
      if (!(switchStep >= 1 && switchStep < cfg.train.steps)) throw new MoeTrainerError('INVALID_CONFIG', `run "${fullName}": the switch step must lie in 1 .. ${cfg.train.steps - 1}`);
      return [{ scope: sw[1], coef }];
    }
    const m = /^bsz=(\d+)(-exact)?$/.exec(name);
    if (m) return [{ balanceSequences: Number(m[1]), coef, ...(m[2] ? { exact: true } : {}) }];
    if (lossFree) return [];
    throw new MoeTrainerError(
      'INVALID_CONFIG',
      `unknown run "${fullName}" (micro, dp, global, global-exact, sequence, shuffle, global+micro, bsz=N, bsz=N-exact, mixed, mixed-global, micro-to-global[:S], global-to-micro[:S], free-<scope>, each optionally @alpha)`,
    );
  })();
  const phases = sw ? [{ step: switchStep, terms: [{ scope: sw[2], coef }] }] : cfg.balance.phases;
  const data = { ...((base.data as object) ?? {}), mixedMicroBatches: name.startsWith('mixed') };
  // free-<scope>: auxiliary-loss-free balancing at that scope instead of the loss terms.
  return { ...base, data, balance: { ...cfg.balance, terms, lossFree: lossFree ?? cfg.balance.lossFree, phases } };
}

/** Options of `compare`: those of `train`, and how many runs train at once. */
export interface CompareOptions extends Omit<RunOptions, 'outDir' | 'name'> {
  /**
   * runs trained concurrently (default 1). The native steps run on the libuv pool, so two small runs
   * use two cores where one run of the demo's size keeps one busy. Concurrent runs show no progress
   * bar; their log lines carry the run's name. Results do not depend on it.
   */
  parallel?: number;
}

export async function compare(base: Record<string, unknown>, names: string[], outDir: string, opts: CompareOptions = {}): Promise<{ runs: RunResult[]; dirs: string[] }> {
  const { parallel = 1, ...runOpts } = opts;
  if (!(Number.isInteger(parallel) && parallel >= 1)) throw new MoeTrainerError('INVALID_ARGUMENT', `--parallel: expected an integer >= 1, got ${parallel}`);
  const configs = names.map((name) => variant(base, name)); // every name checked before any training
  const dirs = names.map((name) => join(outDir, name.replace(/[^\w.+=-]/g, '_')));
  const runs: RunResult[] = new Array(names.length);
  const one = async (i: number, concurrent: boolean) => {
    const log = runOpts.log && (concurrent ? (line: string) => runOpts.log!(`[${names[i]}] ${line}`) : runOpts.log);
    const cfg = concurrent ? { ...configs[i], train: { ...(configs[i].train as object), progress: false } } : configs[i];
    runOpts.log?.(`== ${names[i]}`);
    runs[i] = await train(cfg, { ...runOpts, log, outDir: dirs[i], name: names[i] });
  };
  if (parallel === 1) {
    for (let i = 0; i < names.length && !runOpts.signal?.aborted; i++) await one(i, false);
  } else {
    // The dataset is prepared once before the runs start, not by each of them at the same time.
    await datasetOf(withCheckpointModel(parseTrainConfig(configs[0])), { log: runOpts.log });
    let next = 0;
    const lane = async () => {
      while (next < names.length && !runOpts.signal?.aborted) await one(next++, true);
    };
    await Promise.all(Array.from({ length: Math.min(parallel, names.length) }, lane));
  }
  const done = runs.flatMap((r, i) => (r ? [i] : []));
  return { runs: done.map((i) => runs[i]), dirs: done.map((i) => dirs[i]) };
}

const f = (x: number, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : '-');

/** The comparison as text: per-domain perplexity, then specialisation and balance per run. */
export function comparisonTable(runs: RunResult[]): string {
  const lines: string[] = [];
  const domains = runs[0].domains;
  const last = (r: RunResult) => r.evals[r.evals.length - 1];
  const pad = (s: string, n: number) => s.padStart(n);
  lines.push('Held-out perplexity per domain (bits per byte in brackets):');
  const cell = (x: { perplexity: number; bitsPerByte: number }) => `${f(x.perplexity, 2)} (${f(x.bitsPerByte, 3)})`;
  const rows = runs.map((r) => [...domains.map((d) => cell(last(r).perDomain[d])), cell(last(r).mean)]);
  // Columns as wide as their widest cell: a fresh model's perplexity has the vocabulary's digits.
  const w = Math.max(15, ...rows.flat().map((c) => c.length + 2), ...domains.map((d) => d.length + 2));
  lines.push(pad('run', 14) + [...domains, 'mean'].map((d) => pad(d, w)).join(''));
  for (const [i, r] of runs.entries()) lines.push(pad(r.name, 14) + rows[i].map((c) => pad(c, w)).join(''));
  lines.push('');
  lines.push('Routing specialisation on held-out data, mean over layers [per layer]:');
  const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
  const spec = runs.map((r) => {
    const e = last(r);
    const mou = e.layers.map((l) => l.maxOverUniform);
    const mi = e.layers.map((l) => l.mutualInformation);
    return [`${f(mean(mou), 2)} [${mou.map((x) => f(x, 2)).join(' ')}]`, `${f(mean(mi), 3)} [${mi.map((x) => f(x, 2)).join(' ')}]`];
  });
  // As wide as the widest cell: a deep model has a value per layer.
  const ws = [0, 1].map((c) => Math.max(34, ...spec.map((cells) => cells[c].length + 2)));
  lines.push(pad('run', 14) + pad('max-freq/uniform', ws[0]) + pad('MI(domain; expert) bits', ws[1]) + pad('loss (nats)', 13) + pad('steps', 7) + pad('time', 8));
  for (const [i, r] of runs.entries()) {
    lines.push(pad(r.name, 14) + pad(spec[i][0], ws[0]) + pad(spec[i][1], ws[1]) + pad(f(last(r).mean.loss, 4), 13) + pad(String(r.stepsDone), 7) + pad(`${r.seconds.toFixed(0)}s`, 8));
  }
  if (runs.length >= 2) {
    const [a, b] = [runs[0], runs[runs.length - 1]];
    const d = last(b).mean.loss - last(a).mean.loss;
    lines.push('');
    const mi = (r: RunResult) => last(r).layers.reduce((acc, l) => acc + l.mutualInformation, 0) / last(r).layers.length;
    lines.push(`Held-out loss, ${b.name} - ${a.name}: ${d >= 0 ? '+' : ''}${d.toFixed(4)} nats per token; MI(domain; expert), ${b.name} / ${a.name}: ${(mi(b) / mi(a)).toFixed(2)}x (one seed; see EXPERIMENTS.md for several).`);
  }
  return lines.join('\n');
}
