// Resuming and extending a run: the saved config plus the changes asked for. Changes that cannot
// alter what was already trained apply — more steps (the schedule is then evaluated over the new
// total for the steps still to come), evaluation, checkpoint and early-stopping settings, the
// device, activation recomputation, the progress bar, what to do on a non-finite loss. Any other change (the model, the
// data, the batch, the balance, the optimiser, the seed) fails with RESUME_CONFLICT listing every
// difference in one line.

import { MoeTrainerError } from '../errors.js';
import { parseTrainConfig, type TrainConfig } from './config.js';

/** Config fields a resumed run may change. */
const SAFE = new Set([
  'train.steps', 'train.evalEvery', 'train.evalTokens', 'train.checkpointEvery', 'train.keepLast', 'train.bestMetric',
  'train.saveBest', 'train.patience', 'train.device', 'train.recompute', 'train.progress', 'train.onNonFinite', '$schema',
]);

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** `base` with `over` laid on top (objects merged key by key, anything else replaced). */
export function deepMerge(base: unknown, over: unknown): unknown {
  if (!isObject(base) || !isObject(over)) return over === undefined ? base : over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(base[k], v);
  return out;
}

/** The leaf paths where two configs differ, with both values. */
export function configDiff(a: unknown, b: unknown, path = ''): { path: string; from: unknown; to: unknown }[] {
  if (isObject(a) && isObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => configDiff(a[k], b[k], path ? `${path}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [{ path, from: a, to: b }];
}

const show = (v: unknown) => (v === undefined ? '(unset)' : JSON.stringify(v));

/**
 * The config of a resumed run: `saved` with `changes` (a partial config: --config, --set, --steps)
 * laid on top. `done`: steps already trained. Returns the config and the applied changes.
 */
export function resumeConfig(saved: TrainConfig, changes: unknown, done: number): { config: TrainConfig; changed: string[] } {
  const config = parseTrainConfig(deepMerge(saved, changes ?? {}));
  const diff = configDiff(saved, config);
  const refused = diff.filter((d) => !SAFE.has(d.path));
  if (refused.length) {
    throw new MoeTrainerError('RESUME_CONFLICT', `--resume cannot change what was already trained: ${refused.map((d) => `${d.path} ${show(d.from)} -> ${show(d.to)}`).join('; ')} (start a new run with --force or another --out)`);
  }
  if (config.train.steps < done) {
    throw new MoeTrainerError('RESUME_CONFLICT', `train.steps ${config.train.steps} is below the ${done} steps already trained`);
  }
  return { config, changed: diff.map((d) => `${d.path} ${show(d.from)} -> ${show(d.to)}`) };
}
