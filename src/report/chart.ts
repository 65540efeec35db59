// Hand-written SVG line charts for the report (loss and LBL curves): linear axes with "nice" ticks,
// light grid lines, one path per series (optionally thin and translucent, for raw data under a
// smoothed curve, or with error bars), and a legend under the plot that wraps onto more rows.

import { escapeHtml, fixed } from './html.js';

export interface Series {
  name: string;
  colour: string;
  dashed?: boolean;
  /** draw a dot at every point (sparse series such as held-out evals) */
  markers?: boolean;
  /** (x, y) pairs; non-finite y breaks the line instead of corrupting the path */
  points: [number, number][];
  /** stroke width (default 2) and opacity (default 1): raw data goes thin and faint under its smoothed curve */
  width?: number;
  opacity?: number;
  /** false: no legend entry (e.g. the raw curve under a smoothed one, explained in the caption) */
  legend?: boolean;
  /** half-length of an error bar at each point (e.g. a standard deviation over seeds) */
  errors?: number[];
}

export interface ChartSpec {
  testId: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  width?: number;
  height?: number;
  /** x ticks at these values with these labels (e.g. powers of two on a log axis) instead of nice ones */
  xTicks?: { value: number; label: string }[];
  /** start the y axis at 0 (a time or a size) instead of just below the data */
  yFromZero?: boolean;
}

/**
 * A centred moving average over `window` points (shrunk at the ends), the smoothed curve drawn
 * beside the raw one; non-finite values are skipped.
 */
export function smooth(points: [number, number][], window: number): [number, number][] {
  const h = Math.floor(Math.max(1, window) / 2);
  return points.map(([x], i) => {
    let [sum, n] = [0, 0];
    for (let j = Math.max(0, i - h); j <= Math.min(points.length - 1, i + h); j++) {
      if (Number.isFinite(points[j][1])) [sum, n] = [sum + points[j][1], n + 1];
    }
    return [x, n > 0 ? sum / n : NaN];
  });
}

/** Ticks at 1, 2 or 5 x 10^k covering [lo, hi] with about `count` intervals. */
function niceTicks(lo: number, hi: number, count = 5): { ticks: number[]; decimals: number } {
  if (!(hi > lo)) [lo, hi] = [lo - 0.5, lo + 0.5];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const ticks = Array.from({ length: last - first + 1 }, (_, i) => (first + i) * step);
  return { ticks, decimals: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
}

const LEGEND_ROW = 18;

/** The look of the charts' classes (axes, labels, legend, grid, frame) where no page styles them. */
export const CHART_CSS =
  'svg text{font-family:system-ui,"DejaVu Sans",sans-serif}svg .axis{fill:#4a5263;font-size:11px}svg .label{fill:#2b3242;font-size:12px}' +
  'svg .legend-text{fill:#2b3242;font-size:11px}svg .grid{stroke:#eceef2}svg .tick{stroke:#8a909c}svg .frame{fill:none;stroke:#c3c8d1}';

/** Charts of `lineChartSvg` side by side under title lines (the first bold), in one self-contained
 * SVG file (white background, their styles inside). */
export function standaloneSvg(title: string[], charts: string[]): string {
  const size = (svg: string, what: 'width' | 'height') => Number(new RegExp(` ${what}="(\\d+)"`).exec(svg)![1]);
  const top = 8 + 18 * title.length;
  let x = 0;
  const placed = charts.map((svg) => {
    const at = `<svg x="${x}" y="${top}" `;
    x += size(svg, 'width');
    return svg.replace('<svg ', at);
  });
  const h = top + Math.max(...charts.map((svg) => size(svg, 'height')));
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${x}" height="${h}" viewBox="0 0 ${x} ${h}">` +
    `<style>${CHART_CSS}</style><rect width="100%" height="100%" fill="#fff"/>` +
    title.map((line, i) => `<text class="label" x="12" y="${18 + 18 * i}"${i ? '' : ' font-weight="600"'}>${escapeHtml(line)}</text>`).join('') +
    `${placed.join('')}</svg>\n`
  );
}

/** One chart; the ticks enclose the data so the curves never touch the frame. */
export function lineChartSvg(c: ChartSpec): string {
  const W = c.width ?? 500;
  const H = c.height ?? 300;
  const m = { left: 58, right: 16, top: 12, bottom: 44 };
  // Error bars widen the y range they need.
  const finite = c.series.flatMap((s) => s.points.flatMap(([x, y], i): [number, number][] => {
    const e = s.errors?.[i] ?? 0;
    return e > 0 ? [[x, y - e], [x, y + e]] : [[x, y]];
  })).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = finite.map((p) => p[0]);
  const ys = finite.map((p) => p[1]);
  const xt = c.xTicks?.length
    ? { ticks: c.xTicks.map((t) => t.value), decimals: 0 }
    : niceTicks(xs.length ? Math.min(...xs) : 0, xs.length ? Math.max(...xs) : 1, 6);
  const xLabel = (t: number, i: number): string => c.xTicks?.[i]?.label ?? fixed(t, xt.decimals);
  const yt = niceTicks(c.yFromZero ? 0 : ys.length ? Math.min(...ys) : 0, ys.length ? Math.max(...ys) : 1, 5);
  const [x0, x1] = [xt.ticks[0], xt.ticks[xt.ticks.length - 1]];
  const [y0, y1] = [yt.ticks[0], yt.ticks[yt.ticks.length - 1]];

  // Legend entries are laid out first: their row count sets the total height.
  const entryW = (s: Series): number => 34 + s.name.length * 6.6 + 18;
  let lx = m.left;
  let row = 0;
  const legend = c.series.filter((s) => s.legend !== false).map((s) => {
    if (lx + entryW(s) > W - m.right && lx > m.left) [lx, row] = [m.left, row + 1];
    const at = { x: lx, row };
    lx += entryW(s);
    return { s, ...at };
  });
  const legendTop = H;
  const totalH = H + (row + 1) * LEGEND_ROW + 4;

  const px = (x: number): number => m.left + ((x - x0) / (x1 - x0)) * (W - m.left - m.right);
  const py = (y: number): number => H - m.bottom - ((y - y0) / (y1 - y0)) * (H - m.top - m.bottom);
  const r = (v: number): string => v.toFixed(1);
  const parts: string[] = [];

  for (const t of yt.ticks) {
    parts.push(`<line class="grid" x1="${m.left}" x2="${W - m.right}" y1="${r(py(t))}" y2="${r(py(t))}"/>`);
    parts.push(`<text class="axis" x="${m.left - 6}" y="${r(py(t) + 4)}" text-anchor="end">${fixed(t, yt.decimals)}</text>`);
  }
  xt.ticks.forEach((t, i) => {
    parts.push(`<line class="tick" x1="${r(px(t))}" x2="${r(px(t))}" y1="${H - m.bottom}" y2="${H - m.bottom + 5}"/>`);
    parts.push(`<text class="axis" x="${r(px(t))}" y="${H - m.bottom + 18}" text-anchor="middle">${escapeHtml(xLabel(t, i))}</text>`);
  });
  parts.push(`<rect class="frame" x="${m.left}" y="${m.top}" width="${W - m.left - m.right}" height="${H - m.top - m.bottom}"/>`);
  parts.push(`<text class="label" x="${(m.left + W - m.right) / 2}" y="${H - 6}" text-anchor="middle">${escapeHtml(c.xLabel)}</text>`);
  parts.push(
    `<text class="label" transform="translate(14 ${(m.top + H - m.bottom) / 2}) rotate(-90)" text-anchor="middle">` +
      `${escapeHtml(c.yLabel)}</text>`,
  );

  for (const s of c.series) {
    let d = '';
    let pen = 'M';
    for (const [x, y] of s.points) {
      if (!Number.isFinite(y)) {
        pen = 'M';
        continue;
      }
      d += `${pen}${r(px(x))} ${r(py(y))}`;
      pen = 'L';
    }
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    const name = escapeHtml(s.name);
    const look = ` stroke-width="${s.width ?? 2}"${s.opacity !== undefined ? ` stroke-opacity="${s.opacity}"` : ''}`;
    parts.push(
      `<path class="series" data-series="${name}" d="${d}" fill="none" stroke="${s.colour}"${look}${dash}>` +
        `<title>${name}</title></path>`,
    );
    s.errors?.forEach((e, i) => {
      const [x, y] = s.points[i] ?? [NaN, NaN];
      if (!(e > 0) || !Number.isFinite(x) || !Number.isFinite(y)) return;
      const [cx, lo, hi] = [r(px(x)), r(py(y - e)), r(py(y + e))];
      parts.push(`<path class="error-bar" d="M${cx} ${lo}V${hi}M${r(px(x) - 4)} ${lo}h8M${r(px(x) - 4)} ${hi}h8" stroke="${s.colour}" stroke-width="1.5" fill="none"/>`);
    });
    if (s.markers) {
      for (const [x, y] of s.points.filter((p) => Number.isFinite(p[1]))) {
        parts.push(
          `<circle class="marker" cx="${r(px(x))}" cy="${r(py(y))}" r="3.5" fill="#fff" stroke="${s.colour}" stroke-width="2">` +
            `<title>${name}: (${escapeHtml(c.xTicks?.find((t) => t.value === x)?.label ?? String(x))}, ${fixed(y, 4)})</title></circle>`,
        );
      }
    }
  }

  for (const { s, x, row: k } of legend) {
    const y = legendTop + k * LEGEND_ROW + 6;
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    parts.push(`<line x1="${x}" x2="${x + 26}" y1="${y}" y2="${y}" stroke="${s.colour}" stroke-width="2"${dash}/>`);
    if (s.markers) parts.push(`<circle cx="${x + 13}" cy="${y}" r="3.5" fill="#fff" stroke="${s.colour}" stroke-width="2"/>`);
    parts.push(`<text class="legend-text" x="${x + 32}" y="${y + 4}">${escapeHtml(s.name)}</text>`);
  }

  return (
    `<svg class="chart" data-testid="${escapeHtml(c.testId)}" width="${W}" height="${totalH}" viewBox="0 0 ${W} ${totalH}" ` +
    `role="img" xmlns="http://www.w3.org/2000/svg">${parts.join('')}</svg>`
  );
}
