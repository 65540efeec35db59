// moe-trainer: the library entry point for TypeScript training scripts. Everything the CLI does is
// here as functions: models and layers (native), the balance engine, the trainer loop (a Promise,
// a callback per step, or an async iterator), evaluation, metrics, data, tokenizers, reports.

export { checkModelConfig, Dataset, DatasetPrep, lrAt, MoeLayer, MoeModel, readCheckpointConfig, Tokenizer, validTokens } from '../index.js';
export type {
  AdamWOptions, BackwardScales, DatasetManifest, DeviceOptions, ForwardOptions, ForwardResult, GenerateOptions, LoadOptions, LrSchedule,
  ModelConfig, ModelForwardOptions, ModelForwardResult, MoeLayerConfig, ParameterInfo, PrepareOptions, PrepareProgress,
  PrepareResult, RoutingStats,
} from '../index.js';
export * from './balance/index.js';
export { compare, comparisonTable, variant, type CompareOptions } from './compare.js';
export { absoluteInput, cacheDir, EMBEDDED_CORPUS, openDataset, prepareDataset, resolveDataset, type OpenDataset, type PrepareRun, type PrepareSettings } from './data/dataset.js';
export { errorCode, MoeTrainerError, NATIVE_ERROR_CODES, TS_ERROR_CODES, type ErrorCode } from './errors.js';
export { SPLITS, type Split } from './corpus/split.js';
export { DataPipeline, type MicroBatch, type PipelineConfig } from './data/pipeline.js';
export { imbalance, jsDivergence, maxOverUniform, mutualInformation, selectionFrequency } from './metrics.js';
export { BYTE_VOCAB, DEMO_MODEL } from './presets.js';
export { renderReport, type RunData } from './report/render.js';
export { writeReport } from './report/write.js';
export type { DomainEval, EvalResult, EvalRow, LayerSpecialisation, MetricsRow, RunResult, StepMetrics } from './results.js';
export { configWarnings, datasetOf, modelSectionSchema, parseTrainConfig, trainConfigSchema, withCheckpointModel, type TrainConfig, type TrainConfigInput } from './trainer/config.js';
export { checkpointOf, latestCheckpoint, listCheckpoints, readMetricsRows, readStepRows, type CheckpointEntry } from './trainer/runfolder.js';
export { evaluate } from './trainer/evaluate.js';
export { trainSteps } from './trainer/steps.js';
export { metricOf, train, type RunOptions } from './trainer/train.js';
