// The training loop, shaped like nanoGPT's train.py: set-up, then one visible loop of
// get batch -> forward per micro-batch -> routing statistics -> balance engine -> backward ->
// gradient all-reduce -> clipping + AdamW, with periodic evaluation (logged live), a JSONL metrics
// log (+ CSV), rotating and best checkpoints (every N steps, at the end, on SIGINT/SIGTERM), early
// stopping, and exact resume — also after a kill at any moment (see runfolder.ts).
// R data-parallel ranks are either virtual (R model replicas in this process, synchronised through
// a LocalGroup) or real processes (one replica here, `opts.comm` = an MpiCommunicator under mpirun);
// the step is the same code either way. Rank 0 alone logs, evaluates and writes checkpoints.

import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import cliProgress from 'cli-progress';
import { lrAt, MoeModel, validTokens, type AdamWOptions, type ModelForwardResult } from '../../index.js';
import { Balancer, balanceAt, LocalGroup, phaseAt, type Communicator } from '../balance/index.js';
import { MoeTrainerError } from '../errors.js';
import { absoluteInput, isDataset } from '../data/dataset.js';
import { DataPipeline, type MicroBatch } from '../data/pipeline.js';
import { imbalance } from '../metrics.js';
import type { EvalResult, EvalRow, MetricsRow, RunResult, StepMetrics } from '../results.js';
import { configWarnings, datasetOf, modelConfigOf, parseTrainConfig, withCheckpointModel, type TrainConfig } from './config.js';
import { evaluate } from './evaluate.js';
import { csvHeader, csvRow, EVAL_CSV, STEP_CSV } from './csv.js';
import { bestName, CHECKPOINTS, clearRun, holdsRun, latestCheckpoint, listCheckpoints, lockRun, pruneCheckpoints, readMetricsRows, readTrainerState, stepName, writeAtomic } from './runfolder.js';
import { resumeConfig } from './resume.js';

export interface RunOptions {
  /** the run folder: metrics.jsonl, metrics.csv, evals.csv, result.json, checkpoints/ */
  outDir: string;
  name?: string;
  /**
   * continue from the latest checkpoint in outDir. The config argument then holds only changes to
   * the saved config: the safe ones apply (more steps, evaluation and checkpoint settings, the
   * device), any other fails with RESUME_CONFLICT listing each difference.
   */
  resume?: boolean;
  /** start a new run in a folder that already holds one, removing the old run's files */
  force?: boolean;
  /** stop after the current step and checkpoint (wired to SIGINT/SIGTERM by the CLI) */
  signal?: AbortSignal;
  /** receives every step's metrics */
  onStep?: (m: StepMetrics) => void;
  /** receives every evaluation as it is made (also a row of metrics.jsonl and a line of `log`) */
  onEval?: (e: EvalRow) => void;
  /** one-line progress messages, evaluations and warnings */
  log?: (line: string) => void;
  /** real data-parallel ranks (e.g. MpiCommunicator): this process is rank comm.rank of comm.size */
  comm?: Communicator;
}

/** What the trainer saves with a checkpoint, besides the model and optimiser. */
interface TrainerState {
  step: number;
  config: TrainConfig;
  evals: EvalResult[];
  seconds: number;
  /** evaluations in a row without improvement of bestMetric */
  sinceBest?: number;
}

function machine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? 'cpu'} x${cpus.length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`;
}

/** The AdamW options of a config: warm-up then the chosen schedule over the run's steps. */
export function optimOf(cfg: TrainConfig): AdamWOptions {
  const o = cfg.optim;
  return {
    lr: o.lr, beta1: o.beta1, beta2: o.beta2, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
    schedule: { kind: o.schedule, warmupSteps: o.warmupSteps, totalSteps: cfg.train.steps, minLr: o.minLr, ...(o.decaySteps !== undefined ? { decaySteps: o.decaySteps } : {}) },
  };
}

/** The value of `metric` (loss, bitsPerByte, perplexity; DOMAIN.loss, ...) in an evaluation; lower is better. */
export function metricOf(e: EvalResult, metric: string): number {
  const [domain, field] = metric.includes('.') ? metric.split('.') : [null, metric];
  const d = domain === null ? e.mean : e.perDomain[domain];
  if (!d) throw new MoeTrainerError('INVALID_CONFIG', `train.bestMetric: no domain "${domain}" (domains: ${Object.keys(e.perDomain).join(', ')})`);
  return d[field as 'loss' | 'bitsPerByte' | 'perplexity'];
}

/** One optimiser step on one rank: its A micro-batches, the balance engine, gradient all-reduce, AdamW. */
async function rankStep(model: MoeModel, bal: Balancer, comm: Communicator, micro: MicroBatch[], cfg: TrainConfig, gradBuf: Float32Array, step: number) {
  const { microBatch: b } = cfg.batch;
  // T_glob: the valid tokens of the global batch, counted as the core counts them, all-reduced.
  const local = micro.reduce((acc, mb) => acc + validTokens(mb.tokens.length, b).reduce((a, v) => a + v, 0), 0);
  await bal.beginStep(local);
  const tGlob = bal.globalTokens;
  if (bal.needsExactCounts) {
    // global-exact: a statistics-only forward over this rank's whole share, before any backward.
    const pre: ModelForwardResult[] = [];
    for (const mb of micro) pre.push(await model.forward(mb.tokens, b, { store: false }));
    await bal.setExactCounts(pre);
  }
  // shuffle: a statistics-only forward masked to the step's random token subset of the global batch.
  const masks = await bal.sampleMasks(cfg.data.seqLen, cfg.train.seed, step);
  if (masks) {
    const pre: ModelForwardResult[] = [];
    for (const [m, mb] of micro.entries()) pre.push(await model.forward(mb.tokens, b, { mask: masks[m], store: false }));
    await bal.setSampleCounts(pre);
  }
  let lossSum = 0;
  const microImbalance: number[][] = [];
  const { num_experts: E } = model.config;
  const L = model.moeLayers.length;
  for (const mb of micro) {
    const out = await model.forward(mb.tokens, b);
    // Sync point for dp / global scopes: microStep all-reduces this micro-step's expert counts.
    const { pressure, zScale } = await bal.microStep(out);
    await model.backward(pressure, { lmScale: 1 / tGlob, zScale });
    lossSum += out.lossSum;
    microImbalance.push(Array.from({ length: L }, (_, l) => imbalance(Array.from({ length: E }, (_, e) => out.counts.subarray(l * b * E, (l + 1) * b * E).reduce((a, v, i) => (i % E === e ? a + v : a), 0)))));
  }
  const balance = await bal.endStep();
  // Auxiliary-loss-free balancing: the biases move once per step, identically on every rank.
  if (balance.biasUpdate) {
    const bias = model.routerBias;
    model.setRouterBias(bias.map((v, i) => v + balance.biasUpdate![i]));
  }
  // Gradient all-reduce: a sum, because every loss term already carries 1/T_glob.
  if (comm.size > 1) {
    const grads = model.getGrads(gradBuf);
    await comm.allReduceSum(grads);
    model.setGrads(grads);
  }
  const loss = Float64Array.of(lossSum);
  await comm.allReduceSum(loss);
  const gradNorm = await model.step(optimOf(cfg));
  model.zeroGrad();
  return { loss: loss[0] / tGlob, balance, gradNorm, microImbalance };
}

export async function train(configInput: unknown, opts: RunOptions): Promise<RunResult> {
  // ---- set-up ---------------------------------------------------------------------------------
  const isRootProcess = !opts.comm || opts.comm.rank === 0;
  let state: TrainerState | null = null;
  let cfg: TrainConfig;
  let resumeFrom: string | null = null;
  if (opts.resume) {
    resumeFrom = latestCheckpoint(opts.outDir);
    if (!resumeFrom) throw new MoeTrainerError('CHECKPOINT_MISSING', `nothing to resume: ${opts.outDir} holds no checkpoint`);
    state = JSON.parse(readTrainerState(resumeFrom) ?? 'null') as TrainerState | null;
    if (!state) throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${resumeFrom} is a model-only checkpoint, without trainer state`);
    // The saved config, with the changes asked for: safe ones apply, the others are refused.
    const r = resumeConfig(state.config, configInput, state.step);
    cfg = r.config;
    if (r.changed.length) opts.log?.(`resuming at step ${state.step} with ${r.changed.join('; ')}`);
  } else {
    // The whole config, model section included, is checked before any data is read.
    cfg = withCheckpointModel(parseTrainConfig(configInput));
    if (isRootProcess && holdsRun(opts.outDir) && !opts.force) {
      throw new MoeTrainerError('RUN_EXISTS', `${opts.outDir} holds a run: continue it with moe train --resume, replace it with --force, or choose another --out`);
    }
  }
  for (const w of configWarnings(cfg)) opts.log?.(`warning: ${w}`);
  // The data: prepared once (cached), read memory-mapped; the tokenizer is the dataset's.
  const { dataset, tokenizer } = await datasetOf(cfg, { log: opts.log, progress: cfg.train.progress && process.stderr.isTTY });
  // A prepared dataset folder brings its own tokenizer: only one trained for this config can fall short.
  const asked = cfg.data.tokenizer;
  const corpus = [cfg.data.corpus].flat();
  const ownTokenizer = corpus.length === 1 && isDataset(absoluteInput(corpus[0]));
  if (asked.kind === 'bpe' && !ownTokenizer && tokenizer.vocabSize < asked.vocabSize) {
    opts.log?.(`warning: data.tokenizer.vocabSize asks for ${asked.vocabSize} tokens but the corpus gave the BPE trainer only ${tokenizer.vocabSize}: the model's vocab_size is ${tokenizer.vocabSize}`);
  }
  if (resumeFrom) {
    const saved = join(resumeFrom, 'tokenizer.json');
    if (!existsSync(saved)) throw new MoeTrainerError('CHECKPOINT_MISSING', `${saved} is missing: this checkpoint cannot be resumed (it was not written by the trainer)`);
    if (readFileSync(saved, 'utf8') !== tokenizer.toJson()) {
      throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${saved} differs from the tokenizer of the run's dataset: the data changed since the checkpoint`);
    }
  }
  const weights = cfg.data.weights ?? Object.fromEntries(dataset.manifest.domains.map((d) => [d.name, 1]));
  const { ranks: R, accumSteps: A, microBatch: b } = cfg.batch;
  const multi = opts.comm;
  if (multi && multi.size !== R) throw new MoeTrainerError('INVALID_CONFIG', `batch.ranks (${R}) must equal the number of processes (${multi.size})`);
  // The ranks this process runs: all R (virtual) or its own.
  const localRanks = multi ? [multi.rank] : Array.from({ length: R }, (_, r) => r);
  const isRoot = localRanks[0] === 0;
  const data = new DataPipeline(dataset, tokenizer, { seqLen: cfg.data.seqLen, microBatch: b, ranks: R, accumSteps: A, weights, mixedMicroBatches: cfg.data.mixedMicroBatches, seed: cfg.train.seed });
  if (cfg.train.bestMetric.includes('.') && !data.domains.includes(cfg.train.bestMetric.split('.')[0])) {
    throw new MoeTrainerError('INVALID_CONFIG', `train.bestMetric: no domain "${cfg.train.bestMetric.split('.')[0]}" (domains: ${data.domains.join(', ')})`);
  }
  // Only now is the run folder touched: taken, and (with force) cleared.
  mkdirSync(opts.outDir, { recursive: true });
  const unlock = isRoot ? lockRun(opts.outDir) : () => {};
  const replicas: MoeModel[] = [];
  try {
    if (isRoot && !opts.resume && opts.force) clearRun(opts.outDir);
    const modelCfg = modelConfigOf(cfg, tokenizer.vocabSize);
    // A fine-tuning run starts from the checkpoint's weights with a fresh optimiser.
    const fresh = !resumeFrom && cfg.initFrom !== undefined;
    while (replicas.length < localRanks.length) {
      replicas.push(fresh ? await MoeModel.fromCheckpoint(cfg.initFrom!, { device: cfg.train.device, weightsOnly: true }) : new MoeModel(modelCfg, { device: cfg.train.device }));
    }
    for (const m of replicas) {
      m.setRecompute(cfg.train.recompute);
      m.setPrecision(cfg.train.precision);
    }
    const m0 = replicas[0];
    if (isRoot) opts.log?.(`model: ${(m0.numParameters / 1e6).toFixed(1)} M parameters on the ${m0.device}, precision ${m0.precision}, recompute ${m0.recompute}`);
    if (resumeFrom) {
      for (const m of replicas) {
        const saved = await m.loadCheckpoint(resumeFrom);
        if (saved !== JSON.stringify(state)) throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${resumeFrom} changed while it was read`);
      }
    }
    return await loop();
  } finally {
    replicas.forEach((m) => m.dispose());
    unlock();
  }

  async function loop(): Promise<RunResult> {
    if (multi?.broadcast) {
      // Separate processes start from rank 0's parameters (seeded alike anyway; this makes it certain).
      const p = replicas[0].getParams();
      await multi.broadcast(p, 0);
      replicas[0].setParams(p);
    }
    const { num_experts: E, num_experts_per_tok: K } = replicas[0].config;
    const L = replicas[0].moeLayers.length; // statistics come per layer with experts
    // One gradient buffer per replica for the all-reduce, reused every step: a fresh gradient-sized
    // array per step costs more in page faults than the copy itself.
    const gradBufs = replicas.map((m) => new Float32Array(multi || R > 1 ? m.numParameters : 0));
    // The balancers of the phase in force at `step` (balance.phases switch the terms mid-training).
    const newGroup = (step: number) => {
      const group = multi ? null : new LocalGroup(R);
      const comms = multi ? [multi] : localRanks.map((r) => group!.comm(r));
      const balancers = comms.map((c) => new Balancer(balanceAt(cfg.balance, step), { layers: L, experts: E, topK: K, seqsPerMicro: b, accumSteps: A }, c));
      return { comms, balancers };
    };
    // Every phase's terms are checked now (INVALID_CONFIG), not when the phase begins.
    const shape = { rank: 0, size: R, allReduceSum: async () => {} };
    for (const p of cfg.balance.phases ?? []) new Balancer(balanceAt(cfg.balance, p.step), { layers: L, experts: E, topK: K, seqsPerMicro: b, accumSteps: A }, shape);
    const metricsPath = join(opts.outDir, 'metrics.jsonl');
    const csvPaths = { step: join(opts.outDir, STEP_CSV), eval: join(opts.outDir, EVAL_CSV) };
    const startStep = state?.step ?? 0;
    let { comms, balancers } = newGroup(startStep);
    let phase = phaseAt(cfg.balance, startStep);
    const evals: EvalResult[] = state?.evals ?? [];
    let sinceBest = state?.sinceBest ?? 0;
    let seconds = state?.seconds ?? 0;
    // On resume, drop log rows after the checkpoint (they are about to be redone) and a line torn
    // by a kill; the CSV files are rewritten from what is kept.
    if (isRoot) {
      const kept = readMetricsRows(metricsPath).filter((r) => (r.kind === 'eval' ? r.step <= startStep : r.step < startStep));
      writeAtomic(metricsPath, kept.map((r) => JSON.stringify(r) + '\n').join(''));
      const steps = kept.filter((r): r is StepMetrics => r.kind === 'step');
      const evalRows = kept.filter((r): r is EvalRow => r.kind === 'eval');
      writeAtomic(csvPaths.step, csvHeader('step', L, data.domains) + steps.map((r) => csvRow(r, data.domains)).join(''));
      writeAtomic(csvPaths.eval, csvHeader('eval', L, data.domains) + evalRows.map((r) => csvRow(r, data.domains)).join(''));
    }
    const log = (row: MetricsRow) => {
      appendFileSync(metricsPath, JSON.stringify(row) + '\n');
      appendFileSync(row.kind === 'step' ? csvPaths.step : csvPaths.eval, csvRow(row, data.domains));
    };
    const lossFree = cfg.balance.lossFree ? [`free-${cfg.balance.lossFree.scope}`] : [];
    const name = opts.name ?? [...cfg.balance.terms.map((t) => t.scope ?? `bsz=${t.balanceSequences}`), ...lossFree].join('+');
    const tokFiles = { 'tokenizer.json': tokenizer.toJson(), 'tokenizer_config.json': tokenizer.configJson() };
    const bestSoFar = () => {
      const scored = evals.map((e) => ({ step: e.step, value: metricOf(e, cfg.train.bestMetric) })).filter((x) => Number.isFinite(x.value));
      return scored.reduce<{ step: number; value: number } | null>((a, x) => (a === null || x.value < a.value ? x : a), null);
    };

    // A checkpoint: the whole folder written beside and switched in by the core, then rotation.
    const saveCheckpoint = async (step: number, kind: 'step' | 'best' = 'step') => {
      if (!isRoot) return;
      const st: TrainerState = { step, config: cfg, evals, seconds, sinceBest };
      const dir = join(opts.outDir, CHECKPOINTS, kind === 'best' ? bestName(step) : stepName(step));
      await replicas[0].save(dir, JSON.stringify(st), tokFiles); // rank 0 writes; replicas are identical
      pruneCheckpoints(opts.outDir, cfg.train.keepLast);
    };
    const result = (stepsDone: number, extra: Partial<RunResult>): RunResult => {
      const best = bestSoFar();
      const bestCkpt = listCheckpoints(opts.outDir).filter((c) => c.best).pop();
      return {
        name, config: cfg, domains: data.domains, numExperts: E, topK: K, evals, seconds, stepsDone, interrupted: false, machine: machine(),
        checkpoint: latestCheckpoint(opts.outDir) ?? undefined,
        ...(cfg.train.saveBest && best && bestCkpt ? { best: { checkpoint: bestCkpt.dir, step: bestCkpt.step, metric: cfg.train.bestMetric, value: best.value } } : {}),
        ...extra,
      };
    };

    const bar = isRoot && cfg.train.progress && process.stderr.isTTY
      ? new cliProgress.SingleBar({ format: ' {bar} {value}/{total} | ETA {eta_formatted} | {tps} tok/s | loss {loss} | LBL global {lblg} micro {lblm}', hideCursor: true, etaBuffer: 20 }, cliProgress.Presets.shades_classic)
      : null;
    bar?.start(cfg.train.steps, startStep, { tps: '-', loss: '-', lblg: '-', lblm: '-' });
    const say = (line: string) => {
      if (bar) process.stderr.write('\n');
      opts.log?.(line);
    };
    if (isRoot && startStep > 0 && startStep < cfg.train.steps) {
      const before = lrAt(optimOf(state!.config), startStep + 1);
      const after = lrAt(optimOf(cfg), startStep + 1);
      if (Math.abs(after - before) > 1e-3 * Math.max(before, 1e-12)) say(`the schedule over ${cfg.train.steps} steps sets lr ${after.toExponential(3)} at step ${startStep + 1} (it was ${before.toExponential(3)} over ${state!.config.train.steps} steps)`);
    }

    // ---- the loop -------------------------------------------------------------------------------
    let step = startStep;
    try {
      for (; step < cfg.train.steps; step++) {
        // balance.phases: the terms change at this step (the paper's micro -> global switch).
        if (phaseAt(cfg.balance, step) !== phase) {
          phase = phaseAt(cfg.balance, step);
          ({ comms, balancers } = newGroup(step));
        }
        // Stopping is decided together: a signal seen by any rank stops every rank at this step.
        const stop = await Promise.all(comms.map(async (c) => {
          const flag = Float64Array.of(opts.signal?.aborted ? 1 : 0);
          await c.allReduceSum(flag);
          return flag[0] > 0;
        }));
        if (stop[0]) {
          await saveCheckpoint(step);
          return result(step, { interrupted: true });
        }
        const t0 = performance.now();
        let outs;
        try {
          outs = await Promise.all(
            replicas.map((m, i) =>
              rankStep(m, balancers[i], comms[i], data.batch(step, localRanks[i]), cfg, gradBufs[i], step).catch((e: Error) => {
                comms[i].abort?.(e); // the other ranks must not wait for this one's contribution
                throw e;
              }),
            ),
          );
        } catch (e) {
          const err = e as Error & { code?: string };
          if (err.code !== 'NON_FINITE') throw err;
          if (cfg.train.onNonFinite === 'stop' || multi) throw new MoeTrainerError('NON_FINITE', `step ${step}: ${err.message}; stopping (train.onNonFinite = "skip" skips such steps)`);
          opts.log?.(`step ${step}: ${err.message}; step skipped`);
          replicas.forEach((m) => m.zeroGrad());
          ({ comms, balancers } = newGroup(step));
          continue;
        }
        const ms = performance.now() - t0;
        seconds += ms / 1000;
        const { loss, balance, gradNorm } = outs[0];
        const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
        const metrics: StepMetrics = {
          kind: 'step',
          step,
          loss,
          lbl: balance.lbl,
          lblMicro: balance.lblMicro,
          lblGlobal: balance.lblGlobal,
          zLoss: balance.zLoss,
          globalImbalance: Array.from({ length: L }, (_, l) => imbalance(balance.globalCounts.subarray(l * E, (l + 1) * E))),
          microImbalance: Array.from({ length: L }, (_, l) => mean(outs.flatMap((o) => o.microImbalance.map((mi) => mi[l])))),
          gradNorm,
          lr: lrAt(optimOf(cfg), step + 1),
          tokensPerSec: balance.tokens / (ms / 1000),
          stepMs: ms,
        };
        if (isRoot) log(metrics);
        opts.onStep?.(metrics);
        bar?.update(step + 1, { tps: metrics.tokensPerSec.toFixed(0), loss: loss.toFixed(3), lblg: mean(metrics.lblGlobal).toFixed(3), lblm: mean(metrics.lblMicro).toFixed(3) });
        if (isRoot && !bar && (step % 50 === 0 || step === cfg.train.steps - 1)) opts.log?.(`step ${step}: loss ${loss.toFixed(4)}, LBL global ${mean(metrics.lblGlobal).toFixed(3)} micro ${mean(metrics.lblMicro).toFixed(3)}, ${metrics.tokensPerSec.toFixed(0)} tok/s`);
        const last = step === cfg.train.steps - 1;
        let stopEarly = false;
        if (isRoot && ((step + 1) % cfg.train.evalEvery === 0 || last)) {
          const e = await evaluate(replicas[0], data, 'validation', cfg.train.evalTokens, step + 1);
          const before = bestSoFar();
          evals.push(e);
          const row: EvalRow = { kind: 'eval', split: 'validation', ...e };
          log(row);
          opts.onEval?.(row);
          const value = metricOf(e, cfg.train.bestMetric);
          const improved = before === null || value < before.value;
          sinceBest = improved ? 0 : sinceBest + 1;
          say(`eval at step ${e.step}: loss ${e.mean.loss.toFixed(4)} (${e.mean.bitsPerByte.toFixed(3)} bits/byte) | ${data.domains.map((d) => `${d} ${e.perDomain[d].bitsPerByte.toFixed(3)}`).join(' ')} | MI ${e.layers.map((l) => l.mutualInformation.toFixed(3)).join(' ')}${improved ? ` | best ${cfg.train.bestMetric} so far` : ''}`);
          if (cfg.train.saveBest && improved) await saveCheckpoint(step + 1, 'best');
          stopEarly = cfg.train.patience !== undefined && sinceBest >= cfg.train.patience && !last;
          if (stopEarly) say(`early stop at step ${step + 1}: ${cfg.train.bestMetric} has not improved for ${sinceBest} evaluations`);
        }
        if (multi && cfg.train.patience !== undefined) {
          // Every rank stops with rank 0.
          const flag = Float64Array.of(stopEarly ? 1 : 0);
          await multi.allReduceSum(flag);
          stopEarly = flag[0] > 0;
        }
        if (stopEarly) {
          step++;
          break;
        }
        if (cfg.train.checkpointEvery > 0 && (step + 1) % cfg.train.checkpointEvery === 0 && !last) await saveCheckpoint(step + 1);
      }
      // The final checkpoint (unless a resumed run found it already written).
      const latest = listCheckpoints(opts.outDir).filter((c) => !c.best).pop();
      if (!(latest && latest.step === step)) await saveCheckpoint(step);
      const res = result(step, step < cfg.train.steps ? { earlyStopped: true } : {});
      if (isRoot) writeAtomic(join(opts.outDir, 'result.json'), JSON.stringify(res, null, 1));
      return res;
    } finally {
      bar?.stop();
    }
  }
}
