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
const textWidth = (s: string, px = 12): number => s.length * px * 0.6;

export interface HeatmapSpec {
  testId: string;
  /** (D, E) selection frequencies */
  frequency: number[][];
  domains: string[];
  uniform: number;
  scale: ColourScale;
}

/** One heatmap: a row per domain, a column per expert; hovering a cell shows its exact value. */
export function heatmapSvg(h: HeatmapSpec): string {
  const E = h.frequency[0]?.length ?? 0;
  const cw = Math.max(8, Math.min(40, Math.floor(340 / Math.max(1, E))));
  const ch = 24;
  const left = Math.ceil(Math.max(...h.domains.map((d) => textWidth(d)), 20)) + 10;
  const top = 18;
  const width = left + E * cw + 2;
  const height = top + h.domains.length * ch + 2;
  // Label every expert when the columns are wide enough, else every n-th, so labels never collide.
  const every = Math.ceil((textWidth(`e${E - 1}`, 10) + 6) / cw);
  const showValues = cw >= 34;
  const parts: string[] = [];
  for (let i = 0; i < E; i += every) {
    parts.push(`<text class="axis" x="${left + (i + 0.5) * cw}" y="${top - 6}" text-anchor="middle" font-size="10">e${i}</text>`);
  }
  h.frequency.forEach((row, d) => {
    const domain = escapeHtml(h.domains[d]);
    const y = top + d * ch;
    parts.push(`<text class="axis" x="${left - 8}" y="${y + ch / 2 + 4}" text-anchor="end">${domain}</text>`);
    row.forEach((v, i) => {
      const x = left + i * cw;
      const tip = `${domain} → e${i}: ${fixed(v, 3)} (${fixed(v / h.uniform, 2)}× uniform)`;
      parts.push(
        `<rect class="cell" x="${x}" y="${y}" width="${cw}" height="${ch}" fill="${colour(h.scale, v)}"><title>${tip}</title></rect>`,
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
