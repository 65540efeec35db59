// The metrics as CSV beside metrics.jsonl, for spreadsheets and plotting tools: metrics.csv has a
// row per step, evals.csv a row per evaluation. (No maintained TensorBoard event-file writer was
// found for Node or Rust, so CSV is what plotting tools get.)

import type { EvalRow, StepMetrics } from '../results.js';

export const STEP_CSV = 'metrics.csv';
export const EVAL_CSV = 'evals.csv';

const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;

/** The header line of the step or the evaluation table for L layers and these domains. */
export function csvHeader(kind: 'step' | 'eval', L: number, domains: string[]): string {
  const perLayer = (name: string) => Array.from({ length: L }, (_, l) => `${name}_${l}`);
  const cols = kind === 'step'
    ? ['step', 'loss', 'lr', 'gradNorm', 'zLoss', 'lblGlobal', 'lblMicro', 'globalImbalance', 'microImbalance', 'tokensPerSec', 'stepMs', ...perLayer('lblGlobal'), ...perLayer('globalImbalance')]
    : ['step', 'loss', 'bitsPerByte', 'perplexity', ...domains.flatMap((d) => [`${d}.loss`, `${d}.bitsPerByte`]), ...perLayer('mutualInformation'), ...perLayer('maxOverUniform')];
  return cols.join(',') + '\n';
}

/** One line of the table its row belongs to (means over layers, then per layer). */
export function csvRow(r: StepMetrics | EvalRow, domains: string[]): string {
  const cols = r.kind === 'step'
    ? [r.step, r.loss, r.lr, r.gradNorm, r.zLoss, mean(r.lblGlobal), mean(r.lblMicro), mean(r.globalImbalance), mean(r.microImbalance), r.tokensPerSec, r.stepMs, ...r.lblGlobal, ...r.globalImbalance]
    : [r.step, r.mean.loss, r.mean.bitsPerByte, r.mean.perplexity, ...domains.flatMap((d) => [r.perDomain[d]?.loss, r.perDomain[d]?.bitsPerByte]), ...r.layers.map((l) => l.mutualInformation), ...r.layers.map((l) => l.maxOverUniform)];
  return cols.map((v) => (v === undefined || !Number.isFinite(v) ? '' : String(v))).join(',') + '\n';
}
