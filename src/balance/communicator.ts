// The collective operations the trainer needs from data-parallel ranks, and an in-process
// implementation where R "virtual ranks" are concurrent async tasks of one Node process.
// Real processes (MPI) implement the same interface.

import { MoeTrainerError } from '../errors.js';

/** What data parallelism needs: sum-all-reduce in place, this rank's index and the group size. */
export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** Replaces `data` on every rank by the elementwise sum over ranks (summed in rank order). */
  allReduceSum(data: Float64Array | Float32Array): Promise<void>;
  /** Replaces `data` on every rank by rank `root`'s copy (separate processes need it at start). */
  broadcast?(data: Float32Array, root: number): Promise<void>;
  /** A rank failed: stop the whole group rather than let the others wait for it. */
  abort?(err: Error): void;
}

/** A group of size 1: every collective is the identity. */
export const SOLO: Communicator = { rank: 0, size: 1, allReduceSum: async () => {} };

type Pending = { data: Float64Array | Float32Array; resolve: () => void; reject: (e: Error) => void };

/**
 * R virtual ranks in one process. Each rank's n-th collective call meets the n-th call of every other
 * rank; the sum is taken in f64 in rank order, so the result does not depend on arrival order.
 */
export class LocalGroup {
  private rounds = new Map<number, (Pending | undefined)[]>();
  private calls: number[];
  private aborted: Error | null = null;
  private scratch = new Float64Array(0);

  constructor(readonly size: number) {
    if (typeof size !== 'number' || !Number.isInteger(size) || size < 1) throw new MoeTrainerError('INVALID_ARGUMENT', `LocalGroup: size must be a positive integer, got ${String(size)}`);
    this.calls = new Array(size).fill(0);
  }

  /** The communicator of virtual rank `rank`. */
  comm(rank: number): Communicator {
    if (typeof rank !== 'number' || !Number.isInteger(rank) || rank < 0 || rank >= this.size) throw new MoeTrainerError('INVALID_ARGUMENT', `LocalGroup.comm: rank ${String(rank)} is not in 0..${this.size - 1}`);
    return { rank, size: this.size, allReduceSum: (data) => this.allReduceSum(rank, data), abort: (err) => this.abort(err) };
  }

  /**
   * Fails every pending and future collective with `err`: a rank that failed must not leave the
   * others waiting forever for its contribution.
   */
  abort(err: Error): void {
    if (this.aborted) return;
    this.aborted = err;
    for (const slots of this.rounds.values()) slots.forEach((s) => s?.reject(err));
    this.rounds.clear();
  }

  private allReduceSum(rank: number, data: Float64Array | Float32Array): Promise<void> {
    if (this.aborted) return Promise.reject(this.aborted);
    if (this.size === 1) return Promise.resolve(); // the sum over one rank is the data itself
    const round = this.calls[rank]++;
    const slots = this.rounds.get(round) ?? new Array<Pending | undefined>(this.size).fill(undefined);
    this.rounds.set(round, slots);
    return new Promise<void>((resolve, reject) => {
      slots[rank] = { data, resolve, reject };
      if (slots.some((s) => s === undefined)) return;
      this.rounds.delete(round);
      const all = slots as Pending[];
      const n = data.length;
      if (all.some((s) => s.data.length !== n)) {
        const err = new Error(`all-reduce round ${round}: ranks passed arrays of different lengths`);
        all.forEach((s) => s.reject(err));
        return;
      }
      // The f64 sum buffer is kept between rounds: a fresh gradient-sized array costs more in page
      // faults than the additions themselves.
      if (this.scratch.length < n) this.scratch = new Float64Array(n);
      const sum = this.scratch.subarray(0, n);
      sum.fill(0);
      for (const s of all) {
        if (s.data instanceof Float32Array) addF32(sum, s.data);
        else addF64(sum, s.data);
      }
      // Convert once; ranks of the same array type then take a plain copy.
      all[0].data.set(sum);
      for (const s of all) {
        if (s !== all[0]) s.data.set(s.data.constructor === all[0].data.constructor ? all[0].data : sum);
        s.resolve();
      }
    });
  }
}

// One loop per array type: V8 compiles each for one element kind (a loop over the union is about
// 1.5x slower on gradient-sized arrays).
function addF32(sum: Float64Array, d: Float32Array): void {
  for (let i = 0; i < d.length; i++) sum[i] += d[i];
}

function addF64(sum: Float64Array, d: Float64Array): void {
  for (let i = 0; i < d.length; i++) sum[i] += d[i];
}

/** One Float64Array and named views that tile it, in the order given: values reduced together. */
export type NamedViews<K extends string> = { readonly buffer: Float64Array } & { readonly [k in K]: Float64Array };

/** Views of the given lengths over one zeroed buffer, so that one all-reduce of `buffer` sums them all. */
export function namedViews<K extends string>(lengths: Record<K, number>): NamedViews<K> {
  const total = Object.values<number>(lengths).reduce((a, n) => a + n, 0);
  const buffer = new Float64Array(total);
  const views: Record<string, Float64Array> = {};
  let at = 0;
  for (const [k, n] of Object.entries<number>(lengths)) {
    views[k] = buffer.subarray(at, at + n);
    at += n;
  }
  return { buffer, ...views } as NamedViews<K>;
}
