// Every architecture trains under every balance scope, the z-loss and loss-free balancing at once:
// the balance engine sees only the routing statistics of the layers with experts, whatever else the
// model has (dense layers, a shared expert, sliding windows, another q/k norm).

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const SIZES = { hidden_size: 32, num_hidden_layers: 3, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2 };
const ARCHS: Record<string, { model: Record<string, unknown>; moeLayers: number[] }> = {
  'qwen3_moe with a dense layer': { model: { mlp_only_layers: [1], intermediate_size: 24 }, moeLayers: [0, 2] },
  'qwen2_moe: shared expert, dense layers, a sliding window': {
    model: { model_type: 'qwen2_moe', shared_expert_intermediate_size: 24, decoder_sparse_step: 2, intermediate_size: 24, sliding_window: 6, sliding_layers: [0] },
    moeLayers: [1],
  },
  olmoe: { model: { model_type: 'olmoe', norm_topk_prob: false }, moeLayers: [0, 1, 2] },
  'mixtral with a sliding window': { model: { model_type: 'mixtral', sliding_window: 6 }, moeLayers: [0, 1, 2] },
};
const SCOPES = ['sequence', 'micro', 'dp', 'global', 'global-exact', 'shuffle'];

for (const [name, arch] of Object.entries(ARCHS)) {
  test(`${name}: every scope, the z-loss and loss-free balancing`, async (t) => {
    const out = mkdtempSync(join(tmpdir(), 'moe-arch-'));
    try {
      await train(
        {
          model: { ...SIZES, ...arch.model },
          data: { seqLen: 16, tokenizer: { kind: 'byte' } },
          batch: { ranks: 2, accumSteps: 2, microBatch: 2 },
          balance: { terms: SCOPES.map((scope) => ({ scope, coef: 0.01 })), zLoss: 1e-3, lossFree: { scope: 'global', rate: 1e-2 } },
          train: { steps: 3, evalEvery: 3, evalTokens: 64, progress: false, device: 'cpu' },
        },
        { outDir: out },
      );
      const rows = readStepRows(join(out, 'metrics.jsonl'));
      t.is(rows.length, 3);
      for (const r of rows) {
        t.true(Number.isFinite(r.loss));
        t.deepEqual(Object.keys(r.lbl).sort(), [...SCOPES].sort());
        for (const s of SCOPES) t.is(r.lbl[s].length, arch.moeLayers.length, `${s}: a value per layer with experts`);
      }
      const m = await MoeModel.fromCheckpoint(latestCheckpoint(out)!);
      t.deepEqual(m.moeLayers, arch.moeLayers);
      t.is(m.routerBias.length, arch.moeLayers.length * SIZES.num_experts);
      t.true(m.routerBias.some((b) => b !== 0), 'loss-free balancing moved the biases');
      m.dispose();
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
}
