// The ways of computing the expert frequencies f of a load-balancing term (DESIGN §2), one small
// estimator each, chosen once per term when the Balancer is built:
//
//   scope `sequence`           SequenceFrequency   G = the token's own sequence
//   balanceSequences N <= R b  GroupFrequency      G = a group of N consecutive sequences of the micro-step
//   scope `micro`              MicroFrequency      G = this rank's micro-batch
//   scope `dp`                 DpFrequency         G = the micro-step over all R ranks
//   scope `global`, N > R b    BufferedFrequency   G = the micro-steps so far (the paper's Algorithm 1)
//   scope `global-exact`       ExactFrequency      G = the whole global batch, from a statistics pre-pass
//   N > R b with exact: true   GroupExactFrequency G = q's whole group of N sequences, from the pre-pass
//   scope `shuffle`            ShuffleFrequency    G = a random subset of the global batch's tokens, of
//                                                  micro-batch size, from a masked statistics pre-pass
//
// f_i(G) = c_i(G) / (K T(G)), a constant (stop-gradient). Every estimator returns f for each local
// sequence: (L, b, E). Counts are summed in f64 as (L, E + 1) rows: E expert counts, then T(G).

import type { Communicator } from './communicator.js';
import type { BalanceTerm } from './config.js';
import { drawSubset, splitBySequence, validPositions } from './sample.js';
import { MoeTrainerError } from '../errors.js';
import { rng } from '../rng.js';

/** Routing statistics of one micro-batch on one rank, as the native forward returns them. */
export interface MicroStats {
  /** (L, b, E) */
  counts: Float32Array;
  /** (L, b, E) */
  scoreSums: Float32Array;
  /** (L, b) */
  zSums: Float32Array;
  /** (b) valid tokens per sequence (the same in every layer) */
  validTokens: Float32Array;
}

export interface BalanceDims {
  /** L: layers with experts (`MoeModel.moeLayers.length`); dense layers route nothing */
  layers: number;
  experts: number;
  topK: number;
  /** b: sequences per micro-batch on each rank */
  seqsPerMicro: number;
  /** A: micro-steps per optimiser step */
  accumSteps: number;
}

/**
 * The counts of one micro-step, as every estimator may want them: this rank's, summed over ranks,
 * or per sequence of every rank. Each collective runs at most once per micro-step, when an estimator
 * first asks; all ranks run the same estimators in the same order, so collectives stay matched.
 */
export class MicroStepCounts {
  /** (L, E + 1) this rank's micro-batch */
  readonly local: Float64Array;
  private reduced: Promise<Float64Array> | null = null;
  private gathered: Promise<Float64Array> | null = null;

  constructor(
    readonly stats: MicroStats,
    readonly dims: BalanceDims,
    readonly comm: Communicator,
    /** this micro-step's index in the optimiser step, 0 .. A-1 */
    readonly m: number,
  ) {
    const { layers: L, experts: E, seqsPerMicro: b } = dims;
    this.local = new Float64Array(L * (E + 1));
    for (let q = 0; q < b; q++) addSequence(this.local, 0, stats, dims, q);
  }

  /** (L, E + 1) the micro-step's counts summed over all ranks. */
  acrossRanks(): Promise<Float64Array> {
    this.reduced ??= (async () => {
      const sums = this.local.slice();
      await this.comm.allReduceSum(sums);
      return sums;
    })();
    return this.reduced;
  }

  /** (R b, L, E + 1) every rank's per-sequence rows, gathered by a sum of disjoint rows. */
  perSequenceAcrossRanks(): Promise<Float64Array> {
    this.gathered ??= (async () => {
      const { layers: L, experts: E, seqsPerMicro: b } = this.dims;
      const rows = new Float64Array(this.comm.size * b * L * (E + 1));
      for (let q = 0; q < b; q++) addSequence(rows, (this.comm.rank * b + q) * L * (E + 1), this.stats, this.dims, q);
      await this.comm.allReduceSum(rows);
      return rows;
    })();
    return this.gathered;
  }
}

/** rows (L, E + 1) at `at` += counts and valid tokens of local sequence q. */
export function addSequence(rows: Float64Array, at: number, s: MicroStats, dims: BalanceDims, q: number): void {
  const { layers: L, experts: E, seqsPerMicro: b } = dims;
  for (let l = 0; l < L; l++) {
    const row = at + l * (E + 1);
    for (let i = 0; i < E; i++) rows[row + i] += s.counts[(l * b + q) * E + i];
    rows[row + E] += s.validTokens[q];
  }
}

/** f (E) at `out[at..]` from one (E + 1) row of sums at `row`: counts / (K tokens), 0 without tokens. */
function freqOfRow(out: Float64Array, at: number, sums: Float64Array, row: number, E: number, K: number): void {
  const n = sums[row + E];
  for (let i = 0; i < E; i++) out[at + i] = n > 0 ? sums[row + i] / (K * n) : 0;
}

/** f (L, b, E), the same for every local sequence, from (L, E + 1) sums. */
function sharedFrequencies(sums: Float64Array, dims: BalanceDims): Float64Array {
  const { layers: L, experts: E, topK: K, seqsPerMicro: b } = dims;
  const f = new Float64Array(L * b * E);
  for (let l = 0; l < L; l++) for (let q = 0; q < b; q++) freqOfRow(f, (l * b + q) * E, sums, l * (E + 1), E, K);
  return f;
}

/** One way of computing f, kept for the whole run. */
export interface FrequencyEstimator {
  /** At the start of each optimiser step. */
  beginStep(): void;
  /** f (L, b, E) for this micro-step's local sequences. */
  frequencies(c: MicroStepCounts): Promise<Float64Array>;
}

/**
 * An estimator that needs statistics of the whole global batch before the first backward:
 * `full` from plain statistics-only forwards of the rank's A micro-batches, `sample` from forwards
 * masked to the step's random token subset (ShuffleFrequency.masks).
 */
export interface PrePassEstimator extends FrequencyEstimator {
  readonly prePass: 'full' | 'sample';
  /** This rank's A micro-batches' pre-pass statistics; every rank calls it once per step. */
  setPrePass(all: MicroStats[], comm: Communicator): Promise<void>;
  readonly ready: boolean;
}

export const hasPrePass = (e: FrequencyEstimator): e is PrePassEstimator => 'prePass' in e;

/** G = the token's own sequence. */
export class SequenceFrequency implements FrequencyEstimator {
  constructor(private readonly dims: BalanceDims) {}
  beginStep(): void {}
  async frequencies(c: MicroStepCounts): Promise<Float64Array> {
    const { layers: L, experts: E, topK: K, seqsPerMicro: b } = this.dims;
    const f = new Float64Array(L * b * E);
    for (let l = 0; l < L; l++) {
      for (let q = 0; q < b; q++) {
        const n = c.stats.validTokens[q];
        for (let i = 0; i < E; i++) f[(l * b + q) * E + i] = n > 0 ? c.stats.counts[(l * b + q) * E + i] / (K * n) : 0;
      }
    }
    return f;
  }
}

/** G = consecutive groups of N sequences among the R b sequences of one micro-step (N divides R b). */
export class GroupFrequency implements FrequencyEstimator {
  constructor(
    private readonly dims: BalanceDims,
    private readonly N: number,
  ) {}
  beginStep(): void {}
  async frequencies(c: MicroStepCounts): Promise<Float64Array> {
    const { layers: L, experts: E, topK: K, seqsPerMicro: b } = this.dims;
    const rows = await c.perSequenceAcrossRanks();
    const f = new Float64Array(L * b * E);
    const sums = new Float64Array(E + 1);
    for (let q = 0; q < b; q++) {
      const first = Math.floor((c.comm.rank * b + q) / this.N) * this.N; // the group's first sequence
      for (let l = 0; l < L; l++) {
        sums.fill(0);
        for (let s = first; s < first + this.N; s++) {
          const row = (s * L + l) * (E + 1);
          for (let i = 0; i <= E; i++) sums[i] += rows[row + i];
        }
        freqOfRow(f, (l * b + q) * E, sums, 0, E, K);
      }
    }
    return f;
  }
}

/** G = this rank's micro-batch: what most frameworks do. */
export class MicroFrequency implements FrequencyEstimator {
  constructor(private readonly dims: BalanceDims) {}
  beginStep(): void {}
  async frequencies(c: MicroStepCounts): Promise<Float64Array> {
    return sharedFrequencies(c.local, this.dims);
  }
}

/** G = the same micro-step on all R ranks. */
export class DpFrequency implements FrequencyEstimator {
  constructor(private readonly dims: BalanceDims) {}
  beginStep(): void {}
  async frequencies(c: MicroStepCounts): Promise<Float64Array> {
    return sharedFrequencies(await c.acrossRanks(), this.dims);
  }
}

/**
 * Algorithm 1 of Qiu et al. 2025 (PAPER.md): a per-layer buffer of counts and tokens, filled across
 * the micro-steps of a period (the optimiser step for `global`; N / (R b) micro-steps for
 * balanceSequences N > R b).
 */
export class BufferedFrequency implements FrequencyEstimator {
  /** (L, E + 1) counts, then tokens */
  private readonly buffer: Float64Array;

  constructor(
    private readonly dims: BalanceDims,
    /** micro-steps per buffer period */
    private readonly period: number,
  ) {
    this.buffer = new Float64Array(dims.layers * (dims.experts + 1));
  }

  beginStep(): void {
    // "For each optimiser step: zero a per-layer count buffer."
    this.buffer.fill(0);
  }

  async frequencies(c: MicroStepCounts): Promise<Float64Array> {
    if (c.m % this.period === 0) this.buffer.fill(0); // a period shorter than the step starts afresh
    // "For each micro-batch and MoE layer: take local counts; all-reduce (sum) over data-parallel ranks;"
    const counts = await c.acrossRanks();
    // "add to the buffer;"
    for (let i = 0; i < this.buffer.length; i++) this.buffer[i] += counts[i];
    // "f = buffer / (K * tokens accumulated so far across ranks)."
    return sharedFrequencies(this.buffer, this.dims);
  }
}

/**
 * G = the whole global batch: its counts come from statistics-only forwards of every micro-batch
 * before the first backward (`setCounts`), all-reduced once. Touches no buffer.
 */
export class ExactFrequency implements PrePassEstimator {
  readonly prePass = 'full';
  private sums: Float64Array | null = null;

  constructor(private readonly dims: BalanceDims) {}

  beginStep(): void {
    this.sums = null;
  }

  async setPrePass(all: MicroStats[], comm: Communicator): Promise<void> {
    const { layers: L, experts: E, seqsPerMicro: b } = this.dims;
    const sums = new Float64Array(L * (E + 1));
    for (const s of all) for (let q = 0; q < b; q++) addSequence(sums, 0, s, this.dims, q);
    await comm.allReduceSum(sums);
    this.sums = sums;
  }

  get ready(): boolean {
    return this.sums !== null;
  }

  async frequencies(): Promise<Float64Array> {
    if (!this.sums) throw new MoeTrainerError('BALANCE_STATE', 'global-exact needs setExactCounts before the first micro-step');
    return sharedFrequencies(this.sums, this.dims);
  }
}

/**
 * balanceSequences N > R b with `exact`: G = the group of N consecutive sequences of the global
 * batch, in the order g = (m R + r) b + q (micro-step, rank, sequence), that holds q — the same
 * groups as the buffer's, but every micro-step sees its whole group: per-sequence counts of the
 * whole global batch come from the statistics pre-pass, gathered over ranks (a sum of disjoint
 * rows). What a micro-step of N sequences would see, without Algorithm 1's partial counts.
 */
export class GroupExactFrequency implements PrePassEstimator {
  readonly prePass = 'full';
  /** (groups, L, E + 1) counts, then tokens, of each group */
  private groups: Float64Array | null = null;

  constructor(
    private readonly dims: BalanceDims,
    private readonly N: number,
  ) {}

  beginStep(): void {
    this.groups = null;
  }

  get ready(): boolean {
    return this.groups !== null;
  }

  async setPrePass(all: MicroStats[], comm: Communicator): Promise<void> {
    const { layers: L, experts: E, seqsPerMicro: b, accumSteps: A } = this.dims;
    const P = comm.size * b;
    const row = L * (E + 1);
    const rows = new Float64Array(A * P * row);
    all.forEach((s, m) => {
      for (let q = 0; q < b; q++) addSequence(rows, (m * P + comm.rank * b + q) * row, s, this.dims, q);
    });
    await comm.allReduceSum(rows);
    const groups = new Float64Array(((A * P) / this.N) * row);
    for (let g = 0; g < A * P; g++) {
      const at = Math.floor(g / this.N) * row;
      for (let i = 0; i < row; i++) groups[at + i] += rows[g * row + i];
    }
    this.groups = groups;
  }

  async frequencies(c: MicroStepCounts): Promise<Float64Array> {
    if (!this.groups) throw new MoeTrainerError('BALANCE_STATE', 'exact balanceSequences needs setExactCounts before the first micro-step');
    const { layers: L, experts: E, topK: K, seqsPerMicro: b } = this.dims;
    const P = c.comm.size * b;
    const f = new Float64Array(L * b * E);
    for (let q = 0; q < b; q++) {
      const group = Math.floor((c.m * P + c.comm.rank * b + q) / this.N);
      for (let l = 0; l < L; l++) freqOfRow(f, (l * b + q) * E, this.groups, (group * L + l) * (E + 1), E, K);
    }
    return f;
  }
}

/**
 * The paper's shuffle ablation: G = a random subset U of the global batch's valid tokens, of
 * micro-batch size n = round(T_glob / (R A)) (the mean valid tokens of one micro-batch), drawn
 * uniformly without replacement, once per optimiser step and the same on every rank; one f for
 * every sequence of the step. Its counts c_i(U) come from statistics-only forwards of the rank's
 * micro-batches with loss masks that keep exactly U's positions (`masks`, then `setPrePass`);
 * f_i = c_i(U) / (K n). The token draw is seeded by (run seed, step), so a resumed run draws the same.
 */
export class ShuffleFrequency implements PrePassEstimator {
  readonly prePass = 'sample';
  private sums: Float64Array | null = null;
  /** |U| of the current step, 0 before `masks` */
  private size = 0;

  constructor(private readonly dims: BalanceDims) {}

  beginStep(): void {
    this.sums = null;
    this.size = 0;
  }

  get ready(): boolean {
    return this.sums !== null;
  }

  /**
   * The (b, S) masks of this rank's A micro-batches that keep exactly the step's subset U.
   * `training`: each micro-batch's own target mask, or null when every target counts.
   */
  async masks(S: number, seed: number, training: (Uint8Array | null)[], comm: Communicator): Promise<Uint8Array[]> {
    const { seqsPerMicro: b, accumSteps: A } = this.dims;
    if (training.length !== A) throw new MoeTrainerError('SHAPE_MISMATCH', `shuffle masks: expected ${A} micro-batches, got ${training.length}`);
    const P = comm.size * b;
    const positions = training.map((mask) => Array.from({ length: b }, (_, q) => validPositions(S, mask, q)));
    // Every sequence's valid count, all ranks, in the global order g = (m R + r) b + q.
    const valid = new Float64Array(A * P);
    positions.forEach((seqs, m) => seqs.forEach((ps, q) => (valid[m * P + comm.rank * b + q] = ps.length)));
    await comm.allReduceSum(valid);
    const total = valid.reduce((a, v) => a + v, 0);
    this.size = Math.round(total / (comm.size * A));
    const chosen = splitBySequence(drawSubset(total, this.size, rng(seed)), valid);
    return positions.map((seqs, m) => {
      const mask = new Uint8Array(b * S);
      seqs.forEach((ps, q) => {
        for (const k of chosen[m * P + comm.rank * b + q]) mask[q * S + ps[k] + 1] = 1; // position t counts via target t + 1
      });
      return mask;
    });
  }

  async setPrePass(all: MicroStats[], comm: Communicator): Promise<void> {
    if (this.size === 0) throw new MoeTrainerError('BALANCE_STATE', 'shuffle: sampleMasks belongs before its pre-pass');
    const { layers: L, experts: E, seqsPerMicro: b } = this.dims;
    const sums = new Float64Array(L * (E + 1));
    for (const s of all) for (let q = 0; q < b; q++) addSequence(sums, 0, s, this.dims, q);
    await comm.allReduceSum(sums);
    if (sums[E] !== this.size) throw new MoeTrainerError('BALANCE_STATE', `shuffle: the masked pre-pass holds ${sums[E]} tokens, the subset ${this.size}`);
    this.sums = sums;
  }

  async frequencies(): Promise<Float64Array> {
    if (!this.sums) throw new MoeTrainerError('BALANCE_STATE', 'shuffle needs its masked pre-pass (sampleMasks, setSampleCounts) before the first micro-step');
    return sharedFrequencies(this.sums, this.dims);
  }
}

/**
 * The estimator of one term, for R ranks. Fails with INVALID_CONFIG when balanceSequences does not
 * fit the batch: N must divide the R b sequences of a micro-step, or be a multiple of R b that
 * divides the global batch.
 */
export function estimatorFor(term: BalanceTerm, dims: BalanceDims, R: number): FrequencyEstimator {
  const P = R * dims.seqsPerMicro; // sequences per micro-step over all ranks
  const N = term.balanceSequences;
  if (N !== undefined) {
    if (N <= P) {
      // Within a micro-step the group is complete anyway: `exact` changes nothing.
      if (P % N !== 0) throw new MoeTrainerError('INVALID_CONFIG', `balanceSequences ${N} must divide the ${P} sequences of a micro-step (R*b)`);
      return new GroupFrequency(dims, N);
    }
    if (term.exact) {
      if ((P * dims.accumSteps) % N !== 0) throw new MoeTrainerError('INVALID_CONFIG', `balanceSequences ${N} must divide the global batch of ${P * dims.accumSteps} sequences`);
      return new GroupExactFrequency(dims, N);
    }
    if (N % P !== 0 || dims.accumSteps % (N / P) !== 0) {
      throw new MoeTrainerError('INVALID_CONFIG', `balanceSequences ${N} must be a multiple of R*b = ${P} dividing the global batch of ${P * dims.accumSteps}`);
    }
    return new BufferedFrequency(dims, N / P);
  }
  switch (term.scope!) {
    case 'sequence':
      return new SequenceFrequency(dims);
    case 'micro':
      return new MicroFrequency(dims);
    case 'dp':
      return new DpFrequency(dims);
    case 'global':
      return new BufferedFrequency(dims, dims.accumSteps);
    case 'global-exact':
      return new ExactFrequency(dims);
    case 'shuffle':
      return new ShuffleFrequency(dims);
  }
}
