// Fault 1 of the reliability review: a kill at any moment — inside a checkpoint save included —
// must leave a run that resumes, and the resumed run must end bit for bit where an uninterrupted
// run ends. `moe train --set train.checkpointEvery=1` runs as a child process and is SIGKILLed 100
// times at random moments (short random delays after it shows progress); every third start also
// carries a failpoint that aborts the process inside a save, between two of its files. After each
// kill the run resumes (or, before its first checkpoint, restarts with --force); each round ends
// when a process finishes, and its final parameters, losses and evaluations are compared with the
// uninterrupted run's on the CPU.

import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import type { RunResult, StepMetrics } from '../src/results.js';
import { latestCheckpoint, readMetricsRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';
import { rng } from '../src/rng.js';

const KILLS = 100;
const config = {
  model: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2 },
  data: { seqLen: 16, tokenizer: { kind: 'byte' } },
  batch: { ranks: 2, accumSteps: 1, microBatch: 2 },
  balance: { terms: [{ scope: 'global', coef: 0.02 }], zLoss: 1e-3 },
  optim: { lr: 1e-2, minLr: 1e-3, warmupSteps: 3 },
  train: { steps: 24, evalEvery: 8, evalTokens: 64, checkpointEvery: 1, keepLast: 2, progress: false, seed: 5, device: 'cpu' },
};

/** What must be identical: everything of a step row but its timings. */
const stepRows = (dir: string) =>
  readMetricsRows(join(dir, 'metrics.jsonl'))
    .filter((r): r is StepMetrics => r.kind === 'step')
    .map(({ tokensPerSec: _t, stepMs: _s, ...rest }) => rest);

/** Folders a save leaves only while it runs (the core's temporary `.step-N.tmp-<pid>-<n>`). */
const saveInProgress = (dir: string) => {
  const root = join(dir, 'checkpoints');
  return existsSync(root) && readdirSync(root).some((n) => /\.tmp-\d+-\d+$/.test(n));
};

const signature = (dir: string) => {
  const p = join(dir, 'metrics.jsonl');
  const c = latestCheckpoint(dir);
  return `${existsSync(p) ? `${statSync(p).size}:${statSync(p).mtimeMs}` : '-'}|${c ?? '-'}`;
};

test('at least 100 kills at random moments, inside saves too: every resume succeeds and ends identical to the uninterrupted run', async (t) => {
  t.timeout(25 * 60_000);
  const root = mkdtempSync(join(tmpdir(), 'moe-kill-'));
  const cfgFile = join(root, 'config.json');
  writeFileSync(cfgFile, JSON.stringify(config));
  const ref = join(root, 'reference');
  const straight: RunResult = await train(config, { outDir: ref });
  const refModel = await MoeModel.fromCheckpoint(latestCheckpoint(ref)!);
  const refParams = refModel.getParams();
  refModel.dispose();
  const r = rng(2024);
  let kills = 0;
  let insideSave = 0;
  let failpointAborts = 0;
  let resumes = 0;
  let rounds = 0;
  let starts = 0;
  const failures: string[] = [];
  while (kills < KILLS) {
    const dir = join(root, `run-${rounds}`);
    for (;;) {
      const resume = latestCheckpoint(dir) !== null;
      const failpoint = starts % 3 === 2 ? `checkpoint.file=${Math.floor(r() * 12)}*off->return(abort)` : '';
      starts++;
      if (resume) resumes++;
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'train', '--out', dir, '--config', cfgFile, '--no-progress', resume ? '--resume' : '--force'], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, MOE_FAILPOINTS: failpoint },
      });
      let stderr = '';
      child.stderr!.on('data', (d) => (stderr += d));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('exit', (code, signal) => res({ code, signal })));
      let done: { code: number | null; signal: NodeJS.Signals | null } | null = null;
      exited.then((x) => (done = x));
      if (!failpoint) {
        // Wait for a sign of progress (the log rewritten or grown, a new checkpoint), then a
        // random short delay, then SIGKILL.
        const before = signature(dir);
        while (!done && signature(dir) === before) await new Promise((res) => setTimeout(res, 2));
        await new Promise((res) => setTimeout(res, r() * 120));
        if (!done) child.kill('SIGKILL');
      }
      const end = await exited;
      if (end.signal === 'SIGKILL' || end.signal === 'SIGABRT') {
        kills++;
        if (end.signal === 'SIGABRT') failpointAborts++;
        else if (saveInProgress(dir)) insideSave++;
        continue;
      }
      if (end.code !== 0) failures.push(`start ${starts} (${resume ? 'resume' : 'new'}): exit ${end.code}: ${stderr.trim().split('\n').pop()}`);
      break; // the round's run finished
    }
    rounds++;
    // The run that was killed again and again ends where the uninterrupted one ends.
    const final = await MoeModel.fromCheckpoint(latestCheckpoint(dir)!);
    const params = final.getParams();
    final.dispose();
    t.true(Buffer.from(params.buffer).equals(Buffer.from(refParams.buffer)), `round ${rounds}: final parameters differ`);
    t.deepEqual(stepRows(dir), stepRows(ref), `round ${rounds}: step rows differ`);
    const result = JSON.parse(readFileSync(join(dir, 'result.json'), 'utf8')) as RunResult;
    t.deepEqual(result.evals, straight.evals, `round ${rounds}: evaluations differ`);
    t.false(saveInProgress(dir), 'no temporary folder stays after a finished run');
    rmSync(dir, { recursive: true });
  }
  t.deepEqual(failures, [], 'every start after a kill succeeded');
  t.log(`${kills} kills: ${kills - failpointAborts} SIGKILLs at random moments (${insideSave} of them inside a save), ${failpointAborts} aborts by the failpoint inside a save between two files; ${resumes} resumes, ${rounds} runs finished, each identical to the uninterrupted run`);
  t.true(insideSave + failpointAborts >= 20, `kills inside saves: ${insideSave} + ${failpointAborts}`);
  rmSync(root, { recursive: true });
});
