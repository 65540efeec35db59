// `moe report`: one self-contained HTML page (inline CSS and SVG, no scripts, no network) comparing
// runs side by side: domain x expert heatmaps per layer, loss and LBL curves, and the metrics table
// of DESIGN §7. Pure: the same runs give the same bytes, so the page can be diffed and tested.

import { MoeTrainerError } from '../errors.js';
import type { EvalResult, RunResult, StepMetrics } from '../results.js';
import { lineChartSvg, type Series } from './chart.js';
import { colourLegendSvg, colourScale, heatmapSvg } from './heatmap.js';
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

function heatmaps(runs: Run[]): string {
  const uniforms = runs.map((r) => r.result.topK / r.result.numExperts);
  const scale = colourScale(runs.flatMap((r) => r.last.layers.map((l) => l.frequency)), uniforms);
  const L = Math.max(...runs.map((r) => r.last.layers.length));
  const cells: string[] = [
    '<div></div>',
    ...runs.map((r) => `<div class="col-head">${swatch(r.colour)}${esc(r.name)} <span class="dim">(step ${r.last.step})</span></div>`),
  ];
  for (let l = 0; l < L; l++) {
    cells.push(`<div class="row-head">layer ${l}</div>`);
    for (const r of runs) {
      const layer = r.last.layers[l];
      if (!layer) {
        cells.push('<div class="dim">—</div>');
        continue;
      }
      const svg = heatmapSvg({
        testId: `heatmap-${r.name}-layer-${l}`,
        frequency: layer.frequency,
        domains: r.result.domains,
        uniform: r.result.topK / r.result.numExperts,
        scale,
      });
      const caption = `max / uniform ${fixed(layer.maxOverUniform, 2)}× · MI ${fixed(layer.mutualInformation, 3)} bits`;
      cells.push(`<figure>${svg}<figcaption>${caption}</figcaption></figure>`);
    }
  }
  return (
    '<section><h2>Expert selection by domain</h2>' +
    '<p class="note">Share of each domain\'s held-out tokens routed to each expert at the last eval. ' +
    'Rows sum to K; the uniform level is K/E. One colour scale for all panels; hover a cell for its exact value.</p>' +
    colourLegendSvg(scale, uniforms) +
    `<div class="heat-grid" style="grid-template-columns:auto repeat(${runs.length}, auto)">${cells.join('')}</div></section>`
  );
}

function charts(runs: Run[]): string {
  const loss: Series[] = runs.flatMap((r) => [
    { name: `${r.name} train`, colour: r.colour, points: r.metrics.map((m): [number, number] => [m.step, m.loss]) },
    {
      name: `${r.name} held-out`,
      colour: r.colour,
      dashed: true,
      markers: true,
      points: r.result.evals.map((e): [number, number] => [e.step, e.mean.loss]),
    },
  ]);
  const lbl: Series[] = runs.flatMap((r) => [
    { name: `${r.name} global-batch LBL`, colour: r.colour, points: r.metrics.map((m): [number, number] => [m.step, mean(m.lblGlobal)]) },
    {
      name: `${r.name} micro-batch LBL`,
      colour: r.colour,
      dashed: true,
      points: r.metrics.map((m): [number, number] => [m.step, mean(m.lblMicro)]),
    },
  ]);
  const figure = (caption: string, svg: string): string => `<figure><figcaption class="title">${caption}</figcaption>${svg}</figure>`;
  return (
    '<section><h2>Training curves</h2><div class="charts">' +
    figure(
      'Loss: train per step, held-out mean per eval',
      lineChartSvg({ testId: 'chart-loss', xLabel: 'step', yLabel: 'loss (nats / token)', series: loss }),
    ) +
    figure(
      'Load-balancing loss at both scopes, mean over layers (1 = balanced)',
      lineChartSvg({ testId: 'chart-lbl', xLabel: 'step', yLabel: 'LBL', series: lbl }),
    ) +
    '</div></section>'
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
.charts { display: flex; flex-wrap: wrap; gap: 24px 36px; margin-top: 8px; }
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
    table(rs) +
    configs(rs) +
    '</main></body></html>\n'
  );
}
