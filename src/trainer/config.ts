// The training configuration: defaults grouped by section (nanoGPT style), validated by zod so a
// bad value fails with one readable line naming the field.

import { z } from 'zod';
import { balanceConfigSchema } from '../balance/config.js';
import { resolve } from 'node:path';
import { absoluteInput, resolveDataset, type OpenDataset, type PrepareRun, type PrepareSettings } from '../data/dataset.js';
import { MoeTrainerError } from '../errors.js';
import { DEMO_MICRO_BATCH, DEMO_MODEL, DEMO_SEQ_LEN } from '../presets.js';

const int = (min: number) => z.number().int().min(min);

export const trainConfigSchema = z
  .object({
    /** Model overrides on top of DEMO_MODEL (Hugging Face Qwen3MoeConfig names; vocab_size follows the tokenizer). */
    model: z.record(z.string(), z.unknown()).default({}),
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
        lr: z.number().positive().default(3e-3),
        minLr: z.number().nonnegative().default(3e-4),
        warmupSteps: int(0).default(30),
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
        /** what to do when the loss is not finite: stop with an error, or skip the step */
        onNonFinite: z.enum(['stop', 'skip']).default('stop'),
        /** show a progress bar on stderr */
        progress: z.boolean().default(true),
        /** where the model runs: a real GPU if there is one (auto), the GPU, or the CPU; absent = MOE_DEVICE or auto */
        device: z.enum(['auto', 'gpu', 'cpu']).optional(),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type TrainConfig = z.output<typeof trainConfigSchema>;
export type TrainConfigInput = z.input<typeof trainConfigSchema>;

export function parseTrainConfig(input: unknown): TrainConfig {
  const r = trainConfigSchema.safeParse(input ?? {});
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new MoeTrainerError('INVALID_CONFIG', `${issue.path.length ? issue.path.join('.') : 'config'}: ${issue.message}`);
  }
  const cfg = r.data;
  // Inputs as absolute paths: a saved config resumes from any working directory.
  cfg.data.corpus = Array.isArray(cfg.data.corpus) ? cfg.data.corpus.map(absoluteInput) : cfg.data.corpus === 'embedded' ? 'embedded' : absoluteInput(cfg.data.corpus);
  if (cfg.data.tokenizer.kind === 'file') cfg.data.tokenizer.path = resolve(cfg.data.tokenizer.path);
  if (cfg.data.splits.validation + cfg.data.splits.test >= 1) throw new MoeTrainerError('INVALID_CONFIG', 'data.splits: validation + test must be below 1');
  if (cfg.optim.minLr > cfg.optim.lr) throw new MoeTrainerError('INVALID_CONFIG', 'optim.minLr must not exceed optim.lr');
  // A run shorter than its warm-up warms up over the whole run.
  cfg.optim.warmupSteps = Math.min(cfg.optim.warmupSteps, cfg.train.steps);
  return cfg;
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

/** The model config of a training config, for a tokenizer of `vocabSize` tokens. */
export function modelConfigOf(cfg: TrainConfig, vocabSize: number): Record<string, unknown> {
  const maxPos = Number(cfg.model.max_position_embeddings ?? DEMO_MODEL.max_position_embeddings);
  return { ...DEMO_MODEL, ...cfg.model, vocab_size: vocabSize, max_position_embeddings: Math.max(cfg.data.seqLen, maxPos) };
}
