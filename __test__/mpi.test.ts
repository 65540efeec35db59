// Data parallelism across real processes: `moe train --comm mpi` under `mpirun -np 2` must give
// the losses and parameters of one process with R = 2 virtual ranks, for every scope that
// synchronises; a dead rank must stop the job; a stopped job resumes with the same ranks.
// Needs Open MPI and the MPI addon (`npm run build:mpi`); CI provides both and sets
// MOE_REQUIRE_MPI=1, which turns their absence into a failure instead of a loud skip.

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel } from '../index.js';
import { latestCheckpoint, readStepRows } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const hasMpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0;
const hasAddon = existsSync('mpi') && readdirSync('mpi').some((f) => f.endsWith('.node'));
const available = hasMpirun && hasAddon;
const why = `${hasMpirun ? '' : 'mpirun not found (apt-get install openmpi-bin libopenmpi-dev libclang-dev pkg-config); '}${hasAddon ? '' : 'MPI addon not built (npm run build:mpi)'}`;
if (!available) {
  if (process.env.MOE_REQUIRE_MPI === '1') test('MPI is available', (t) => t.fail(why));
  else console.warn(`\n*** SKIPPED: MPI tests: ${why} ***\n`);
}
const mpiTest = available ? test.serial : test.skip;

const env = { ...process.env, OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1', OMPI_MCA_rmaps_base_oversubscribe: '1' };
const config = (scope: string) => ({
  model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, moe_intermediate_size: 32, num_experts: 4, num_experts_per_tok: 2 },
  data: { seqLen: 32, tokenizer: { kind: 'byte' } },
  batch: { ranks: 2, accumSteps: 2, microBatch: 2 },
  balance: { terms: [{ scope, coef: 0.05 }], zLoss: 1e-3 },
  optim: { lr: 1e-2, warmupSteps: 2 },
  train: { steps: 6, evalEvery: 6, evalTokens: 256, progress: false, seed: 4 },
});
const sets = (cfg: object) => Object.entries(cfg).flatMap(([k, v]) => ['--set', `${k}=${JSON.stringify(v)}`]);
const mpiArgs = (out: string, cfg: object, extra: string[] = []) => ['-np', '2', process.execPath, '--import', 'tsx', 'src/cli.ts', 'train', '--comm', 'mpi', '--no-progress', '--out', out, ...sets(cfg), ...extra];
const losses = (dir: string) => readStepRows(join(dir, 'metrics.jsonl')).map((r) => r.loss);
const params = async (dir: string) => {
  const m = await MoeModel.fromCheckpoint(latestCheckpoint(dir)!);
  const p = m.getParams();
  m.dispose();
  return p;
};
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((d, v, i) => Math.max(d, Math.abs(v - b[i])), 0);

mpiTest('mpirun -np 2 equals 2 virtual ranks for micro, dp, global and global-exact', async (t) => {
  for (const scope of ['micro', 'dp', 'global', 'global-exact']) {
    const virt = mkdtempSync(join(tmpdir(), 'moe-virt-'));
    const real = mkdtempSync(join(tmpdir(), 'moe-mpi-'));
    await train(config(scope), { outDir: virt });
    const r = spawnSync('mpirun', mpiArgs(real, config(scope)), { env, encoding: 'utf8', timeout: 120_000 });
    t.is(r.status, 0, r.stderr);
    const dl = maxDiff(losses(real), losses(virt));
    const dp = maxDiff(await params(real), await params(virt));
    t.log(`${scope}: max |Δloss| = ${dl.toExponential(2)}, max |Δparam| = ${dp.toExponential(2)}`);
    t.true(dl <= 1e-5 && dp <= 1e-5, scope);
    rmSync(virt, { recursive: true });
    rmSync(real, { recursive: true });
  }
});

mpiTest('a rank that dies stops the job within seconds instead of hanging', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-die-'));
  const cfg = { ...config('global'), train: { ...config('global').train, steps: 100000 } };
  const job = spawn('mpirun', mpiArgs(dir, cfg, ['--set', `train.seed=${process.pid}`]), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  job.stderr.on('data', (d) => (stderr += d));
  const metrics = join(dir, 'metrics.jsonl');
  while (!(existsSync(metrics) && readFileSync(metrics, 'utf8').split('\n').length > 3)) await new Promise((r) => setTimeout(r, 100));
  // Kill rank 1 (the rank whose command line carries this seed and is not the first).
  const pids = spawnSync('pgrep', ['-f', `train.seed=${process.pid}`], { encoding: 'utf8' }).stdout.trim().split('\n').map(Number).filter((p) => p !== job.pid);
  t.true(pids.length >= 2, `rank processes: ${pids}`);
  process.kill(Math.max(...pids), 'SIGKILL');
  const t0 = Date.now();
  const code = await new Promise<number | null>((r) => job.on('exit', r));
  const seconds = (Date.now() - t0) / 1000;
  t.log(`mpirun exited with ${code} ${seconds.toFixed(1)} s after a rank was killed`);
  t.not(code, 0);
  t.true(seconds < 30);
  rmSync(dir, { recursive: true });
});

mpiTest('a stopped MPI run resumes with the same ranks to exactly the straight run', async (t) => {
  const straight = mkdtempSync(join(tmpdir(), 'moe-mpi-straight-'));
  const resumed = mkdtempSync(join(tmpdir(), 'moe-mpi-resumed-'));
  const cfg = { ...config('global'), train: { ...config('global').train, steps: 30 } };
  t.is(spawnSync('mpirun', mpiArgs(straight, cfg), { env, encoding: 'utf8', timeout: 120_000 }).status, 0);
  const job = spawn('mpirun', mpiArgs(resumed, cfg), { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const metrics = join(resumed, 'metrics.jsonl');
  while (!(existsSync(metrics) && readFileSync(metrics, 'utf8').split('\n').length > 4)) await new Promise((r) => setTimeout(r, 50));
  // A scheduler's SIGTERM to every rank: they agree to stop after one step and checkpoint.
  const ranks = spawnSync('pgrep', ['-f', resumed], { encoding: 'utf8' }).stdout.trim().split('\n').map(Number).filter((p) => p !== job.pid);
  ranks.forEach((pid) => process.kill(pid, 'SIGTERM'));
  t.is(await new Promise((r) => job.on('exit', r)), 0);
  const done = losses(resumed).length;
  t.true(done < 30, `stopped early, after ${done} steps`);
  const r = spawnSync('mpirun', mpiArgs(resumed, cfg, ['--resume']), { env, encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(losses(resumed), losses(straight));
  t.is(maxDiff(await params(resumed), await params(straight)), 0);
  rmSync(straight, { recursive: true });
  rmSync(resumed, { recursive: true });
});
