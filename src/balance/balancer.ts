// The balance engine: per-sequence routing statistics in, per-sequence router pressure out.
// It implements every scope of DESIGN §2; `global` is the paper's Algorithm 1, whose lines are quoted
// where they happen. Notation: L layers, E experts, K top-k, b sequences per micro-batch, R ranks,
// A micro-steps per optimiser step, T_glob valid tokens in the global batch.
//
//   f_i(G) = c_i(G) / (K T(G))                     (stop-gradient)
//   LBL_term = sum_q (T(q)/T_glob) E sum_i f_i(G(q)) P_i(q),   P_i(q) = score_sum_{q,i} / T(q)
//   pressure lambda_{q,i} = dLBL/ds_{t,i} = alpha E f_i(G(q)) / T_glob   for every token t of q

import { type Communicator } from './communicator.js';
import { type BalanceConfig, type BalanceTerm, type LossFree, MoeTrainerError, parseBalanceConfig, termName } from './config.js';

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
  layers: number;
  experts: number;
  topK: number;
  /** b: sequences per micro-batch on each rank */
  seqsPerMicro: number;
  /** A: micro-steps per optimiser step */
  accumSteps: number;
}

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

const fail = (code: string, msg: string): never => {
  throw new MoeTrainerError(code, msg);
};

/** A term is "cumulative" when its f comes from a buffer filled across micro-steps (Algorithm 1). */
interface TermPlan {
  term: BalanceTerm;
  name: string;
  /** micro-steps per buffer period (global: A; balanceSequences N > R b: N / (R b)); 0 = no buffer */
  period: number;
  /** group size in sequences for balanceSequences N <= R b; 0 otherwise */
  group: number;
}

export class Balancer {
  readonly config: BalanceConfig;
  private readonly plans: TermPlan[];
  private readonly L: number;
  private readonly E: number;
  private readonly K: number;
  private readonly b: number;
  private readonly A: number;
  private readonly R: number;
  /** per cumulative term: (L, E + 1) counts then tokens, zeroed at each period start */
  private readonly buffers: Float64Array[];
  private exact: Float64Array | null = null;
  private tGlob = 0;
  private micro = -1;
  // Per-step accumulators of this rank's share, all-reduced once in endStep.
  private lblAcc: Float64Array; // (terms, L)
  private microAcc: Float64Array; // (L)
  private countAcc: Float64Array; // (L, E)
  private scoreAcc: Float64Array; // (L, E)
  private zAcc: Float64Array; // (L)
  private tokenAcc = 0;
  // Auxiliary-loss-free balancing: this rank's share of the step's votes and groups.
  private readonly lossFree: LossFree | undefined;
  private votes: Float64Array; // (L, E)
  private groups = 0;

  constructor(
    config: unknown,
    dims: BalanceDims,
    readonly comm: Communicator,
  ) {
    this.config = parseBalanceConfig(config);
    const { layers: L, experts: E, topK: K, seqsPerMicro: b, accumSteps: A } = dims;
    for (const [k, v] of Object.entries(dims)) {
      if (!Number.isInteger(v) || v < 1) fail('INVALID_CONFIG', `balance dims: ${k} must be a positive integer, got ${v}`);
    }
    if (K > E) fail('INVALID_CONFIG', `topK (${K}) must not exceed experts (${E})`);
    [this.L, this.E, this.K, this.b, this.A, this.R] = [L, E, K, b, A, comm.size];
    const P = this.R * b; // sequences per micro-step over all ranks
    this.plans = this.config.terms.map((term) => {
      const plan: TermPlan = { term, name: termName(term), period: 0, group: 0 };
      if (term.scope === 'global') plan.period = A;
      const N = term.balanceSequences;
      if (N !== undefined) {
        if (N <= P) {
          if (P % N !== 0) fail('INVALID_CONFIG', `balanceSequences ${N} must divide the ${P} sequences of a micro-step (R*b)`);
          plan.group = N;
        } else {
          if (N % P !== 0 || A % (N / P) !== 0) {
            fail('INVALID_CONFIG', `balanceSequences ${N} must be a multiple of R*b = ${P} dividing the global batch of ${P * A}`);
          }
          plan.period = N / P;
        }
      }
      return plan;
    });
    const names = this.plans.map((p) => p.name);
    if (new Set(names).size !== names.length) fail('INVALID_CONFIG', `balance terms must have distinct scopes, got ${names.join(', ')}`);
    this.buffers = this.plans.map(() => new Float64Array(L * (E + 1)));
    this.lblAcc = new Float64Array(this.plans.length * L);
    this.microAcc = new Float64Array(L);
    this.countAcc = new Float64Array(L * E);
    this.scoreAcc = new Float64Array(L * E);
    this.zAcc = new Float64Array(L);
    this.lossFree = this.config.lossFree;
    this.votes = new Float64Array(L * E);
  }

  /** T_glob of the current step: valid tokens of the global batch over all ranks. */
  get globalTokens(): number {
    return this.tGlob;
  }

  /** True when a term needs the whole global batch's counts before the first backward. */
  get needsExactCounts(): boolean {
    return this.plans.some((p) => p.term.scope === 'global-exact');
  }

  /** Starts an optimiser step. `localTokens`: valid tokens of this rank's A micro-batches. */
  async beginStep(localTokens: number): Promise<void> {
    if (this.micro !== -1) fail('BALANCE_STATE', 'beginStep called twice without endStep');
    const t = Float64Array.of(localTokens);
    await this.comm.allReduceSum(t);
    this.tGlob = t[0];
    if (!(this.tGlob > 0)) fail('BALANCE_STATE', 'the global batch has no valid tokens');
    // Algorithm 1: "for each optimiser step, zero the per-layer count buffer".
    this.buffers.forEach((buf) => buf.fill(0));
    [this.lblAcc, this.microAcc, this.countAcc, this.scoreAcc, this.zAcc, this.votes].forEach((a) => a.fill(0));
    this.tokenAcc = 0;
    this.groups = 0;
    this.exact = null;
    this.micro = 0;
  }

  /**
   * `global-exact`: the counts of this rank's whole share of the global batch, from statistics-only
   * forwards of its A micro-batches, all-reduced. Touches no buffer.
   */
  async setExactCounts(all: MicroStats[]): Promise<void> {
    if (this.micro !== 0) fail('BALANCE_STATE', 'setExactCounts belongs after beginStep and before the first micro-step');
    const sums = new Float64Array(this.L * (this.E + 1));
    for (const s of all) this.addSums(sums, s);
    await this.comm.allReduceSum(sums);
    this.exact = sums;
  }

  /** The pressure for micro-batch number `this.micro` of the step, from its statistics. */
  async microStep(stats: MicroStats): Promise<MicroBalance> {
    const { L, E, K, b, R, A } = this;
    if (this.micro < 0 || this.micro >= A) fail('BALANCE_STATE', `microStep outside a step or past its ${A} micro-steps`);
    this.checkShapes(stats);
    if (this.needsExactCounts && !this.exact) fail('BALANCE_STATE', 'global-exact needs setExactCounts before the first micro-step');
    const m = this.micro;

    // This micro-batch's local sums per layer (counts, tokens), and their sum over ranks.
    const local = new Float64Array(L * (E + 1));
    this.addSums(local, stats);
    const needsReduced = this.plans.some((p) => p.term.scope === 'dp' || p.period > 0) || this.lossFree?.scope === 'dp';
    let reduced = local;
    if (needsReduced) {
      // Algorithm 1: "all-reduce (sum) the counts over data-parallel ranks".
      reduced = local.slice();
      await this.comm.allReduceSum(reduced);
    }
    // balanceSequences N <= R b: every rank's per-sequence rows, gathered by a sum of disjoint rows.
    let gathered: Float64Array | null = null;
    if (this.plans.some((p) => p.group > 0)) {
      gathered = new Float64Array(R * b * L * (E + 1));
      for (let q = 0; q < b; q++) this.addSeqRow(gathered, (this.comm.rank * b + q) * L * (E + 1), stats, q);
      await this.comm.allReduceSum(gathered);
    }

    const pressure = new Float32Array(L * b * E);
    const f = new Float64Array(E);
    this.plans.forEach((plan, ti) => {
      const { scope } = plan.term;
      let src: Float64Array; // (L, E + 1) sums defining f for all local sequences, unless per group
      if (plan.period > 0) {
        const buf = this.buffers[ti];
        if (m % plan.period === 0) buf.fill(0); // balanceSequences > R b: a new group of micro-steps
        // Algorithm 1: "add to the buffer".
        for (let i = 0; i < buf.length; i++) buf[i] += reduced[i];
        src = buf;
      } else if (scope === 'global-exact') src = this.exact!;
      else if (scope === 'dp') src = reduced;
      else src = local; // micro; sequence and groups pick their own rows below
      for (let l = 0; l < L; l++) {
        for (let q = 0; q < b; q++) {
          if (scope === 'sequence') this.freqOfSeq(f, stats, l, q);
          else if (plan.group > 0) {
            const g = Math.floor((this.comm.rank * b + q) / plan.group) * plan.group;
            f.fill(0);
            let n = 0;
            for (let s = g; s < g + plan.group; s++) {
              const row = (s * L + l) * (E + 1);
              for (let i = 0; i < E; i++) f[i] += gathered![row + i];
              n += gathered![row + E];
            }
            for (let i = 0; i < E; i++) f[i] = n > 0 ? f[i] / (K * n) : 0;
          } else {
            // Algorithm 1: "f = buffer / (K * tokens accumulated so far across ranks)".
            this.freqOf(f, src, l);
          }
          this.apply(pressure, f, stats, plan.term.coef, ti, l, q);
        }
      }
    });

    // Monitors: micro-scope LBL and the global totals, whatever the training terms.
    for (let l = 0; l < L; l++) {
      this.freqOf(f, local, l);
      for (let q = 0; q < b; q++) {
        const base = (l * b + q) * E;
        for (let i = 0; i < E; i++) {
          this.microAcc[l] += (E / this.tGlob) * f[i] * stats.scoreSums[base + i];
          this.countAcc[l * E + i] += stats.counts[base + i];
          this.scoreAcc[l * E + i] += stats.scoreSums[base + i];
        }
        this.zAcc[l] += stats.zSums[l * b + q];
      }
    }
    for (let q = 0; q < b; q++) this.tokenAcc += stats.validTokens[q];
    this.voteMicro(stats, local, reduced);
    this.micro++;
    return { pressure, zScale: this.config.zLoss / this.tGlob };
  }

  /** Ends the step: all-reduces the logged values. Algorithm 1: "optimiser step; reset the buffer". */
  async endStep(): Promise<StepBalance> {
    const { L, E, K, A } = this;
    if (this.micro !== A) fail('BALANCE_STATE', `endStep after ${this.micro} of ${A} micro-steps`);
    const T = this.plans.length * L;
    const V = T + 2 * L + 2 * L * E; // where the loss-free votes start
    const all = new Float64Array(V + L * E + 2);
    all.set(this.lblAcc, 0);
    all.set(this.microAcc, T);
    all.set(this.countAcc, T + L);
    all.set(this.scoreAcc, T + L + L * E);
    all.set(this.zAcc, T + L + 2 * L * E);
    all.set(this.votes, V);
    all[all.length - 2] = this.groups;
    all[all.length - 1] = this.tokenAcc;
    await this.comm.allReduceSum(all);
    const tokens = all[all.length - 1];
    const counts = all.slice(T + L, T + L + L * E);
    const scores = all.subarray(T + L + L * E, T + L + 2 * L * E);
    const lbl: Record<string, number[]> = {};
    let balanceLoss = 0;
    this.plans.forEach((p, ti) => {
      lbl[p.name] = Array.from(all.subarray(ti * L, (ti + 1) * L));
      balanceLoss += p.term.coef * lbl[p.name].reduce((a, v) => a + v, 0);
    });
    const lblGlobal = Array.from({ length: L }, (_, l) => {
      let s = 0;
      for (let i = 0; i < E; i++) s += (counts[l * E + i] / (K * tokens)) * (scores[l * E + i] / tokens);
      return E * s;
    });
    const zSum = all.subarray(T + L + 2 * L * E, T + L + 2 * L * E + L).reduce((a, v) => a + v, 0);
    const biasUpdate = this.lossFree ? this.biasUpdate(all.subarray(V, V + L * E), all[all.length - 2], counts) : null;
    const zLoss = (this.config.zLoss * zSum) / this.tGlob;
    this.micro = -1;
    this.buffers.forEach((buf) => buf.fill(0));
    return {
      lbl,
      lblMicro: Array.from(all.subarray(T, T + L)),
      lblGlobal,
      balanceLoss: balanceLoss + zLoss,
      zLoss,
      globalCounts: counts,
      tokens,
      biasUpdate,
    };
  }

  // ---- auxiliary-loss-free balancing ------------------------------------------------------------

  /** Votes of this micro-step's groups at the loss-free scope (global scopes vote in endStep). */
  private voteMicro(stats: MicroStats, local: Float64Array, reduced: Float64Array): void {
    const { L, E, b } = this;
    const scope = this.lossFree?.scope;
    if (scope === 'sequence') {
      const c = new Float64Array(E);
      for (let q = 0; q < b; q++) {
        if (!(stats.validTokens[q] > 0)) continue;
        for (let l = 0; l < L; l++) {
          for (let i = 0; i < E; i++) c[i] = stats.counts[(l * b + q) * E + i];
          this.vote(l, c, 1);
        }
        this.groups += 1;
      }
    } else if (scope === 'micro' || scope === 'dp') {
      // dp: every rank holds the same all-reduced counts, so each votes 1/R of the group.
      const [sums, w] = scope === 'micro' ? [local, 1] : [reduced, 1 / this.R];
      if (!(sums[E] > 0)) return;
      for (let l = 0; l < L; l++) this.vote(l, sums.subarray(l * (E + 1), l * (E + 1) + E), w);
      this.groups += w;
    }
  }

  /** votes[l, i] += w sign(mean_j c_j - c_i): under-loaded experts are pushed up, over-loaded down. */
  private vote(l: number, c: Float64Array, w: number): void {
    const { E } = this;
    let mean = 0;
    for (let i = 0; i < E; i++) mean += c[i] / E;
    for (let i = 0; i < E; i++) this.votes[l * E + i] += w * Math.sign(mean - c[i]);
  }

  /** rate * (mean vote over the scope's groups); global scopes: the one group of the global batch. */
  private biasUpdate(votes: Float64Array, groups: number, globalCounts: Float64Array): Float32Array {
    const { L, E } = this;
    const { scope, rate } = this.lossFree!;
    if (scope === 'global' || scope === 'global-exact') {
      this.votes.fill(0);
      for (let l = 0; l < L; l++) this.vote(l, globalCounts.subarray(l * E, (l + 1) * E), 1);
      return Float32Array.from(this.votes, (v) => rate * v);
    }
    return Float32Array.from(votes, (v) => (groups > 0 ? (rate * v) / groups : 0));
  }

  // ---- helpers -------------------------------------------------------------------------------

  /** pressure[l, q, :] += alpha E f / T_glob;  lbl[term, l] += (E / T_glob) sum_i f_i score_sum_{q,i}. */
  private apply(pressure: Float32Array, f: Float64Array, s: MicroStats, alpha: number, ti: number, l: number, q: number): void {
    const { E, b, L } = this;
    const base = (l * b + q) * E;
    let lbl = 0;
    for (let i = 0; i < E; i++) {
      pressure[base + i] += (alpha * E * f[i]) / this.tGlob;
      lbl += f[i] * s.scoreSums[base + i];
    }
    this.lblAcc[ti * L + l] += (E * lbl) / this.tGlob;
  }

  /** f = counts / (K tokens) of layer l from (L, E + 1) sums. */
  private freqOf(f: Float64Array, sums: Float64Array, l: number): void {
    const { E, K } = this;
    const n = sums[l * (E + 1) + E];
    for (let i = 0; i < E; i++) f[i] = n > 0 ? sums[l * (E + 1) + i] / (K * n) : 0;
  }

  private freqOfSeq(f: Float64Array, s: MicroStats, l: number, q: number): void {
    const { E, K, b } = this;
    const n = s.validTokens[q];
    for (let i = 0; i < E; i++) f[i] = n > 0 ? s.counts[(l * b + q) * E + i] / (K * n) : 0;
  }

  /** sums (L, E + 1) += counts and tokens of every sequence of s. */
  private addSums(sums: Float64Array, s: MicroStats): void {
    for (let q = 0; q < this.b; q++) this.addSeqRow(sums, 0, s, q);
  }

  /** rows (L, E + 1) at `at` += counts and tokens of sequence q. */
  private addSeqRow(rows: Float64Array, at: number, s: MicroStats, q: number): void {
    const { L, E, b } = this;
    for (let l = 0; l < L; l++) {
      const row = at + l * (E + 1);
      for (let i = 0; i < E; i++) rows[row + i] += s.counts[(l * b + q) * E + i];
      rows[row + E] += s.validTokens[q];
    }
  }

  private checkShapes(s: MicroStats): void {
    const { L, E, b } = this;
    const want: [string, number, number][] = [
      ['counts', s.counts.length, L * b * E],
      ['scoreSums', s.scoreSums.length, L * b * E],
      ['zSums', s.zSums.length, L * b],
      ['validTokens', s.validTokens.length, b],
    ];
    for (const [name, got, exp] of want) {
      if (got !== exp) fail('SHAPE_MISMATCH', `stats.${name}: expected ${exp} values (L=${L}, b=${b}, E=${E}), got ${got}`);
    }
  }
}
