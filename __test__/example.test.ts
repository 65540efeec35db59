// The README's training script is examples/train.ts, word for word, and it runs as written.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

test('the README example is examples/train.ts and runs', (t) => {
  const readme = readFileSync('README.md', 'utf8');
  const block = /<!-- example:train -->\n```ts\n([\s\S]*?)```/.exec(readme);
  t.truthy(block, 'README has the example block');
  t.is(block![1], readFileSync('examples/train.ts', 'utf8'));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'examples/train.ts'], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^step 0: loss \d/m);
  t.regex(r.stdout, /^legal: \d+\.\d+ bits\/byte$/m);
  t.regex(r.stdout, /^layer 1: MI\(domain; expert\) = /m);
  t.regex(r.stdout, /^eval at step 30: \d+\.\d+ bits\/byte$/m, 'the evaluation arrives as an event of trainSteps');
});

test('trainSteps stops with a checkpoint when the loop breaks early', async (t) => {
  const { trainSteps } = await import('../src/index.js');
  const { existsSync, mkdtempSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'moe-steps-'));
  const cfg = {
    model: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 1 },
    data: { seqLen: 16, tokenizer: { kind: 'byte' } },
    batch: { ranks: 1, accumSteps: 1, microBatch: 2 },
    train: { steps: 50, evalEvery: 50, evalTokens: 64, progress: false },
  };
  const seen: number[] = [];
  for await (const m of trainSteps(cfg, { outDir: dir })) {
    seen.push(m.step);
    if (m.step === 4) break;
  }
  t.deepEqual(seen, [0, 1, 2, 3, 4]);
  const { latestCheckpoint } = await import('../src/trainer/runfolder.js');
  t.true(existsSync(join(latestCheckpoint(dir)!, 'model.safetensors')));
  rmSync(dir, { recursive: true });
});
