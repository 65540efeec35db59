// Shared test fixtures: a seeded PRNG, a small global batch with uneven valid-token counts, and one
// optimiser step of the MoE layer under any (R, A, b) partition with R virtual ranks.

import { MoeLayer, type MoeLayerConfig, type RoutingStats } from '../index.js';
import { gauss, rng } from '../src/rng.js';
import { Balancer, LocalGroup, type MicroStats, type StepBalance, type BalanceConfigInput } from '../src/balance/index.js';

export function randn(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => gauss(r));
}

export const D = 8;
export const S = 4;
export const NSEQ = 8;
export const CFG: MoeLayerConfig = {
  hidden_size: D,
  moe_intermediate_size: 6,
  num_experts: 4,
  num_experts_per_tok: 2,
  norm_topk_prob: true,
  initializer_range: 0.4,
  seed: 11,
};

/** Valid tokens of each of the 8 sequences: deliberately uneven. */
export const VALID = [4, 3, 2, 4, 1, 4, 3, 4];
export const T_GLOB = VALID.reduce((a, v) => a + v, 0);
const X = randn(NSEQ * S * D, 1);
const C = randn(NSEQ * S * D, 2);

/** Inputs, mask and dL_task/dy for the given global sequence indices, packed in order. */
export function batch(seqs: number[]): { x: Float32Array; mask: Uint8Array; dout: Float32Array; tokens: number } {
  const x = new Float32Array(seqs.length * S * D);
  const dout = new Float32Array(seqs.length * S * D);
  const mask = new Uint8Array(seqs.length * S);
  let tokens = 0;
  seqs.forEach((g, j) => {
    x.set(X.subarray(g * S * D, (g + 1) * S * D), j * S * D);
    for (let t = 0; t < VALID[g]; t++) {
      mask[j * S + t] = 1;
      // Task loss (1/T_glob) sum over valid tokens of <c_t, y_t>.
      for (let i = 0; i < D; i++) dout[(j * S + t) * D + i] = C[(g * S + t) * D + i] / T_GLOB;
    }
    tokens += VALID[g];
  });
  return { x, mask, dout, tokens };
}

export function micro(s: RoutingStats): MicroStats {
  return { counts: s.counts, scoreSums: s.scoreSums, zSums: s.zSums, validTokens: s.validTokens };
}

/** Global sequence indices of rank r's micro-batch m: the global order is (m, r, j). */
export const seqsOf = (R: number, b: number, m: number, r: number) => Array.from({ length: b }, (_, j) => m * R * b + r * b + j);

export interface StepResult {
  /** gradient summed over ranks, flat, identical on every rank */
  grads: Float32Array;
  step: StepBalance;
  /** pressure[m][r]: (1, b, E) */
  pressure: Float32Array[][];
  /** stats[m][r] of the training forwards */
  stats: MicroStats[][];
}

export interface StepOptions {
  /** run an evaluation forward on other data before every micro-step */
  evalBetween?: boolean;
  /** change the layer before the step (e.g. zero the router) */
  setup?: (layer: MoeLayer) => void;
  config?: MoeLayerConfig;
}

/** One optimiser step of the layer on the 8 sequences split as (R ranks, A micro-steps, b per micro-batch). */
export async function runStep(R: number, A: number, b: number, balance: BalanceConfigInput, opts: StepOptions = {}): Promise<StepResult> {
  if (R * A * b !== NSEQ) throw new Error('partition must cover the 8 sequences');
  const cfg = opts.config ?? CFG;
  const group = new LocalGroup(R);
  const pressure: Float32Array[][] = Array.from({ length: A }, () => []);
  const stats: MicroStats[][] = Array.from({ length: A }, () => []);
  const perRank = await Promise.all(
    Array.from({ length: R }, async (_, r) => {
      const layer = new MoeLayer(cfg);
      opts.setup?.(layer);
      const comm = group.comm(r);
      const bal = new Balancer(balance, { layers: 1, experts: cfg.num_experts, topK: cfg.num_experts_per_tok, seqsPerMicro: b, accumSteps: A }, comm);
      const mine = Array.from({ length: A }, (_, m) => batch(seqsOf(R, b, m, r)));
      await bal.beginStep(mine.reduce((a, mb) => a + mb.tokens, 0));
      if (bal.needsExactCounts) {
        // The exact pre-pass: statistics-only forwards of the whole share, before any backward.
        const pre = [];
        for (const mb of mine) pre.push(micro((await layer.forward(mb.x, b, { mask: mb.mask, store: false })).stats));
        await bal.setExactCounts(pre);
      }
      for (let m = 0; m < A; m++) {
        if (opts.evalBetween) await layer.forward(randn(3 * S * D, 100 + m), 3, { store: false });
        const fwd = await layer.forward(mine[m].x, b, { mask: mine[m].mask });
        stats[m][r] = micro(fwd.stats);
        const mbal = await bal.microStep(stats[m][r]);
        pressure[m][r] = mbal.pressure;
        await layer.backward(mine[m].dout, mbal.pressure, mbal.zScale);
      }
      const step = await bal.endStep();
      const grads = layer.getGrads();
      await comm.allReduceSum(grads); // data-parallel gradient all-reduce: a sum, since losses carry 1/T_glob
      layer.dispose();
      return { grads, step };
    }),
  );
  for (const p of perRank.slice(1)) {
    if (p.grads.some((g, i) => g !== perRank[0].grads[i])) throw new Error('ranks disagree after the all-reduce');
  }
  return { grads: perRank[0].grads, step: perRank[0].step, pressure, stats };
}

/** max |a - b| / max(1e-12, max |b|) */
export function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 1e-12;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}
