// The balance engine: per-sequence routing statistics in, per-sequence router pressure out, for
// every scope of DESIGN §2. Each term's f comes from its estimator (frequency.ts; `global` is the
// paper's Algorithm 1, whose lines are quoted there and here). Notation: L layers, E experts, K
// top-k, b sequences per micro-batch, R ranks, A micro-steps per optimiser step, T_glob valid
// tokens in the global batch.
//
//   LBL_term = sum_q (T(q)/T_glob) E sum_i f_i(G(q)) P_i(q),   P_i(q) = score_sum_{q,i} / T(q)
//   pressure lambda_{q,i} = dLBL/ds_{t,i} = alpha E f_i(G(q)) / T_glob   for every token t of q

import { MoeTrainerError } from '../errors.js';
import { namedViews, type Communicator, type NamedViews } from './communicator.js';
import { type BalanceConfig, parseBalanceConfig, termName } from './config.js';
import { type BalanceDims, estimatorFor, type FrequencyEstimator, hasPrePass, MicroStepCounts, type MicroStats, type PrePassEstimator, ShuffleFrequency } from './frequency.js';
import { stepSeed } from './sample.js';
import { LossFreeBias } from './loss-free.js';

/** What the backward of one micro-batch needs. */
export interface MicroBalance {
  /** (L, b, E) router pressure, all terms added */
  pressure: Float32Array;
  /** beta / T_glob */
  zScale: number;
}

/** The step's balance figures, identical on every rank. */
export interface StepBalance {
  /** per term (by `termName`), per layer: the LBL value (1 at perfect balance) */
  lbl: Record<string, number[]>;
  /** per layer: LBL at micro scope and at global scope, whatever the training terms */
  lblMicro: number[];
  lblGlobal: number[];
  /** sum over terms and layers of alpha * LBL, plus the z-loss: what the balance adds to the loss */
  balanceLoss: number;
  /** beta * (1/T_glob) sum_t lse_t^2 summed over layers */
  zLoss: number;
  /** (L, E) expert counts over the whole global batch */
  globalCounts: Float64Array;
  /** valid tokens in the global batch */
  tokens: number;
  /** (L, E) what auxiliary-loss-free balancing adds to the router biases after this step; null when off */
  biasUpdate: Float32Array | null;
}

const fail = (code: 'BALANCE_STATE' | 'INVALID_CONFIG' | 'INVALID_ARGUMENT' | 'SHAPE_MISMATCH' | 'NON_FINITE', msg: string): never => {
  throw new MoeTrainerError(code, msg);
};

/** This rank's share of the step's logged values, summed over ranks once in `endStep`. */
type StepSums = NamedViews<'lbl' | 'lblMicro' | 'counts' | 'scores' | 'z' | 'tokens'>;

export class Balancer {
  readonly config: BalanceConfig;
  private readonly dims: BalanceDims;
  private readonly terms: { name: string; coef: number; estimator: FrequencyEstimator }[];
  /** the estimators that need a statistics pre-pass over the global batch (plain or masked) */
  private readonly prePass: PrePassEstimator[];
  private readonly shuffle: ShuffleFrequency | undefined;
  private readonly lossFree: LossFreeBias | undefined;
  private readonly sums: StepSums;
  private tGlob = 0;
  /** the micro-step about to run, -1 outside a step */
  private micro = -1;

  constructor(
    config: unknown,
    dims: BalanceDims,
    readonly comm: Communicator,
  ) {
    this.config = parseBalanceConfig(config);
    if (this.config.phases?.length) fail('INVALID_CONFIG', 'balance.phases: a Balancer serves one phase; build it from balanceAt(config, step)');
    for (const [k, v] of Object.entries(dims)) {
      if (!Number.isInteger(v) || v < 1) fail('INVALID_CONFIG', `balance dims: ${k} must be a positive integer, got ${v}`);
    }
    const { layers: L, experts: E, topK: K } = dims;
    if (K > E) fail('INVALID_CONFIG', `topK (${K}) must not exceed experts (${E})`);
    this.dims = { ...dims };
    this.terms = this.config.terms.map((term) => ({ name: termName(term), coef: term.coef, estimator: estimatorFor(term, this.dims, comm.size) }));
    const names = this.terms.map((t) => t.name);
    if (new Set(names).size !== names.length) fail('INVALID_CONFIG', `balance terms must have distinct scopes, got ${names.join(', ')}`);
    this.prePass = this.terms.map((t) => t.estimator).filter(hasPrePass);
    this.shuffle = this.prePass.find((e): e is ShuffleFrequency => e instanceof ShuffleFrequency);
    this.lossFree = this.config.lossFree && new LossFreeBias(this.config.lossFree, this.dims, comm);
    this.sums = namedViews({ lbl: this.terms.length * L, lblMicro: L, counts: L * E, scores: L * E, z: L, tokens: 1 });
  }

  /** T_glob of the current step: valid tokens of the global batch over all ranks. */
  get globalTokens(): number {
    return this.tGlob;
  }

  /**
   * True when a term (`global-exact`, exact `balanceSequences`) needs the whole global batch's
   * counts before the first backward: statistics-only forwards of the rank's A micro-batches, then
   * `setExactCounts`.
   */
  get needsExactCounts(): boolean {
    return this.prePass.some((e) => e.prePass === 'full');
  }

  /**
   * Starts an optimiser step. `localTokens`: valid tokens of this rank's A micro-batches, as the
   * core counts them (`validTokens`); `endStep` checks it against the statistics.
   */
  async beginStep(localTokens: number): Promise<void> {
    if (typeof localTokens !== 'number' || !Number.isInteger(localTokens) || localTokens < 0) fail('INVALID_ARGUMENT', `beginStep: localTokens must be a non-negative integer, got ${String(localTokens)}`);
    if (this.micro !== -1) fail('BALANCE_STATE', 'beginStep called twice without endStep');
    const t = Float64Array.of(localTokens);
    await this.comm.allReduceSum(t);
    this.tGlob = t[0];
    if (!(this.tGlob > 0)) fail('BALANCE_STATE', 'the global batch has no valid tokens');
    for (const { estimator } of this.terms) estimator.beginStep();
    this.lossFree?.beginStep();
    this.sums.buffer.fill(0);
    this.micro = 0;
  }

  /**
   * `global-exact`: the counts of this rank's whole share of the global batch, from statistics-only
   * forwards of its A micro-batches, all-reduced. Touches no buffer.
   */
  async setExactCounts(all: MicroStats[]): Promise<void> {
    await this.setPrePass(all, 'full', 'setExactCounts');
  }

  /**
   * `shuffle`: the (b, S) loss masks of this rank's A micro-batches that keep exactly the step's
   * random token subset (null when no term samples). `seed` and `step` seed the draw (the same on
   * every rank); `training[m]` is micro-batch m's own target mask (null: every target counts).
   * Run statistics-only forwards with these masks, then `setSampleCounts`.
   */
  async sampleMasks(seqLen: number, seed: number, step: number, training?: (Uint8Array | null)[]): Promise<Uint8Array[] | null> {
    if (!this.shuffle) return null;
    if (this.micro !== 0) fail('BALANCE_STATE', 'sampleMasks belongs after beginStep and before the first micro-step');
    return this.shuffle.masks(seqLen, stepSeed(seed, step), training ?? Array.from({ length: this.dims.accumSteps }, () => null), this.comm);
  }

  /** `shuffle`: the statistics of the forwards masked by `sampleMasks`, this rank's A micro-batches. */
  async setSampleCounts(all: MicroStats[]): Promise<void> {
    await this.setPrePass(all, 'sample', 'setSampleCounts');
  }

  private async setPrePass(all: MicroStats[], kind: 'full' | 'sample', what: string): Promise<void> {
    if (this.micro !== 0) fail('BALANCE_STATE', `${what} belongs after beginStep and before the first micro-step`);
    if (!Array.isArray(all) || all.length !== this.dims.accumSteps) fail('INVALID_ARGUMENT', `${what}: expects the statistics of this rank's ${this.dims.accumSteps} micro-batches, got ${Array.isArray(all) ? all.length : typeof all}`);
    all.forEach((s) => this.checkShapes(s));
    for (const e of this.prePass) if (e.prePass === kind) await e.setPrePass(all, this.comm);
  }

  /** The pressure for the next micro-batch of the step, from its statistics. */
  async microStep(stats: MicroStats): Promise<MicroBalance> {
    const { layers: L, experts: E, seqsPerMicro: b, accumSteps: A } = this.dims;
    if (this.micro < 0 || this.micro >= A) fail('BALANCE_STATE', `microStep outside a step or past its ${A} micro-steps`);
    this.checkShapes(stats);
    for (const e of this.prePass) {
      if (!e.ready) fail('BALANCE_STATE', e.prePass === 'full' ? 'global-exact and exact balanceSequences need setExactCounts before the first micro-step' : 'shuffle needs sampleMasks and setSampleCounts before the first micro-step');
    }
    const counts = new MicroStepCounts(stats, this.dims, this.comm, this.micro);
    const pressure = new Float32Array(L * b * E);
    for (const [ti, term] of this.terms.entries()) {
      const f = await term.estimator.frequencies(counts);
      // "P = mean softmax over the local tokens; add coef * N_E * sum_i f_i P_i to the micro-batch loss"
      this.addTerm(pressure, f, stats, term.coef, this.sums.lbl.subarray(ti * L, (ti + 1) * L));
    }
    this.monitor(stats, counts.local);
    await this.lossFree?.microStep(counts);
    this.micro++;
    return { pressure, zScale: this.config.zLoss / this.tGlob };
  }

  /** Ends the step: all-reduces the logged values. Algorithm 1: "optimiser step; reset the buffer". */
  async endStep(): Promise<StepBalance> {
    const { layers: L, experts: E, topK: K, accumSteps: A } = this.dims;
    if (this.micro !== A) fail('BALANCE_STATE', `endStep after ${this.micro} of ${A} micro-steps`);
    this.micro = -1;
    const s = this.sums;
    await this.comm.allReduceSum(s.buffer);
    const tokens = s.tokens[0];
    if (tokens !== this.tGlob) fail('BALANCE_STATE', `beginStep announced ${this.tGlob} valid tokens, the micro-steps' statistics hold ${tokens}`);
    const lbl: Record<string, number[]> = {};
    let balanceLoss = 0;
    this.terms.forEach((term, ti) => {
      lbl[term.name] = Array.from(s.lbl.subarray(ti * L, (ti + 1) * L));
      balanceLoss += term.coef * lbl[term.name].reduce((a, v) => a + v, 0);
    });
    // LBL at global scope: E sum_i f_i(B) P_i(B) with f, P over the whole global batch.
    const lblGlobal = Array.from({ length: L }, (_, l) => {
      let sum = 0;
      for (let i = 0; i < E; i++) sum += (s.counts[l * E + i] / (K * tokens)) * (s.scores[l * E + i] / tokens);
      return E * sum;
    });
    const zLoss = (this.config.zLoss * s.z.reduce((a, v) => a + v, 0)) / this.tGlob;
    const globalCounts = s.counts.slice();
    return {
      lbl,
      lblMicro: Array.from(s.lblMicro),
      lblGlobal,
      balanceLoss: balanceLoss + zLoss,
      zLoss,
      globalCounts,
      tokens,
      biasUpdate: this.lossFree ? await this.lossFree.endStep(globalCounts) : null,
    };
  }

  /** pressure[l, q, :] += alpha E f / T_glob;  lbl[l] += (E / T_glob) sum_i f_i score_sum_{q,i}. */
  private addTerm(pressure: Float32Array, f: Float64Array, s: MicroStats, alpha: number, lbl: Float64Array): void {
    const { layers: L, experts: E, seqsPerMicro: b } = this.dims;
    for (let l = 0; l < L; l++) {
      for (let q = 0; q < b; q++) {
        const base = (l * b + q) * E;
        let dot = 0;
        for (let i = 0; i < E; i++) {
          pressure[base + i] += (alpha * E * f[base + i]) / this.tGlob;
          dot += f[base + i] * s.scoreSums[base + i];
        }
        lbl[l] += (E * dot) / this.tGlob;
      }
    }
  }

  /** Monitors, whatever the training terms: micro-scope LBL and the global totals. */
  private monitor(s: MicroStats, local: Float64Array): void {
    const { layers: L, experts: E, topK: K, seqsPerMicro: b } = this.dims;
    const { lblMicro, counts, scores, z, tokens } = this.sums;
    for (let l = 0; l < L; l++) {
      const n = local[l * (E + 1) + E];
      for (let q = 0; q < b; q++) {
        const base = (l * b + q) * E;
        for (let i = 0; i < E; i++) {
          const f = n > 0 ? local[l * (E + 1) + i] / (K * n) : 0;
          lblMicro[l] += (E / this.tGlob) * f * s.scoreSums[base + i];
          counts[l * E + i] += s.counts[base + i];
          scores[l * E + i] += s.scoreSums[base + i];
        }
        z[l] += s.zSums[l * b + q];
      }
    }
    for (let q = 0; q < b; q++) tokens[0] += s.validTokens[q];
  }

  /**
   * Statistics as a forward reports them: typed arrays of the right lengths, finite, non-negative,
   * counts and token totals integral. A refused call changes nothing.
   */
  private checkShapes(s: MicroStats): void {
    const { layers: L, experts: E, seqsPerMicro: b } = this.dims;
    if (typeof s !== 'object' || s === null) fail('INVALID_ARGUMENT', `stats must be a forward's statistics object, got ${s === null ? 'null' : typeof s}`);
    const want: [keyof MicroStats, number, boolean][] = [
      ['counts', L * b * E, true],
      ['scoreSums', L * b * E, false],
      ['zSums', L * b, false],
      ['validTokens', b, true],
    ];
    for (const [name, exp, integral] of want) {
      const xs = s[name] as ArrayLike<number> | undefined;
      if (!(xs instanceof Float32Array || xs instanceof Float64Array)) fail('INVALID_ARGUMENT', `stats.${name} must be a Float32Array or Float64Array, got ${xs === null ? 'null' : typeof xs}`);
      if (xs!.length !== exp) fail('SHAPE_MISMATCH', `stats.${name}: expected ${exp} values (L=${L}, b=${b}, E=${E}), got ${xs!.length}`);
      for (let i = 0; i < exp; i++) {
        const v = xs![i];
        if (!Number.isFinite(v)) fail('NON_FINITE', `stats.${name}[${i}] = ${v}`);
        if (v < 0 || (integral && !Number.isInteger(v))) fail('INVALID_ARGUMENT', `stats.${name}[${i}] = ${v}: must be ${integral ? 'a non-negative integer' : 'non-negative'}`);
      }
    }
    // Per sequence, each layer chooses K experts for every valid token.
    for (let l = 0; l < L; l++) {
      for (let q = 0; q < b; q++) {
        let c = 0;
        for (let i = 0; i < E; i++) c += s.counts[(l * b + q) * E + i];
        if (c !== this.dims.topK * s.validTokens[q]) fail('INVALID_ARGUMENT', `stats.counts of layer ${l}, sequence ${q} sum to ${c}, but ${s.validTokens[q]} valid tokens choose ${this.dims.topK * s.validTokens[q]} experts`);
      }
    }
  }
}
