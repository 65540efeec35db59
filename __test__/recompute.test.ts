// Activation recomputation through the trainer: for every balance scope, a run that keeps only
// each layer's input (full) or all but the attention probabilities (attention) logs exactly the
// step metrics of the run that keeps everything — loss, every LBL value, global and micro
// imbalance, gradient norm — and ends with a byte-identical checkpoint: the recomputed forward
// adds no routing statistics and routes exactly as the first. Two virtual ranks, two micro-batches
// each. On the CPU, and on the GPU where an adapter exists (CI: lavapipe, MOE_GPU_ADAPTER=software);
// without one the GPU half prints SKIPPED loudly (a failure when MOE_REQUIRE_GPU=1).

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import { variant } from '../src/compare.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const SCOPES = ['sequence', 'micro', 'dp', 'global', 'global-exact', 'shuffle', 'global+micro', 'bsz=4', 'bsz=2-exact', 'free-micro', 'free-global'];

const base = (device: string) => ({
  model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 24, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true },
  data: { seqLen: 20, tokenizer: { kind: 'byte' } },
  batch: { ranks: 2, accumSteps: 2, microBatch: 1 },
  balance: { terms: [{ scope: 'global', coef: 0.1 }], zLoss: 1e-3 },
  optim: { lr: 1e-2, warmupSteps: 1 },
  train: { steps: 3, evalEvery: 3, evalTokens: 64, progress: false, seed: 5, device },
});

/** Step rows without their timings, and the tensor bytes of the final checkpoint (after the
 * safetensors header, which holds a checkpoint id unique to each save). */
function outcome(dir: string) {
  const rows = readStepRows(join(dir, 'metrics.jsonl')).map(({ tokensPerSec, stepMs, ...rest }) => rest);
  const file = readFileSync(join(latestCheckpoint(dir)!, 'model.safetensors'));
  return { rows, weights: file.subarray(8 + Number(file.readBigUInt64LE(0))) };
}

async function check(t: ExecutionContext, device: string) {
  const root = mkdtempSync(join(tmpdir(), `moe-recompute-${device}-`));
  try {
    for (const scope of SCOPES) {
      const cfg = variant(base(device), scope) as Record<string, unknown>;
      const run = async (recompute: string) => {
        const dir = join(root, `${scope.replace(/[^\w.+=-]/g, '_')}-${recompute}`);
        await train({ ...cfg, train: { ...(cfg.train as object), recompute } }, { outDir: dir });
        return outcome(dir);
      };
      const kept = await run('none');
      t.is(kept.rows.length, 3);
      for (const recompute of ['attention', 'full']) {
        const again = await run(recompute);
        t.deepEqual(again.rows, kept.rows, `${device} ${scope} ${recompute}: step metrics`);
        t.true(again.weights.equals(kept.weights), `${device} ${scope} ${recompute}: weights after 3 steps`);
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('recomputation leaves every balance scope exact on the CPU', (t) => check(t, 'cpu'));

test('recomputation leaves every balance scope exact on the GPU', async (t) => {
  try {
    new MoeModel({ ...base('gpu').model, vocab_size: 50 } as never, { device: 'gpu' }).dispose();
  } catch (e) {
    if ((e as { code?: string }).code !== 'NO_DEVICE' || process.env.MOE_REQUIRE_GPU === '1') throw e;
    const line = `*** SKIPPED ${t.title}: ${(e as Error).message} ***`;
    console.error(`\n${line}\n`);
    t.log(line);
    return t.pass();
  }
  await check(t, 'gpu');
});

test('the setting on the model: default none, names checked, changing it drops the stored forward', async (t) => {
  const m = new MoeModel({ ...base('cpu').model, vocab_size: 50, max_position_embeddings: 32 } as never, { device: 'cpu' });
  try {
    t.is(m.recompute, 'none');
    t.throws(() => m.setRecompute('layers' as never), { code: 'INVALID_ARGUMENT', message: /recompute/ });
    const tokens = Uint32Array.from({ length: 16 }, (_, i) => (i * 7) % 50);
    await m.forward(tokens, 2);
    m.setRecompute('full');
    t.is(m.recompute, 'full');
    await t.throwsAsync(m.backward(new Float32Array(2 * 2 * 4), { lmScale: 1 / 14 }), { code: 'INVALID_STATE' });
    await m.forward(tokens, 2);
    await m.backward(new Float32Array(2 * 2 * 4), { lmScale: 1 / 14 });
  } finally {
    m.dispose();
  }
});
