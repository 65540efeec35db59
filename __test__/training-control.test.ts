// Issue 16: runs people can steer. Evaluations logged live (a stderr line, a typed row of
// metrics.jsonl, onEval, an event of trainSteps), the best checkpoint by a chosen validation
// metric, early stopping, the schedules as the core applies them, the whole config checked before
// any data is read, `moe config schema`, `moe --version`, warnings for settings that do less than
// they say, and the CSV tables beside the JSONL log.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lrAt } from '../index.js';
import type { EvalRow } from '../src/results.js';
import { configWarnings, parseTrainConfig } from '../src/trainer/config.js';
import { listCheckpoints, readMetricsRows } from '../src/trainer/runfolder.js';
import { metricOf, train } from '../src/trainer/train.js';

const tiny = (train: Record<string, unknown>, optim: Record<string, unknown> = {}) => ({
  model: { hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2 },
  data: { seqLen: 16, tokenizer: { kind: 'byte' } },
  batch: { ranks: 1, accumSteps: 1, microBatch: 2 },
  optim: { lr: 1e-2, minLr: 1e-3, warmupSteps: 2, ...optim },
  train: { steps: 8, evalEvery: 2, evalTokens: 64, progress: false, seed: 2, ...train },
});
const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', timeout: 120_000 });

test('evaluations are logged live: stderr, a typed metrics.jsonl row, onEval, and the CSV tables', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-evals-'));
  const seen: EvalRow[] = [];
  const lines: string[] = [];
  const r = await train(tiny({}), { outDir: dir, onEval: (e) => seen.push(e), log: (l) => lines.push(l) });
  t.deepEqual(seen.map((e) => e.step), [2, 4, 6, 8]);
  t.deepEqual(r.evals, seen.map(({ kind: _k, split: _s, ...e }) => e), 'the same evaluations as result.json');
  const rows = readMetricsRows(join(dir, 'metrics.jsonl'));
  t.deepEqual(rows.map((x) => `${x.kind}${x.step}`), ['step0', 'step1', 'eval2', 'step2', 'step3', 'eval4', 'step4', 'step5', 'eval6', 'step6', 'step7', 'eval8']);
  const e = rows.find((x): x is EvalRow => x.kind === 'eval')!;
  t.is(e.split, 'validation');
  t.is(e.layers.length, 2, 'per layer');
  t.true(Object.keys(e.perDomain).length >= 2, 'per domain');
  t.is(lines.filter((l) => /^eval at step \d+: loss \d\.\d{4} \(\d\.\d{3} bits\/byte\) \| /.test(l)).length, 4);
  const csv = readFileSync(join(dir, 'metrics.csv'), 'utf8').trim().split('\n');
  t.is(csv.length, 9);
  t.regex(csv[0], /^step,loss,lr,gradNorm,zLoss,lblGlobal,lblMicro,/);
  t.is(readFileSync(join(dir, 'evals.csv'), 'utf8').trim().split('\n').length, 5);
  rmSync(dir, { recursive: true });
});

test('saveBest keeps the best evaluation\'s checkpoint; patience stops a run that stopped improving', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-best-'));
  const r = await train(tiny({ saveBest: true, bestMetric: 'bitsPerByte' }), { outDir: dir });
  const bestStep = r.evals.reduce((a, e) => (metricOf(e, 'bitsPerByte') < metricOf(a, 'bitsPerByte') ? e : a)).step;
  const bests = listCheckpoints(dir).filter((c) => c.best);
  t.deepEqual(bests.map((c) => c.step), [bestStep]);
  t.deepEqual(r.best, { checkpoint: bests[0].dir, step: bestStep, metric: 'bitsPerByte', value: metricOf(r.evals.find((e) => e.step === bestStep)!, 'bitsPerByte') });
  rmSync(dir, { recursive: true });
  // lr 1e-30 moves no f32 weight: after the first evaluation, two without improvement stop the run.
  const stop = mkdtempSync(join(tmpdir(), 'moe-patience-'));
  const s = await train(tiny({ steps: 20, patience: 2 }, { lr: 1e-30, minLr: 0 }), { outDir: stop });
  t.true(s.earlyStopped);
  t.is(s.stepsDone, 6, 'evaluations at 2 (best), 4 and 6 (no improvement): stop');
  t.true(existsSync(s.checkpoint!), 'with a checkpoint');
  rmSync(stop, { recursive: true });
  t.throws(() => parseTrainConfig(tiny({ bestMetric: 'accuracy' })), { code: 'INVALID_CONFIG', message: /train\.bestMetric/ });
});

test('the schedules have the values the core applies', (t) => {
  const at = (kind: 'constant' | 'linear' | 'cosine' | 'wsd', step: number, decaySteps?: number) =>
    lrAt({ lr: 0.1, schedule: { kind, warmupSteps: 10, totalSteps: 110, minLr: 0.01, ...(decaySteps ? { decaySteps } : {}) } }, step);
  const close = (a: number, b: number) => t.true(Math.abs(a - b) < 1e-7, `${a} vs ${b}`);
  for (const k of ['constant', 'linear', 'cosine', 'wsd'] as const) close(at(k, 5), 0.05);
  close(at('constant', 100), 0.1);
  close(at('linear', 60), 0.055);
  close(at('cosine', 60), 0.055);
  close(at('cosine', 35), 0.01 + 0.09 * (1 + Math.cos(Math.PI / 4)) / 2);
  close(at('wsd', 88), 0.1);
  close(at('wsd', 99), 0.055);
  close(at('wsd', 110), 0.01);
  close(at('wsd', 85, 50), 0.055);
  t.throws(() => lrAt({ lr: 0.1, schedule: { kind: 'cosine', warmupSteps: 1, totalSteps: 10, decaySteps: 2 } }, 1), { code: 'INVALID_CONFIG' });
  t.throws(() => lrAt({ lr: 0.1, schedule: { kind: 'exponential' as never, warmupSteps: 1, totalSteps: 10 } }, 1), { code: 'INVALID_CONFIG', message: /schedule\.kind/ });
});

test('the whole config is checked before any data is read; the CLI has --version and config schema', (t) => {
  // A typo in the model section and a corpus that does not exist: the typo is what fails.
  const r = cli('train', '--set', 'model.hidden_sizee=32', '--corpus', 'no-such-corpus', '--no-progress', '--out', join(tmpdir(), `moe-typo-${process.pid}`));
  t.is(r.status, 2);
  t.regex(r.stderr, /^moe: error \[INVALID_CONFIG\]: model: Unrecognized key: "hidden_sizee"/);
  // Relations between model fields, checked by the core, also before the data.
  const heads = cli('train', '--set', 'model.num_key_value_heads=3', '--corpus', 'no-such-corpus', '--out', join(tmpdir(), `moe-heads-${process.pid}`));
  t.regex(heads.stderr, /^moe: error \[INVALID_CONFIG\]: .*multiple of num_key_value_heads/);
  const v = cli('--version');
  t.is(v.status, 0);
  t.is(v.stdout.trim(), JSON.parse(readFileSync('package.json', 'utf8')).version);
  const s = cli('config', 'schema');
  t.is(s.status, 0, s.stderr);
  const schema = JSON.parse(s.stdout);
  t.is(schema.type, 'object');
  t.false(schema.additionalProperties ?? true);
  t.truthy(schema.properties.model.properties.num_experts_per_tok);
  t.deepEqual(schema.properties.optim.properties.schedule.enum, ['constant', 'linear', 'cosine', 'wsd']);
  t.notThrows(() => parseTrainConfig({ $schema: './moe-config.schema.json', train: { steps: 3 } }), 'a config may name its schema');
});

test('settings that silently disable learning or do not do what they say are warned about', async (t) => {
  const w = (over: Record<string, unknown>) => configWarnings(parseTrainConfig({ ...tiny({}), ...over }));
  t.regex(w({ model: { ...tiny({}).model, num_experts_per_tok: 1 } }).join('\n'), /num_experts_per_tok = 1 with norm_topk_prob = true .* no gradient from the language-model loss/);
  t.deepEqual(w({ model: { ...tiny({}).model, num_experts_per_tok: 1, norm_topk_prob: false }, batch: { ranks: 2, accumSteps: 1, microBatch: 2 } }), [], 'unnormalised top-1 learns');
  t.regex(w({ balance: { terms: [{ scope: 'global', coef: 0.01 }] } }).join('\n'), /scope global with batch\.ranks = 1 and batch\.accumSteps = 1 .* equals scope micro/);
  t.deepEqual(w({ batch: { ranks: 2, accumSteps: 1, microBatch: 2 }, balance: { terms: [{ scope: 'global', coef: 0.01 }] } }), []);
  const dir = mkdtempSync(join(tmpdir(), 'moe-warn-'));
  const lines: string[] = [];
  await train({ ...tiny({ steps: 1 }), balance: { terms: [{ scope: 'global', coef: 0.01 }] } }, { outDir: dir, log: (l) => lines.push(l) });
  t.true(lines.some((l) => l.startsWith('warning: balance: scope global')), lines.join('\n'));
  rmSync(dir, { recursive: true });
});
