// Fault 10 of the reliability review: `--set __proto__.x=1` wrote into Object.prototype, and the
// addon's memory was invisible to V8 (500 dropped models reached 992 MB). Config overrides now stop
// at prototype keys, and every model and layer reports its native memory to V8, so dropped ones
// are collected without an explicit GC.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { MoeModel, type ModelConfig } from '../index.js';

const CFG: ModelConfig = {
  vocab_size: 256, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 16, moe_intermediate_size: 64, num_experts: 8, num_experts_per_tok: 2, max_position_embeddings: 64, seed: 1,
};

test('--set cannot reach a prototype', (t) => {
  for (const key of ['__proto__.polluted', 'constructor.prototype.polluted', 'train.__proto__.steps', 'model.prototype']) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'train', '--set', `${key}=1`, '--no-progress', '--out', '/nonexistent/x'], { encoding: 'utf8', timeout: 60_000 });
    t.is(r.status, 2, r.stderr);
    t.regex(r.stderr, /^moe: error \[INVALID_CONFIG\]: --set .*: not a config field/, key);
  }
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'train', '--set', 'train=3', '--set', 'train.steps=4', '--out', '/nonexistent/x'], { encoding: 'utf8', timeout: 60_000 });
  t.regex(r.stderr, /^moe: error \[INVALID_CONFIG\]: --set train\.steps: train is not a section/);
  t.is(({} as Record<string, unknown>).polluted, undefined);
});

test('a model reports its native memory to V8, and gives it back on dispose', (t) => {
  const before = process.memoryUsage().external;
  const m = new MoeModel(CFG);
  const bytes = 16 * m.numParameters; // parameters, gradients, two AdamW moments
  const during = process.memoryUsage().external;
  t.true(during - before >= bytes, `external memory grew by ${during - before} for ${bytes} native bytes`);
  m.dispose();
  t.true(process.memoryUsage().external - before < bytes, 'dispose hands it back');
});

test('500 dropped models are collected without an explicit GC', (t) => {
  // A child without --expose-gc: only V8's own heuristics, driven by the reported memory, free them.
  const script = `
    import { MoeModel } from './index.js';
    const cfg = ${JSON.stringify(CFG)};
    let collected = 0;
    const reg = new FinalizationRegistry(() => collected++);
    for (let i = 0; i < 500; i++) {
      reg.register(new MoeModel(cfg), i);
      if (i % 25 === 0) await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 50));
    console.log(JSON.stringify({ collected, rssMB: Math.round(process.memoryUsage().rss / 2 ** 20) }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { collected: number; rssMB: number };
  const perModel = (16 * 2 * (256 * 64) + 16 * 2 * (4 * 16 * 64 * 2 + 2 * 16 * 64 * 2 + 8 * 64 + 8 * 64 * 64 * 3)) / 2 ** 20;
  t.log(`${out.collected} of 500 models collected, RSS ${out.rssMB} MB (${(500 * perModel).toFixed(0)} MB if none were)`);
  t.true(out.collected >= 400, `collected ${out.collected}`);
  t.true(out.rssMB < 500 * perModel * 0.5, `RSS ${out.rssMB} MB`);
});
