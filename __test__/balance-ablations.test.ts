// The balance options behind the paper's ablations, checked against numbers worked out by hand:
// exact Balance-BSZ groups (no buffer) against the buffer, the shuffle scope's random token subset
// (its draw, its masks, the counts a masked pre-pass gives on the real model, its pressures), and
// balance phases that switch the terms mid-training; then all three in short training runs.

import test from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import { Balancer, balanceAt, LocalGroup, parseBalanceConfig, phaseAt, SOLO, type MicroStats } from '../src/balance/index.js';
import { drawSubset, splitBySequence, stepSeed, validPositions } from '../src/balance/sample.js';
import { compare, variant } from '../src/compare.js';
import { readStepRows } from '../src/trainer/runfolder.js';
import { rng } from '../src/rng.js';
import { train } from '../src/trainer/train.js';

/** Statistics of b = 1 sequence, one layer, E = 2. */
function seq(counts: [number, number], valid: number, scores: [number, number] = [0, 0]): MicroStats {
  return { counts: Float32Array.from(counts), scoreSums: Float32Array.from(scores), zSums: new Float32Array(1), validTokens: Float32Array.of(valid) };
}

// Four sequences of one global batch: counts (expert 0, expert 1) and valid tokens; T_glob = 10.
const SEQS = [seq([3, 1], 4), seq([0, 2], 2), seq([1, 1], 2), seq([2, 0], 2)];
const dims4 = { layers: 1, experts: 2, topK: 1, seqsPerMicro: 1, accumSteps: 4 };

/** Pressures of the 4 micro-steps of one step (R = 1, A = 4, b = 1) under one term with alpha = 1. */
async function pressures(term: object): Promise<number[][]> {
  const bal = new Balancer({ terms: [term] }, dims4, SOLO);
  await bal.beginStep(10);
  if (bal.needsExactCounts) await bal.setExactCounts(SEQS);
  const out: number[][] = [];
  for (const s of SEQS) out.push(Array.from((await bal.microStep(s)).pressure, (v) => Number(v.toFixed(6))));
  await bal.endStep();
  return out;
}

test('Balance BSZ without the buffer: each group of N counted in full; with it: the counts so far', async (t) => {
  // N = 2, groups {s0, s1} and {s2, s3}. lambda = alpha E f / T_glob = 2 f / 10.
  // Exact: group 1 counts (3, 3) over 6 tokens, f = (1/2, 1/2); group 2 (3, 1) over 4, f = (3/4, 1/4).
  t.deepEqual(await pressures({ balanceSequences: 2, exact: true, coef: 1 }), [[0.1, 0.1], [0.1, 0.1], [0.15, 0.05], [0.15, 0.05]]);
  // Buffer (Algorithm 1 with a period of 2 micro-steps): s0 alone (3, 1)/4, then (3, 3)/6; reset;
  // s2 alone (1, 1)/2, then (3, 1)/4.
  t.deepEqual(await pressures({ balanceSequences: 2, coef: 1 }), [[0.15, 0.05], [0.1, 0.1], [0.1, 0.1], [0.15, 0.05]]);
  // N = the whole batch without the buffer is global-exact: (6, 4)/10.
  const whole = [[0.12, 0.08], [0.12, 0.08], [0.12, 0.08], [0.12, 0.08]];
  t.deepEqual(await pressures({ balanceSequences: 4, exact: true, coef: 1 }), whole);
  t.deepEqual(await pressures({ scope: 'global-exact', coef: 1 }), whole);
});

test('exact groups are the groups a micro-step over more ranks would form (sequence order m, r, q)', async (t) => {
  // The same 4 sequences as (R = 2, A = 2, b = 1): micro-step 0 holds s0 (rank 0) and s1 (rank 1),
  // so bsz=2 groups within the micro-step — no pre-pass, no buffer — and must equal the exact groups.
  const group = new LocalGroup(2);
  const d = { ...dims4, accumSteps: 2 };
  const perRank = await Promise.all(
    [0, 1].map(async (r) => {
      const bal = new Balancer({ terms: [{ balanceSequences: 2, coef: 1 }] }, d, group.comm(r));
      t.false(bal.needsExactCounts);
      await bal.beginStep(SEQS[r].validTokens[0] + SEQS[2 + r].validTokens[0]);
      const p = [await bal.microStep(SEQS[r]), await bal.microStep(SEQS[2 + r])].map((x) => Array.from(x.pressure, (v) => Number(v.toFixed(6))));
      await bal.endStep();
      return p;
    }),
  );
  const exact = await pressures({ balanceSequences: 2, exact: true, coef: 1 });
  t.deepEqual([perRank[0][0], perRank[1][0], perRank[0][1], perRank[1][1]], exact);
});

test('exact Balance BSZ refuses groups that do not divide the global batch', (t) => {
  t.throws(() => new Balancer({ terms: [{ balanceSequences: 3, exact: true, coef: 1 }] }, dims4, SOLO), { code: 'INVALID_CONFIG' });
  t.throws(() => new Balancer({ terms: [{ scope: 'micro', exact: true, coef: 1 }] }, dims4, SOLO), { code: 'INVALID_CONFIG' });
});

test('drawSubset: the first n places of a Fisher-Yates shuffle, by hand', (t) => {
  // total 5, uniforms 0.5 then 0: place 0 swaps with 0 + floor(0.5 * 5) = 2 -> [2, 1, 0, 3, 4];
  // place 1 swaps with 1 + floor(0 * 4) = 1 (itself). Taken: {2, 1}.
  const script = [0.5, 0];
  t.deepEqual(drawSubset(5, 2, () => script.shift()!), [1, 2]);
  // uniforms 0.99, 0.99, 0.99: place 0 <-> 4, place 1 <-> 4 (now holding 0), place 2 <-> 4 (now 1).
  t.deepEqual(drawSubset(5, 3, () => 0.99), [0, 1, 4]);
  t.deepEqual(drawSubset(4, 9, () => 0.3), [0, 1, 2, 3], 'n >= total takes everything');
  // Uniform without replacement: over 4000 seeded draws of 3 of 8, each index is taken 1500 +- 5%.
  const hits = new Array<number>(8).fill(0);
  const r = rng(7);
  for (let i = 0; i < 4000; i++) for (const k of drawSubset(8, 3, r)) hits[k]++;
  for (const h of hits) t.true(Math.abs(h - 1500) < 75, `hits ${hits.join(' ')}`);
});

test('valid positions and the split of a draw over sequences, by hand', (t) => {
  // S = 5: positions 0..3 predict tokens 1..4. Mask (S) 1 1 0 1 1: token 2 is no target, position 1 drops.
  t.deepEqual(validPositions(5, null), [0, 1, 2, 3]);
  t.deepEqual(validPositions(5, Uint8Array.of(1, 1, 0, 1, 1)), [0, 2, 3]);
  t.deepEqual(validPositions(3, Uint8Array.of(9, 9, 9, 1, 0, 1), 1), [1], 'second sequence of a (2, 3) mask');
  // Valid counts (3, 0, 2): global indices 0..2 are sequence 0, 3..4 sequence 2.
  t.deepEqual(splitBySequence([0, 2, 3], [3, 0, 2]), [[0, 2], [], [0]]);
  t.not(stepSeed(1, 2), stepSeed(2, 1));
  t.is(stepSeed(5, 9), stepSeed(5, 9));
});

test('shuffle: one subset of micro-batch size from the whole global batch, the same on every rank', async (t) => {
  // R = 2 ranks, A = 2 micro-steps, b = 2 sequences of S = 6 tokens: 5 valid positions per
  // sequence, T_glob = 40, n = round(40 / (R A)) = 10. One sequence has a training mask.
  const S = 6;
  const d = { layers: 1, experts: 2, topK: 1, seqsPerMicro: 2, accumSteps: 2 };
  const group = new LocalGroup(2);
  const trainingMask = Uint8Array.from({ length: 2 * S }, (_, i) => (i === 3 ? 0 : 1)); // rank 1, m = 0, q = 0: position 2 no target
  const masks = await Promise.all(
    [0, 1].map(async (r) => {
      const bal = new Balancer({ terms: [{ scope: 'shuffle', coef: 1 }] }, d, group.comm(r));
      await bal.beginStep(r === 0 ? 20 : 19);
      return bal.sampleMasks(S, 3, 17, r === 1 ? [trainingMask, null] : undefined);
    }),
  );
  // The union of both ranks' masks is the draw of 10 among the 39 valid positions (global order
  // m, r, q), mapped to targets t + 1.
  const valid = [0, 1].flatMap((m) => [0, 1].flatMap((r) => [0, 1].map((q) => (m === 0 && r === 1 && q === 0 ? 4 : 5))));
  t.is(valid.reduce((a, v) => a + v, 0), 39);
  const n = Math.round(39 / 4);
  const chosen = splitBySequence(drawSubset(39, n, rng(stepSeed(3, 17))), valid);
  let selected = 0;
  for (const m of [0, 1]) {
    for (const r of [0, 1]) {
      const mask = masks[r]![m];
      for (const q of [0, 1]) {
        const ps = validPositions(S, r === 1 && m === 0 ? trainingMask : null, q);
        const want = new Set(chosen[(m * 2 + r) * 2 + q].map((k) => ps[k] + 1));
        for (let t1 = 0; t1 < S; t1++) t.is(mask[q * S + t1], want.has(t1) ? 1 : 0, `m ${m} r ${r} q ${q} target ${t1}`);
        selected += want.size;
      }
    }
  }
  t.is(selected, n);
  t.is(masks[1]![0][3], 0, 'a position the training mask drops is never drawn');
});

test('shuffle: f is the subset counts over K n, the same for every sequence of the step', async (t) => {
  // One rank, A = 2, b = 1, S = 5: T_glob = 8, n = round(8 / 2) = 4. The masked pre-pass found
  // counts (3, 0) in micro-batch 0 and (0, 1) in micro-batch 1: f = (3/4, 1/4) for both micro-steps.
  const d = { layers: 1, experts: 2, topK: 1, seqsPerMicro: 1, accumSteps: 2 };
  const bal = new Balancer({ terms: [{ scope: 'shuffle', coef: 0.5 }] }, d, SOLO);
  await bal.beginStep(8);
  const masks = await bal.sampleMasks(5, 0, 0);
  t.is(masks!.reduce((a, m) => a + m.reduce((x, v) => x + v, 0), 0), 4);
  await t.throwsAsync(bal.microStep(seq([2, 2], 4)), { code: 'BALANCE_STATE' }, 'no micro-step before the sample counts');
  await t.throwsAsync(bal.setSampleCounts([seq([3, 0], 3), seq([0, 0], 0)]), { code: 'BALANCE_STATE' }, 'the pre-pass must hold exactly n tokens');
  await bal.setSampleCounts([seq([3, 0], 3), seq([0, 1], 1)]);
  // lambda = alpha E f / T_glob = 0.5 * 2 * (3/4, 1/4) / 8.
  const p1 = await bal.microStep(seq([4, 0], 4, [3, 1]));
  const p2 = await bal.microStep(seq([0, 4], 4, [1, 3]));
  t.deepEqual(Array.from(p1.pressure), [0.09375, 0.03125]);
  t.deepEqual(Array.from(p2.pressure), [0.09375, 0.03125]);
  // LBL = (E / T_glob) sum_q f . scoreSums = (2/8) (0.75*3 + 0.25*1 + 0.75*1 + 0.25*3) = 1.
  t.true(Math.abs((await bal.endStep()).lbl.shuffle[0] - 1) < 1e-9);
  const none = new Balancer({ terms: [{ scope: 'micro', coef: 1 }] }, d, SOLO);
  await none.beginStep(8);
  t.is(await none.sampleMasks(5, 0, 0), null, 'no sampling term, no masks');
});

test('shuffle on the real model: the masked pre-pass counts exactly the drawn tokens', async (t) => {
  const cfg = { vocab_size: 40, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2, seed: 5 };
  const model = new MoeModel(cfg, { device: 'cpu' });
  const [S, b, L, E] = [9, 2, 2, 4];
  const r = rng(3);
  const tokens = [0, 1].map(() => Uint32Array.from({ length: b * S }, () => Math.floor(r() * 40)));
  const bal = new Balancer({ terms: [{ scope: 'shuffle', coef: 1 }] }, { layers: L, experts: E, topK: 2, seqsPerMicro: b, accumSteps: 2 }, SOLO);
  await bal.beginStep(2 * b * (S - 1));
  const masks = (await bal.sampleMasks(S, 11, 4))!;
  // By hand: every drawn position alone (a one-target mask), its routing counts summed.
  const want = new Float64Array(L * E);
  let drawn = 0;
  for (const m of [0, 1]) {
    for (let i = 0; i < b * S; i++) {
      if (!masks[m][i]) continue;
      drawn++;
      const one = new Uint8Array(b * S);
      one[i] = 1;
      const out = await model.forward(tokens[m], b, { mask: one, store: false });
      for (let l = 0; l < L; l++) for (let q = 0; q < b; q++) for (let e = 0; e < E; e++) want[l * E + e] += out.counts[(l * b + q) * E + e];
    }
  }
  t.is(drawn, b * (S - 1), 'n = the valid tokens of one micro-batch');
  const pre = await Promise.all([0, 1].map((m) => model.forward(tokens[m], b, { mask: masks[m], store: false })));
  const got = new Float64Array(L * E);
  for (const out of pre) for (let l = 0; l < L; l++) for (let q = 0; q < b; q++) for (let e = 0; e < E; e++) got[l * E + e] += out.counts[(l * b + q) * E + e];
  t.deepEqual(Array.from(got), Array.from(want));
  t.is(got.reduce((a, v) => a + v, 0), L * 2 * drawn, 'K = 2 selections per drawn token per layer');
  await bal.setSampleCounts(pre);
  model.dispose();
});

test('balance phases: the terms in force at each step, validated in order', (t) => {
  const cfg = parseBalanceConfig({
    terms: [{ scope: 'micro', coef: 0.1 }],
    zLoss: 1e-3,
    phases: [
      { step: 3, terms: [{ scope: 'global', coef: 0.1 }] },
      { step: 5, terms: [], lossFree: { scope: 'global', rate: 1e-3 } },
    ],
  });
  t.deepEqual([0, 2, 3, 4, 5, 9].map((s) => phaseAt(cfg, s)), [0, 0, 1, 1, 2, 2]);
  t.deepEqual(balanceAt(cfg, 2).terms, [{ scope: 'micro', coef: 0.1 }]);
  t.deepEqual(balanceAt(cfg, 3), { terms: [{ scope: 'global', coef: 0.1 }], zLoss: 1e-3, lossFree: undefined, phases: undefined });
  t.deepEqual(balanceAt(cfg, 7).lossFree, { scope: 'global', rate: 1e-3 });
  const bad = (phases: unknown) => t.throws(() => parseBalanceConfig({ terms: [], phases }), { code: 'INVALID_CONFIG' });
  bad([{ step: 4, terms: [] }, { step: 4, terms: [] }]);
  bad([{ step: 0, terms: [] }]);
  bad([{ step: 2 }]);
  t.throws(() => new Balancer(cfg, dims4, SOLO), { code: 'INVALID_CONFIG', message: /balanceAt/ });
  t.throws(() => parseBalanceConfig({ terms: [], lossFree: { scope: 'shuffle', rate: 1 } }), { code: 'INVALID_CONFIG' });
});

test('compare variants of the ablations', (t) => {
  const base = { balance: { terms: [{ scope: 'global', coef: 0.04 }] }, train: { steps: 10 } };
  const bal = (name: string) => (variant(base, name) as { balance: object }).balance;
  t.like(bal('shuffle'), { terms: [{ scope: 'shuffle', coef: 0.04 }] });
  t.like(bal('micro@0.005'), { terms: [{ scope: 'micro', coef: 0.005 }] });
  t.like(bal('bsz=8-exact'), { terms: [{ balanceSequences: 8, exact: true, coef: 0.04 }] });
  t.like(bal('global+micro@0.1'), { terms: [{ scope: 'global', coef: 0.1 }, { scope: 'micro', coef: 0.001 }] });
  t.like(bal('micro-to-global'), { terms: [{ scope: 'micro', coef: 0.04 }], phases: [{ step: 5, terms: [{ scope: 'global', coef: 0.04 }] }] });
  t.like(bal('global-to-micro:3'), { terms: [{ scope: 'global', coef: 0.04 }], phases: [{ step: 3, terms: [{ scope: 'micro', coef: 0.04 }] }] });
  for (const name of ['micro-to-micro', 'micro-to-global:10', 'micro@x', 'micro@1@2', 'bsz=4-buffer']) t.throws(() => variant(base, name), { code: 'INVALID_CONFIG' }, name);
});

/** A tiny training config on the embedded slice with the given balance. */
const tinyRun = (balance: object) => ({
  model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 32, num_experts: 4, num_experts_per_tok: 2 },
  data: { seqLen: 24, tokenizer: { kind: 'byte' } },
  batch: { ranks: 1, accumSteps: 4, microBatch: 1 },
  balance: { zLoss: 1e-3, ...balance },
  optim: { lr: 1e-2, warmupSteps: 1 },
  train: { steps: 4, evalEvery: 4, evalTokens: 64, progress: false, seed: 2 },
});

const stepLog = (dir: string) => readStepRows(join(dir, 'metrics.jsonl'));

test('training with a mid-run switch, the shuffle scope and exact Balance BSZ', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'moe-ablate-'));
  try {
    const run = async (name: string, balance: object) => {
      await train(tinyRun(balance), { outDir: join(root, name) });
      return stepLog(join(root, name));
    };
    const micro = await run('micro', { terms: [{ scope: 'micro', coef: 0.1 }] });
    const sw = await run('switch', { terms: [{ scope: 'micro', coef: 0.1 }], phases: [{ step: 2, terms: [{ scope: 'global', coef: 0.1 }] }] });
    t.deepEqual(sw.map((m) => Object.keys(m.lbl)), [['micro'], ['micro'], ['global'], ['global']]);
    t.deepEqual(sw.slice(0, 2).map((m) => m.loss), micro.slice(0, 2).map((m) => m.loss), 'identical to micro before the switch');
    t.notDeepEqual(sw[3].lbl.global, micro[3].lbl.micro);
    const shuffle = await run('shuffle', { terms: [{ scope: 'shuffle', coef: 0.1 }] });
    t.deepEqual(Object.keys(shuffle[0].lbl), ['shuffle']);
    t.true(shuffle.every((m) => Number.isFinite(m.loss) && m.lbl.shuffle.every(Number.isFinite)));
    const exact = await run('exact', { terms: [{ balanceSequences: 2, exact: true, coef: 0.1 }] });
    t.deepEqual(Object.keys(exact[0].lbl), ['bsz=2-exact']);
    // A phase whose terms do not fit the batch fails before the first step.
    await t.throwsAsync(train(tinyRun({ terms: [], phases: [{ step: 3, terms: [{ balanceSequences: 3, coef: 1 }] }] }), { outDir: join(root, 'bad') }), { code: 'INVALID_CONFIG' });
    t.false(existsSync(join(root, 'bad', 'metrics.jsonl')));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('compare trains its runs one after the other or two at once with identical results', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'moe-compare-'));
  try {
    const base = tinyRun({ terms: [{ scope: 'micro', coef: 0.1 }] });
    const names = ['micro', 'global', 'shuffle'];
    const seq = await compare(base, names, join(root, 'seq'));
    const par = await compare(base, names, join(root, 'par'), { parallel: 2 });
    t.deepEqual(par.runs.map((r) => r.name), names, 'results in the order of the names');
    for (const name of names) {
      const [a, b] = [stepLog(join(root, 'seq', name)), stepLog(join(root, 'par', name))];
      t.is(a.length, 4);
      t.deepEqual(b.map((m) => [m.loss, m.lbl]), a.map((m) => [m.loss, m.lbl]), name);
    }
    t.deepEqual(par.runs.map((r) => r.evals.at(-1)!.mean.loss), seq.runs.map((r) => r.evals.at(-1)!.mean.loss));
    await t.throwsAsync(compare(base, names, join(root, 'bad'), { parallel: 0 }), { code: 'INVALID_ARGUMENT' });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
