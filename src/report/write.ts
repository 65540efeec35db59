// Reads run folders (result.json + metrics.jsonl, see src/results.ts) and writes the HTML report
// atomically, so a viewer never sees a half-written page. Unreadable runs fail with RUN_NOT_FOUND.

import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { MoeTrainerError } from '../errors.js';
import type { RunResult, StepMetrics } from '../results.js';
import { renderReport, type RunData } from './render.js';

const notFound = (path: string, why: string): MoeTrainerError => new MoeTrainerError('RUN_NOT_FOUND', `${path}: ${why}`);

async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    throw notFound(path, `cannot read (${(e as NodeJS.ErrnoException).code ?? String(e)}); is this a run folder?`);
  }
}

function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw notFound(where, `invalid JSON (${(e as Error).message})`);
  }
}

/** Only the fields the report reads are checked; the trainer owns the full format. */
function checkResult(x: unknown, path: string): RunResult {
  const r = x as Partial<RunResult> | null;
  const ok =
    r !== null &&
    typeof r === 'object' &&
    typeof r.name === 'string' &&
    Array.isArray(r.domains) &&
    Number.isInteger(r.numExperts) &&
    Number.isInteger(r.topK) &&
    Number.isInteger(r.stepsDone) &&
    Array.isArray(r.evals);
  if (!ok) throw notFound(path, 'not a run result (needs name, domains, numExperts, topK, stepsDone, evals)');
  return r as RunResult;
}

async function readRun(dir: string): Promise<RunData> {
  const resultPath = join(dir, 'result.json');
  const metricsPath = join(dir, 'metrics.jsonl');
  const result = checkResult(parseJson(await readText(resultPath), resultPath), resultPath);
  const metrics = (await readText(metricsPath))
    .split('\n')
    .map((line, i) => [line, i] as const)
    .filter(([line]) => line.trim() !== '')
    .map(([line, i]) => parseJson(line, `${metricsPath}:${i + 1}`) as StepMetrics)
    .filter((m) => (m as { kind?: string }).kind !== 'eval'); // evaluation rows: result.json holds them
  return { result, metrics };
}

export async function writeReport(runDirs: string[], outFile: string, opts: { title?: string } = {}): Promise<void> {
  const runs = await Promise.all(runDirs.map(readRun));
  const html = renderReport(runs, opts);
  await mkdir(dirname(outFile), { recursive: true });
  const tmp = `${outFile}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, html, 'utf8');
    await rename(tmp, outFile);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
