// The data a training run leaves behind, shared by the trainer (writer), `moe compare` and
// `moe report` (readers). A run folder holds `result.json` (RunResult), `metrics.jsonl` (one
// JSON object per line: a StepMetrics row per step, `kind: "step"`, and an EvalRow per evaluation,
// `kind: "eval"`), `metrics.csv` (the step rows as a table) and `checkpoints/`.

/** Per-step training metrics (DESIGN §7), one JSON object per line of metrics.jsonl. */
export interface StepMetrics {
  kind: 'step';
  /** the step's index, 0-based (the optimiser step it took is step + 1) */
  step: number;
  /** mean cross-entropy per valid token (nats) */
  loss: number;
  /** per term name ("global", "micro", "bsz=4", ...), per layer: LBL at the training scope(s) */
  lbl: Record<string, number[]>;
  /** per layer: LBL at micro scope and at global scope, whatever the training scope */
  lblMicro: number[];
  lblGlobal: number[];
  zLoss: number;
  /** per layer: max/mean - 1 of the expert counts over the global batch */
  globalImbalance: number[];
  /** per layer: mean over micro-batches of max/mean - 1 of their expert counts */
  microImbalance: number[];
  /** L2 norm of the whole gradient before clipping */
  gradNorm: number;
  /** the learning rate this step applied (the core's schedule) */
  lr: number;
  /** valid tokens of the global batch per second of step time */
  tokensPerSec: number;
  /** wall-clock milliseconds of the step */
  stepMs: number;
}

/** One evaluation as logged live: a row of metrics.jsonl, an `onEval` call, an event of `trainSteps`. */
export interface EvalRow extends EvalResult {
  kind: 'eval';
  /** the split evaluated */
  split: 'validation';
}

/** A line of metrics.jsonl. */
export type MetricsRow = StepMetrics | EvalRow;

/** Held-out figures of one domain. */
export interface DomainEval {
  /** mean cross-entropy per predicted token (nats) */
  loss: number;
  /** bits per byte (equals loss / ln 2 / bytes-per-token; bytes-per-token = 1 for the byte tokenizer) */
  bitsPerByte: number;
  perplexity: number;
  tokens: number;
}

/** Routing specialisation of one layer on the held-out data. */
export interface LayerSpecialisation {
  /** (D, E) selection frequency: tokens of domain d choosing expert i / tokens of d; rows sum to K */
  frequency: number[][];
  /** mean over domains of max_i frequency / (K / E) */
  maxOverUniform: number;
  /** mutual information between domain and chosen expert, bits */
  mutualInformation: number;
  /** (D) mean top-k score sum per token */
  topkScore: number[];
  /** (D, D) Jensen–Shannon divergence between the domains' expert distributions, bits */
  jsDivergence: number[][];
}

export interface EvalResult {
  /** optimiser steps taken when it was evaluated */
  step: number;
  perDomain: Record<string, DomainEval>;
  /** token-weighted over domains */
  mean: DomainEval;
  /** per layer */
  layers: LayerSpecialisation[];
}

export interface RunResult {
  /** e.g. "micro", "global" */
  name: string;
  /** the validated training config, as JSON */
  config: unknown;
  domains: string[];
  numExperts: number;
  topK: number;
  /** evaluations during training, the last one final */
  evals: EvalResult[];
  /** wall-clock seconds of training */
  seconds: number;
  /** optimiser steps completed */
  stepsDone: number;
  /** stopped early by SIGINT/SIGTERM (a checkpoint was saved) */
  interrupted?: boolean;
  /** stopped early because the chosen validation metric did not improve for `train.patience` evaluations */
  earlyStopped?: boolean;
  /** the last checkpoint folder (self-contained: `MoeModel.fromCheckpoint` and transformers load it) */
  checkpoint?: string;
  /** the best checkpoint by `train.saveBest` and its metric value, when saveBest is on */
  best?: { checkpoint: string; step: number; metric: string; value: number };
  machine: string;
}
