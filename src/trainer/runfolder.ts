// The run folder on disk: who may write it (a lock; a new run never truncates or mixes with an
// existing one), its checkpoints (`checkpoints/step-N/`, `checkpoints/best-step-N/`: each a whole
// folder the core switched in atomically), their rotation (retired folders are renamed away before
// they are deleted, so no half-deleted checkpoint ever sits under a valid name), the trainer state
// of a checkpoint read without loading the model, and the metrics logs (torn last lines dropped).

import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { MoeTrainerError } from '../errors.js';
import type { MetricsRow, StepMetrics } from '../results.js';

export const CHECKPOINTS = 'checkpoints';
const LOCK = 'run.lock';
/** Checkpoints of moe-trainer before checkpoint folders were rotated. */
const LEGACY = 'checkpoint';

export const stepName = (step: number) => `step-${String(step).padStart(8, '0')}`;
export const bestName = (step: number) => `best-step-${String(step).padStart(8, '0')}`;

/** Whether process `pid` is alive (EPERM: alive, someone else's). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether `dir` holds (part of) a run: a log, a result or checkpoints. */
export function holdsRun(dir: string): boolean {
  return ['metrics.jsonl', 'result.json', CHECKPOINTS, LEGACY].some((f) => existsSync(join(dir, f)));
}

/**
 * Takes the run folder for this process: `run.lock` holds the pid of the process training into
 * it. A lock of a dead process (killed) is taken over; a live one fails with RUN_LOCKED.
 * Returns the release function.
 */
export function lockRun(dir: string): () => void {
  const path = join(dir, LOCK);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(readFileSync(path, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new MoeTrainerError('RUN_LOCKED', `${dir}: process ${pid} is training into this run folder`);
      }
      rmSync(path, { force: true }); // left by a process that was killed
    }
  }
  throw new MoeTrainerError('RUN_LOCKED', `${dir}: could not take ${LOCK}`);
}

export interface CheckpointEntry {
  step: number;
  dir: string;
  best: boolean;
}

/** The complete checkpoints of a run folder (a folder under its final name is complete), by step. */
export function listCheckpoints(runDir: string): CheckpointEntry[] {
  const root = join(runDir, CHECKPOINTS);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .map((name) => /^(best-)?step-(\d+)$/.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ step: Number(m[2]), dir: join(root, m[0]), best: m[1] !== undefined }))
    .sort((a, b) => a.step - b.step || Number(a.best) - Number(b.best));
}

/** The latest checkpoint of a run folder (null when none): the step checkpoint of the highest step. */
export function latestCheckpoint(runDir: string): string | null {
  const steps = listCheckpoints(runDir).filter((c) => !c.best);
  if (steps.length) return steps[steps.length - 1].dir;
  const legacy = join(runDir, LEGACY);
  return existsSync(join(legacy, 'config.json')) ? legacy : null;
}

/** The checkpoint folder `path` names: itself when it is one, else the latest of the run folder. */
export function checkpointOf(path: string): string {
  if (existsSync(join(path, 'config.json'))) return path;
  const latest = latestCheckpoint(path);
  if (!latest) throw new MoeTrainerError('CHECKPOINT_MISSING', `${path}: neither a checkpoint folder nor a run folder with a checkpoint`);
  return latest;
}

let trashSeq = 0;

/** Removes a checkpoint folder: first renamed away (atomic), then deleted. */
function retire(dir: string): void {
  const parent = join(dir, '..');
  const trash = join(parent, `.trash-${dir.split(/[\\/]/).pop()}-${process.pid}-${trashSeq++}`);
  try {
    renameSync(dir, trash);
  } catch {
    return; // already gone
  }
  rmSync(trash, { recursive: true, force: true });
}

/**
 * Keeps the `keepLast` latest step checkpoints and the latest best one; removes the others and
 * what killed processes left (`.trash-*` of dead pids).
 */
export function pruneCheckpoints(runDir: string, keepLast: number): void {
  const all = listCheckpoints(runDir);
  const steps = all.filter((c) => !c.best);
  const bests = all.filter((c) => c.best);
  for (const c of [...steps.slice(0, Math.max(0, steps.length - keepLast)), ...bests.slice(0, -1)]) retire(c.dir);
  const root = join(runDir, CHECKPOINTS);
  for (const name of existsSync(root) ? readdirSync(root) : []) {
    const m = /^\.trash-.*-(\d+)-\d+$/.exec(name);
    if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) rmSync(join(root, name), { recursive: true, force: true });
  }
}

/**
 * The trainer state saved in a checkpoint's training_state.safetensors, read from the file's
 * header alone (no model is built); null for a model-only checkpoint. Loading the checkpoint
 * later checks every file against its checksums.
 */
export function readTrainerState(ckptDir: string): string | null {
  const path = join(ckptDir, 'training_state.safetensors');
  if (!existsSync(path)) return null;
  const corrupt = (why: string) => new MoeTrainerError('CHECKPOINT_CORRUPT', `${path}: ${why}`);
  let header: Buffer;
  try {
    const fd = openSync(path, 'r');
    try {
      const len = Buffer.alloc(8);
      if (readSyncAll(fd, len, 0) !== 8) throw corrupt('too short');
      const n = Number(len.readBigUInt64LE(0));
      if (!(n > 1 && n < 1e8)) throw corrupt('no safetensors header');
      header = Buffer.alloc(n);
      if (readSyncAll(fd, header, 8) !== n) throw corrupt('truncated header');
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if (e instanceof MoeTrainerError) throw e;
    throw new MoeTrainerError('IO_ERROR', `${path}: ${(e as Error).message}`);
  }
  let meta: unknown;
  try {
    meta = (JSON.parse(header.toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__?.trainer_state;
  } catch {
    throw corrupt('the header is not JSON');
  }
  if (typeof meta !== 'string') throw corrupt('no trainer_state');
  return meta;
}

function readSyncAll(fd: number, buf: Buffer, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** The rows of metrics.jsonl; a torn last line (a kill mid-write) is dropped. */
export function readMetricsRows(path: string): MetricsRow[] {
  if (!existsSync(path)) return [];
  const lines = readFileSync(path, 'utf8').split('\n');
  const rows: MetricsRow[] = [];
  for (const [i, line] of lines.entries()) {
    if (!line.trim()) continue;
    try {
      const row = JSON.parse(line) as MetricsRow;
      rows.push(row.kind ? row : ({ ...(row as object), kind: 'step' } as MetricsRow)); // rows written before `kind`
    } catch {
      if (i < lines.length - 1 && lines.slice(i + 1).some((l) => l.trim())) throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${path}:${i + 1}: not JSON`);
    }
  }
  return rows;
}

/** The step rows of metrics.jsonl (the evaluation rows left out), in order. */
export function readStepRows(path: string): StepMetrics[] {
  return readMetricsRows(path).filter((r): r is StepMetrics => r.kind === 'step');
}

/** Replaces a file by writing beside it and renaming. */
export function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** Removes the files of a run (for `force`): logs, result, checkpoints. */
export function clearRun(dir: string): void {
  for (const f of ['metrics.jsonl', 'metrics.csv', 'evals.csv', 'result.json']) rmSync(join(dir, f), { force: true });
  for (const d of [CHECKPOINTS, LEGACY]) if (existsSync(join(dir, d))) retire(join(dir, d));
}
