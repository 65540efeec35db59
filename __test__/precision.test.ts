// Mixed precision through the API and the trainer: `train.precision: "bf16"` reaches every replica
// (MoeModel.precision), changes the numbers by what bfloat16 inputs allow and no more, is checked
// like every other setting, and cannot change on resume. The error of bf16 against transformers'
// f32 on the reference fixtures is the Rust test `cargo test --test reference bf16`; CPU and GPU
// agreement in bf16 is `cargo test moe_block_matches_cpu matmul_matches_cpu`.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import { parseTrainConfig } from '../src/trainer/config.js';
import { readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const base = (precision: string) => ({
  model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 24, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true },
  data: { seqLen: 32, tokenizer: { kind: 'byte' } },
  batch: { ranks: 2, accumSteps: 2, microBatch: 2 },
  balance: { terms: [{ scope: 'global', coef: 0.01 }] },
  optim: { lr: 3e-3, warmupSteps: 1 },
  train: { steps: 8, evalEvery: 8, evalTokens: 256, progress: false, seed: 3, device: 'cpu', precision },
});

test('the setting on the model: default f32, names checked, changing it drops the stored forward', async (t) => {
  const m = new MoeModel({ ...base('f32').model, vocab_size: 50, max_position_embeddings: 32 } as never, { device: 'cpu' });
  try {
    t.is(m.precision, 'f32');
    t.throws(() => m.setPrecision('fp16' as never), { code: 'INVALID_ARGUMENT', message: /precision: expected f32 \| bf16/ });
    t.is(m.precision, 'f32');
    const tokens = Uint32Array.from({ length: 16 }, (_, i) => (i * 7) % 50);
    const f32 = await m.logits(tokens, 2);
    await m.forward(tokens, 2);
    m.setPrecision('bf16');
    t.is(m.precision, 'bf16');
    await t.throwsAsync(m.backward(new Float32Array(2 * 2 * 4), { lmScale: 1 / 14 }), { code: 'INVALID_STATE' });
    const bf16 = await m.logits(tokens, 2);
    let worst = 0;
    for (let i = 0; i < f32.length; i++) worst = Math.max(worst, Math.abs(f32[i] - bf16[i]));
    // bf16 operands are off by up to 2^-9 relative: the logits move, by little
    t.true(worst > 1e-5 && worst < 5e-2, `bf16 vs f32 logits: max |Δ| = ${worst}`);
    await m.forward(tokens, 2);
    await m.backward(new Float32Array(2 * 2 * 4), { lmScale: 1 / 14 });
  } finally {
    m.dispose();
  }
});

test('a bf16 run trains like the f32 run, within what bf16 inputs allow', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'moe-precision-'));
  try {
    const losses = async (precision: string) => {
      const dir = join(root, precision);
      await train(base(precision), { outDir: dir });
      return readStepRows(join(dir, 'metrics.jsonl')).map((r) => r.loss);
    };
    const [f32, bf16] = [await losses('f32'), await losses('bf16')];
    t.is(bf16.length, 8);
    t.notDeepEqual(bf16, f32, 'bf16 must change the numbers');
    for (let i = 0; i < f32.length; i++) t.true(Math.abs(bf16[i] - f32[i]) < 0.02 * f32[i], `step ${i + 1}: bf16 ${bf16[i]} vs f32 ${f32[i]}`);
    t.true(bf16.at(-1)! < bf16[0], 'the bf16 run learns');
    // a resume cannot change the numerics of the steps it continues
    const cfg = { ...base('f32'), train: { ...base('f32').train, steps: 9 } };
    await t.throwsAsync(train(cfg, { outDir: join(root, 'bf16'), resume: true }), { code: 'RESUME_CONFLICT', message: /train\.precision "bf16" -> "f32"/ });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('the config names a bad precision', (t) => {
  t.throws(() => parseTrainConfig({ train: { precision: 'fp16' } }), { code: 'INVALID_CONFIG', message: /^train\.precision: / });
});
