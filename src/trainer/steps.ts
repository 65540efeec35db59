// `trainSteps`: the training loop as an async iterator of its events — a StepMetrics per step
// (`kind: "step"`) and an EvalRow per evaluation (`kind: "eval"`), in order — for scripts that want
// to react to every step (dashboards, their own early stopping) without callbacks. Breaking out of
// the loop stops training after the current step and saves a checkpoint, like SIGINT does.

import type { EvalRow, RunResult, StepMetrics } from '../results.js';
import { train, type RunOptions } from './train.js';

export async function* trainSteps(config: unknown, opts: Omit<RunOptions, 'onStep' | 'onEval' | 'signal'>): AsyncGenerator<StepMetrics | EvalRow, RunResult> {
  const queue: (StepMetrics | EvalRow)[] = [];
  let wake: (() => void) | null = null;
  const stop = new AbortController();
  let finished = false;
  const push = (e: StepMetrics | EvalRow) => {
    queue.push(e);
    wake?.();
  };
  const run = train(config, { ...opts, signal: stop.signal, onStep: push, onEval: push }).finally(() => {
    finished = true;
    wake?.();
  });
  run.catch(() => {}); // surfaced by the `await run` below
  try {
    for (;;) {
      while (queue.length) yield queue.shift()!;
      if (finished) break;
      await new Promise<void>((r) => (wake = r));
      wake = null;
    }
    return await run;
  } finally {
    if (!finished) {
      stop.abort(); // the consumer broke out: checkpoint and stop
      await run.catch(() => {});
    }
  }
}
