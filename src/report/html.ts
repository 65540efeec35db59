// Text helpers shared by the report's HTML and SVG builders: escaping (every run name, domain and
// config string is user data) and number formatting for labels, tooltips and the metrics table.

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escape text for HTML/SVG element content and quoted attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ENTITIES[c]);
}

/** Fixed decimals; NaN and infinities spelled out, since a diverged run must still render. */
export function fixed(x: number, decimals: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? '∞' : '−∞';
  return x.toFixed(decimals).replace(/^-/, '−');
}

/** About three significant digits, for values whose magnitude varies (perplexity, tick labels). */
export function sig(x: number): string {
  const a = Math.abs(x);
  if (!Number.isFinite(x) || a === 0) return fixed(x, 0);
  if (a >= 1000) return fixed(x, 0).replace(/\B(?=(\d{3})+(?!\d))/g, '\u2009');
  return fixed(x, Math.max(0, 2 - Math.floor(Math.log10(a))));
}

/** Wall-clock seconds as "42 s", "3 min 05 s" or "2 h 07 min". */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}
