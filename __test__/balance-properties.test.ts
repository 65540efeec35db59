// DESIGN §2 properties 1–5, proven on the real MoE layer with R virtual data-parallel ranks.
// The 8 sequences of one global batch have uneven valid-token counts (VALID); every partition
// (R, A, b) of them must give the gradient its scope defines, with no dependence on R, A or b.

import test from 'ava';
import { CFG, NSEQ, T_GLOB, relDiff, runStep, type StepResult } from './helpers.js';

const ALPHA = 0.3;
const PARTITIONS: [number, number, number][] = [
  [1, 1, 8],
  [2, 2, 2],
  [4, 2, 1],
  [1, 8, 1],
];
const E = CFG.num_experts;
const K = CFG.num_experts_per_tok;
const TOL = 2e-6; // f32 sums in another order (other GEMM blockings and all-reduce groupings)

test('property 1: global-exact gives the same gradient and LBL for every (R, A, b)', async (t) => {
  const cfg = { terms: [{ scope: 'global-exact' as const, coef: ALPHA }], zLoss: 0.01 };
  const ref = await runStep(1, 1, 8, cfg);
  const noBalance = await runStep(1, 1, 8, { terms: [] });
  t.true(relDiff(ref.grads, noBalance.grads) > 1e-3, 'the balance term moves the gradient (the test can fail)');
  for (const [R, A, b] of PARTITIONS.slice(1)) {
    const r = await runStep(R, A, b, cfg);
    const d = relDiff(r.grads, ref.grads);
    t.log(`(R, A, b) = (${R}, ${A}, ${b}): max rel |Δgrad| = ${d.toExponential(2)}`);
    t.true(d < TOL);
    t.true(Math.abs(r.step.lbl['global-exact'][0] - ref.step.lbl['global-exact'][0]) < 1e-6);
    t.true(Math.abs(r.step.zLoss - ref.step.zLoss) < 1e-7);
  }
});

test('property 2: dp scope with A = 1 is the whole batch for every R (no 1/R weakening)', async (t) => {
  const cfg = { terms: [{ scope: 'dp' as const, coef: ALPHA }] };
  const exact = await runStep(1, 1, 8, { terms: [{ scope: 'global-exact', coef: ALPHA }] });
  for (const [R, b] of [
    [1, 8],
    [2, 4],
    [4, 2],
    [8, 1],
  ]) {
    const r = await runStep(R, 1, b, cfg);
    t.true(relDiff(r.grads, exact.grads) < TOL, `R = ${R}`);
  }
});

test('property 2: uneven valid tokens normalise by T_glob, and pressures follow the formula', async (t) => {
  // Micro scope on (1, 8, 1): each sequence is its own micro-batch, f from its own counts.
  const r = await runStep(1, 8, 1, { terms: [{ scope: 'micro', coef: ALPHA }] });
  for (let m = 0; m < NSEQ; m++) {
    const s = r.stats[m][0];
    for (let i = 0; i < E; i++) {
      const f = s.counts[i] / (K * s.validTokens[0]);
      t.true(Math.abs(r.pressure[m][0][i] - (ALPHA * E * f) / T_GLOB) < 1e-7);
    }
  }
  // And the logged LBL is the token-weighted mean: sum_q (T_q/T_glob) E sum_i f_i P_i(q).
  let want = 0;
  for (let m = 0; m < NSEQ; m++) {
    const s = r.stats[m][0];
    for (let i = 0; i < E; i++) want += (E * (s.counts[i] / (K * s.validTokens[0])) * s.scoreSums[i]) / T_GLOB;
  }
  t.true(Math.abs(r.step.lbl.micro[0] - want) < 1e-6);
  t.true(Math.abs(r.step.lblMicro[0] - want) < 1e-6, 'the micro monitor agrees with a micro term');
});

test('property 3: global with A = 1 equals global-exact', async (t) => {
  const g = await runStep(2, 1, 4, { terms: [{ scope: 'global', coef: ALPHA }] });
  const x = await runStep(2, 1, 4, { terms: [{ scope: 'global-exact', coef: ALPHA }] });
  t.true(relDiff(g.grads, x.grads) < TOL);
});

/** Algorithm 1 written out again from the captured statistics: the expected pressure[m][r]. */
function algorithm1(r: StepResult, R: number, A: number, b: number): Float32Array[][] {
  const buf = new Float64Array(E + 1);
  return Array.from({ length: A }, (_, m) => {
    for (let rank = 0; rank < R; rank++) {
      const s = r.stats[m][rank];
      for (let q = 0; q < b; q++) {
        for (let i = 0; i < E; i++) buf[i] += s.counts[q * E + i];
        buf[E] += s.validTokens[q];
      }
    }
    return Array.from({ length: R }, () => {
      const p = new Float32Array(b * E);
      for (let q = 0; q < b; q++) for (let i = 0; i < E; i++) p[q * E + i] = (ALPHA * E * (buf[i] / (K * buf[E]))) / T_GLOB;
      return p;
    });
  });
}

test('property 3: global with A > 1 equals Algorithm 1 evaluated directly', async (t) => {
  for (const [R, A, b] of [
    [2, 2, 2],
    [1, 8, 1],
    [4, 2, 1],
  ]) {
    const r = await runStep(R, A, b, { terms: [{ scope: 'global', coef: ALPHA }] });
    const want = algorithm1(r, R, A, b);
    for (let m = 0; m < A; m++) for (let k = 0; k < R; k++) t.true(relDiff(r.pressure[m][k], want[m][k]) < 1e-7, `m=${m} r=${k}`);
    const exact = await runStep(R, A, b, { terms: [{ scope: 'global-exact', coef: ALPHA }] });
    t.true(relDiff(r.grads, exact.grads) > 1e-4, 'the buffer is cumulative, so A > 1 differs from exact');
  }
});

test('balanceSequences: N = 1 is sequence scope, N = R b is dp, N = global batch is global', async (t) => {
  const pairs: [number, number, number, object, object][] = [
    [2, 2, 2, { balanceSequences: 1 }, { scope: 'sequence' }],
    [2, 2, 2, { balanceSequences: 4 }, { scope: 'dp' }],
    [2, 2, 2, { balanceSequences: 8 }, { scope: 'global' }],
    [1, 4, 2, { balanceSequences: 2 }, { scope: 'micro' }],
  ];
  for (const [R, A, b, x, y] of pairs) {
    const a = await runStep(R, A, b, { terms: [{ ...x, coef: ALPHA }] });
    const c = await runStep(R, A, b, { terms: [{ ...y, coef: ALPHA }] });
    t.deepEqual(a.pressure, c.pressure, JSON.stringify(x));
  }
});

test('balanceSequences: groups that span ranks match a direct evaluation', async (t) => {
  // (R, A, b) = (4, 2, 1), N = 2: groups are ranks {0, 1} and {2, 3} of each micro-step.
  const r = await runStep(4, 2, 1, { terms: [{ balanceSequences: 2, coef: ALPHA }] });
  for (let m = 0; m < 2; m++) {
    for (let rank = 0; rank < 4; rank++) {
      const mates = [rank - (rank % 2), rank - (rank % 2) + 1].map((k) => r.stats[m][k]);
      const n = mates.reduce((a, s) => a + s.validTokens[0], 0);
      for (let i = 0; i < E; i++) {
        const c = mates.reduce((a, s) => a + s.counts[i], 0);
        t.true(Math.abs(r.pressure[m][rank][i] - (ALPHA * E * (c / (K * n))) / T_GLOB) < 1e-7);
      }
    }
  }
});

test('property 4: LBL = 1 at perfect balance, at every scope and for every K', async (t) => {
  // A zero router gives uniform scores P_i = 1/E, so E * sum_i f_i P_i = sum_i f_i = 1 whatever f is.
  for (const k of [1, 2, 4]) {
    const config = { ...CFG, num_experts_per_tok: k };
    const terms = (['sequence', 'micro', 'dp', 'global', 'global-exact'] as const).map((scope) => ({ scope, coef: 0.1 }));
    const r = await runStep(2, 2, 2, { terms }, { config, setup: (l) => l.setParameter('gate.weight', new Float32Array(E * CFG.hidden_size)) });
    for (const [name, v] of Object.entries(r.step.lbl)) t.true(Math.abs(v[0] - 1) < 1e-6, `K=${k} ${name}: ${v[0]}`);
    t.true(Math.abs(r.step.lblGlobal[0] - 1) < 1e-6 && Math.abs(r.step.lblMicro[0] - 1) < 1e-6);
  }
});

test('property 5: the exact pre-pass and evaluation forwards never advance the buffer', async (t) => {
  const both = await runStep(2, 2, 2, { terms: [{ scope: 'global', coef: ALPHA }, { scope: 'global-exact', coef: ALPHA }] });
  const g = await runStep(2, 2, 2, { terms: [{ scope: 'global', coef: ALPHA }] });
  const x = await runStep(2, 2, 2, { terms: [{ scope: 'global-exact', coef: ALPHA }] });
  for (let m = 0; m < 2; m++) {
    for (let r = 0; r < 2; r++) {
      const sum = g.pressure[m][r].map((v, i) => v + x.pressure[m][r][i]);
      t.true(relDiff(both.pressure[m][r], sum) < 1e-7);
    }
  }
  const withEval = await runStep(2, 2, 2, { terms: [{ scope: 'global', coef: ALPHA }] }, { evalBetween: true });
  t.deepEqual(withEval.pressure, g.pressure);
  t.deepEqual(withEval.grads, g.grads);
});
