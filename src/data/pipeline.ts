// The data pipeline (DESIGN §6) over a prepared dataset: each domain's documents already tokenised
// into one token stream per split (end-of-text between documents), read through memory maps —
// no corpus in JavaScript memory. Micro-batches of ONE domain (or mixed, the paper's control),
// and global batches of R ranks x A micro-steps whose domains follow the configured weights.
// Every batch is a pure function of (seed, step, m, rank): the pipeline is deterministic and its
// whole state for resuming is the step number.

import type { Dataset, Tokenizer } from '../../index.js';
import type { Split } from '../corpus/split.js';
import { MoeTrainerError } from '../errors.js';
import { rng } from '../rng.js';

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
  /** the domains trained on (weight > 0), in the dataset's order */
  readonly domains: string[];
  private readonly cumWeights: number[];
  private readonly byteLengths: Uint32Array;

  constructor(
    readonly dataset: Dataset,
    readonly tokenizer: Tokenizer,
    readonly cfg: PipelineConfig,
  ) {
    const all = dataset.manifest.domains.map((d) => d.name);
    for (const d of Object.keys(cfg.weights)) {
      if (!all.includes(d)) throw new MoeTrainerError('INVALID_CONFIG', `data.weights names domain "${d}", which the dataset does not have (it has ${all.join(', ')})`);
    }
    this.domains = all.filter((d) => (cfg.weights[d] ?? 0) > 0);
    if (this.domains.length === 0) throw new MoeTrainerError('INVALID_CONFIG', 'data.weights selects no domain');
    for (const d of this.domains) {
      const n = this.tokens('train', d);
      if (n <= cfg.seqLen) throw new MoeTrainerError('INVALID_CONFIG', `domain "${d}" has ${n} training tokens, not enough for one sequence of ${cfg.seqLen}`);
    }
    let acc = 0;
    this.cumWeights = this.domains.map((d) => (acc += cfg.weights[d]));
    this.byteLengths = tokenizer.byteLengths();
  }

  /** Tokens in a domain's stream of a split. */
  tokens(split: Split, domain: string): number {
    return this.dataset.tokens(domain, split);
  }

  /** Tokens in each trained domain's stream of a split. */
  sizes(split: Split): Record<string, number> {
    return Object.fromEntries(this.domains.map((d) => [d, this.tokens(split, d)]));
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
      const at = Math.floor(r() * (this.tokens('train', d) - S));
      tokens.set(this.dataset.gather(d, 'train', Float64Array.of(at), S), j * S);
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
   * token after the first is predicted exactly once; at most `maxTokens` predicted tokens. None
   * when the split holds fewer than S tokens.
   */
  evalSequences(split: Split, domain: string, maxTokens: number): Uint32Array[] {
    const S = this.cfg.seqLen;
    if (!this.domains.includes(domain)) throw new MoeTrainerError('INVALID_CONFIG', `unknown domain "${domain}"`);
    const n = this.tokens(split, domain);
    const starts: number[] = [];
    for (let at = 0; at + S <= n && starts.length * (S - 1) < maxTokens; at += S - 1) starts.push(at);
    const all = this.dataset.gather(domain, split, Float64Array.from(starts), S);
    return starts.map((_, i) => all.subarray(i * S, (i + 1) * S));
  }

  /** Bytes of text behind the predicted tokens of a sequence (its tokens after the first). */
  targetBytes(seq: Uint32Array): number {
    let n = 0;
    for (let i = 1; i < seq.length; i++) n += this.byteLengths[seq[i]];
    return n;
  }
}
