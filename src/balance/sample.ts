// The random token subset of the `shuffle` scope (the paper's shuffle ablation): n valid positions
// drawn uniformly without replacement from the whole global batch, and the loss masks that select
// exactly them in a statistics-only forward (a masked-out position counts in no routing statistic).
// Positions are numbered over the global batch in the order (micro-step m, rank r, sequence q,
// valid position k), i.e. sequence g = (m R + r) b + q; every rank draws the same subset.

/** A 32-bit seed from a run seed and a step, for the step's draw (resumes draw the same subset). */
export function stepSeed(seed: number, step: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (step >>> 0) ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * n of the `total` indices 0 .. total-1, uniformly without replacement: the first n places of a
 * Fisher–Yates shuffle (place i swaps with i + floor(u (total - i)) for the next uniform u).
 * Returned in increasing order.
 */
export function drawSubset(total: number, n: number, uniform: () => number): number[] {
  const idx = Int32Array.from({ length: total }, (_, i) => i);
  const take = Math.min(n, total);
  for (let i = 0; i < take; i++) {
    const j = i + Math.floor(uniform() * (total - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return Array.from(idx.subarray(0, take)).sort((a, b) => a - b);
}

/**
 * Valid positions of one sequence of S tokens with an optional (S) target mask, as the core counts
 * them: position t is valid when t < S - 1 and token t + 1 is a target (mask 1 or no mask).
 */
export function validPositions(S: number, mask: Uint8Array | null, q = 0): number[] {
  const out: number[] = [];
  for (let t = 0; t < S - 1; t++) if (!mask || mask[q * S + t + 1]) out.push(t);
  return out;
}

/**
 * The subset as per-sequence position lists: `chosen` (increasing global indices) split over the
 * sequences whose valid counts are `valid` (in global order), each index mapped to that sequence's
 * k-th valid position (k counted from 0).
 */
export function splitBySequence(chosen: number[], valid: ArrayLike<number>): number[][] {
  const out: number[][] = Array.from({ length: valid.length }, () => []);
  let g = 0;
  let start = 0;
  for (const c of chosen) {
    while (c >= start + valid[g]) start += valid[g++];
    out[g].push(c - start);
  }
  return out;
}
