// Faults 2, 9 and 11 of the reliability review, and issue 16's run extension. A new run in a
// folder that holds one is refused before anything is written (or replaces it with --force); a
// second process cannot train into a folder in use; --resume applies the changes that cannot alter
// what was trained (more steps: the schedule then runs over the new total; evaluation, checkpoint
// and device settings) and refuses the others with the list of differences; a resumed run is
// identical to one configured with the longer length where the schedule allows it (WSD before its
// decay); a checkpoint without its tokenizer.json says so with a code.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StepMetrics } from '../src/results.js';
import { latestCheckpoint, readMetricsRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const tiny = (steps: number, extra: Record<string, unknown> = {}) => ({
  model: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2 },
  data: { seqLen: 16, tokenizer: { kind: 'byte' } },
  batch: { ranks: 1, accumSteps: 2, microBatch: 2 },
  optim: { lr: 1e-2, minLr: 1e-3, warmupSteps: 2, ...extra },
  train: { steps, evalEvery: 100, evalTokens: 64, progress: false, seed: 1 },
});
const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', timeout: 120_000 });
const steps = (dir: string) => readMetricsRows(join(dir, 'metrics.jsonl')).filter((r): r is StepMetrics => r.kind === 'step');

test('a new run never truncates an existing one: refused before anything is written, replaced only with --force', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-exists-'));
  await train(tiny(3), { outDir: dir });
  const before = readFileSync(join(dir, 'metrics.jsonl'), 'utf8');
  const result = readFileSync(join(dir, 'result.json'), 'utf8');
  // A new run that would fail (a bad corpus) and a valid one: both refused, the old run untouched.
  for (const extra of [['--corpus', 'no-such-corpus'], []]) {
    const r = cli('train', '--out', dir, '--steps', '2', '--no-progress', ...extra);
    t.is(r.status, 2);
    t.regex(r.stderr, /^moe: error \[RUN_EXISTS\]: .* holds a run: continue it with moe train --resume, replace it with --force/);
  }
  await t.throwsAsync(train(tiny(2), { outDir: dir }), { code: 'RUN_EXISTS', message: /--resume.*--force/ });
  t.is(readFileSync(join(dir, 'metrics.jsonl'), 'utf8'), before);
  t.is(readFileSync(join(dir, 'result.json'), 'utf8'), result);
  const again = await train(tiny(2), { outDir: dir, force: true });
  t.is(again.stepsDone, 2);
  t.is(steps(dir).length, 2, 'the old log was replaced, not mixed');
  rmSync(dir, { recursive: true });
});

test('a folder in use by a live process is refused; the lock of a killed one is taken over', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-lock-'));
  writeFileSync(join(dir, 'run.lock'), String(process.ppid)); // a live process
  await t.throwsAsync(train(tiny(1), { outDir: dir }), { code: 'RUN_LOCKED' });
  writeFileSync(join(dir, 'run.lock'), '4194304'); // above pid_max: dead
  await train(tiny(1), { outDir: dir });
  t.false(existsSync(join(dir, 'run.lock')), 'released at the end');
  rmSync(dir, { recursive: true });
});

test('--resume applies safe changes, extends with --steps, and refuses the rest with every difference listed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-resume-'));
  const cfgFile = join(dir, '..', `${dir.split('/').pop()}.json`);
  writeFileSync(cfgFile, JSON.stringify(tiny(4)));
  t.is(cli('train', '--out', dir, '--config', cfgFile).status, 0);
  const refused = cli('train', '--resume', '--out', dir, '--set', 'optim.lr=0.5', '--set', 'model.hidden_size=32', '--seed', '9');
  t.is(refused.status, 2);
  t.regex(refused.stderr, /^moe: error \[RESUME_CONFLICT\]: --resume cannot change what was already trained: model\.hidden_size 16 -> 32; optim\.lr 0\.01 -> 0\.5; train\.seed 1 -> 9/);
  const shorter = cli('train', '--resume', '--out', dir, '--steps', '2');
  t.regex(shorter.stderr, /^moe: error \[RESUME_CONFLICT\]: train\.steps 2 is below the 4 steps already trained/);
  // --config on resume is a set of changes too; more steps and an evaluation setting are safe.
  const ok = cli('train', '--resume', '--out', dir, '--steps', '7', '--set', 'train.evalTokens=32', '--device', 'cpu', '--no-progress');
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stderr, /resuming at step 4 with .*train\.device \(unset\) -> "cpu".*train\.evalTokens 64 -> 32.*train\.steps 4 -> 7/);
  t.deepEqual(steps(dir).map((m) => m.step), [0, 1, 2, 3, 4, 5, 6]);
  const result = JSON.parse(readFileSync(join(dir, 'result.json'), 'utf8'));
  t.is(result.stepsDone, 7);
  t.is(result.config.train.steps, 7);
  rmSync(dir, { recursive: true });
  rmSync(cfgFile);
});

test('extending a WSD run in its stable phase is identical to configuring the longer run; cosine continues on the longer curve', async (t) => {
  const a = mkdtempSync(join(tmpdir(), 'moe-wsd-long-'));
  const b = mkdtempSync(join(tmpdir(), 'moe-wsd-ext-'));
  const wsd = { schedule: 'wsd', decaySteps: 2 };
  await train(tiny(8, wsd), { outDir: a });
  // A 6-step run interrupted after 3 steps (warm-up 2, then stable), then extended to 8 steps.
  const ctl = new AbortController();
  const first = await train(tiny(6, wsd), { outDir: b, signal: ctl.signal, onStep: (m) => m.step === 2 && ctl.abort() });
  t.is(first.stepsDone, 3);
  await train({ train: { steps: 8 } }, { outDir: b, resume: true });
  const strip = (dir: string) => steps(dir).map(({ tokensPerSec: _a, stepMs: _b, ...rest }) => rest);
  t.deepEqual(strip(b), strip(a), 'every step, lr included, as if 8 steps had been configured');
  const { MoeModel } = await import('../index.js');
  const [ma, mb] = await Promise.all([a, b].map((d) => MoeModel.fromCheckpoint(latestCheckpoint(d)!)));
  t.deepEqual(mb.getParams(), ma.getParams());
  // Cosine: the steps after the extension follow the curve over the new total.
  const c = mkdtempSync(join(tmpdir(), 'moe-cos-ext-'));
  const ctl2 = new AbortController();
  await train(tiny(6), { outDir: c, signal: ctl2.signal, onStep: (m) => m.step === 2 && ctl2.abort() });
  const logged: string[] = [];
  await train({ train: { steps: 8 } }, { outDir: c, resume: true, log: (l) => logged.push(l) });
  const { lrAt } = await import('../index.js');
  const sched = (total: number) => ({ lr: 1e-2, schedule: { kind: 'cosine' as const, warmupSteps: 2, totalSteps: total, minLr: 1e-3 } });
  const rows = steps(c);
  t.is(rows[2].lr, lrAt(sched(6), 3), 'steps already trained keep their rate');
  t.is(rows[3].lr, lrAt(sched(8), 4), 'later steps follow the 8-step curve');
  t.true(logged.some((l) => /the schedule over 8 steps sets lr .* at step 4 \(it was .* over 6 steps\)/.test(l)), logged.join('\n'));
  for (const d of [a, b, c]) rmSync(d, { recursive: true });
});

test('a checkpoint without tokenizer.json is named, not a raw ENOENT (fault 11)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-notok-'));
  const { MoeModel } = await import('../index.js');
  const m = new MoeModel({ vocab_size: 32, hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 8, num_experts: 4, num_experts_per_tok: 2 });
  await m.save(join(dir, 'ckpt'));
  const r = cli('sample', join(dir, 'ckpt'));
  t.is(r.status, 2);
  t.regex(r.stderr, /^moe: error \[CHECKPOINT_MISSING\]: .*ckpt has no tokenizer\.json: moe sample needs a checkpoint written by moe train/);
  rmSync(dir, { recursive: true });
});
