// The figures of EXPERIMENTS.md, drawn from the run folders of scripts/experiments.ts with the
// report's own SVG code and saved as PNG through headless Chromium (Debian's /usr/bin/chromium):
// the domain x expert heatmaps per layer of one seed's micro and global runs (experts ordered as in
// the report), the top-k score sum per layer (mean ± std over seeds), and the Balance-BSZ curves.
// Usage: node --import tsx scripts/figures.ts [runs/experiments] [docs/figures] [seed for the heatmaps]

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHART_CSS, lineChartSvg, type Series } from '../src/report/chart.js';
import { bszChart } from '../src/report/figures.js';
import { renderReport } from '../src/report/render.js';
import { readStepRows } from '../src/trainer/runfolder.js';
import type { RunResult, StepMetrics } from '../src/results.js';
import { mean, readRuns, std } from './summarize-experiments.js';

const root = process.argv[2] ?? 'runs/experiments';
const outDir = process.argv[3] ?? 'docs/figures';
const seed = Number(process.argv[4] ?? 0);
const runs = readRuns(root);
mkdirSync(outDir, { recursive: true });

const pages: { file: string; html: string; selector: string }[] = [];
const wrap = (body: string): string =>
  '<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{margin:0;background:#fff;font:14px system-ui,"DejaVu Sans",sans-serif}' +
  '#fig{display:inline-block}figure{display:inline-block;margin:12px}figcaption{font-weight:600;margin-bottom:4px}' +
  `${CHART_CSS}</style></head><body><div id="fig">${body}</div></body></html>`;

// 1. Heatmaps: the report's section for one seed's micro and global runs.
const pick = (name: string) => runs.get(name)?.find((r) => r.seed === seed);
const [micro, global] = [pick('micro'), pick('global')];
const metricsOf = (name: string): StepMetrics[] =>
  readStepRows(join(root, `seed${seed}`, name, 'metrics.jsonl'));
if (micro && global) {
  const html = renderReport([{ result: micro.result, metrics: metricsOf('micro') }, { result: global.result, metrics: metricsOf('global') }]);
  pages.push({ file: 'heatmaps.png', html, selector: 'section:has(.heat-grid)' });
}

// 2. Top-k score sum per layer, mean ± std over seeds, one line per run.
const colours: Record<string, string> = { micro: '#0072b2', global: '#d55e00', shuffle: '#009e73', 'global+micro': '#cc79a7' };
const topkSeries: Series[] = Object.entries(colours).flatMap(([name, colour]) => {
  const rs = runs.get(name) ?? [];
  if (!rs.length) return [];
  const L = rs[0].result.evals.at(-1)!.layers.length;
  const per = Array.from({ length: L }, (_, l) => rs.map((r) => mean(r.result.evals.at(-1)!.layers[l].topkScore)));
  return [{ name: `${name} (${rs.length} seeds)`, colour, markers: true, points: per.map((v, l): [number, number] => [l, mean(v)]), errors: per.map(std) }];
});
if (topkSeries.length) {
  const L = topkSeries[0].points.length;
  const svg = lineChartSvg({ testId: 'topk', xLabel: 'layer', yLabel: 'top-k score sum', series: topkSeries, width: 460, height: 280, xTicks: Array.from({ length: L }, (_, l) => ({ value: l, label: String(l) })) });
  pages.push({ file: 'topk.png', html: wrap(`<figure><figcaption>Top-k score sum per layer (held-out, mean over domains)</figcaption>${svg}</figure>`), selector: '#fig' });
}

// 3. Balance BSZ: held-out loss and MI against the sequences pooled, every seed's runs of the
// Balance-BSZ ablation only (the names scripts/ablations.ts gives it): other runs at one of its
// sizes (micro@α, free-micro, the switches) would be averaged into its points.
const BSZ_RUN = /^(micro|dp|global|global-exact|bsz=\d+(-exact)?)$/;
const all: RunResult[] = [...runs.entries()].filter(([name]) => BSZ_RUN.test(name)).flatMap(([, rs]) => rs.map((r) => r.result));
const loss = bszChart(all, (r) => r.evals.at(-1)!.mean.loss, 'held-out loss (nats / token)', 'bsz-loss');
const mi = bszChart(all, (r) => mean(r.evals.at(-1)!.layers.map((l) => l.mutualInformation)), 'MI(domain; expert), bits', 'bsz-mi');
if (loss && mi) {
  pages.push({ file: 'balance-bsz.png', html: wrap(`<figure><figcaption>Held-out loss</figcaption>${loss}</figure><figure><figcaption>Specialisation</figcaption>${mi}</figure>`), selector: '#fig' });
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu'], headless: true });
try {
  const page = await browser.newPage({ viewport: { width: 1240, height: 900 } });
  for (const p of pages) {
    await page.setContent(p.html, { waitUntil: 'load' });
    await page.locator(p.selector).first().screenshot({ path: join(outDir, p.file) });
    console.log(join(outDir, p.file));
  }
} finally {
  await browser.close();
}
