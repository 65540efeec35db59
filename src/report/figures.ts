// The report's figures after Qiu et al. 2025 beside the heatmaps: held-out loss per domain during
// training, the top-k score sum per layer (their Figure: higher under global balance in every
// layer), and the Balance-BSZ curve (held-out loss and specialisation against the number of
// sequences pooled for f, through the buffer or counted exactly). Each takes runs and returns SVG.

import type { RunResult } from '../results.js';
import { lineChartSvg, type Series } from './chart.js';
import { escapeHtml } from './html.js';

/** What a figure needs of a run: its result, display name and colour. */
export interface FigureRun {
  name: string;
  colour: string;
  result: RunResult;
}

const mean = (xs: number[]): number => xs.reduce((a, v) => a + v, 0) / xs.length;
const std = (xs: number[]): number => (xs.length > 1 ? Math.sqrt(xs.reduce((a, v) => a + (v - mean(xs)) ** 2, 0) / (xs.length - 1)) : 0);

/** One small chart per domain: its held-out loss at every evaluation, a line per run. */
export function domainLossCharts(runs: FigureRun[]): string[] {
  const domains = [...new Set(runs.flatMap((r) => r.result.domains))];
  return domains.map((d) => {
    const series: Series[] = runs.map((r) => ({
      name: r.name,
      colour: r.colour,
      markers: true,
      points: r.result.evals.map((e): [number, number] => [e.step, e.perDomain[d]?.loss ?? NaN]),
    }));
    return `<figure><figcaption class="title">${escapeHtml(d)}</figcaption>${lineChartSvg({ testId: `chart-domain-${d}`, xLabel: 'step', yLabel: 'held-out loss (nats)', series, width: 330, height: 210 })}</figure>`;
  });
}

/** Per layer, the mean over domains of the top-k score sum per token at the last eval, a line per run. */
export function topkChart(runs: FigureRun[], testId = 'chart-topk'): string {
  const L = Math.max(...runs.map((r) => r.result.evals.at(-1)?.layers.length ?? 0));
  const series: Series[] = runs.map((r) => ({
    name: r.name,
    colour: r.colour,
    markers: true,
    points: (r.result.evals.at(-1)?.layers ?? []).map((l, i): [number, number] => [i, mean(l.topkScore.filter(Number.isFinite))]),
  }));
  const xTicks = Array.from({ length: L }, (_, l) => ({ value: l, label: String(l) }));
  return lineChartSvg({ testId, xLabel: 'layer', yLabel: 'top-k score sum', series, xTicks, width: 420, height: 260 });
}

/** Where a run sits on the Balance-BSZ axis: sequences pooled for f, and whether through the buffer. */
export interface BszPoint {
  sequences: number;
  /** f through Algorithm 1's buffer (partial counts in early micro-steps) */
  buffer: boolean;
  /** the group fits in one micro-step (N <= R b): buffer or not is the same run */
  withinMicroStep: boolean;
}

interface BatchCfg {
  batch?: { ranks?: number; accumSteps?: number; microBatch?: number };
  data?: { mixedMicroBatches?: boolean };
  balance?: { terms?: { scope?: string; balanceSequences?: number; exact?: boolean }[]; lossFree?: unknown; phases?: unknown[] };
}

/**
 * A run's Balance BSZ: one loss term, domain-pure micro-batches, no phases and no loss-free bias.
 * `sequence` pools 1 sequence, `micro` b, `dp` R b, `global` and `global-exact` the global batch
 * R A b (`global` through the buffer when A > 1), `balanceSequences` N its N (through the buffer
 * when N > R b and not `exact`). Null for any other run.
 */
export function bszOf(config: unknown): BszPoint | null {
  const c = config as BatchCfg;
  const terms = c.balance?.terms ?? [];
  if (terms.length !== 1 || c.balance?.lossFree || c.balance?.phases?.length || c.data?.mixedMicroBatches) return null;
  const { ranks: R = 1, accumSteps: A = 1, microBatch: b = 1 } = c.batch ?? {};
  const t = terms[0];
  const at = (sequences: number, buffer: boolean): BszPoint => ({ sequences, buffer: buffer && sequences > R * b, withinMicroStep: sequences <= R * b });
  if (t.balanceSequences !== undefined) return at(t.balanceSequences, !t.exact);
  const pooled: Record<string, BszPoint> = {
    sequence: at(1, false),
    micro: at(b, false),
    dp: at(R * b, false),
    global: at(R * A * b, true),
    'global-exact': at(R * A * b, false),
  };
  return pooled[t.scope ?? ''] ?? null;
}

/**
 * The Balance-BSZ curves: `value` of each run (e.g. held-out loss) against log2 of the sequences
 * pooled, one curve through the buffer and one counted exactly, mean ± std over the runs at each
 * point (seeds). Points that need no buffer (N <= R b) belong to both curves. Null with fewer than
 * three distinct sizes.
 */
export function bszChart(results: RunResult[], value: (r: RunResult) => number, yLabel: string, testId: string, colours = ['#0072b2', '#d55e00']): string | null {
  const pts = results.map((r) => ({ p: bszOf(r.config), v: value(r) })).filter((x): x is { p: BszPoint; v: number } => x.p !== null && Number.isFinite(x.v));
  const sizes = [...new Set(pts.map((x) => x.p.sequences))].sort((a, b) => a - b);
  if (sizes.length < 3) return null;
  const curve = (buffer: boolean): { points: [number, number][]; errors: number[] } => {
    const at = sizes
      .map((n) => ({ n, vs: pts.filter((x) => x.p.sequences === n && (x.p.withinMicroStep || x.p.buffer === buffer)).map((x) => x.v) }))
      .filter((x) => x.vs.length > 0);
    return { points: at.map((x): [number, number] => [Math.log2(x.n), mean(x.vs)]), errors: at.map((x) => std(x.vs)) };
  };
  const series: Series[] = [
    { name: 'through the buffer (Algorithm 1)', colour: colours[0], markers: true, ...curve(true) },
    { name: 'each group counted exactly (no buffer)', colour: colours[1], dashed: true, markers: true, ...curve(false) },
  ].filter((s) => s.points.length > 0);
  const xTicks = sizes.map((n) => ({ value: Math.log2(n), label: String(n) }));
  return lineChartSvg({ testId, xLabel: 'Balance BSZ: sequences pooled for f (log scale)', yLabel, series, xTicks, width: 480, height: 280 });
}
