// The experiments runner of EXPERIMENTS.md: every run of the chosen ablations (scripts/ablations.ts)
// for every seed, one after the other, each in its own folder OUT/seed<S>/<run>. Resumable and
// parallel-safe: a finished run (result.json) is skipped, an unfinished one continues from its last
// checkpoint, and a run is taken through a lock file, so several runners (or one restarted after a
// kill) share the work without repeating it. One progress line per run; after every run the summary
// OUT/summary.md is regenerated from the run folders.
//
// Usage: node --import tsx scripts/experiments.ts [--config configs/experiments.json] [--out runs/experiments]
//          [--seeds 0,1,2] [--only main,bsz,...] [--runs name,name,...] [--checkpoint-every 50]

import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { variant } from '../src/compare.js';
import type { RunResult } from '../src/results.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';
import { ablations } from './ablations.js';
import { summarize } from './summarize-experiments.js';

const { values: o } = parseArgs({
  options: {
    config: { type: 'string', default: 'configs/experiments.json' },
    out: { type: 'string', default: 'runs/experiments' },
    seeds: { type: 'string', default: '0,1,2' },
    only: { type: 'string' },
    runs: { type: 'string' },
    'checkpoint-every': { type: 'string', default: '50' },
  },
});

const base = JSON.parse(readFileSync(o.config!, 'utf8')) as Record<string, unknown>;
const groups = ablations(base).filter((a) => !o.only || o.only.split(',').includes(a.id));
const names = o.runs ? o.runs.split(',') : [...new Set(groups.flatMap((a) => a.runs))];
const seeds = o.seeds!.split(',').map(Number);
const jobs = seeds.flatMap((seed) => names.map((name) => ({ seed, name, dir: join(o.out!, `seed${seed}`, name.replace(/[^\w.+=-]/g, '_')) })));
names.forEach((n) => variant(base, n)); // every name checked before any training

/** Takes the run's lock, or returns false when a live process holds it (a dead holder's lock is taken over). */
function lock(dir: string): boolean {
  const path = join(dir, '.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, `${hostname()} ${process.pid}\n`);
      closeSync(fd);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const [host, pid] = readFileSync(path, 'utf8').trim().split(' ');
      if (host !== hostname()) return false; // another machine's runner: trust it
      try {
        process.kill(Number(pid), 0);
        return false; // alive
      } catch {
        rmSync(path, { force: true }); // its holder died: the run resumes from its checkpoint here
      }
    }
  }
  return false;
}

const controller = new AbortController();
process.on('SIGINT', () => controller.abort());
process.on('SIGTERM', () => controller.abort());

function writeSummary(): void {
  const text = summarize(o.out!, groups);
  writeFileSync(join(o.out!, 'summary.md.tmp'), text);
  renameSync(join(o.out!, 'summary.md.tmp'), join(o.out!, 'summary.md'));
}

const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
let done = 0;
for (const [k, job] of jobs.entries()) {
  const tag = `[${k + 1}/${jobs.length}] seed${job.seed} ${job.name}`;
  if (existsSync(join(job.dir, 'result.json'))) {
    done++;
    console.log(`${tag}: done before`);
    continue;
  }
  mkdirSync(job.dir, { recursive: true });
  if (!lock(job.dir)) {
    console.log(`${tag}: another runner has it`);
    continue;
  }
  try {
    const resume = latestCheckpoint(job.dir) !== null;
    const cfg = variant(base, job.name) as { train?: Record<string, unknown> };
    cfg.train = { ...cfg.train, seed: job.seed, progress: false, checkpointEvery: Number(o['checkpoint-every']) };
    const t0 = Date.now();
    let first = -1;
    const r: RunResult = await train(cfg, { outDir: job.dir, name: job.name, resume, signal: controller.signal, onStep: (m) => void (first < 0 && (first = m.step)) });
    if (r.interrupted) {
      console.log(`${tag}: interrupted at step ${r.stepsDone} (checkpoint saved; run again to continue)`);
      break;
    }
    done++;
    const e = r.evals.at(-1)!;
    const metrics = readStepRows(join(job.dir, 'metrics.jsonl')).slice(-20);
    console.log(
      `${tag}: ${((Date.now() - t0) / 1000).toFixed(0)} s${resume ? ` (resumed at step ${first})` : ''}, held-out ${e.mean.loss.toFixed(4)} nats, ` +
        `MI ${mean(e.layers.map((l) => l.mutualInformation)).toFixed(3)} bits, max/uniform ${mean(e.layers.map((l) => l.maxOverUniform)).toFixed(2)}, ` +
        `LBL global ${mean(metrics.map((m) => mean(m.lblGlobal))).toFixed(3)}`,
    );
    writeSummary();
  } finally {
    rmSync(join(job.dir, '.lock'), { force: true });
  }
}
console.log(`${done} of ${jobs.length} runs finished; summary: ${join(o.out!, 'summary.md')}`);
if (done > 0) writeSummary();
