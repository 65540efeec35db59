// The main job end to end on the committed corpus slice: pipeline determinism and domain purity,
// a tiny run whose loss falls, exact resume after an interruption, and CLI errors for bad input.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EMBEDDED_CORPUS, resolveDataset } from '../src/data/dataset.js';
import { DataPipeline } from '../src/data/pipeline.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

/** The committed slice's documents per domain and split, read from its files and manifest. */
function sliceDocs(): Map<string, Record<'train' | 'held', string[]>> {
  const manifest = JSON.parse(readFileSync(join('data', 'MANIFEST.json'), 'utf8'));
  const out = new Map<string, Record<'train' | 'held', string[]>>();
  for (const [domain, dm] of Object.entries<{ file: string; docs: Record<string, string[]> }>(manifest.domains)) {
    const docs = readFileSync(join('data', dm.file), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { id: string; text: string });
    const train = new Set(dm.docs.train);
    out.set(domain, { train: docs.filter((d) => train.has(d.id)).map((d) => d.text), held: docs.filter((d) => !train.has(d.id)).map((d) => d.text) });
  }
  return out;
}

const corpus = sliceDocs();

test('the pipeline is deterministic, one domain per micro-batch, and draws from train documents only', async (t) => {
  const { dataset, tokenizer } = await resolveDataset(EMBEDDED_CORPUS, { tokenizer: 'byte' });
  const weights = Object.fromEntries([...corpus.keys()].map((d) => [d, 1]));
  const pipeCfg = { seqLen: 32, microBatch: 3, ranks: 2, accumSteps: 2, weights, mixedMicroBatches: false, seed: 1 };
  const a = new DataPipeline(dataset, tokenizer, pipeCfg);
  const b = new DataPipeline(dataset, tokenizer, pipeCfg);
  t.deepEqual(a.batch(7, 1), b.batch(7, 1));
  t.notDeepEqual(a.batch(7, 1), a.batch(8, 1));
  t.notDeepEqual(a.batch(7, 0), a.batch(7, 1), 'ranks read different shares');
  const c = new DataPipeline(dataset, tokenizer, { ...pipeCfg, seed: 2 });
  t.notDeepEqual(a.batch(7, 1), c.batch(7, 1));
  const seen = new Set<string>();
  for (let step = 0; step < 40; step++) {
    for (const mb of a.batch(step, 0)) {
      t.is(new Set(mb.domains).size, 1, 'one domain per micro-batch');
      seen.add(mb.domains[0]);
    }
  }
  t.is(seen.size, corpus.size, 'every domain is drawn');
  const mixed = new DataPipeline(dataset, tokenizer, { ...pipeCfg, microBatch: 16, mixedMicroBatches: true });
  t.true(new Set(mixed.microBatch(0, 0, 0).domains).size > 1, 'the mixed control mixes');
  // Training windows come from the train stream: each lies inside the text of a train document.
  for (const [domain, { train, held }] of corpus) {
    t.true(held.length > 0 && train.length > 0, `${domain} has train and held-out documents`);
    const mb = a.batch(0, 0).find((m) => m.domains[0] === domain);
    if (!mb) continue;
    const text = tokenizer.decode(mb.tokens.subarray(0, 32).filter((x) => x !== tokenizer.eosId).slice(2, 20));
    if (text.length > 12) t.true(train.some((d) => d.includes(text.slice(1, -1))), `${domain}: "${text}" from a train document`);
  }
  for (const d of corpus.keys()) t.true(a.evalSequences('validation', d, 1e9).length > 0, `${d} has validation windows`);
});

const tiny = (out: string, steps: number) => ({
  model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 32, num_experts: 4, num_experts_per_tok: 2 },
  data: { seqLen: 32, tokenizer: { kind: 'byte' } },
  batch: { ranks: 2, accumSteps: 2, microBatch: 2 },
  balance: { terms: [{ scope: 'global', coef: 0.02 }], zLoss: 1e-3 },
  optim: { lr: 1e-2, minLr: 1e-3, warmupSteps: 2 },
  train: { steps, evalEvery: 3, evalTokens: 256, progress: false, seed: 3 },
  out,
});

const losses = (dir: string) => readStepRows(join(dir, 'metrics.jsonl'));

test('a tiny run learns, logs every metric, and evaluates every domain', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-run-'));
  const { out: _, ...cfg } = tiny(dir, 40);
  const r = await train({ ...cfg, train: { ...cfg.train, evalEvery: 20 } }, { outDir: dir });
  const m = losses(dir);
  t.is(m.length, 40);
  const first = m.slice(0, 5).reduce((a, x) => a + x.loss, 0) / 5;
  const last = m.slice(-5).reduce((a, x) => a + x.loss, 0) / 5;
  t.log(`loss ${first.toFixed(3)} -> ${last.toFixed(3)}`);
  t.true(last < first - 0.5);
  t.deepEqual(Object.keys(m[0].lbl), ['global']);
  t.true(Math.abs(m[0].lr - 0.005) < 1e-9 && Math.abs(m[1].lr - 0.01) < 1e-9, 'logged lr follows the warm-up (1e-2 over 2 steps)');
  t.true(Math.abs(m[39].lr - 1e-3) < 1e-9, 'and the cosine ends at minLr');
  t.is(m[0].lblMicro.length, 2);
  t.true(m.every((x) => x.lblGlobal.every((v) => v >= 0.99 && v < 2)), 'LBL near 1 at global scope');
  t.is(r.evals.length, 2);
  const e = r.evals[1];
  t.deepEqual(Object.keys(e.perDomain).sort(), [...corpus.keys()].sort());
  t.true(Object.values(e.perDomain).every((d) => d.bitsPerByte > 0 && d.bitsPerByte < 8));
  t.is(e.layers[0].frequency.length, corpus.size);
  t.true(e.layers[0].frequency.every((row) => Math.abs(row.reduce((a, v) => a + v, 0) - 2) < 1e-6), 'rows sum to K');
  rmSync(dir, { recursive: true });
});

test('an interrupted run resumes to exactly the straight run', async (t) => {
  const a = mkdtempSync(join(tmpdir(), 'moe-straight-'));
  const b = mkdtempSync(join(tmpdir(), 'moe-resumed-'));
  const { out: _a, ...base } = tiny(a, 6);
  // With auxiliary-loss-free balancing too: its router biases must survive the checkpoint.
  const cfg = { ...base, balance: { ...base.balance, lossFree: { scope: 'micro', rate: 0.05 } } };
  const straight = await train(cfg, { outDir: a });
  const ctl = new AbortController();
  const first = await train(cfg, { outDir: b, signal: ctl.signal, onStep: (m) => m.step === 2 && ctl.abort() });
  t.true(first.interrupted);
  t.is(first.stepsDone, 3);
  const resumed = await train(undefined, { outDir: b, resume: true });
  t.false(resumed.interrupted);
  t.deepEqual(losses(b).map((m) => m.loss), losses(a).map((m) => m.loss));
  t.deepEqual(resumed.evals, straight.evals);
  t.deepEqual(readFileSync(join(latestCheckpoint(b)!, 'model.safetensors')).subarray(-4096), readFileSync(join(latestCheckpoint(a)!, 'model.safetensors')).subarray(-4096));
  rmSync(a, { recursive: true });
  rmSync(b, { recursive: true });
});

const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', timeout: 60_000 });

test('the CLI answers bad input with one line and status 2', (t) => {
  const cases: [string[], RegExp][] = [
    [['train', '--set', 'train.steps=-3', '--no-progress'], /^moe: error \[INVALID_CONFIG\]: train\.steps: /],
    [['train', '--set', 'balance.terms=[{"scope":"galactic","coef":1}]'], /^moe: error \[INVALID_CONFIG\]: balance\.terms\.0\.scope/],
    [['train', '--config', 'no-such-file.json'], /^moe: error \[INVALID_CONFIG\]: no-such-file\.json/],
    [['train', '--bogus'], /error: unknown option '--bogus'/],
    [['frobnicate'], /error: unknown command 'frobnicate'/],
    [['eval', 'no-such-run'], /^moe: error \[CHECKPOINT_MISSING\]/],
    [['compare', '--runs', 'micro,nonsense', '--steps', '1'], /^moe: error \[INVALID_CONFIG\]: unknown run "nonsense"/],
    [['train', '--corpus', 'no-such-corpus', '--no-progress'], /^moe: error \[CORPUS_MISSING\]/],
  ];
  for (const [args, re] of cases) {
    const r = cli(...args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr.trim().split('\n')[0], re, args.join(' '));
    t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  }
  for (const cmd of ['train', 'eval', 'compare', 'report', 'sample', 'corpus build']) {
    const r = cli(...cmd.split(' '), '--help');
    t.is(r.status, 0, cmd);
    t.regex(r.stdout, /Usage: moe/);
  }
});

test('SIGTERM stops `moe train` after the current step and saves a checkpoint', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-sig-'));
  const { out: _, ...cfg } = tiny(dir, 400);
  const sets = Object.entries(cfg).flatMap(([k, v]) => ['--set', `${k}=${JSON.stringify(v)}`]);
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'train', '--out', dir, ...sets], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const metrics = join(dir, 'metrics.jsonl');
  while (!(existsSync(metrics) && losses(dir).length > 2)) await new Promise((r) => setTimeout(r, 100));
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.on('exit', r));
  t.is(code, 0, stderr);
  const m = /interrupted at step (\d+); checkpoint saved/.exec(stderr);
  t.truthy(m, stderr);
  t.true(existsSync(join(latestCheckpoint(dir)!, 'training_state.safetensors')));
  t.is(losses(dir).length, Number(m![1]));
  rmSync(dir, { recursive: true });
});
