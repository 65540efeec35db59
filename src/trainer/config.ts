// The training configuration: defaults grouped by section (nanoGPT style), validated by zod so a
// bad value fails with one readable line naming the field — the whole config, the model section
// included (by the core's own checks), before any data is read. `moe config schema` writes the
// JSON Schema of this file's schema for editors.

import { z } from 'zod';
import { checkModelConfig, readCheckpointConfig } from '../../index.js';
import { balanceConfigSchema } from '../balance/config.js';
import { join, resolve } from 'node:path';
import { absoluteInput, resolveDataset, type OpenDataset, type PrepareRun, type PrepareSettings } from '../data/dataset.js';
import { MoeTrainerError } from '../errors.js';
import { BYTE_VOCAB, DEMO_MICRO_BATCH, DEMO_MODEL, DEMO_SEQ_LEN } from '../presets.js';
import type { ModelConfig } from '../../index.js';

const int = (min: number) => z.number().int().min(min);

/**
 * The model section: overrides on top of DEMO_MODEL with the Hugging Face `Qwen3MoeConfig` field
 * names (a typo is an error); vocab_size follows the tokenizer and the seed is `train.seed`.
 */
export const modelSectionSchema = z
  .object({
    hidden_size: int(1).optional(),
    num_hidden_layers: int(1).optional(),
    num_attention_heads: int(1).optional(),
    num_key_value_heads: int(1).optional(),
    head_dim: int(2).optional(),
    moe_intermediate_size: int(1).optional(),
    num_experts: int(1).optional(),
    num_experts_per_tok: int(1).optional(),
    norm_topk_prob: z.boolean().optional(),
    rms_norm_eps: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    max_position_embeddings: int(1).optional(),
    tie_word_embeddings: z.boolean().optional(),
    initializer_range: z.number().positive().optional(),
    /** the transformers class checkpoints are written for (and its attention's q/k norm) */
    model_type: z.enum(['qwen3_moe', 'qwen2_moe', 'olmoe', 'mixtral']).optional(),
    /** F of the dense MLP of the layers without experts */
    intermediate_size: int(0).optional(),
    /** F of a shared expert beside the routed ones, gated by sigmoid(x · w) (Qwen2-MoE); 0 = none */
    shared_expert_intermediate_size: int(0).optional(),
    /** biases on the q, k and v projections (Qwen2-MoE) */
    qkv_bias: z.boolean().optional(),
    /** layers with a dense MLP instead of experts */
    mlp_only_layers: z.array(int(0)).optional(),
    /** experts in layers l with (l + 1) % decoder_sparse_step == 0 */
    decoder_sparse_step: int(1).optional(),
    /** positions a query sees, itself included, in the sliding_layers (null: full attention) */
    sliding_window: int(1).nullable().optional(),
    /** the layers with a sliding window (all when absent and sliding_window is set) */
    sliding_layers: z.array(int(0)).nullable().optional(),
    /** the embedding rows; absent = the tokenizer's vocabulary (it may be larger, as in padded Hugging Face vocabularies) */
    vocab_size: int(2).optional(),
  })
  .strict();

/** Validation metrics a run can select the best checkpoint by (lower is better): the mean over domains or one domain's. */
const BEST_METRIC = /^(?:[^.\s]+\.)?(loss|bitsPerByte|perplexity)$/;

export const trainConfigSchema = z
  .object({
    /** the JSON Schema this file follows (`moe config schema`), for editors; ignored */
    $schema: z.string().optional(),
    /**
     * A checkpoint folder to start from (Hugging Face: Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral; or one
     * of ours): its weights, its config as the model section (a differing model field is an
     * error), its tokenizer.json unless data.tokenizer names one, and a fresh optimiser.
     */
    initFrom: z.string().min(1).optional(),
    /** Model overrides on top of DEMO_MODEL (Hugging Face Qwen3MoeConfig names; vocab_size follows the tokenizer). */
    model: modelSectionSchema.default({}),
    data: z
      .object({
        /**
         * Where the documents come from: "embedded" (the five-domain corpus shipped with the package),
         * a prepared dataset folder (`moe data prepare`), or raw inputs prepared once into a cache:
         * `PATH` or `DOMAIN=PATH` of a folder of domain folders, .jsonl / .jsonl.gz / .parquet files,
         * or a corpus folder (MANIFEST.json). Relative paths are against the working directory.
         */
        corpus: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).default('embedded'),
        /** sampling weight per domain; absent = every domain of the corpus with weight 1 */
        weights: z.record(z.string(), z.number().nonnegative()).optional(),
        seqLen: int(2).default(DEMO_SEQ_LEN),
        /** the paper's control: sequences of any domain in one micro-batch */
        mixedMicroBatches: z.boolean().default(false),
        /** byte (one token per byte), a byte-level BPE trained on the training split, or a tokenizer.json */
        tokenizer: z
          .discriminatedUnion('kind', [
            z.object({ kind: z.literal('byte') }).strict(),
            z.object({ kind: z.literal('bpe'), vocabSize: int(258) }).strict(),
            z.object({ kind: z.literal('file'), path: z.string().min(1) }).strict(),
          ])
          .default({ kind: 'bpe', vocabSize: 1024 }),
        /** fractions of each domain's documents held out by the split hash (explicit splits are kept) */
        splits: z
          .object({ validation: z.number().min(0).lt(1).default(0.05), test: z.number().min(0).lt(1).default(0.05) })
          .strict()
          .prefault({}),
        /** the fields (JSONL keys, Parquet columns) raw inputs are read from */
        fields: z
          .object({ text: z.string().default('text'), domain: z.string().default('domain'), id: z.string().default('id'), split: z.string().default('split') })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    batch: z
      .object({
        /** R: virtual data-parallel ranks (model replicas in this process) */
        ranks: int(1).default(2),
        /** A: gradient-accumulation micro-steps per optimiser step */
        accumSteps: int(1).default(2),
        /** b: sequences per micro-batch */
        microBatch: int(1).default(DEMO_MICRO_BATCH / 2),
      })
      .strict()
      .prefault({}),
    balance: balanceConfigSchema.prefault({ terms: [{ scope: 'global', coef: 0.05 }], zLoss: 1e-3 }),
    optim: z
      .object({
        /** peak learning rate */
        lr: z.number().positive().default(3e-3),
        /** where linear, cosine and wsd end */
        minLr: z.number().nonnegative().default(3e-4),
        /** linear warm-up from 0 over this many steps, for every schedule */
        warmupSteps: int(0).default(30),
        /** the learning rate after the warm-up (the core's schedules; see README "Schedules") */
        schedule: z.enum(['constant', 'linear', 'cosine', 'wsd']).default('cosine'),
        /** wsd: steps of the final decay to minLr (default: a fifth of train.steps) */
        decaySteps: int(1).optional(),
        weightDecay: z.number().nonnegative().default(0.1),
        beta1: z.number().min(0).lt(1).default(0.9),
        beta2: z.number().min(0).lt(1).default(0.95),
        maxGradNorm: z.number().positive().default(1.0),
      })
      .strict()
      .prefault({}),
    train: z
      .object({
        steps: int(1).default(400),
        seed: int(0).default(0),
        evalEvery: int(1).default(100),
        /** predicted tokens per domain per evaluation */
        evalTokens: int(1).default(16384),
        /** steps between checkpoints (0 = only at the end and on SIGINT/SIGTERM) */
        checkpointEvery: int(0).default(0),
        /** the latest step checkpoints kept in checkpoints/ (older ones are removed once a newer one is in) */
        keepLast: int(1).default(2),
        /** the validation metric that selects the best checkpoint and drives early stopping (lower is better): loss, bitsPerByte, perplexity (token-weighted mean over domains), or DOMAIN.loss etc. */
        bestMetric: z.string().regex(BEST_METRIC, 'must be loss, bitsPerByte, perplexity, or DOMAIN.loss / DOMAIN.bitsPerByte / DOMAIN.perplexity').default('loss'),
        /** keep the checkpoint of the best evaluation so far in checkpoints/best-step-N */
        saveBest: z.boolean().default(false),
        /** stop when bestMetric has not improved for this many evaluations in a row (absent = never) */
        patience: int(1).optional(),
        /** what to do when the loss is not finite: stop with an error, or skip the step */
        onNonFinite: z.enum(['stop', 'skip']).default('stop'),
        /** show a progress bar on stderr */
        progress: z.boolean().default(true),
        /** where the model runs: a real GPU if there is one (auto), the GPU, or the CPU; absent = MOE_DEVICE or auto */
        device: z.enum(['auto', 'gpu', 'cpu']).optional(),
        /** activation recomputation (MoeModel.recompute): keep every activation (none), all but the attention probabilities (attention), or only each layer's input (full); the backward recomputes the rest. Results are bit-identical; memory falls, time rises */
        recompute: z.enum(['none', 'attention', 'full']).default('none'),
        /** the number format of the large GEMMs' inputs (MoeModel.precision): f32, or bf16 (operands rounded to bfloat16, sums in f32; weights, gradients and AdamW stay f32). bf16 gives bfloat16's numerics on every processor and GPU, not its speed: this release computes the rounded products in f32. Part of a run's numerics: a resume must keep it */
        precision: z.enum(['f32', 'bf16']).default('f32'),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type TrainConfig = z.output<typeof trainConfigSchema>;
export type TrainConfigInput = z.input<typeof trainConfigSchema>;

export function parseTrainConfig(input: unknown): TrainConfig {
  const r = trainConfigSchema.safeParse(input ?? {}, { reportInput: true });
  if (!r.success) {
    const issue = r.error.issues[0];
    // The value refused, where it is one (not a whole object, not a missing key).
    const got = 'input' in issue && issue.input !== undefined && (issue.input === null || typeof issue.input !== 'object') ? `, got ${JSON.stringify(issue.input)}` : '';
    throw new MoeTrainerError('INVALID_CONFIG', `${issue.path.length ? issue.path.join('.') : 'config'}: ${issue.message}${got}`);
  }
  const cfg = r.data;
  // A checkpoint to start from brings its tokenizer unless one is named.
  const tokenizerGiven = (input as { data?: { tokenizer?: unknown } } | undefined)?.data?.tokenizer !== undefined;
  if (cfg.initFrom !== undefined) {
    cfg.initFrom = resolve(cfg.initFrom);
    if (!tokenizerGiven) cfg.data.tokenizer = { kind: 'file', path: join(cfg.initFrom, 'tokenizer.json') };
  }
  // Inputs as absolute paths: a saved config resumes from any working directory.
  cfg.data.corpus = Array.isArray(cfg.data.corpus) ? cfg.data.corpus.map(absoluteInput) : cfg.data.corpus === 'embedded' ? 'embedded' : absoluteInput(cfg.data.corpus);
  if (cfg.data.tokenizer.kind === 'file') cfg.data.tokenizer.path = resolve(cfg.data.tokenizer.path);
  if (cfg.data.splits.validation + cfg.data.splits.test >= 1) throw new MoeTrainerError('INVALID_CONFIG', 'data.splits: validation + test must be below 1');
  if (cfg.optim.minLr > cfg.optim.lr) throw new MoeTrainerError('INVALID_CONFIG', 'optim.minLr must not exceed optim.lr');
  // A run shorter than its warm-up warms up over the whole run.
  cfg.optim.warmupSteps = Math.min(cfg.optim.warmupSteps, cfg.train.steps);
  if (cfg.optim.decaySteps !== undefined && cfg.optim.schedule !== 'wsd') throw new MoeTrainerError('INVALID_CONFIG', 'optim.decaySteps belongs to optim.schedule "wsd"');
  if (cfg.optim.decaySteps !== undefined && cfg.optim.decaySteps > cfg.train.steps - cfg.optim.warmupSteps) throw new MoeTrainerError('INVALID_CONFIG', 'optim.decaySteps must not exceed train.steps - optim.warmupSteps');
  // The model section, checked now by the core (relations between fields, sizes against memory),
  // with the vocabulary the tokenizer will have where it is known. A checkpoint's model section is
  // checked against the checkpoint by `withCheckpointModel`.
  const t = cfg.data.tokenizer;
  if (cfg.initFrom === undefined) checkModelConfig(modelConfigOf(cfg, t.kind === 'bpe' ? t.vocabSize : BYTE_VOCAB));
  return cfg;
}

/** The model section fields `withCheckpointModel` takes from a checkpoint's config. */
const MODEL_FIELDS = Object.keys(modelSectionSchema.shape) as (keyof TrainConfig['model'])[];

/**
 * `cfg` with the model section of the checkpoint `cfg.initFrom` (read and checked by the core,
 * without its weights): every model field the config sets must equal the checkpoint's, and
 * data.seqLen must fit its max_position_embeddings. The result names the whole architecture, so a
 * resumed run needs the checkpoint no more. Errors: INVALID_CONFIG naming the field, and the
 * checkpoint's own (CHECKPOINT_MISSING, UNSUPPORTED_MODEL, CHECKPOINT_CORRUPT).
 */
export function withCheckpointModel(cfg: TrainConfig): TrainConfig {
  if (cfg.initFrom === undefined) return cfg;
  const from = readCheckpointConfig(cfg.initFrom) as unknown as Record<string, unknown>;
  const where = join(cfg.initFrom, 'config.json');
  for (const [k, v] of Object.entries(cfg.model)) {
    if (v !== undefined && JSON.stringify(v) !== JSON.stringify(from[k])) {
      throw new MoeTrainerError('INVALID_CONFIG', `model.${k}: ${JSON.stringify(v)} differs from ${k} = ${JSON.stringify(from[k])} of ${where} (the model comes from --init-from; leave model.${k} out)`);
    }
  }
  const maxPos = from.max_position_embeddings as number;
  if (cfg.data.seqLen > maxPos) throw new MoeTrainerError('INVALID_CONFIG', `data.seqLen: ${cfg.data.seqLen} exceeds max_position_embeddings = ${maxPos} of ${where}`);
  const model = Object.fromEntries(MODEL_FIELDS.filter((k) => from[k] !== undefined).map((k) => [k, from[k]]));
  return { ...cfg, model: modelSectionSchema.parse(model) };
}

/**
 * Settings that are valid but silently do less than they seem to: each warning is one line.
 * The trainer logs them at the start of a run.
 */
export function configWarnings(cfg: TrainConfig): string[] {
  const m = { ...DEMO_MODEL, ...cfg.model };
  const out: string[] = [];
  if (m.num_experts_per_tok === 1 && m.norm_topk_prob) {
    out.push('model: num_experts_per_tok = 1 with norm_topk_prob = true renormalises the one chosen weight to exactly 1, so the router gets no gradient from the language-model loss (only from the balance terms); set norm_topk_prob: false or choose 2+ experts');
  }
  const { ranks: R, accumSteps: A, microBatch: b } = cfg.batch;
  for (const term of cfg.balance.terms) {
    const scope = term.scope;
    if (term.coef === 0) out.push(`balance: the ${scope ?? `bsz=${term.balanceSequences}`} term has coef 0 and does nothing`);
    if ((scope === 'global' || scope === 'global-exact') && R === 1 && A === 1) out.push(`balance: scope ${scope} with batch.ranks = 1 and batch.accumSteps = 1 balances over one micro-batch: it equals scope micro`);
    if (scope === 'dp' && R === 1) out.push('balance: scope dp with batch.ranks = 1 balances over one micro-batch: it equals scope micro');
    if (scope === 'sequence' && b === 1) out.push('balance: scope sequence with batch.microBatch = 1 equals scope micro');
    if (term.balanceSequences !== undefined && term.balanceSequences === b) out.push(`balance: balanceSequences = ${b} = batch.microBatch equals scope micro`);
  }
  const lf = cfg.balance.lossFree;
  if (lf && (lf.scope === 'global' || lf.scope === 'global-exact') && R === 1 && A === 1) out.push(`balance.lossFree: scope ${lf.scope} with batch.ranks = 1 and batch.accumSteps = 1 equals scope micro`);
  return out;
}

/** The dataset a run reads: `data.corpus` resolved, prepared once with the run's tokenizer, splits and fields. */
export function datasetOf(cfg: TrainConfig, run: PrepareRun = {}): Promise<OpenDataset> {
  const { tokenizer: t, splits, fields } = cfg.data;
  const settings: PrepareSettings = {
    tokenizer: t.kind === 'file' ? t.path : t.kind,
    ...(t.kind === 'bpe' ? { vocabSize: t.vocabSize } : {}),
    textField: fields.text,
    domainField: fields.domain,
    idField: fields.id,
    splitField: fields.split,
    validation: splits.validation,
    test: splits.test,
  };
  return resolveDataset(cfg.data.corpus, settings, run);
}

/** The model config of a training config, for a tokenizer of `vocabSize` tokens (seeded by train.seed). */
export function modelConfigOf(cfg: TrainConfig, vocabSize: number): ModelConfig {
  const maxPos = cfg.model.max_position_embeddings ?? DEMO_MODEL.max_position_embeddings!;
  const vocab = cfg.model.vocab_size ?? vocabSize;
  if (vocab < vocabSize) throw new MoeTrainerError('INVALID_CONFIG', `model.vocab_size: ${vocab} is below the tokenizer's ${vocabSize} tokens`);
  return { ...DEMO_MODEL, ...cfg.model, vocab_size: vocab, max_position_embeddings: Math.max(cfg.data.seqLen, maxPos), seed: cfg.train.seed };
}
