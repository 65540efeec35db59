// Fault 10 of the reliability review: `--set __proto__.x=1` wrote into Object.prototype, and the
// addon's memory was invisible to V8 (500 dropped models reached 992 MB). Config overrides now stop
// at prototype keys, and every model and layer reports its native memory to V8, so dropped ones
// are collected without an explicit GC.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import type { ModelConfig } from '../index.js';

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

test('500 dropped models are collected without an explicit GC, driven by the native memory they report', (t) => {
  // A child without --expose-gc: only V8's own heuristics free them. The same loop with models of
  // a few kB (the same JS garbage per model, little native memory) is the control: V8 then sees no
  // reason to collect, so what frees the large ones is the memory they report.
  const script = `
    import { MoeModel } from './index.js';
    const run = async (cfg) => {
      let collected = 0;
      const reg = new FinalizationRegistry(() => collected++);
      for (let i = 0; i < 500; i++) {
        reg.register(new MoeModel(cfg), i);
        if (i % 25 === 0) await new Promise((r) => setImmediate(r));
      }
      await new Promise((r) => setTimeout(r, 50));
      return collected;
    };
    const small = await run({ ...${JSON.stringify(CFG)}, vocab_size: 8, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 4, moe_intermediate_size: 4, num_experts: 2 });
    const large = await run(${JSON.stringify(CFG)});
    console.log(JSON.stringify({ small, large, rssMB: Math.round(process.memoryUsage().rss / 2 ** 20) }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { small: number; large: number; rssMB: number };
  const perModel = (16 * 2 * (256 * 64) + 16 * 2 * (4 * 16 * 64 * 2 + 2 * 16 * 64 * 2 + 8 * 64 + 8 * 64 * 64 * 3)) / 2 ** 20;
  t.log(`collected without explicit GC: ${out.large} of 500 models of ${perModel.toFixed(1)} MB (RSS ${out.rssMB} MB; ${(500 * perModel).toFixed(0)} MB if none were), ${out.small} of 500 models of a few kB`);
  t.true(out.large >= 400, `collected ${out.large}`);
  t.true(out.small < out.large / 4, `the control collected ${out.small}`);
  t.true(out.rssMB < 500 * perModel * 0.5, `RSS ${out.rssMB} MB`);
});
