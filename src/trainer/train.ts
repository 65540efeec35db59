// The training loop, shaped like nanoGPT's train.py: set-up, then one visible loop of
// get batch -> forward per micro-batch -> routing statistics -> balance engine -> backward ->
// gradient all-reduce -> clipping + AdamW, with periodic evaluation, a JSONL metrics log,
// checkpoints (every N steps, at the end, on SIGINT/SIGTERM) and exact resume.
// R data-parallel ranks are either virtual (R model replicas in this process, synchronised through
// a LocalGroup) or real processes (one replica here, `opts.comm` = an MpiCommunicator under mpirun);
// the step is the same code either way. Rank 0 alone logs, evaluates and writes checkpoints.

import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import cliProgress from 'cli-progress';
import { lrAt, MoeModel, validTokens, type AdamWOptions, type ModelForwardResult } from '../../index.js';
import { Balancer, balanceAt, LocalGroup, phaseAt, type Communicator } from '../balance/index.js';
import { MoeTrainerError } from '../errors.js';
import { DataPipeline, type MicroBatch } from '../data/pipeline.js';
import { imbalance } from '../metrics.js';
import type { EvalResult, RunResult, StepMetrics } from '../results.js';
import { datasetOf, modelConfigOf, parseTrainConfig, type TrainConfig } from './config.js';
import { evaluate } from './evaluate.js';

export interface RunOptions {
  /** the run folder: metrics.jsonl, result.json, checkpoint/ */
  outDir: string;
  name?: string;
  /** continue from outDir/checkpoint (the config then comes from the checkpoint) */
  resume?: boolean;
  /** stop after the current step and checkpoint (wired to SIGINT/SIGTERM by the CLI) */
  signal?: AbortSignal;
  /** receives every step's metrics */
  onStep?: (m: StepMetrics) => void;
  /** one-line progress messages when no progress bar is shown */
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
}

const CHECKPOINT = 'checkpoint';

function writeAtomic(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

function machine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? 'cpu'} x${cpus.length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`;
}

/** The AdamW options of a config: warm-up then cosine decay over the whole run. */
function optimOf(cfg: TrainConfig): AdamWOptions {
  const o = cfg.optim;
  return {
    lr: o.lr, beta1: o.beta1, beta2: o.beta2, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
    schedule: { warmupSteps: o.warmupSteps, totalSteps: cfg.train.steps, minLr: o.minLr },
  };
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
  const { num_hidden_layers: L, num_experts: E } = model.config;
  for (const mb of micro) {
    const out = await model.forward(mb.tokens, b);
    // Sync point for dp / global scopes: microStep all-reduces this micro-step's expert counts.
    const { pressure, zScale } = await bal.microStep(out);
    await model.backward(pressure, { lmScale: 1 / tGlob, zScale });
    lossSum += out.loss;
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
  const ckptDir = join(opts.outDir, CHECKPOINT);
  let state: TrainerState | null = null;
  let cfg: TrainConfig;
  if (opts.resume) {
    if (!existsSync(join(ckptDir, 'config.json'))) throw new MoeTrainerError('CHECKPOINT_CORRUPT', `nothing to resume: ${ckptDir} holds no checkpoint`);
    const probe = await MoeModel.fromCheckpoint(ckptDir);
    state = JSON.parse(probe.trainerState ?? 'null') as TrainerState | null;
    probe.dispose();
    if (!state) throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${ckptDir} is a model-only checkpoint, without trainer state`);
    cfg = parseTrainConfig(state.config);
  } else {
    cfg = parseTrainConfig(configInput);
  }
  // The data: prepared once (cached), read memory-mapped; the tokenizer is the dataset's.
  const { dataset, tokenizer } = await datasetOf(cfg, { log: opts.log, progress: cfg.train.progress && process.stderr.isTTY });
  if (state && readFileSync(join(ckptDir, 'tokenizer.json'), 'utf8') !== tokenizer.toJson()) {
    throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${ckptDir}/tokenizer.json differs from the tokenizer of the run's dataset: the data changed since the checkpoint`);
  }
  const weights = cfg.data.weights ?? Object.fromEntries(dataset.manifest.domains.map((d) => [d.name, 1]));
  const { ranks: R, accumSteps: A, microBatch: b } = cfg.batch;
  const multi = opts.comm;
  if (multi && multi.size !== R) throw new MoeTrainerError('INVALID_CONFIG', `batch.ranks (${R}) must equal the number of processes (${multi.size})`);
  // The ranks this process runs: all R (virtual) or its own.
  const localRanks = multi ? [multi.rank] : Array.from({ length: R }, (_, r) => r);
  const isRoot = localRanks[0] === 0;
  const data = new DataPipeline(dataset, tokenizer, { seqLen: cfg.data.seqLen, microBatch: b, ranks: R, accumSteps: A, weights, mixedMicroBatches: cfg.data.mixedMicroBatches, seed: cfg.train.seed });
  const modelCfg = { ...modelConfigOf(cfg, tokenizer.vocabSize), seed: cfg.train.seed };
  const replicas = localRanks.map(() => new MoeModel(modelCfg as never, { device: cfg.train.device }));
  if (state) for (const m of replicas) await m.loadCheckpoint(ckptDir);
  if (multi?.broadcast) {
    // Separate processes start from rank 0's parameters (seeded alike anyway; this makes it certain).
    const p = replicas[0].getParams();
    await multi.broadcast(p, 0);
    replicas[0].setParams(p);
  }
  const { num_hidden_layers: L, num_experts: E, num_experts_per_tok: K } = replicas[0].config;
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
  mkdirSync(opts.outDir, { recursive: true });
  const metricsPath = join(opts.outDir, 'metrics.jsonl');
  // Every phase's terms are checked now (INVALID_CONFIG), not when the phase begins.
  const shape = { rank: 0, size: R, allReduceSum: async () => {} };
  for (const p of cfg.balance.phases ?? []) new Balancer(balanceAt(cfg.balance, p.step), { layers: L, experts: E, topK: K, seqsPerMicro: b, accumSteps: A }, shape);
  const startStep = state?.step ?? 0;
  let { comms, balancers } = newGroup(startStep);
  let phase = phaseAt(cfg.balance, startStep);
  // On resume, drop log lines of steps after the checkpoint: they are about to be redone.
  if (isRoot) {
    const kept = existsSync(metricsPath) ? readFileSync(metricsPath, 'utf8').split('\n').filter((l) => l && (JSON.parse(l) as StepMetrics).step < startStep) : [];
    writeAtomic(metricsPath, kept.map((l) => l + '\n').join(''));
  }
  const evals: EvalResult[] = state?.evals ?? [];
  let seconds = state?.seconds ?? 0;
  const lossFree = cfg.balance.lossFree ? [`free-${cfg.balance.lossFree.scope}`] : [];
  const name = opts.name ?? [...cfg.balance.terms.map((t) => t.scope ?? `bsz=${t.balanceSequences}`), ...lossFree].join('+');

  const saveCheckpoint = async (step: number) => {
    if (!isRoot) return;
    const st: TrainerState = { step, config: cfg, evals, seconds };
    await replicas[0].save(ckptDir, JSON.stringify(st)); // rank 0 writes; replicas are identical
    writeAtomic(join(ckptDir, 'tokenizer.json'), tokenizer.toJson());
    writeAtomic(join(ckptDir, 'tokenizer_config.json'), tokenizer.configJson());
  };
  const result = (stepsDone: number, interrupted: boolean): RunResult => ({
    name, config: cfg, domains: data.domains, numExperts: E, topK: K, evals, seconds, stepsDone, interrupted, machine: machine(),
  });

  const bar = isRoot && cfg.train.progress && process.stderr.isTTY
    ? new cliProgress.SingleBar({ format: ' {bar} {value}/{total} | ETA {eta_formatted} | {tps} tok/s | loss {loss} | LBL global {lblg} micro {lblm}', hideCursor: true, etaBuffer: 20 }, cliProgress.Presets.shades_classic)
    : null;
  bar?.start(cfg.train.steps, startStep, { tps: '-', loss: '-', lblg: '-', lblm: '-' });

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
        return result(step, true);
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
      if (isRoot) appendFileSync(metricsPath, JSON.stringify(metrics) + '\n');
      opts.onStep?.(metrics);
      bar?.update(step + 1, { tps: metrics.tokensPerSec.toFixed(0), loss: loss.toFixed(3), lblg: mean(metrics.lblGlobal).toFixed(3), lblm: mean(metrics.lblMicro).toFixed(3) });
      if (isRoot && !bar && (step % 50 === 0 || step === cfg.train.steps - 1)) opts.log?.(`step ${step}: loss ${loss.toFixed(4)}, LBL global ${mean(metrics.lblGlobal).toFixed(3)} micro ${mean(metrics.lblMicro).toFixed(3)}, ${metrics.tokensPerSec.toFixed(0)} tok/s`);
      const last = step === cfg.train.steps - 1;
      if (isRoot && ((step + 1) % cfg.train.evalEvery === 0 || last)) evals.push(await evaluate(replicas[0], data, 'validation', cfg.train.evalTokens, step + 1));
      if (cfg.train.checkpointEvery > 0 && (step + 1) % cfg.train.checkpointEvery === 0 && !last) await saveCheckpoint(step + 1);
    }
    await saveCheckpoint(step);
    const res = result(step, false);
    if (isRoot) writeAtomic(join(opts.outDir, 'result.json'), JSON.stringify(res, null, 1));
    return res;
  } finally {
    bar?.stop();
    replicas.forEach((m) => m.dispose());
  }
}
