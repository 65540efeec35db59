// The data pipeline (DESIGN §6): documents split by a fixed hash into train / validation / test,
// each domain's documents packed into one token stream (EOS between documents), micro-batches
// of ONE domain (or mixed, the paper's control), and global batches of R ranks x A micro-steps
// whose domains follow the configured weights. Every batch is a pure function of (seed, step, m,
// rank): the pipeline is deterministic and its whole state for resuming is the step number.

import { MoeTrainerError } from '../errors.js';
import { splitOf, type Split } from '../corpus/split.js';
import { rng } from '../rng.js';
import type { Tokenizer } from '../tokenizer/index.js';

export interface PipelineConfig {
  /** S: tokens per sequence */
  seqLen: number;
  /** b: sequences per micro-batch */
  microBatch: number;
  /** R: data-parallel ranks */
  ranks: number;
  /** A: micro-steps per optimiser step */
  accumSteps: number;
  /** sampling weight per domain (missing domains are not trained on) */
  weights: Record<string, number>;
  /** every sequence draws its own domain instead of one domain per micro-batch */
  mixedMicroBatches: boolean;
  seed: number;
}

export interface MicroBatch {
  /** (b, S) token ids */
  tokens: Uint32Array;
  /** domain of each sequence */
  domains: string[];
}

/** A 32-bit hash of integers (for seeding a generator per batch). */
function hashInts(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x01000193) >>> 0;
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  return h;
}

export class DataPipeline {
  readonly domains: string[];
  private readonly streams: Record<Split, Map<string, Uint32Array>>;
  private readonly cumWeights: number[];

  constructor(
    corpus: Map<string, { id: string; text: string }[]>,
    readonly tokenizer: Tokenizer,
    readonly cfg: PipelineConfig,
  ) {
    this.domains = [...corpus.keys()].filter((d) => (cfg.weights[d] ?? 0) > 0);
    for (const d of Object.keys(cfg.weights)) {
      if (!corpus.has(d)) throw new MoeTrainerError('INVALID_CONFIG', `data.weights names domain "${d}", which the corpus does not have (it has ${[...corpus.keys()].join(', ')})`);
    }
    if (this.domains.length === 0) throw new MoeTrainerError('INVALID_CONFIG', 'data.weights selects no domain');
    this.streams = { train: new Map(), validation: new Map(), test: new Map() };
    for (const [domain, docs] of corpus) {
      const parts: Record<Split, number[][]> = { train: [], validation: [], test: [] };
      for (const doc of docs) parts[splitOf(domain, doc.id)].push([...tokenizer.encode(doc.text), tokenizer.eos]);
      for (const split of ['train', 'validation', 'test'] as const) this.streams[split].set(domain, Uint32Array.from(parts[split].flat()));
    }
    for (const d of this.domains) {
      const n = this.streams.train.get(d)!.length;
      if (n <= cfg.seqLen) throw new MoeTrainerError('INVALID_CONFIG', `domain "${d}" has ${n} training tokens, not enough for one sequence of ${cfg.seqLen}`);
    }
    let acc = 0;
    this.cumWeights = this.domains.map((d) => (acc += cfg.weights[d]));
  }

  /** Tokens in each domain's stream of a split. */
  sizes(split: Split): Record<string, number> {
    return Object.fromEntries([...this.streams[split]].map(([d, s]) => [d, s.length]));
  }

  private pickDomain(r: () => number): string {
    const u = r() * this.cumWeights[this.cumWeights.length - 1];
    return this.domains[this.cumWeights.findIndex((c) => u < c)] ?? this.domains[this.domains.length - 1];
  }

  /** Micro-batch m of rank `rank` at optimiser step `step`: b sequences at random offsets of the train streams. */
  microBatch(step: number, m: number, rank: number): MicroBatch {
    const { seqLen: S, microBatch: b } = this.cfg;
    const r = rng(hashInts(this.cfg.seed, step, m, rank));
    const shared = this.pickDomain(r);
    const tokens = new Uint32Array(b * S);
    const domains: string[] = [];
    for (let j = 0; j < b; j++) {
      const d = this.cfg.mixedMicroBatches ? this.pickDomain(r) : shared;
      const stream = this.streams.train.get(d)!;
      const at = Math.floor(r() * (stream.length - S));
      tokens.set(stream.subarray(at, at + S), j * S);
      domains.push(d);
    }
    return { tokens, domains };
  }

  /** Rank `rank`'s A micro-batches of optimiser step `step`. */
  batch(step: number, rank: number): MicroBatch[] {
    return Array.from({ length: this.cfg.accumSteps }, (_, m) => this.microBatch(step, m, rank));
  }

  /**
   * Evaluation sequences of one domain: consecutive windows of S tokens with stride S - 1, so every
   * token after the first is predicted exactly once; at most `maxTokens` predicted tokens.
   */
  evalSequences(split: Split, domain: string, maxTokens: number): Uint32Array[] {
    const S = this.cfg.seqLen;
    const stream = this.streams[split].get(domain);
    if (!stream) throw new MoeTrainerError('INVALID_CONFIG', `unknown domain "${domain}"`);
    const out: Uint32Array[] = [];
    for (let at = 0; at + S <= stream.length && out.length * (S - 1) < maxTokens; at += S - 1) out.push(stream.subarray(at, at + S));
    return out;
  }

  /** Bytes of text behind the predicted tokens of a sequence (its tokens after the first). */
  targetBytes(seq: Uint32Array): number {
    let n = 0;
    for (let i = 1; i < seq.length; i++) n += this.tokenizer.byteLength(seq[i]);
    return n;
  }
}
