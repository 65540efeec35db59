// Datasets: users' documents tokenised once into memory-mapped token files (the native `moe-data`
// crate), and where a run's data comes from. `prepareDataset` runs a prepare job with a progress
// bar (MB/s, ETA); `resolveDataset` turns `data.corpus` into an opened dataset: a prepared dataset
// folder is used as it is; raw inputs (folders of domain folders, JSONL, Parquet, corpus folders)
// are prepared once into a cache keyed by the inputs (path, size, modification time of every file)
// and the preparation settings, and reused by every later run and every `compare` variant.

import { createHash } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import { Dataset, DatasetPrep, Tokenizer, type DatasetManifest, type PrepareOptions } from '../../index.js';
import { MoeTrainerError } from '../errors.js';

/** The embedded five-domain corpus shipped inside the package (a corpus folder: MANIFEST.json). */
export const EMBEDDED_CORPUS = resolve(dirname(fileURLToPath(import.meta.url)), '../../data');

/** How raw inputs are turned into a dataset (everything of `PrepareOptions` but inputs and out). */
export type PrepareSettings = Omit<PrepareOptions, 'inputs' | 'out' | 'force'>;

export interface PrepareRun {
  /** one line per message (progress when not on a terminal, warnings) */
  log?: (line: string) => void;
  /** draw a progress bar on stderr (default: when stderr is a terminal) */
  progress?: boolean;
}

const PHASES: Record<string, string> = { scan: 'reading', train: 'training BPE', encode: 'tokenising', done: 'done' };

/** Runs a prepare job, showing its progress; resolves to the manifest written. */
export async function prepareDataset(options: PrepareOptions, run: PrepareRun = {}): Promise<DatasetManifest> {
  const job = new DatasetPrep(options);
  const showBar = run.progress ?? process.stderr.isTTY;
  const bar = showBar
    ? new cliProgress.SingleBar({ format: ' {phase} {bar} {percentage}% | {mb} MB | {rate} MB/s | ETA {eta_formatted}', hideCursor: true }, cliProgress.Presets.shades_classic)
    : null;
  let phase = '';
  let t0 = performance.now();
  const tick = () => {
    const p = job.progress;
    if (p.phase !== phase) {
      if (bar && phase) bar.stop();
      phase = p.phase;
      t0 = performance.now();
      if (phase !== 'done') {
        if (bar) bar.start(Math.max(1, p.total), 0, { phase: PHASES[phase], mb: '0', rate: '-' });
        else run.log?.(`prepare: ${PHASES[phase]} ${(p.total / 1e6).toFixed(1)} MB`);
      }
    }
    const secs = (performance.now() - t0) / 1000;
    bar?.update(p.done, { phase: PHASES[phase], mb: (p.done / 1e6).toFixed(1), rate: secs > 0 ? (p.done / 1e6 / secs).toFixed(1) : '-' });
  };
  const timer = setInterval(tick, 200);
  try {
    const result = await job.run();
    tick();
    for (const w of result.warnings) run.log?.(`prepare: warning: ${w}`);
    return result.manifest;
  } finally {
    clearInterval(timer);
    bar?.stop();
  }
}

/** An opened dataset and its tokenizer. */
export interface OpenDataset {
  dir: string;
  dataset: Dataset;
  tokenizer: Tokenizer;
}

export function openDataset(dir: string): OpenDataset {
  const dataset = Dataset.open(dir);
  return { dir, dataset, tokenizer: Tokenizer.fromFile(join(dir, dataset.manifest.tokenizer.file)) };
}

/** [domain, path] of an input `PATH` or `DOMAIN=PATH` (a domain name has no slash). */
function splitInput(spec: string): [string | null, string] {
  const eq = spec.indexOf('=');
  return eq > 0 && !/[\\/]/.test(spec.slice(0, eq)) ? [spec.slice(0, eq), spec.slice(eq + 1)] : [null, spec];
}

/** An input with its path made absolute; "embedded" is the corpus shipped with the package. */
export function absoluteInput(spec: string): string {
  if (spec === 'embedded') return EMBEDDED_CORPUS;
  const [domain, path] = splitInput(spec);
  return domain ? `${domain}=${resolve(path)}` : resolve(path);
}

/** True when `dir` is a prepared dataset (it has the dataset manifest). */
export function isDataset(dir: string): boolean {
  return existsSync(join(dir, 'manifest.json')) && !existsSync(join(dir, 'MANIFEST.json'));
}

/** Every file of an input with its size and modification time, in sorted order. */
function fingerprint(path: string): [string, number, number][] {
  const st = statSync(path);
  if (!st.isDirectory()) return [[path, st.size, st.mtimeMs]];
  return readdirSync(path)
    .filter((n) => !n.startsWith('.'))
    .sort()
    .flatMap((n) => fingerprint(join(path, n)));
}

/** The cache folder of datasets prepared from raw inputs: MOE_CACHE_DIR, else ~/.cache/moe-trainer. */
export function cacheDir(): string {
  return process.env.MOE_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'moe-trainer', 'datasets');
}

/**
 * The dataset a run reads. `corpus`: a prepared dataset folder, or raw inputs (`PATH` or
 * `DOMAIN=PATH`, relative to the working directory) prepared once into the cache with `settings`.
 * Fails with CORPUS_MISSING for an input that does not exist.
 */
export async function resolveDataset(corpus: string | string[], settings: PrepareSettings, run: PrepareRun = {}): Promise<OpenDataset> {
  const inputs = (Array.isArray(corpus) ? corpus : [corpus]).map(absoluteInput);
  if (inputs.length === 1 && isDataset(inputs[0])) return openDataset(inputs[0]);
  const files = inputs.map((spec) => {
    const path = splitInput(spec)[1];
    if (!existsSync(path)) throw new MoeTrainerError('CORPUS_MISSING', `${path}: no such file or folder`);
    return fingerprint(path);
  });
  const key = createHash('sha256').update(JSON.stringify({ version: 1, inputs, files, settings })).digest('hex').slice(0, 20);
  const out = join(cacheDir(), key);
  if (!isDataset(out)) {
    run.log?.(`preparing ${inputs.join(', ')} into ${out} (once; later runs reuse it)`);
    try {
      await prepareDataset({ ...settings, inputs, out }, run);
    } catch (e) {
      // Another process may have prepared the same key meanwhile: its dataset is as good.
      if (!isDataset(out)) throw e;
    }
  }
  return openDataset(out);
}
