// Starting a run from a checkpoint (`initFrom`, `moe train --init-from DIR`): the model section
// comes from the checkpoint and a differing field is one line naming it; the weights are the
// checkpoint's, the optimiser is fresh, the tokenizer is the folder's unless one is named, and
// the run resumes without the weights it started from.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel, Tokenizer, type ModelConfig } from '../index.js';
import { parseTrainConfig, withCheckpointModel } from '../src/trainer/config.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

/** A Qwen2-MoE: a dense first layer, a shared expert beside 4 routed ones, q/k/v biases. */
const ARCH: ModelConfig = {
  model_type: 'qwen2_moe', vocab_size: 300, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2,
  shared_expert_intermediate_size: 32, decoder_sparse_step: 2, intermediate_size: 48, max_position_embeddings: 64, seed: 9,
};
const SHARED = 'model.layers.1.mlp.shared_expert.up_proj.weight';

/** A "pretrained" checkpoint with a training state (3 steps) and the byte tokenizer beside it. */
async function pretrained(dir: string): Promise<Float32Array> {
  const m = new MoeModel(ARCH, { device: 'cpu' });
  const tokens = Uint32Array.from({ length: 32 }, (_, i) => (i * 37) % 257);
  for (let s = 0; s < 3; s++) {
    await m.forward(tokens, 2);
    await m.backward(new Float32Array(m.moeLayers.length * 2 * ARCH.num_experts), { lmScale: 1 / 30 });
    await m.step({ lr: 1e-2 });
    m.zeroGrad();
  }
  await m.save(dir, JSON.stringify({ note: 'a state the fine-tuning run must not take' }), { 'tokenizer.json': Tokenizer.bytes().toJson() });
  const w = m.getParameter(SHARED);
  m.dispose();
  return w;
}

const run = (initFrom: string, over: Record<string, unknown> = {}) => ({
  initFrom,
  data: { corpus: 'embedded', seqLen: 16 },
  batch: { ranks: 2, accumSteps: 1, microBatch: 2 },
  optim: { lr: 1e-9, minLr: 0, warmupSteps: 0 },
  train: { steps: 2, evalEvery: 2, evalTokens: 64, progress: false, device: 'cpu' },
  ...over,
});

test('the model section comes from the checkpoint; a differing field, a missing folder, an unknown architecture are one line each', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'moe-init-'));
  try {
    const dir = join(root, 'pretrained');
    await pretrained(dir);
    const cfg = withCheckpointModel(parseTrainConfig(run(dir)));
    t.like(cfg.model, { model_type: 'qwen2_moe', vocab_size: 300, shared_expert_intermediate_size: 32, decoder_sparse_step: 2, intermediate_size: 48, qkv_bias: true });
    t.deepEqual(cfg.data.tokenizer, { kind: 'file', path: join(dir, 'tokenizer.json') }, "the folder's tokenizer");
    t.deepEqual(withCheckpointModel(parseTrainConfig(run(dir, { data: { corpus: 'embedded', seqLen: 16, tokenizer: { kind: 'byte' } } }))).data.tokenizer, { kind: 'byte' }, 'unless one is named');
    t.notThrows(() => withCheckpointModel(parseTrainConfig(run(dir, { model: { hidden_size: 32 } }))), 'an equal value is no conflict');
    const e = t.throws(() => withCheckpointModel(parseTrainConfig(run(dir, { model: { hidden_size: 64 } }))), { code: 'INVALID_CONFIG' });
    t.regex(e!.message, /^model\.hidden_size: 64 differs from hidden_size = 32 of .*pretrained\/config\.json/);
    t.throws(() => withCheckpointModel(parseTrainConfig(run(dir, { data: { corpus: 'embedded', seqLen: 128 } }))), { code: 'INVALID_CONFIG', message: /^data\.seqLen: 128 exceeds max_position_embeddings = 64/ });
    t.throws(() => withCheckpointModel(parseTrainConfig(run(join(root, 'nowhere')))), { code: 'CHECKPOINT_MISSING' });
    const other = join(root, 'deepseek');
    mkdirSync(other);
    writeFileSync(join(other, 'config.json'), JSON.stringify({ model_type: 'deepseek_v3', vocab_size: 300 }));
    t.throws(() => withCheckpointModel(parseTrainConfig(run(other))), { code: 'UNSUPPORTED_MODEL', message: /model_type/ });
    // The CLI flag is the same setting.
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'train', '--init-from', dir, '--set', 'model.num_experts=8', '--out', join(root, 'cli')], { encoding: 'utf8' });
    t.is(r.status, 2);
    t.regex(r.stderr, /^moe: error \[INVALID_CONFIG\]: model\.num_experts: 8 differs from num_experts = 4/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("a run starts from the checkpoint's weights with a fresh optimiser, saves its architecture, and resumes without its weights", async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'moe-init-'));
  try {
    const dir = join(root, 'pretrained');
    const before = await pretrained(dir);
    const out = join(root, 'run');
    await train(run(dir), { outDir: out });
    const tuned = await MoeModel.fromCheckpoint(latestCheckpoint(out)!);
    t.is(tuned.optimizerStep, 2, 'a fresh optimiser: 2 steps, not the 3 of the checkpoint plus 2');
    t.like(tuned.config, { model_type: 'qwen2_moe', shared_expert_intermediate_size: 32, num_experts: 4 });
    t.deepEqual(tuned.moeLayers, [1]);
    const after = tuned.getParameter(SHARED);
    const moved = Math.max(...after.map((v, i) => Math.abs(v - before[i])));
    t.true(moved < 1e-6, `the checkpoint's weights (lr 1e-9 moved them by ${moved})`);
    tuned.dispose();
    // A scratch model of the same architecture is nowhere near them.
    const scratch = new MoeModel({ ...ARCH, seed: 1 });
    t.true(Math.max(...scratch.getParameter(SHARED).map((v, i) => Math.abs(v - before[i]))) > 1e-3);
    scratch.dispose();
    // The run names the whole architecture: it resumes without the starting weights and config
    // (the tokenizer it names stays).
    for (const f of ['model.safetensors', 'config.json', 'training_state.safetensors', 'moe_checkpoint.json']) rmSync(join(dir, f));
    await train({ train: { steps: 3 } }, { outDir: out, resume: true });
    t.deepEqual(readStepRows(join(out, 'metrics.jsonl')).map((r) => r.step), [0, 1, 2]);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
