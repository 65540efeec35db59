// Specialisation metrics of DESIGN §7 from a domain x expert table of selection counts.

/**
 * Selection frequency per domain: counts[d][i] / tokens[d]; each row sums to K (uniform K/E). A
 * domain without tokens (no held-out document) has a row of NaN.
 */
export function selectionFrequency(counts: number[][], tokens: number[]): number[][] {
  return counts.map((row, d) => row.map((c) => (tokens[d] > 0 ? c / tokens[d] : NaN)));
}

/** Mean over the domains with tokens of max_i freq[d][i] / (K/E): 1 when every domain spreads evenly. */
export function maxOverUniform(freq: number[][], topK: number): number {
  const E = freq[0].length;
  const rows = freq.filter((row) => row.every(Number.isFinite));
  return rows.reduce((a, row) => a + Math.max(...row) / (topK / E), 0) / rows.length;
}

/** Mutual information (bits) between domain and chosen expert, from the joint of selection counts. */
export function mutualInformation(counts: number[][]): number {
  const total = counts.flat().reduce((a, v) => a + v, 0);
  const pd = counts.map((row) => row.reduce((a, v) => a + v, 0) / total);
  const pe = counts[0].map((_, i) => counts.reduce((a, row) => a + row[i], 0) / total);
  let mi = 0;
  counts.forEach((row, d) =>
    row.forEach((c, i) => {
      const p = c / total;
      if (p > 0) mi += p * Math.log2(p / (pd[d] * pe[i]));
    }),
  );
  return mi;
}

/** Load imbalance max/mean - 1 of per-expert counts (0 = perfectly balanced). */
export function imbalance(perExpert: ArrayLike<number>): number {
  const xs = Array.from(perExpert);
  const mean = xs.reduce((a, v) => a + v, 0) / xs.length;
  return mean > 0 ? Math.max(...xs) / mean - 1 : 0;
}

/** Jensen–Shannon divergence (bits) between two distributions given as non-negative weights. */
export function jsDivergence(a: number[], b: number[]): number {
  const sa = a.reduce((x, v) => x + v, 0);
  const sb = b.reduce((x, v) => x + v, 0);
  const kl = (p: number[], q: number[]) => p.reduce((acc, pi, i) => (pi > 0 ? acc + pi * Math.log2(pi / q[i]) : acc), 0);
  const p = a.map((v) => v / sa);
  const q = b.map((v) => v / sb);
  const m = p.map((v, i) => (v + q[i]) / 2);
  return (kl(p, m) + kl(q, m)) / 2;
}
