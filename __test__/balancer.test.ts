// The balance engine on hand-built statistics: formulas checked against numbers worked out by hand,
// and every misuse refused with a stable code.

import test from 'ava';
import { Balancer, LocalGroup, SOLO, type MicroStats } from '../src/balance/index.js';

/** One layer, b = 1, E = 2, K = 1 statistics of one sequence. */
function seq(counts: [number, number], scores: [number, number], valid: number, z = 0): MicroStats {
  return { counts: Float32Array.from(counts), scoreSums: Float32Array.from(scores), zSums: Float32Array.of(z), validTokens: Float32Array.of(valid) };
}

const dims = { layers: 1, experts: 2, topK: 1, seqsPerMicro: 1, accumSteps: 2 };

test('micro and global pressures and LBL by hand, with uneven token counts', async (t) => {
  // Micro-batch 1: 3 tokens, all on expert 0. Micro-batch 2: 1 token on expert 1. T_glob = 4.
  const a = seq([3, 0], [2.4, 0.6], 3, 8);
  const b = seq([0, 1], [0.3, 0.7], 1, 2);
  const micro = new Balancer({ terms: [{ scope: 'micro', coef: 0.5 }], zLoss: 0.1 }, dims, SOLO);
  await micro.beginStep(4);
  const p1 = await micro.microStep(a);
  const p2 = await micro.microStep(b);
  // f = (1, 0) then (0, 1); lambda = alpha E f / T_glob = 0.5 * 2 * f / 4.
  t.deepEqual(Array.from(p1.pressure), [0.25, 0]);
  t.deepEqual(Array.from(p2.pressure), [0, 0.25]);
  t.is(p1.zScale, 0.1 / 4);
  const sm = await micro.endStep();
  // LBL_micro = (E / T_glob) sum_q f . scores = (2/4) (2.4 + 0.7) = 1.55.
  t.true(Math.abs(sm.lbl.micro[0] - 1.55) < 1e-6);
  // Global: f(B) = (3/4, 1/4), P(B) = (2.7/4, 1.3/4): LBL = 2 (0.75*0.675 + 0.25*0.325) = 1.175.
  t.true(Math.abs(sm.lblGlobal[0] - 1.175) < 1e-6);
  t.true(Math.abs(sm.zLoss - (0.1 * 10) / 4) < 1e-9);
  t.true(Math.abs(sm.balanceLoss - (0.5 * 1.55 + 0.25)) < 1e-6);

  const global = new Balancer({ terms: [{ scope: 'global', coef: 0.5 }] }, dims, SOLO);
  await global.beginStep(4);
  const g1 = await global.microStep(a);
  const g2 = await global.microStep(b);
  // Buffer after step 1: f = (1, 0); after step 2: counts (3, 1) over 4 tokens, f = (3/4, 1/4) —
  // normalised by the 4 accumulated tokens, not by "current tokens x steps" (1 x 2).
  t.deepEqual(Array.from(g1.pressure), [0.25, 0]);
  t.deepEqual(Array.from(g2.pressure), [0.1875, 0.0625]);
  const sg = await global.endStep();
  t.true(Math.abs(sg.lbl.global[0] - (2 / 4) * (1 * 2.4 + 0.75 * 0.3 + 0.25 * 0.7)) < 1e-6);
});

test('perfectly balanced counts give LBL = 1 whatever the scores', async (t) => {
  const bal = new Balancer({ terms: [{ scope: 'global', coef: 1 }] }, { ...dims, accumSteps: 1 }, SOLO);
  await bal.beginStep(4);
  await bal.microStep(seq([2, 2], [3.9, 0.1], 4));
  const s = await bal.endStep();
  t.true(Math.abs(s.lbl.global[0] - 1) < 1e-6);
  t.true(Math.abs(s.lblGlobal[0] - 1) < 1e-6);
});

test('two virtual ranks all-reduce counts for dp and global', async (t) => {
  const group = new LocalGroup(2);
  const d = { ...dims, accumSteps: 1 };
  const [r0, r1] = await Promise.all(
    [seq([3, 0], [2, 1], 3), seq([0, 1], [0.5, 0.5], 1)].map(async (s, r) => {
      const bal = new Balancer({ terms: [{ scope: 'dp', coef: 1 }] }, d, group.comm(r));
      await bal.beginStep(s.validTokens[0]);
      const p = await bal.microStep(s);
      return { p: p.pressure, step: await bal.endStep() };
    }),
  );
  // f = (3/4, 1/4) on both ranks; lambda = 1 * 2 * f / 4.
  t.deepEqual(Array.from(r0.p), [0.375, 0.125]);
  t.deepEqual(Array.from(r1.p), [0.375, 0.125]);
  t.deepEqual(r0.step, r1.step);
  t.is(r0.step.tokens, 4);
});

test('misuse is refused with stable codes', async (t) => {
  const bad = (cfg: unknown, d = dims) => t.throws(() => new Balancer(cfg, d, SOLO), { code: 'INVALID_CONFIG' });
  bad({ terms: [{ scope: 'nope', coef: 1 }] });
  bad({ terms: [{ coef: 1 }] });
  bad({ terms: [{ scope: 'micro', balanceSequences: 2, coef: 1 }] });
  bad({ terms: [{ scope: 'micro', coef: -1 }] });
  bad({ terms: [{ balanceSequences: 3, coef: 1 }] });
  bad({ terms: [{ scope: 'micro', coef: 1 }, { scope: 'micro', coef: 2 }] });
  bad({ terms: [] }, { ...dims, topK: 3 });

  const bal = new Balancer({ terms: [{ scope: 'global-exact', coef: 1 }] }, dims, SOLO);
  const s = seq([1, 0], [0.5, 0.5], 1);
  await t.throwsAsync(bal.microStep(s), { code: 'BALANCE_STATE' });
  await bal.beginStep(2);
  await t.throwsAsync(bal.microStep(s), { code: 'BALANCE_STATE' }, 'global-exact without its counts');
  await bal.setExactCounts([s, s]);
  await t.throwsAsync(bal.microStep({ ...s, counts: new Float32Array(3) }), { code: 'SHAPE_MISMATCH' });
  await bal.microStep(s);
  await t.throwsAsync(bal.endStep(), { code: 'BALANCE_STATE' }, 'endStep before all micro-steps');
  await bal.microStep(s);
  // A recomputed micro-batch cannot be counted again.
  await t.throwsAsync(bal.microStep(s), { code: 'BALANCE_STATE' });
  await bal.endStep();
});

test('auxiliary-loss-free votes: sign(mean - count) per group of the scope, averaged, times the rate', async (t) => {
  // One layer, E = 4, K = 1, b = 2 sequences, A = 2 micro-steps, one rank.
  const d = { layers: 1, experts: 4, topK: 1, seqsPerMicro: 2, accumSteps: 2 };
  const micro = (c: number[][]): MicroStats => ({
    counts: Float32Array.from(c.flat()),
    scoreSums: new Float32Array(8),
    zSums: new Float32Array(2),
    validTokens: Float32Array.from(c.map((r) => r.reduce((a, v) => a + v, 0))),
  });
  const steps = [micro([[3, 1, 0, 0], [0, 0, 2, 2]]), micro([[4, 0, 0, 0], [1, 1, 1, 1]])];
  const update = async (scope: string) => {
    const bal = new Balancer({ terms: [], lossFree: { scope, rate: 0.1 } }, d, SOLO);
    await bal.beginStep(16);
    for (const s of steps) await bal.microStep(s);
    return Array.from((await bal.endStep()).biasUpdate!, (v) => Number(v.toFixed(6)));
  };
  // Sequences (mean 1 each): votes (-1,0,1,1), (1,1,-1,-1), (-1,1,1,1), (0,0,0,0); 4 groups.
  t.deepEqual(await update('sequence'), [-0.025, 0.05, 0.025, 0.025]);
  // Micro-batches (3,1,2,2) and (5,1,1,1), mean 2: votes (-1,1,0,0), (-1,1,1,1); 2 groups.
  t.deepEqual(await update('micro'), [-0.1, 0.1, 0.05, 0.05]);
  // The global batch (8,2,3,3), mean 4: one group.
  t.deepEqual(await update('global'), [-0.1, 0.1, 0.1, 0.1]);
  // Without lossFree there is no update.
  const off = new Balancer({ terms: [{ scope: 'micro', coef: 0.1 }] }, d, SOLO);
  await off.beginStep(16);
  for (const s of steps) await off.microStep(s);
  t.is((await off.endStep()).biasUpdate, null);
});

test('auxiliary-loss-free at dp scope: each micro-step over all ranks is one group', async (t) => {
  // Two ranks, one sequence each; A = 1. The ranks see counts (2, 0) and (1, 1).
  const d = { layers: 1, experts: 2, topK: 1, seqsPerMicro: 1, accumSteps: 1 };
  const group = new LocalGroup(2);
  const run = async (rank: number, c: [number, number]) => {
    const bal = new Balancer({ terms: [], lossFree: { scope: 'dp', rate: 1 } }, d, group.comm(rank));
    await bal.beginStep(c[0] + c[1]);
    await bal.microStep(seq(c, [0, 0], c[0] + c[1]));
    return Array.from((await bal.endStep()).biasUpdate!);
  };
  // Summed counts (3, 1), mean 2: one group votes (-1, +1) — not two rank-level votes.
  const [u0, u1] = await Promise.all([run(0, [2, 0]), run(1, [1, 1])]);
  t.deepEqual(u0, [-1, 1]);
  t.deepEqual(u1, u0);
});

