// `moe report`: one self-contained HTML page (inline CSS and SVG, no scripts, no network) comparing
// runs side by side: domain x expert heatmaps per layer, loss and LBL curves, and the metrics table
// of DESIGN §7. Pure: the same runs give the same bytes, so the page can be diffed and tested.

import { MoeTrainerError } from '../errors.js';
import type { EvalResult, RunResult, StepMetrics } from '../results.js';
import { lineChartSvg, smooth, type Series } from './chart.js';
import { bszChart, domainLossCharts, topkChart } from './figures.js';
import { cellWidthFor, colourLegendSvg, colourScale, expertOrder, heatmapLabelWidth, heatmapSvg } from './heatmap.js';
import { duration, escapeHtml as esc, fixed, sig } from './html.js';

export interface RunData {
  result: RunResult;
  metrics: StepMetrics[];
}

/** Okabe–Ito colours: distinguishable with the common colour-vision deficiencies. */
const PALETTE = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000'];

const mean = (xs: number[]): number => xs.reduce((a, v) => a + v, 0) / xs.length;
const uniq = <T>(xs: T[]): T[] => [...new Set(xs)];

/** The last eval, checked against the run's own dimensions: the heatmaps and table are built from it. */
function lastEval(r: RunResult): EvalResult {
  const ev = r.evals.at(-1);
  if (!ev) {
    throw new MoeTrainerError(
      'RUN_INCOMPLETE',
      `run "${r.name}" has no evaluation (result.json "evals" is empty): the report needs the last eval's ` +
        'losses and routing frequencies; was training stopped before its final eval?',
    );
  }
  ev.layers.forEach((layer, l) => {
    const f = layer.frequency;
    if (f.length !== r.domains.length || f.some((row) => row.length !== r.numExperts)) {
      throw new MoeTrainerError(
        'RUN_INCOMPLETE',
        `run "${r.name}", eval at step ${ev.step}, layer ${l}: frequency is ${f.length} x ${f[0]?.length ?? 0}, ` +
          `expected domains x experts = ${r.domains.length} x ${r.numExperts}`,
      );
    }
  });
  return ev;
}

/** Display names, made unique ("global", "global (2)") because they key the test ids and legends. */
function displayNames(runs: RunData[]): string[] {
  const seen = new Map<string, number>();
  return runs.map(({ result }) => {
    const n = (seen.get(result.name) ?? 0) + 1;
    seen.set(result.name, n);
    return n === 1 ? result.name : `${result.name} (${n})`;
  });
}

interface Run {
  name: string;
  colour: string;
  result: RunResult;
  metrics: StepMetrics[];
  last: EvalResult;
}

const swatch = (colour: string): string => `<span class="swatch" style="background:${colour}"></span>`;

function header(runs: Run[], title: string): string {
  const domains = uniq(runs.map((r) => r.result.domains.join(', ')));
  const facts = [
    `${runs.length} run${runs.length === 1 ? '' : 's'}`,
    `domains: ${domains.join(' / ')}`,
    `E = ${uniq(runs.map((r) => r.result.numExperts)).join(' / ')} experts`,
    `K = ${uniq(runs.map((r) => r.result.topK)).join(' / ')}`,
    `${uniq(runs.map((r) => r.last.layers.length)).join(' / ')} MoE layers`,
  ];
  const cards = runs.map((r) => {
    const stopped = r.result.interrupted ? ' <span class="warn">interrupted</span>' : '';
    return (
      `<div class="run-card">${swatch(r.colour)}<b>${esc(r.name)}</b>${stopped}` +
      `<span>${r.result.stepsDone} steps · ${r.result.evals.length} evals · ${duration(r.result.seconds)}</span>` +
      `<span class="dim">${esc(r.result.machine)}</span></div>`
    );
  });
  return (
    `<header><h1>${esc(title)}</h1><p class="facts">${facts.map(esc).join('<span class="sep">·</span>')}</p>` +
    `<div class="runs">${cards.join('')}</div></header>`
  );
}

/** Section content width at the page's max width: main 1160 − 2·28 padding − 2·(22 padding + 1 border). */
const CONTENT_WIDTH = 1058;
const ROW_HEAD = 64;
const GRID_GAP = 36;
/** Narrowest expert column side by side; below it the runs' panels go one under another. */
const MIN_SIDE_BY_SIDE_CELL = 6;

/**
 * The heatmap panels' layout: side by side when every run's panel fits at >= 6 px per expert, else
 * one run per row at full width; the cell width fits the panel into the section either way.
 */
function heatLayout(runs: Run[]): { stacked: boolean; cellWidth: (r: Run) => number } {
  const fit = (r: Run, panels: number): number => {
    const room = (CONTENT_WIDTH - ROW_HEAD - panels * GRID_GAP) / panels - heatmapLabelWidth(r.result.domains) - 2;
    return cellWidthFor(r.result.numExperts, room);
  };
  const stacked = runs.some((r) => fit(r, runs.length) < MIN_SIDE_BY_SIDE_CELL);
  return { stacked, cellWidth: (r) => fit(r, stacked ? 1 : runs.length) };
}

function heatmaps(runs: Run[]): string {
  const uniforms = runs.map((r) => r.result.topK / r.result.numExperts);
  const scale = colourScale(runs.flatMap((r) => r.last.layers.map((l) => l.frequency)), uniforms);
  const L = Math.max(...runs.map((r) => r.last.layers.length));
  // One expert order per layer for all runs with the same experts and domains: their panels line up.
  const key = (r: Run): string => `${r.result.numExperts}|${r.result.domains.join('\u0000')}`;
  const orders = runs.map((r) =>
    Array.from({ length: L }, (_, l) => {
      const peers = runs.filter((p) => key(p) === key(r) && p.last.layers[l]);
      return r.last.layers[l] ? expertOrder(peers.map((p) => p.last.layers[l].frequency)) : null;
    }),
  );
  const { stacked, cellWidth } = heatLayout(runs);
  const panel = (r: Run, ri: number, l: number): string => {
    const layer = r.last.layers[l];
    const head = stacked ? `<div class="panel-head">${swatch(r.colour)}${esc(r.name)} <span class="dim">(step ${r.last.step})</span></div>` : '';
    if (!layer) return `<div>${head}<span class="dim">—</span></div>`;
    const svg = heatmapSvg({
      testId: `heatmap-${r.name}-layer-${l}`,
      frequency: layer.frequency,
      domains: r.result.domains,
      uniform: r.result.topK / r.result.numExperts,
      scale,
      order: orders[ri][l]!.order,
      owner: orders[ri][l]!.owner,
      cellWidth: cellWidth(r),
    });
    const caption = `max / uniform ${fixed(layer.maxOverUniform, 2)}× · MI ${fixed(layer.mutualInformation, 3)} bits`;
    return `<figure>${head}${svg}<figcaption>${caption}</figcaption></figure>`;
  };
  const cells: string[] = [];
  if (!stacked) {
    cells.push('<div></div>', ...runs.map((r) => `<div class="col-head">${swatch(r.colour)}${esc(r.name)} <span class="dim">(step ${r.last.step})</span></div>`));
  }
  for (let l = 0; l < L; l++) {
    if (stacked) {
      runs.forEach((r, ri) => cells.push(ri === 0 ? `<div class="row-head">layer ${l}</div>` : '<div></div>', panel(r, ri, l)));
    } else {
      cells.push(`<div class="row-head">layer ${l}</div>`, ...runs.map((r, ri) => panel(r, ri, l)));
    }
  }
  const columns = stacked ? 1 : runs.length;
  return (
    '<section><h2>Expert selection by domain</h2>' +
    '<p class="note">Share of each domain\'s held-out tokens routed to each expert at the last eval. ' +
    'Rows sum to K; the uniform level is K/E. Experts are ordered by the domain that selects them most ' +
    '(bracketed over the columns), then by how strongly, in one order per layer for all runs. ' +
    'One colour scale for all panels; hover a cell for its expert and exact value.</p>' +
    colourLegendSvg(scale, uniforms) +
    `<div class="heat-grid" style="grid-template-columns:${ROW_HEAD}px repeat(${columns}, auto)">${cells.join('')}</div></section>`
  );
}

/** Odd window of a centred moving average: about 1/25 of the steps. */
const smoothWindow = (n: number): number => 2 * Math.floor(Math.max(1, Math.round(n / 25)) / 2) + 1;

function charts(runs: Run[]): string {
  const w = smoothWindow(Math.max(...runs.map((r) => r.metrics.length)));
  // Raw per-step values thin and faint, their moving average on top: runs stay apart by colour
  // even where the raw curves overlap.
  const rawAndSmooth = (r: Run, label: string, points: [number, number][], dashed = false): Series[] => [
    { name: `${label} (raw)`, colour: r.colour, points, width: 1, opacity: 0.3, legend: false, dashed },
    { name: label, colour: r.colour, points: smooth(points, w), width: 2.2, dashed },
  ];
  const trainLoss = (r: Run): [number, number][] => r.metrics.map((m): [number, number] => [m.step, m.loss]);
  const loss: Series[] = runs.flatMap((r) => [
    ...rawAndSmooth(r, `${r.name} train`, trainLoss(r)),
    {
      name: `${r.name} held-out`,
      colour: r.colour,
      dashed: true,
      markers: true,
      points: r.result.evals.map((e): [number, number] => [e.step, e.mean.loss]),
    },
  ]);
  const lbl: Series[] = runs.flatMap((r) => [
    ...rawAndSmooth(r, `${r.name} global-batch LBL`, r.metrics.map((m): [number, number] => [m.step, mean(m.lblGlobal)])),
    ...rawAndSmooth(r, `${r.name} micro-batch LBL`, r.metrics.map((m): [number, number] => [m.step, mean(m.lblMicro)]), true),
  ]);
  const figure = (caption: string, svg: string): string => `<figure><figcaption class="title">${caption}</figcaption>${svg}</figure>`;
  // The difference of the smoothed train losses to the first run's, step by step.
  const [first, ...others] = runs;
  const base = new Map(smooth(trainLoss(first), w));
  const diff: Series[] = others.map((r) => ({
    name: `${r.name} − ${first.name}`,
    colour: r.colour,
    points: smooth(trainLoss(r), w).map(([x, y]): [number, number] => [x, base.has(x) ? y - base.get(x)! : NaN]),
  }));
  return (
    '<section><h2>Training curves</h2>' +
    `<p class="note">Thin, faint: the raw value of every step; thick: its mean over a centred window of ${w} steps.</p><div class="charts">` +
    figure(
      'Loss: train per step, held-out mean per eval',
      lineChartSvg({ testId: 'chart-loss', xLabel: 'step', yLabel: 'loss (nats / token)', series: loss }),
    ) +
    (diff.length
      ? figure(
          `Train loss minus ${esc(first.name)}'s (smoothed; below 0 = lower loss)`,
          lineChartSvg({ testId: 'chart-loss-diff', xLabel: 'step', yLabel: 'Δ loss (nats / token)', series: diff }),
        )
      : '') +
    figure(
      'Load-balancing loss at both scopes, mean over layers (1 = balanced)',
      lineChartSvg({ testId: 'chart-lbl', xLabel: 'step', yLabel: 'LBL', series: lbl }),
    ) +
    '</div></section>'
  );
}

/** Held-out loss per domain at every eval; the top-k score sum per layer; the Balance-BSZ curves. */
function evalFigures(runs: Run[]): string {
  const bszLoss = bszChart(runs.map((r) => r.result), (r) => r.evals.at(-1)?.mean.loss ?? NaN, 'held-out loss (nats / token)', 'chart-bsz-loss');
  const bszMi = bszChart(runs.map((r) => r.result), (r) => mean(r.evals.at(-1)?.layers.map((l) => l.mutualInformation) ?? []), 'MI(domain; expert), bits', 'chart-bsz-mi');
  const bsz = bszLoss && bszMi
    ? '<section><h2>Balance BSZ</h2><p class="note">Held-out loss and specialisation against the number of sequences whose counts ' +
      'give f (mean ± std over the runs at each size), through the buffer of Algorithm 1 or with every group counted in full.</p>' +
      `<div class="charts"><figure>${bszLoss}</figure><figure>${bszMi}</figure></div></section>`
    : '';
  return (
    '<section><h2>Held-out loss per domain during training</h2>' +
    '<p class="note">Validation loss of each domain at every evaluation of the run.</p>' +
    `<div class="charts small">${domainLossCharts(runs).join('')}</div></section>` +
    '<section><h2>Routing confidence per layer</h2>' +
    '<p class="note">Top-k score sum (the summed router probability of a token\'s chosen experts), mean over tokens and domains at the last eval; ' +
    'Qiu et al. find it higher under global balance in every layer.</p>' +
    `<div class="charts"><figure>${topkChart(runs)}</figure></div></section>` +
    bsz
  );
}

/** The §7 table: one row per run; each cell holds a main figure and a smaller secondary one. */
function table(runs: Run[]): string {
  const domains = uniq(runs.flatMap((r) => r.result.domains));
  const L = Math.max(...runs.map((r) => r.last.layers.length));
  const cell = (main: string, sub: string, cls = '', tip = ''): string =>
    `<td class="${cls}"${tip ? ` title="${esc(tip)}"` : ''}><span class="main">${main}</span><span class="sub">${sub}</span></td>`;
  // Lowest is best for bits per byte and loss; mark it only when there is something to compare.
  const best = (vals: number[]): number => (runs.length > 1 ? Math.min(...vals.filter(Number.isFinite)) : NaN);
  const bestBpb = domains.map((d) => best(runs.map((r) => r.last.perDomain[d]?.bitsPerByte ?? NaN)));
  const bestMean = best(runs.map((r) => r.last.mean.bitsPerByte));
  const none = '<td class="dim">—</td>';
  const rows = runs.map((r) => {
    const tds = domains.map((d, i) => {
      const e = r.last.perDomain[d];
      return e ? cell(fixed(e.bitsPerByte, 3), `ppl ${sig(e.perplexity)}`, e.bitsPerByte === bestBpb[i] ? 'best' : '') : none;
    });
    const m = r.last.mean;
    tds.push(cell(fixed(m.bitsPerByte, 3), `ppl ${sig(m.perplexity)}`, `${m.bitsPerByte === bestMean ? 'best ' : ''}group-end`));
    tds.push(cell(fixed(m.loss, 3), `${m.tokens.toLocaleString('en-US')} tokens`, 'group-end'));
    for (let l = 0; l < L; l++) {
      const s = r.last.layers[l];
      const cls = l === L - 1 ? 'group-end' : '';
      tds.push(s ? cell(`${fixed(s.maxOverUniform, 2)}×`, `MI ${fixed(s.mutualInformation, 3)} b`, cls) : none);
    }
    const final = r.metrics.at(-1);
    tds.push(
      final
        ? cell(
            fixed(mean(final.globalImbalance), 3),
            `max ${fixed(Math.max(...final.globalImbalance), 3)}`,
            '',
            `step ${final.step}, per layer: ${final.globalImbalance.map((v) => fixed(v, 3)).join(', ')}`,
          )
        : none,
    );
    return `<tr><th scope="row">${swatch(r.colour)}${esc(r.name)}</th>${tds.join('')}</tr>`;
  });
  const head1 =
    '<tr><th rowspan="2">run</th>' +
    `<th colspan="${domains.length + 1}" class="group-end">bits per byte (perplexity), last eval</th>` +
    '<th rowspan="2" class="group-end">mean loss<br><span class="dim">nats / token</span></th>' +
    `<th colspan="${L}" class="group-end">per layer: max freq / uniform (mutual information, bits)</th>` +
    '<th rowspan="2">global imbalance<br><span class="dim">max/mean − 1, final step, mean over layers</span></th></tr>';
  const head2 =
    '<tr>' +
    domains.map((d) => `<th>${esc(d)}</th>`).join('') +
    '<th class="group-end">mean</th>' +
    Array.from({ length: L }, (_, l) => `<th${l === L - 1 ? ' class="group-end"' : ''}>layer ${l}</th>`).join('') +
    '</tr>';
  return (
    '<section><h2>Metrics</h2><div class="table-wrap">' +
    `<table data-testid="metrics-table"><thead>${head1}${head2}</thead><tbody>${rows.join('')}</tbody></table></div>` +
    '<p class="note">Bold: lowest across runs. Mutual information is between domain and chosen expert; ' +
    '0 means routing ignores the domain.</p></section>'
  );
}

function configs(runs: Run[]): string {
  const blocks = runs.map(
    (r) =>
      `<details><summary>${esc(r.name)}: training config</summary>` +
      `<pre>${esc(JSON.stringify(r.result.config, null, 2) ?? 'null')}</pre></details>`,
  );
  return `<section class="configs">${blocks.join('')}</section>`;
}

const CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1d2330; font: 14px/1.45 system-ui, "Liberation Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 28px 28px 40px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; }
.facts { margin: 0 0 14px; color: #4a5263; }
.sep { margin: 0 8px; color: #a0a6b2; }
.runs { display: flex; flex-wrap: wrap; gap: 10px; }
.run-card { display: flex; gap: 10px; align-items: center; background: #fff; border: 1px solid #e1e4ea; border-radius: 8px;
  padding: 8px 14px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 7px; vertical-align: -1px; }
.run-card .swatch { margin-right: 0; }
.dim { color: #7a8191; font-weight: normal; }
.warn { color: #a23b00; background: #fff1e6; border-radius: 4px; padding: 0 6px; font-size: 12px; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 10px; padding: 18px 22px 20px; margin-top: 22px; }
h2 { margin: 0 0 6px; font-size: 17px; font-weight: 650; }
.note { margin: 0 0 10px; color: #5b6375; font-size: 13px; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #5b6375; margin-top: 4px; }
figcaption.title { font-size: 13px; color: #1d2330; font-weight: 600; margin: 0 0 6px; }
.heat-grid { display: grid; gap: 14px 36px; align-items: center; margin-top: 8px; }
.col-head { font-weight: 600; padding-left: 44px; }
.row-head { font-weight: 600; color: #4a5263; white-space: nowrap; }
.panel-head { font-weight: 600; font-size: 13px; margin-bottom: 2px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px 36px; margin-top: 8px; }
.charts.small { gap: 16px 18px; }
svg { max-width: 100%; height: auto; }
svg text { font-family: system-ui, "Liberation Sans", "DejaVu Sans", Arial, sans-serif; }
svg .axis { fill: #4a5263; font-size: 11px; }
svg .label { fill: #2b3242; font-size: 12px; }
svg .legend-text { fill: #2b3242; font-size: 11px; }
svg .grid { stroke: #eceef2; }
svg .tick { stroke: #8a909c; }
svg .frame { fill: none; stroke: #c3c8d1; }
svg rect.cell { stroke: #fff; stroke-width: 1; }
svg rect.cell:hover { stroke: #111; stroke-width: 2; }
.table-wrap { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0 10px; }
th, td { padding: 6px 9px; border-bottom: 1px solid #e6e8ed; text-align: right; vertical-align: top; }
thead th { font-size: 12px; font-weight: 600; color: #4a5263; text-align: center; vertical-align: bottom; background: #f8f9fb; }
tbody th { text-align: left; white-space: nowrap; }
.group-end { border-right: 1px solid #d5d9e0; }
td { white-space: nowrap; }
td .main { display: block; font-size: 14px; }
td .sub { display: block; font-size: 11px; color: #7a8191; }
td.best .main { font-weight: 700; }
.configs { background: none; border: none; padding: 0; }
details { margin-top: 8px; }
summary { cursor: pointer; color: #4a5263; }
pre { background: #fff; border: 1px solid #e1e4ea; border-radius: 6px; padding: 10px; font-size: 12px; overflow-x: auto; }
`;

/** The whole page. Throws `RUN_INCOMPLETE` naming the run when a run has no usable last eval. */
export function renderReport(runs: RunData[], opts: { title?: string } = {}): string {
  if (runs.length === 0) throw new MoeTrainerError('NO_RUNS', 'renderReport: no runs to report');
  const names = displayNames(runs);
  const rs: Run[] = runs.map((r, i) => ({ ...r, name: names[i], colour: PALETTE[i % PALETTE.length], last: lastEval(r.result) }));
  const title = opts.title ?? `MoE load balancing: ${names.join(' vs ')}`;
  return (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">' +
    '<meta name="viewport" content="width=device-width, initial-scale=1">' +
    // Belt and braces for "self-contained": the page may not load or run anything, even if a bug
    // let user text through unescaped.
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">` +
    `<title>${esc(title)}</title><style>${CSS}</style></head>\n<body><main>` +
    header(rs, title) +
    heatmaps(rs) +
    charts(rs) +
    evalFigures(rs) +
    table(rs) +
    configs(rs) +
    '</main></body></html>\n'
  );
}
