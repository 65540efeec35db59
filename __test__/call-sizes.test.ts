// Fault 5 of the reliability review: sizes no machine can hold aborted Node ("memory allocation of
// … bytes failed"). Each is now refused before anything is allocated — OUT_OF_MEMORY naming the
// size, or INVALID_CONFIG when the sizes overflow — from the constructor, a forward, the CLI, and a
// checkpoint's config.json. MOE_MEMORY_LIMIT makes the budget the same on every machine.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkModelConfig, MoeLayer, MoeModel, type ModelConfig } from '../index.js';

const LIMIT = String(8 * 2 ** 30); // 8 GiB
process.env.MOE_MEMORY_LIMIT = LIMIT;

const CFG: ModelConfig = {
  vocab_size: 32, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 4, moe_intermediate_size: 12, num_experts: 4, num_experts_per_tok: 2, max_position_embeddings: 4096, seed: 1,
};

test('a model, a layer and a forward too large for the machine fail with OUT_OF_MEMORY naming the size', async (t) => {
  const e1 = t.throws(() => new MoeModel({ ...CFG, vocab_size: 2 ** 31 }), { code: 'OUT_OF_MEMORY' });
  t.regex(e1!.message, /need \d+(\.\d)? [KMGTPE]iB/);
  t.throws(() => checkModelConfig({ ...CFG, vocab_size: 2 ** 31 }), { code: 'OUT_OF_MEMORY' });
  t.throws(() => new MoeLayer({ hidden_size: 512, moe_intermediate_size: 256, num_experts: 1e6, num_experts_per_tok: 2 }), { code: 'OUT_OF_MEMORY' });
  t.throws(() => new MoeModel({ ...CFG, hidden_size: 2 ** 53, num_experts: 2 ** 53, moe_intermediate_size: 2 ** 53 }), { code: 'INVALID_CONFIG', message: /overflow/ });
  const m = new MoeModel(CFG);
  // 2^20 tokens in 256 sequences of 4096: the attention probabilities alone are 2^36 floats a layer.
  const tokens = new Uint32Array(2 ** 20);
  const err = await t.throwsAsync(m.forward(tokens, 256), { code: 'OUT_OF_MEMORY' });
  t.regex(err!.message, /a forward on 256 sequences of 4096 tokens/);
  await m.forward(tokens.subarray(0, 64), 2); // and the model still works
});

test('the CLI and a checkpoint whose config.json asks for too much fail with a code, not an abort', async (t) => {
  const env = { ...process.env, MOE_MEMORY_LIMIT: LIMIT };
  const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', env, timeout: 60_000 });
  const r = cli('train', '--set', 'model.num_experts=4096', '--set', 'model.hidden_size=4096', '--no-progress', '--out', join(tmpdir(), `moe-never-${process.pid}`));
  t.is(r.status, 2, r.stderr);
  t.regex(r.stderr, /^moe: error \[OUT_OF_MEMORY\]: /);
  const dir = mkdtempSync(join(tmpdir(), 'moe-huge-'));
  const m = new MoeModel(CFG);
  await m.save(dir, '{"step":0}', { 'tokenizer.json': '{}' });
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, vocab_size: 2 ** 31, num_experts: 2 ** 20 }));
  unlinkSync(join(dir, 'moe_checkpoint.json')); // else the checksum refuses the edited file first
  await t.throwsAsync(MoeModel.fromCheckpoint(dir), { code: 'OUT_OF_MEMORY' });
  for (const cmd of [['eval', dir], ['sample', dir]]) {
    const c = cli(...cmd);
    t.is(c.status, 2, c.stderr);
    t.regex(c.stderr, /^moe: error \[OUT_OF_MEMORY\]: /, cmd[0]);
  }
  rmSync(dir, { recursive: true });
});
