// Auxiliary-loss-free balancing (Wang et al. 2024, used by DeepSeek-V3): a per-expert bias b_i
// added to the router scores for top-k selection only, moved once per optimiser step against each
// expert's load. It needs no gradient, so it is a different algorithm from the LBL terms; it shares
// their scopes: each group G of the scope (a sequence, a micro-batch, a micro-step over all ranks,
// the global batch) votes sign(mean_j c_j(G) - c_i(G)) for expert i, and
//
//   b_i += rate * (mean of the votes over the step's groups)
//
// so under-loaded experts are pushed up and over-loaded ones down. The update is identical on
// every rank (the votes are all-reduced).

import type { Communicator } from './communicator.js';
import type { LossFree } from './config.js';
import type { BalanceDims, MicroStepCounts } from './frequency.js';

export class LossFreeBias {
  /** (L, E) this rank's share of the step's votes, then the number of groups that voted */
  private readonly votes: Float64Array;

  constructor(
    readonly config: LossFree,
    private readonly dims: BalanceDims,
    private readonly comm: Communicator,
  ) {
    this.votes = new Float64Array(dims.layers * dims.experts + 1);
  }

  beginStep(): void {
    this.votes.fill(0);
  }

  /** The votes of this micro-step's groups (the global scopes vote once, in `endStep`). */
  async microStep(c: MicroStepCounts): Promise<void> {
    const { layers: L, experts: E, seqsPerMicro: b } = this.dims;
    const { scope } = this.config;
    if (scope === 'sequence') {
      const counts = new Float64Array(E);
      for (let q = 0; q < b; q++) {
        if (!(c.stats.validTokens[q] > 0)) continue;
        for (let l = 0; l < L; l++) {
          for (let i = 0; i < E; i++) counts[i] = c.stats.counts[(l * b + q) * E + i];
          this.vote(l, counts, 1);
        }
        this.votes[L * E] += 1;
      }
    } else if (scope === 'micro' || scope === 'dp') {
      // dp: every rank holds the same all-reduced counts, so each casts 1/R of the group's vote.
      const [sums, w] = scope === 'micro' ? [c.local, 1] : [await c.acrossRanks(), 1 / this.comm.size];
      if (!(sums[E] > 0)) return;
      for (let l = 0; l < L; l++) this.vote(l, sums.subarray(l * (E + 1), l * (E + 1) + E), w);
      this.votes[L * E] += w;
    }
  }

  /** The step's bias update (L, E). globalCounts (L, E): the global batch's counts, all ranks. */
  async endStep(globalCounts: Float64Array): Promise<Float32Array> {
    const { layers: L, experts: E } = this.dims;
    const { scope, rate } = this.config;
    if (scope === 'global' || scope === 'global-exact') {
      // One group: the global batch.
      this.votes.fill(0);
      for (let l = 0; l < L; l++) this.vote(l, globalCounts.subarray(l * E, (l + 1) * E), 1);
      return Float32Array.from(this.votes.subarray(0, L * E), (v) => rate * v);
    }
    await this.comm.allReduceSum(this.votes);
    const groups = this.votes[L * E];
    return Float32Array.from(this.votes.subarray(0, L * E), (v) => (groups > 0 ? (rate * v) / groups : 0));
  }

  /** votes[l, i] += w sign(mean_j c_j - c_i). */
  private vote(l: number, c: Float64Array, w: number): void {
    const E = this.dims.experts;
    let mean = 0;
    for (let i = 0; i < E; i++) mean += c[i] / E;
    for (let i = 0; i < E; i++) this.votes[l * E + i] += w * Math.sign(mean - c[i]);
  }
}
