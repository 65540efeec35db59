// Users' own data end to end, as a new user would meet it: `moe data prepare` on a folder of domain
// folders and JSONL.gz (one file given a domain), bad input refused in one line with a code naming
// file, line and field, nothing half-written after a failure or a cancel, runs that read a prepared
// dataset and resume from it identically, raw inputs prepared once into the cache and reused.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Dataset, DatasetPrep, Tokenizer } from '../index.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const cli = (env: Record<string, string>, ...args: string[]) =>
  spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env } });

/** Three domains of made-up text: poems and recipes as folders, a JSONL.gz of notes given one domain. */
function ownData(): { root: string; inputs: string[] } {
  const root = mkdtempSync(join(tmpdir(), 'moe-own-'));
  for (let i = 0; i < 12; i++) {
    mkdirSync(join(root, 'texts', 'poems'), { recursive: true });
    writeFileSync(join(root, 'texts', 'poems', `p${i}.txt`), `The moon upon the water, verse ${i}, silver and slow.\n`.repeat(20));
    mkdirSync(join(root, 'texts', 'recipes'), { recursive: true });
    writeFileSync(join(root, 'texts', 'recipes', `r${i}.md`), `Recipe ${i}: whisk 2 eggs, add 100 g flour; bake at 180 C.\n`.repeat(20));
  }
  const rows = Array.from({ length: 15 }, (_, i) => JSON.stringify({ body: `note ${i}: call the office at ${1000 + i}, then file report ${i}.`.repeat(10) }));
  writeFileSync(join(root, 'notes.jsonl.gz'), gzipSync(rows.join('\n')));
  return { root, inputs: [join(root, 'texts'), `notes=${join(root, 'notes.jsonl.gz')}`] };
}

test('moe data prepare reads domain folders and JSONL.gz, and the dataset carries its tokenizer', (t) => {
  const { root, inputs } = ownData();
  const out = join(root, 'ds');
  const r = cli({}, 'data', 'prepare', ...inputs, '--text-field', 'body', '--tokenizer', 'bpe', '--vocab-size', '300', '--out', out, '--no-progress');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /3 domain\(s\), tokenizer bpe/);
  const ds = Dataset.open(out);
  t.deepEqual(ds.manifest.domains.map((d) => d.name), ['poems', 'recipes', 'notes']);
  for (const d of ds.manifest.domains) t.true(d.validation.documents >= 1 && d.test.documents >= 1, `${d.name} has held-out documents`);
  const tok = Tokenizer.fromFile(out);
  const notes = tok.decode(ds.gather('notes', 'train', Float64Array.of(0), 12));
  t.regex(notes, /^note \d+: call/);
  t.true(existsSync(join(out, 'tokenizer_config.json')));
  ds.verify();
  // Refused without --force; a second prepare with --force replaces it.
  const again = cli({}, 'data', 'prepare', ...inputs, '--text-field', 'body', '--out', out, '--no-progress');
  t.is(again.status, 2);
  t.regex(again.stderr, /^moe: error \[DATASET_EXISTS\]/);
  t.is(cli({}, 'data', 'prepare', ...inputs, '--text-field', 'body', '--out', out, '--force', '--no-progress').status, 0);
  rmSync(root, { recursive: true });
});

test('bad input is one line with a code naming file, line and field, and leaves nothing behind', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'moe-bad-'));
  const out = join(root, 'ds');
  const cases: [string, string, RegExp][] = [
    ['a.jsonl', '{"text": "fine"}\n{"text": "cut', /^moe: error \[CORPUS_FORMAT\]: .*a\.jsonl:2: not JSON/],
    ['b.jsonl', '{"text": "fine"}\n{"txt": "typo"}\n', /^moe: error \[CORPUS_FORMAT\]: .*b\.jsonl:2: field "text" is missing/],
    ['c.jsonl', '\n\n', /^moe: error \[CORPUS_EMPTY\]/],
    ['d.csv', 'text\nhello', /^moe: error \[INVALID_CONFIG\]: .*d\.csv: not an input/],
  ];
  for (const [name, body, re] of cases) {
    writeFileSync(join(root, name), body);
    const r = cli({}, 'data', 'prepare', join(root, name), '--out', out, '--no-progress');
    t.is(r.status, 2, name);
    t.regex(r.stderr.trim(), re, name);
    t.is(r.stderr.trim().split('\n').length, 1, `${name}: one line`);
    t.deepEqual(readdirSync(root).filter((f) => f.startsWith('ds')), [], `${name}: nothing written`);
  }
  const missing = cli({}, 'data', 'prepare', join(root, 'nope'), '--out', out);
  t.regex(missing.stderr, /^moe: error \[CORPUS_MISSING\]: .*nope/);
  // A cancelled job leaves no dataset and no partial folder.
  writeFileSync(join(root, 'big.jsonl'), Array.from({ length: 2000 }, (_, i) => JSON.stringify({ text: `document ${i} `.repeat(200) })).join('\n'));
  const job = new DatasetPrep({ inputs: [join(root, 'big.jsonl')], out });
  const run = job.run();
  job.cancel();
  await t.throwsAsync(run, { code: 'CANCELLED' });
  t.deepEqual(readdirSync(root).filter((f) => f.startsWith('ds')), []);
  rmSync(root, { recursive: true });
});

const losses = (dir: string) => readStepRows(join(dir, 'metrics.jsonl')).map((r) => r.loss);

// Serial: it points MOE_CACHE_DIR at its own folder, which a concurrent test of this file reads too.
test.serial('a dataset folder brings its tokenizer, and only a BPE trained for the run is warned about when it falls short', async (t) => {
  const { root, inputs } = ownData();
  process.env.MOE_CACHE_DIR = join(root, 'cache');
  try {
    const out = join(root, 'ds');
    t.is(cli({}, 'data', 'prepare', ...inputs, '--text-field', 'body', '--tokenizer', 'byte', '--out', out, '--no-progress').status, 0);
    const run = async (data: object, dir: string) => {
      const logs: string[] = [];
      const cfg = {
        model: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 32, num_experts: 4, num_experts_per_tok: 2 },
        data: { seqLen: 32, fields: { text: 'body' }, ...data },
        batch: { ranks: 1, accumSteps: 1, microBatch: 2 },
        train: { steps: 1, evalEvery: 1, evalTokens: 64, progress: false },
      };
      await train(cfg, { outDir: join(root, dir), log: (l) => logs.push(l) });
      return logs.filter((l) => l.includes('asks for'));
    };
    // the config's default tokenizer (BPE 1,024) does not apply to a byte dataset folder
    t.deepEqual(await run({ corpus: out }, 'folder'), []);
    // raw text too small for the BPE asked of it
    const warned = await run({ corpus: inputs, tokenizer: { kind: 'bpe', vocabSize: 5000 } }, 'raw');
    t.is(warned.length, 1);
    t.regex(warned[0], /^warning: data\.tokenizer\.vocabSize asks for 5000 tokens but the corpus gave the BPE trainer only \d+/);
  } finally {
    delete process.env.MOE_CACHE_DIR;
    rmSync(root, { recursive: true });
  }
});

test('a run on a prepared dataset resumes identically, and raw inputs are prepared once into the cache', async (t) => {
  const { root, inputs } = ownData();
  const cache = join(root, 'cache');
  process.env.MOE_CACHE_DIR = cache;
  const cfg = {
    model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 32, num_experts: 4, num_experts_per_tok: 2 },
    data: { corpus: inputs, seqLen: 32, tokenizer: { kind: 'byte' }, fields: { text: 'body' } },
    batch: { ranks: 1, accumSteps: 2, microBatch: 2 },
    balance: { terms: [{ scope: 'global', coef: 0.02 }] },
    optim: { lr: 1e-2, warmupSteps: 2 },
    train: { steps: 6, evalEvery: 6, evalTokens: 128, progress: false, seed: 1 },
  };
  const [a, b] = [join(root, 'straight'), join(root, 'resumed')];
  const logs: string[] = [];
  await train(cfg, { outDir: a, log: (l) => logs.push(l) });
  t.is(readdirSync(cache).length, 1, 'prepared into the cache');
  t.true(logs.some((l) => l.startsWith('preparing ')), 'the first run prepares');
  const ctl = new AbortController();
  logs.length = 0;
  const first = await train(cfg, { outDir: b, signal: ctl.signal, log: (l) => logs.push(l), onStep: (m) => m.step === 2 && ctl.abort() });
  t.false(logs.some((l) => l.startsWith('preparing ')), 'the second run reuses the cache');
  t.true(first.interrupted);
  await train(undefined, { outDir: b, resume: true });
  t.deepEqual(losses(b), losses(a));
  t.is(readdirSync(cache).length, 1);
  // The checkpoint's tokenizer is the dataset's, in Hugging Face's format.
  const ckpt = Tokenizer.fromFile(latestCheckpoint(b)!);
  t.is(ckpt.vocabSize, 257);
  delete process.env.MOE_CACHE_DIR;
  rmSync(root, { recursive: true });
});
