// The HTML report rendered from the synthetic fixture at 8, 64 and 160 experts, checked as a person
// would see it: opened in headless Chromium, every heatmap, chart and table row present and laid
// out, experts ordered by domain, nothing wider than its card, a screenshot saved to
// reports/report-test-e<E>.png; plus escaping and the errors for unreadable or unfinished runs.

import test, { type ExecutionContext } from 'ava';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { bszChart, bszOf } from '../src/report/figures.js';
import { fixtureRuns } from '../src/report/fixture.js';
import { escapeHtml } from '../src/report/html.js';
import { renderReport } from '../src/report/render.js';
import { writeReport } from '../src/report/write.js';

const CHROMIUM = '/usr/bin/chromium';
// The machine has no network: these flags stop Chromium from trying to reach Google services.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Write runs as run folders the way the trainer leaves them. */
async function writeRunDirs(root: string, runs: ReturnType<typeof fixtureRuns>): Promise<string[]> {
  return Promise.all(
    runs.map(async ({ result, metrics }) => {
      const dir = join(root, result.name);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'result.json'), JSON.stringify(result, null, 2));
      await writeFile(join(dir, 'metrics.jsonl'), metrics.map((m) => JSON.stringify(m)).join('\n') + '\n');
      return dir;
    }),
  );
}

/** The report of the fixture runs with E experts, opened in Chromium: everything present, nothing overflowing. */
async function checkReport(t: ExecutionContext, experts: number): Promise<void> {
  try {
    await access(CHROMIUM);
  } catch {
    t.fail(`${CHROMIUM} not found: the report test needs Chromium. Install it with: apt-get install -y chromium`);
    return;
  }
  const runs = fixtureRuns({ experts });
  const root = await mkdtemp(join(tmpdir(), 'moe-report-'));
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 60_000 });
  try {
    const out = join(root, 'report.html');
    await writeReport(await writeRunDirs(root, runs), out, { title: `Fixture: micro vs global, ${experts} experts` });

    const page = await browser.newPage({ viewport: { width: 1240, height: 900 } });
    const requests: string[] = [];
    const errors: string[] = [];
    page.on('request', (r) => void (r.url().startsWith('file:') || requests.push(r.url())));
    page.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())));
    await page.goto(pathToFileURL(out).href, { waitUntil: 'load' });

    const nonEmpty = async (testId: string): Promise<void> => {
      const box = await page.getByTestId(testId).boundingBox();
      t.truthy(box && box.width > 0 && box.height > 0, `${testId} has no visible box`);
    };
    const D = runs[0].result.domains.length;
    for (let l = 0; l < 4; l++) {
      // One expert order per layer for both panels, grouped by the domain that selects each expert
      // most in the two runs together: that domain never decreases from left to right.
      const orders = await Promise.all(
        runs.map(({ result }) => page.getByTestId(`heatmap-${result.name}-layer-${l}`).locator('rect.cell').evaluateAll((cs) => cs.map((c) => Number(c.getAttribute('data-expert'))))),
      );
      for (const o of orders) t.is(o.length, D * experts, `layer ${l}: one cell per domain and expert`);
      const firstRow = orders[0].slice(0, experts);
      t.deepEqual(orders[1].slice(0, experts), firstRow, `layer ${l}: the same expert order in both panels`);
      t.deepEqual([...firstRow].sort((a, b) => a - b), Array.from({ length: experts }, (_, i) => i), 'every expert once');
      const freq = (d: number, i: number) => runs.reduce((a, r) => a + r.result.evals.at(-1)!.layers[l].frequency[d][i], 0);
      const owner = firstRow.map((i) => Array.from({ length: D }, (_, d) => d).reduce((b, d) => (freq(d, i) > freq(b, i) ? d : b), 0));
      t.true(owner.every((d, j) => j === 0 || d >= owner[j - 1]), `layer ${l}: experts grouped by preferring domain: ${owner.join('')}`);
      for (const { result } of runs) await nonEmpty(`heatmap-${result.name}-layer-${l}`);
    }
    await nonEmpty('heatmap-legend');
    for (const id of ['chart-loss', 'chart-lbl']) {
      await nonEmpty(id);
      // Per run, raw and smoothed: train loss + held-out, or global + micro LBL; each drawn, not empty.
      const curves = page.getByTestId(id).locator('path.series');
      t.is(await curves.count(), (id === 'chart-loss' ? 3 : 4) * runs.length, id);
      for (const d of await curves.evaluateAll((ps) => ps.map((p) => p.getAttribute('d') ?? ''))) t.regex(d, /^M[\d.]+ [\d.]+L/);
    }
    // The smoothed train curves of the runs differ in colour; their raw curves are faint.
    const trains = await page.getByTestId('chart-loss').locator('path.series').evaluateAll((ps) =>
      ps.map((p) => ({ name: p.getAttribute('data-series') ?? '', stroke: p.getAttribute('stroke'), opacity: p.getAttribute('stroke-opacity') })),
    );
    const smoothed = trains.filter((c) => / train$/.test(c.name));
    t.is(new Set(smoothed.map((c) => c.stroke)).size, runs.length);
    t.true(trains.filter((c) => /\(raw\)$/.test(c.name)).every((c) => Number(c.opacity) < 0.5));
    await nonEmpty('chart-loss-diff');
    for (const d of runs[0].result.domains) {
      await nonEmpty(`chart-domain-${d}`);
      t.is(await page.getByTestId(`chart-domain-${d}`).locator('path.series').count(), runs.length, `held-out loss of ${d} per run`);
    }
    await nonEmpty('chart-topk');
    t.is(await page.getByTestId('chart-topk').locator('path.series').count(), runs.length);
    await nonEmpty('metrics-table');
    const rows = page.getByTestId('metrics-table').locator('tbody tr');
    t.is(await rows.count(), runs.length);
    t.deepEqual(await rows.locator('th').allTextContents(), runs.map((r) => r.result.name));
    t.deepEqual(requests, [], 'the page must be self-contained');
    t.deepEqual(errors, []);

    // Nothing overflows: no horizontal scrolling of the page or of a card, and every figure lies
    // inside its card.
    const overflow = await page.evaluate(() => {
      const bad: string[] = [];
      const doc = document.documentElement;
      if (doc.scrollWidth > doc.clientWidth) bad.push(`page ${doc.scrollWidth} > ${doc.clientWidth}`);
      document.querySelectorAll('section').forEach((sec, i) => {
        if (sec.scrollWidth > sec.clientWidth) bad.push(`section ${i} scrolls: ${sec.scrollWidth} > ${sec.clientWidth}`);
        const box = sec.getBoundingClientRect();
        if (sec.querySelector('.table-wrap')) return; // the metrics table may scroll inside its own wrapper
        sec.querySelectorAll('svg').forEach((svg) => {
          const r = svg.getBoundingClientRect();
          if (r.left < box.left - 0.5 || r.right > box.right + 0.5) bad.push(`${svg.getAttribute('data-testid')}: ${r.left.toFixed(0)}..${r.right.toFixed(0)} outside ${box.left.toFixed(0)}..${box.right.toFixed(0)}`);
        });
      });
      return bad;
    });
    t.deepEqual(overflow, [], `${experts} experts`);

    await mkdir('reports', { recursive: true });
    await page.screenshot({ path: `reports/report-test-e${experts}.png`, fullPage: true });
  } finally {
    await browser.close();
    await rm(root, { recursive: true, force: true });
  }
}

for (const experts of [8, 64, 160]) {
  test(`the fixture report at ${experts} experts renders in headless Chromium: heatmaps, charts, table, no overflow`, (t) => checkReport(t, experts));
}

test('escapeHtml covers the five HTML-special characters', (t) => {
  t.is(escapeHtml(`<a href="x">Tom & Jerry's</a>`), '&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;');
  t.is(escapeHtml('plain e0..e7 → ok'), 'plain e0..e7 → ok');
});

test('run names, domains and config are escaped in the page', (t) => {
  const [run] = fixtureRuns();
  const evil = '<script>alert("x")</script>';
  const html = renderReport([
    { ...run, result: { ...run.result, name: evil, domains: [...run.result.domains.slice(0, -1), '<u>x&y'], config: { note: evil } } },
  ]);
  t.false(html.includes('<script'));
  t.false(html.includes('<u>'));
  t.true(html.includes('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'));
  t.true(html.includes('&lt;u&gt;x&amp;y'));
});

test('a run without a last eval gives a readable error naming the run', (t) => {
  const [micro, global] = fixtureRuns();
  const err = t.throws(() => renderReport([micro, { ...global, result: { ...global.result, evals: [] } }]), {
    message: /run "global" has no evaluation/,
  });
  t.is((err as Error & { code: string }).code, 'RUN_INCOMPLETE');
});

test('a last eval whose frequency table has the wrong shape is refused', (t) => {
  const [micro] = fixtureRuns();
  const evals = structuredClone(micro.result.evals);
  evals[2].layers[1].frequency.pop();
  const err = t.throws(() => renderReport([{ ...micro, result: { ...micro.result, evals } }]), {
    message: /layer 1: frequency is 4 x 8, expected .* 5 x 8/,
  });
  t.is((err as Error & { code: string }).code, 'RUN_INCOMPLETE');
});

test('writeReport: missing or invalid run files throw RUN_NOT_FOUND naming the path; output is atomic', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'moe-report-'));
  try {
    const out = join(root, 'sub', 'report.html');
    const missing = join(root, 'nope');
    const e1 = await t.throwsAsync(writeReport([missing], out), { message: new RegExp(`${missing}/result.json: cannot read`) });
    t.is((e1 as Error & { code: string }).code, 'RUN_NOT_FOUND');

    const [dir] = await writeRunDirs(root, fixtureRuns());
    await writeFile(join(dir, 'metrics.jsonl'), '{"step":0}\n{"step":1,\n');
    const e2 = await t.throwsAsync(writeReport([dir], out), { message: /metrics\.jsonl:2: invalid JSON/ });
    t.is((e2 as Error & { code: string }).code, 'RUN_NOT_FOUND');
    await writeFile(join(dir, 'result.json'), '{"name": "micro"}');
    const e3 = await t.throwsAsync(writeReport([dir], out), { message: /result\.json: not a run result/ });
    t.is((e3 as Error & { code: string }).code, 'RUN_NOT_FOUND');

    const dirs = await writeRunDirs(join(root, 'ok'), fixtureRuns());
    await writeReport(dirs, out);
    const html = await readFile(out, 'utf8');
    t.true(html.startsWith('<!DOCTYPE html>') && html.trimEnd().endsWith('</html>'));
    t.is(html, renderReport(fixtureRuns()), 'same runs, same bytes');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('Balance BSZ of a run: sequences pooled for f and whether through the buffer', (t) => {
  const cfg = (term: object, extra: object = {}) => ({ batch: { ranks: 2, accumSteps: 4, microBatch: 2 }, balance: { terms: [term] }, ...extra });
  // R b = 4 sequences per micro-step, R A b = 16 in the global batch.
  t.deepEqual(bszOf(cfg({ scope: 'micro', coef: 1 })), { sequences: 2, buffer: false, withinMicroStep: true });
  t.deepEqual(bszOf(cfg({ scope: 'dp', coef: 1 })), { sequences: 4, buffer: false, withinMicroStep: true });
  t.deepEqual(bszOf(cfg({ scope: 'global', coef: 1 })), { sequences: 16, buffer: true, withinMicroStep: false });
  t.deepEqual(bszOf(cfg({ scope: 'global-exact', coef: 1 })), { sequences: 16, buffer: false, withinMicroStep: false });
  t.deepEqual(bszOf(cfg({ balanceSequences: 8, coef: 1 })), { sequences: 8, buffer: true, withinMicroStep: false });
  t.deepEqual(bszOf(cfg({ balanceSequences: 8, exact: true, coef: 1 })), { sequences: 8, buffer: false, withinMicroStep: false });
  t.deepEqual(bszOf(cfg({ balanceSequences: 2, coef: 1 })), { sequences: 2, buffer: false, withinMicroStep: true });
  t.is(bszOf(cfg({ scope: 'shuffle', coef: 1 })), null);
  t.is(bszOf(cfg({ scope: 'micro', coef: 1 }, { data: { mixedMicroBatches: true } })), null);
  t.is(bszOf({ ...cfg({ scope: 'micro', coef: 1 }), balance: { terms: [{ scope: 'micro', coef: 1 }], phases: [{ step: 2, terms: [] }] } }), null);
  // The chart: sizes 2 and 4 serve both curves; 8 and 16 each their own. Two seeds at size 8 through the buffer.
  const [run] = fixtureRuns();
  const at = (config: object, loss: number) => ({ ...run.result, config, evals: [{ ...run.result.evals[2], mean: { ...run.result.evals[2].mean, loss } }] });
  const results = [
    at(cfg({ scope: 'micro', coef: 1 }), 4),
    at(cfg({ scope: 'dp', coef: 1 }), 3.9),
    at(cfg({ balanceSequences: 8, coef: 1 }), 3.8),
    at(cfg({ balanceSequences: 8, coef: 1 }), 3.6),
    at(cfg({ balanceSequences: 8, exact: true, coef: 1 }), 3.75),
    at(cfg({ scope: 'global', coef: 1 }), 3.5),
  ];
  const svg = bszChart(results, (r) => r.evals[0].mean.loss, 'loss', 'bsz')!;
  const paths = [...svg.matchAll(/<path class="series" data-series="([^"]+)" d="([^"]+)"/g)].map((m) => [m[1], m[2].split(/[ML]/).filter(Boolean).length]);
  t.deepEqual(paths, [['through the buffer (Algorithm 1)', 4], ['each group counted exactly (no buffer)', 3]]);
  t.is([...svg.matchAll(/class="error-bar"/g)].length, 1, 'one size with two seeds: one error bar');
  t.is(bszChart(results.slice(0, 2), (r) => r.evals[0].mean.loss, 'loss', 'bsz'), null, 'fewer than three sizes: no chart');
});
