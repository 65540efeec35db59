// Tokenizers. Byte-level by default (256 byte values + BOS/EOS/PAD): no dependency, and bits per
// byte are comparable across domains. An optional byte-level BPE, trained by our own code on the
// training split, whose vocabulary is saved next to the model (tokenizer.json).

import { MoeTrainerError } from '../errors.js';

export interface Tokenizer {
  readonly kind: 'byte' | 'bpe';
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  encode(text: string): number[];
  decode(ids: ArrayLike<number>): string;
  /** Bytes of text a token stands for (EOS counts as the one separator byte; BOS, PAD as 0). */
  byteLength(id: number): number;
  /** JSON form saved as tokenizer.json; `tokenizerFromJSON` reads it back. */
  toJSON(): TokenizerJSON;
}

export type TokenizerJSON = { kind: 'byte' } | { kind: 'bpe'; vocabSize: number; merges: [number, number][] };

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: false });

/** Token = byte value; 256, 257, 258 = BOS, EOS, PAD. */
export class ByteTokenizer implements Tokenizer {
  readonly kind = 'byte';
  readonly vocabSize = 259;
  readonly bos = 256;
  readonly eos = 257;
  readonly pad = 258;
  encode(text: string): number[] {
    return Array.from(utf8.encode(text));
  }
  decode(ids: ArrayLike<number>): string {
    return fromUtf8.decode(Uint8Array.from(Array.from(ids).filter((t) => t < 256)));
  }
  byteLength(id: number): number {
    return id < 256 || id === this.eos ? 1 : 0;
  }
  toJSON(): TokenizerJSON {
    return { kind: 'byte' };
  }
}

/** Pieces BPE merges within: a run of letters/digits with its leading space, or any other byte run. */
const PIECE = /\s?[\p{L}\p{N}_]+|\s+(?!\S)|\s|[^\s\p{L}\p{N}_]+/gu;

/**
 * Byte-level BPE: tokens 0..255 are bytes, 256..258 BOS/EOS/PAD, then one token per merge in
 * the order learned. Merges never cross piece boundaries.
 */
export class BpeTokenizer implements Tokenizer {
  readonly kind = 'bpe';
  readonly bos = 256;
  readonly eos = 257;
  readonly pad = 258;
  readonly vocabSize: number;
  private readonly rank = new Map<string, number>(); // "a,b" -> merge index
  private readonly pieces: Uint8Array[]; // token -> bytes
  private readonly cache = new Map<string, number[]>();

  constructor(readonly merges: [number, number][]) {
    this.vocabSize = 259 + merges.length;
    this.pieces = Array.from({ length: 259 }, (_, i) => (i < 256 ? Uint8Array.of(i) : new Uint8Array(0)));
    merges.forEach(([a, b], i) => {
      this.rank.set(`${a},${b}`, i);
      const p = new Uint8Array(this.pieces[a].length + this.pieces[b].length);
      p.set(this.pieces[a]);
      p.set(this.pieces[b], this.pieces[a].length);
      this.pieces.push(p);
    });
  }

  /** Learns `vocabSize - 259` merges from the texts (greedy most frequent pair, ties to the lowest pair). */
  static train(texts: string[], vocabSize: number): BpeTokenizer {
    if (!Number.isInteger(vocabSize) || vocabSize < 259) throw new MoeTrainerError('INVALID_CONFIG', `BPE vocabSize must be an integer >= 259, got ${vocabSize}`);
    // Unique pieces with their counts: the merges are learned over these, not over the raw text.
    const counts = new Map<string, number>();
    for (const text of texts) for (const m of text.matchAll(PIECE)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
    const words = Array.from(counts, ([w, n]) => ({ ids: Array.from(utf8.encode(w)), n }));
    const merges: [number, number][] = [];
    for (let next = 259; next < vocabSize; next++) {
      const pairs = new Map<number, number>();
      for (const w of words) for (let i = 0; i + 1 < w.ids.length; i++) {
        const key = w.ids[i] * 65536 + w.ids[i + 1];
        pairs.set(key, (pairs.get(key) ?? 0) + w.n);
      }
      let best = -1;
      let bestN = 0;
      for (const [key, n] of pairs) if (n > bestN || (n === bestN && key < best)) [best, bestN] = [key, n];
      if (bestN < 2) break; // nothing left worth merging
      const [a, b] = [Math.floor(best / 65536), best % 65536];
      merges.push([a, b]);
      for (const w of words) w.ids = mergePair(w.ids, a, b, next);
    }
    return new BpeTokenizer(merges);
  }

  encode(text: string): number[] {
    const out: number[] = [];
    for (const m of text.matchAll(PIECE)) {
      let ids = this.cache.get(m[0]);
      if (!ids) {
        ids = Array.from(utf8.encode(m[0]));
        // Apply the earliest-learned applicable merge until none applies.
        for (;;) {
          let bestRank = Infinity;
          for (let i = 0; i + 1 < ids.length; i++) bestRank = Math.min(bestRank, this.rank.get(`${ids[i]},${ids[i + 1]}`) ?? Infinity);
          if (bestRank === Infinity) break;
          const [a, b] = this.merges[bestRank];
          ids = mergePair(ids, a, b, 259 + bestRank);
        }
        this.cache.set(m[0], ids);
      }
      out.push(...ids);
    }
    return out;
  }

  decode(ids: ArrayLike<number>): string {
    const parts = Array.from(ids, (t) => this.pieces[t] ?? new Uint8Array(0));
    const bytes = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.length;
    }
    return fromUtf8.decode(bytes);
  }

  byteLength(id: number): number {
    return id === this.eos ? 1 : (this.pieces[id]?.length ?? 0);
  }

  toJSON(): TokenizerJSON {
    return { kind: 'bpe', vocabSize: this.vocabSize, merges: this.merges };
  }
}

function mergePair(ids: number[], a: number, b: number, to: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    if (i + 1 < ids.length && ids[i] === a && ids[i + 1] === b) {
      out.push(to);
      i++;
    } else out.push(ids[i]);
  }
  return out;
}

export function tokenizerFromJSON(j: TokenizerJSON): Tokenizer {
  if (j.kind === 'byte') return new ByteTokenizer();
  if (j.kind === 'bpe' && Array.isArray(j.merges)) return new BpeTokenizer(j.merges);
  throw new MoeTrainerError('CHECKPOINT_CORRUPT', 'tokenizer.json: unknown tokenizer');
}
