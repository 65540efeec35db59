// Domain x expert selection-frequency heatmaps (inline SVG) and their shared colour legend.
// One colour scale serves every heatmap on the page, so "micro" and "global" are compared by eye
// on equal terms; the scale is viridis (perceptually uniform, readable in greyscale).

import { escapeHtml, fixed } from './html.js';

/** matplotlib's viridis sampled at 10 evenly spaced points; interpolated linearly between them. */
const VIRIDIS = ['#440154', '#482878', '#3e4989', '#31688e', '#26828e', '#1f9e89', '#35b779', '#6ece58', '#b5de2b', '#fde725'].map(
  (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)),
);

/** The colour scale: frequencies 0..max map onto viridis. */
export interface ColourScale {
  max: number;
}

function rgb(t: number): number[] {
  const u = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(u));
  return VIRIDIS[i].map((c, k) => Math.round(c + (VIRIDIS[i + 1][k] - c) * (u - i)));
}

const hex = (c: number[]): string => '#' + c.map((v) => v.toString(16).padStart(2, '0')).join('');

function colour(scale: ColourScale, value: number): string {
  return hex(rgb(value / scale.max));
}

/** Dark text on the light (yellow-green) end, white on the dark end: relative luminance > 0.4. */
function textColour(scale: ColourScale, value: number): string {
  const [r, g, b] = rgb(value / scale.max).map((c) => (c / 255) ** 2.2);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 ? '#1b1b1b' : '#ffffff';
}

/**
 * Scale for a set of (D, E) tables: from 0 to the largest frequency, but at least twice the largest
 * uniform level K/E, so near-uniform runs look near-uniform instead of stretching noise over the
 * whole range. Frequencies cannot exceed 1 (an expert is chosen at most once per token).
 */
export function colourScale(tables: number[][][], uniforms: number[]): ColourScale {
  const dataMax = Math.max(0, ...tables.flatMap((t) => t.flat()).filter(Number.isFinite));
  return { max: Math.max(dataMax, Math.min(1, 2 * Math.max(...uniforms))) || 1 };
}

/** Rough width of a label at the 12px system font; SVG cannot measure text before layout. */
export const textWidth = (s: string, px = 12): number => s.length * px * 0.6;

/**
 * An order of the E experts that shows domain structure: each expert goes to the domain that
 * selects it most often (argmax_d of the summed frequency tables, ties to the first domain), the
 * domains' blocks in domain order, and inside a block the experts by decreasing preference
 * F[d][i] / mean_d' F[d'][i]. `tables` are (D, E) frequency tables of runs with the same domains
 * and experts; summing them gives one order for all of their panels.
 */
export function expertOrder(tables: number[][][]): { order: number[]; owner: number[] } {
  const D = tables[0].length;
  const E = tables[0][0]?.length ?? 0;
  const sum = Array.from({ length: D }, (_, d) => Array.from({ length: E }, (_, i) => tables.reduce((a, t) => a + (Number.isFinite(t[d][i]) ? t[d][i] : 0), 0)));
  const owner = Array.from({ length: E }, (_, i) => sum.reduce((best, row, d) => (row[i] > sum[best][i] ? d : best), 0));
  const lift = (i: number): number => {
    const mean = sum.reduce((a, row) => a + row[i], 0) / D;
    return mean > 0 ? sum[owner[i]][i] / mean : 0;
  };
  const order = Array.from({ length: E }, (_, i) => i).sort((a, b) => owner[a] - owner[b] || lift(b) - lift(a) || a - b);
  return { order, owner };
}

/** The column width that fits E experts in `width` pixels of cells: 3 to 40 px. */
export function cellWidthFor(E: number, width: number): number {
  return Math.max(3, Math.min(40, Math.floor(width / Math.max(1, E))));
}

/** Width of a heatmap's domain-label column. */
export const heatmapLabelWidth = (domains: string[]): number => Math.ceil(Math.max(...domains.map((d) => textWidth(d)), 20)) + 10;

export interface HeatmapSpec {
  testId: string;
  /** (D, E) selection frequencies */
  frequency: number[][];
  domains: string[];
  uniform: number;
  scale: ColourScale;
  /** the columns' experts, left to right (default 0 .. E-1) */
  order?: number[];
  /** the domain each expert is grouped under (expertOrder's owner); draws the domain blocks */
  owner?: number[];
  /** column width in px (default: fit 340 px) */
  cellWidth?: number;
}

/**
 * One heatmap: a row per domain, a column per expert in `order`; over the columns, the domain block
 * each expert belongs to; hovering a cell shows its expert and exact value.
 */
export function heatmapSvg(h: HeatmapSpec): string {
  const E = h.frequency[0]?.length ?? 0;
  const order = h.order ?? Array.from({ length: E }, (_, i) => i);
  const cw = h.cellWidth ?? Math.max(8, cellWidthFor(E, 340));
  const ch = 24;
  const left = heatmapLabelWidth(h.domains);
  const top = h.owner ? 30 : 18;
  const width = left + E * cw + 2;
  const height = top + h.domains.length * ch + 2;
  const showValues = cw >= 34;
  const parts: string[] = [];
  if (h.owner) {
    // Domain blocks: a bracket over the experts each domain prefers, named when there is room.
    let start = 0;
    for (let j = 1; j <= E; j++) {
      if (j < E && h.owner[order[j]] === h.owner[order[start]]) continue;
      const [x0, x1] = [left + start * cw + 1, left + j * cw - 1];
      const name = h.domains[h.owner[order[start]]] ?? '';
      parts.push(`<path class="block" d="M${x0} ${top - 3}V${top - 7}H${x1}V${top - 3}" fill="none" stroke="#8a909c"/>`);
      if (textWidth(name, 10) <= x1 - x0) parts.push(`<text class="axis" x="${(x0 + x1) / 2}" y="${top - 11}" text-anchor="middle" font-size="10">${escapeHtml(name)}</text>`);
      start = j;
    }
  } else {
    // Expert numbers, every n-th when the columns are narrow, so labels never collide.
    const every = Math.ceil((textWidth(`e${E - 1}`, 10) + 6) / cw);
    for (let j = 0; j < E; j += every) {
      parts.push(`<text class="axis" x="${left + (j + 0.5) * cw}" y="${top - 6}" text-anchor="middle" font-size="10">e${order[j]}</text>`);
    }
  }
  const stroke = cw >= 8 ? '' : ' style="stroke:none"';
  h.frequency.forEach((row, d) => {
    const domain = escapeHtml(h.domains[d]);
    const y = top + d * ch;
    parts.push(`<text class="axis" x="${left - 8}" y="${y + ch / 2 + 4}" text-anchor="end">${domain}</text>`);
    order.forEach((i, j) => {
      const v = row[i];
      const x = left + j * cw;
      const tip = `${domain} → e${i}: ${fixed(v, 3)} (${fixed(v / h.uniform, 2)}× uniform)`;
      parts.push(
        `<rect class="cell" data-expert="${i}" x="${x}" y="${y}" width="${cw}" height="${ch}" fill="${colour(h.scale, v)}"${stroke}><title>${tip}</title></rect>`,
      );
      if (showValues) {
        parts.push(
          `<text class="value" x="${x + cw / 2}" y="${y + ch / 2 + 3.5}" text-anchor="middle" font-size="10" ` +
            `fill="${textColour(h.scale, v)}">${fixed(v, 2).replace(/^0/, '')}</text>`,
        );
      }
    });
  });
  return (
    `<svg class="heatmap" data-testid="${escapeHtml(h.testId)}" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `role="img" xmlns="http://www.w3.org/2000/svg">${parts.join('')}</svg>`
  );
}

/** The shared legend: a gradient bar with ticks, and a marker at each run's uniform level K/E. */
export function colourLegendSvg(scale: ColourScale, uniforms: number[]): string {
  const barW = 320;
  const x0 = 16;
  const width = barW + 2 * x0 + 160;
  const stops = Array.from({ length: 21 }, (_, i) => `<stop offset="${i * 5}%" stop-color="${colour(scale, (i / 20) * scale.max)}"/>`);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const x = x0 + f * barW;
    return (
      `<line x1="${x}" x2="${x}" y1="30" y2="35" stroke="#555"/>` +
      `<text class="axis" x="${x}" y="47" text-anchor="middle" font-size="10">${fixed(f * scale.max, 2)}</text>`
    );
  });
  const marks = [...new Set(uniforms)].map((u) => {
    const x = x0 + (u / scale.max) * barW;
    return (
      `<path d="M${x - 5} 4 L${x + 5} 4 L${x} 11 Z" fill="#222"/>` +
      `<line x1="${x}" x2="${x}" y1="12" y2="30" stroke="#fff" stroke-width="1.5" stroke-dasharray="2 2"/>`
    );
  });
  const u = [...new Set(uniforms)].map((v) => fixed(v, 3)).join(' / ');
  return (
    `<svg class="legend" data-testid="heatmap-legend" width="${width}" height="52" viewBox="0 0 ${width} 52" ` +
    'xmlns="http://www.w3.org/2000/svg">' +
    `<defs><linearGradient id="viridis">${stops.join('')}</linearGradient></defs>` +
    `<rect x="${x0}" y="12" width="${barW}" height="18" fill="url(#viridis)" stroke="#999" stroke-width="0.5"/>` +
    ticks.join('') +
    marks.join('') +
    `<text class="axis" x="${x0 + barW + 12}" y="25" font-size="11">▼ uniform K/E = ${u}</text></svg>`
  );
}
