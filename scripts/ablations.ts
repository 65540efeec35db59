// The experiments of EXPERIMENTS.md: every comparison of Qiu et al. 2025 (PAPER.md) as a list of
// `moe compare` run names, derived from the base config (its coefficient and its batch), shared by
// the runner (scripts/experiments.ts) and the summary (scripts/summarize-experiments.ts).

import { parseTrainConfig, type TrainConfig } from '../src/trainer/config.js';

export interface Ablation {
  id: string;
  title: string;
  /** run names for `variant()`, in table order */
  runs: string[];
}

/** Powers of two from 1 to n (n included). */
const powers = (n: number): number[] => Array.from({ length: Math.floor(Math.log2(n)) + 1 }, (_, k) => 2 ** k).concat(Number.isInteger(Math.log2(n)) ? [] : [n]);

export function ablations(base: unknown): Ablation[] {
  const cfg: TrainConfig = parseTrainConfig(base);
  const { ranks: R, accumSteps: A, microBatch: b } = cfg.batch;
  const G = R * A * b;
  const alpha = cfg.balance.terms[0]?.coef ?? 0.05;
  // Balance BSZ from 1 sequence to the whole global batch: within a micro-step (N <= R b) there is
  // no buffer to speak of; beyond, through the buffer (bsz=N) or counted in full (bsz=N-exact).
  // The sizes that are scopes run under the scope's name (the same computation): b with one rank
  // is `micro`, R b is `dp`, the global batch is `global` (buffer) and `global-exact`.
  const named = (n: number, exact: boolean): string =>
    n === G ? (exact ? 'global-exact' : 'global') : n === b && R === 1 ? 'micro' : n === R * b ? 'dp' : `bsz=${n}${exact ? '-exact' : ''}`;
  const sizes = powers(G).filter((n) => G % n === 0 && (n <= R * b || n % (R * b) === 0));
  const bsz = [...sizes.map((n) => named(n, false)), ...sizes.filter((n) => n > R * b).map((n) => named(n, true))];
  const round = (x: number) => Number(x.toPrecision(3));
  return [
    { id: 'main', title: 'Micro-batch against global-batch balance', runs: ['micro', 'global'] },
    { id: 'bsz', title: 'Balance BSZ, through the buffer and counted exactly', runs: bsz },
    { id: 'shuffle', title: 'Shuffle: f from a random token subset of micro-batch size drawn from the global batch', runs: ['micro', 'shuffle', 'global'] },
    { id: 'switch', title: 'Switching scope at half of training', runs: ['micro', 'micro-to-global', 'global-to-micro', 'global'] },
    { id: 'coef', title: 'Lowering the micro-batch coefficient (the paper\'s 0.008 → 0.004 → 0.001)', runs: ['micro', `micro@${round(alpha / 2)}`, `micro@${round(alpha / 8)}`, 'global'] },
    { id: 'speed', title: 'Global plus micro at 1% of the coefficient (the speed fix)', runs: ['micro', 'global', 'global+micro'] },
    { id: 'free', title: 'Auxiliary-loss-free balancing at micro and global scope', runs: ['micro', 'free-micro', 'free-global', 'global'] },
  ];
}
