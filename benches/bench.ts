// `npm run bench`: moe-trainer against the peers a user would otherwise pick, in one run, with the
// same thread count for everyone (BENCH_THREADS, default 2): the MoE layer (ours in Rust vs
// transformers' eager Qwen3MoeSparseMoeBlock and a plain PyTorch grouped layer), the GEMM peak, the
// demo model's training step (ours through the Node binding vs Qwen3MoeForCausalLM + AdamW), the
// cost of global over micro balance, scaling with T and E, and data: preparing 200 MB of text
// against Hugging Face tokenizers, and peak memory of training on a 1 GB dataset (benches/data.ts),
// loading a 1.1 GB sharded transformers checkpoint against from_pretrained (benches/load.ts), and
// the ~100 M-parameter model at 1,024 tokens against transformers, with scaling in S and E
// (benches/scale.ts). Peers come from .venv (scripts/install-peers.sh); without them the table says
// "peer unavailable".
// `npm run bench -- --write` also rewrites BENCHMARKS.md.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { MoeModel } from '../index.js';
import { Balancer, LocalGroup } from '../src/balance/index.js';
import { DEMO_MODEL } from '../src/presets.js';
import { rng } from '../src/rng.js';
import { dataBench, dataRows } from './data.js';
import { loadBench, loadRows } from './load.js';
import { scaleBench, scaleCharts, scaleRows } from './scale.js';

const THREADS = Number(process.env.BENCH_THREADS ?? 2);
const BATCH = 8;
const SEQ = 128;
const env = { ...process.env, MOE_NUM_THREADS: String(THREADS), THREADS: String(THREADS), OMP_NUM_THREADS: String(THREADS), MKL_NUM_THREADS: String(THREADS) };
type Row = Record<string, number | string>;
const jsonLines = (text: string): Row[] => text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));

// ---- ours: the Rust layer benchmark ------------------------------------------------------------
console.error('running the Rust layer benchmark ...');
const rust = jsonLines(execFileSync('cargo', ['bench', '-q', '-p', 'moe-core', '--bench', 'moe_layer'], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }));
const peak = rust.find((r) => r.kind === 'gemm')!.gflops as number;

// ---- ours: training step of the demo model through the binding --------------------------------
/** A training step with R virtual ranks x A micro-steps of BATCH/(R*A) sequences each: call it
 * to run one step; it returns the step's wall time (s). */
function trainer(scope: 'micro' | 'global', R: number, A: number): () => Promise<number> {
  const b = BATCH / (R * A);
  const L = DEMO_MODEL.num_hidden_layers;
  const E = DEMO_MODEL.num_experts;
  const models = Array.from({ length: R }, () => new MoeModel(DEMO_MODEL, { device: 'cpu' }));
  const grads = models.map((m) => new Float32Array(m.numParameters));
  const r = rng(0);
  const tokens = Array.from({ length: R * A }, () => Uint32Array.from({ length: b * SEQ }, () => Math.floor(r() * 256)));
  return async () => {
    const group = new LocalGroup(R);
    const t0 = performance.now();
    await Promise.all(
      models.map(async (m, rank) => {
        const bal = new Balancer({ terms: [{ scope, coef: 0.05 }], zLoss: 1e-3 }, { layers: L, experts: E, topK: DEMO_MODEL.num_experts_per_tok, seqsPerMicro: b, accumSteps: A }, group.comm(rank));
        await bal.beginStep(A * b * (SEQ - 1));
        for (let a = 0; a < A; a++) {
          const out = await m.forward(tokens[a * R + rank], b);
          const { pressure, zScale } = await bal.microStep(out);
          await m.backward(pressure, { lmScale: 1 / bal.globalTokens, zScale });
        }
        await bal.endStep();
        if (R > 1) {
          const g = m.getGrads(grads[rank]);
          await group.comm(rank).allReduceSum(g);
          m.setGrads(g);
        }
        await m.step({ lr: 1e-3, weightDecay: 0.1, maxGradNorm: 1 });
        m.zeroGrad();
      }),
    );
    return (performance.now() - t0) / 1000;
  };
}

/** Median step times (s) of several trainers, their steps interleaved (ABAB...) so that drifts in
 * the machine's speed (shared 2-core machines drift by 10-20%) hit all of them alike; 2 warm-ups. */
async function medianSteps(trainers: (() => Promise<number>)[], steps: number): Promise<number[]> {
  const times = trainers.map(() => [] as number[]);
  for (let step = 0; step < steps + 2; step++) {
    for (const [i, run] of trainers.entries()) {
      const t = await run();
      if (step >= 2) times[i].push(t);
    }
  }
  return times.map((t) => t.sort((a, b) => a - b)[t.length >> 1]);
}
console.error('running the training-step benchmark ...');
const [ours1] = await medianSteps([trainer('global', 1, 1)], 20);
const [oursMicro, oursGlobal] = await medianSteps([trainer('micro', 2, 2), trainer('global', 2, 2)], 30);
const [oursMicro1, oursGlobal1] = await medianSteps([trainer('micro', 1, 8), trainer('global', 1, 8)], 30);

// ---- ours: communication per step over MPI (2 local processes) ---------------------------------
let mpiComm: Row | undefined;
let mpiStepMs = NaN;
const mpiEnv = { ...env, OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1', OMPI_MCA_rmaps_base_oversubscribe: '1', MOE_NUM_THREADS: String(Math.max(1, THREADS / 2)) };
if (spawnSync('mpirun', ['--version']).status === 0 && existsSync('mpi/moe-trainer-mpi.linux-x64-gnu.node')) {
  console.error('running the MPI communication benchmark ...');
  const r = spawnSync('mpirun', ['-np', '2', process.execPath, '--import', 'tsx', 'benches/mpi-comm.ts'], { env: mpiEnv, encoding: 'utf8' });
  mpiComm = jsonLines(r.stdout).find((x) => x.kind === 'mpi-comm');
  const dir = `${os.tmpdir()}/moe-bench-mpi-${process.pid}`;
  const t = spawnSync('mpirun', ['-np', '2', process.execPath, 'dist/cli.js', 'train', '--comm', 'mpi', '--no-progress', '--out', dir, '--steps', '12', '--set', 'data.tokenizer={"kind":"byte"}', '--set', 'train.evalTokens=128'], { env: mpiEnv, encoding: 'utf8' });
  if (t.status === 0) {
    const { readFileSync, rmSync } = await import('node:fs');
    const ms = readFileSync(`${dir}/metrics.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.kind === 'step').slice(2).map((r) => r.stepMs as number).sort((a, b) => a - b);
    mpiStepMs = ms[ms.length >> 1];
    rmSync(dir, { recursive: true });
  }
}

// ---- data: preparing 200 MB, and memory on a 1 GB dataset ---------------------------------------
console.error('running the data benchmark ...');
const data = await dataBench(env, THREADS);

// ---- checkpoints: loading 1.1 GB written by transformers ----------------------------------------
console.error('running the checkpoint loading benchmark ...');
const load = loadBench(env);

// ---- scale: the ~100 M model at S = 1,024, and scaling in S and E -------------------------------
console.error('running the scale benchmark (the ~100 M model) ...');
const scale = scaleBench(env);

// ---- peers --------------------------------------------------------------------------------------
const py = '.venv/bin/python';
let peers: Row[] = [];
let peerNote = 'peer unavailable (run scripts/install-peers.sh)';
if (existsSync(py)) {
  console.error('running the PyTorch peers ...');
  const r = spawnSync(py, ['benches/peers.py'], { env: { ...env, DEMO_MODEL: JSON.stringify(DEMO_MODEL), BATCH: String(BATCH), SEQ: String(SEQ) }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status === 0) {
    peers = jsonLines(r.stdout);
    const info = peers.find((p) => p.kind === 'peer-info')!;
    peerNote = `torch ${info.torch}, transformers ${info.transformers}, ${info.threads} threads`;
  } else peerNote = `peer unavailable (benches/peers.py exited with ${r.status})`;
}

// ---- the table ----------------------------------------------------------------------------------
const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const lines: string[] = [];
const row = (cells: string[]) => lines.push(`| ${cells.join(' | ')} |`);
row(['measurement', 'ours', 'peer', 'peer time', 'speed-up (peer / ours)', 'our GFLOP/s', '% of GEMM peak']);
row(['---', '---:', '---', '---:', '---:', '---:', '---:']);
const torchGemm = peers.find((p) => p.kind === 'gemm');
row([`GEMM 2048³ (practical peak)`, `${fmt(peak)} GFLOP/s`, 'torch matmul', torchGemm ? `${fmt(torchGemm.gflops as number)} GFLOP/s` : peerNote, '-', fmt(peak), '100']);
for (const group of ['main', 'fine']) {
  const o = rust.find((r) => r.kind === 'layer' && r.group === group)!;
  const ours = (o.forward as number) + (o.backward as number);
  const rate = (o.gflop as number) / ours;
  const label = `MoE layer fwd+bwd T=${o.T} d=${o.d} F=${o.F} E=${o.E} K=${o.K}`;
  for (const impl of ['hf-eager', 'torch-grouped']) {
    const p = peers.find((x) => x.kind === 'layer' && x.group === group && x.impl === impl);
    const pt = p ? (p.forward as number) + (p.backward as number) : NaN;
    row([label, `${fmt(ours * 1e3)} ms`, impl === 'hf-eager' ? 'Qwen3MoeSparseMoeBlock (eager)' : 'PyTorch grouped (sorted, per-expert matmul)', p ? `${fmt(pt * 1e3)} ms` : peerNote, p ? `${fmt(pt / ours, 2)}x` : '-', fmt(rate), fmt((100 * rate) / peak, 0)]);
  }
}
const sl = rust.find((r) => r.kind === 'layer' && r.group === 'scale')!;
const slRate = (sl.gflop as number) / ((sl.forward as number) + (sl.backward as number));
row([`MoE layer of the ~100 M model fwd+bwd T=${sl.T} d=${sl.d} F=${sl.F} E=${sl.E} K=${sl.K}`, `${fmt(((sl.forward as number) + (sl.backward as number)) * 1e3)} ms`, '-', '-', '-', fmt(slRate), fmt((100 * slRate) / peak, 0)]);
const shapes = rust.filter((r) => r.kind === 'gemm-shape');
row([`GEMMs of the ~100 M model at T=1,024 (M x K x N)`, shapes.map((r) => `${r.name} ${r.M}x${r.K}x${r.N}: ${fmt(r.gflops as number)} GFLOP/s`).join('; '), '-', '-', '-', shapes.map((r) => fmt(r.gflops as number)).join(', '), shapes.map((r) => fmt((100 * (r.gflops as number)) / peak, 0)).join(', ')]);
const hfStep = peers.find((p) => p.kind === 'train-step');
const tokensStep = BATCH * SEQ;
row([`training step, demo model, ${BATCH}x${SEQ} tokens (R=1, A=1)`, `${fmt(ours1 * 1e3)} ms = ${fmt(tokensStep / ours1, 0)} tok/s`, 'Qwen3MoeForCausalLM (eager) + torch AdamW', hfStep ? `${fmt((hfStep.seconds as number) * 1e3)} ms = ${fmt(tokensStep / (hfStep.seconds as number), 0)} tok/s` : peerNote, hfStep ? `${fmt((hfStep.seconds as number) / ours1, 2)}x` : '-', '-', '-']);
row([`global vs micro balance, R=1 x A=8 micro-steps of 1 sequence, same tokens (interleaved)`, `${fmt(oursGlobal1 * 1e3)} ms vs ${fmt(oursMicro1 * 1e3)} ms`, '-', '-', `overhead ${fmt((100 * (oursGlobal1 - oursMicro1)) / oursMicro1, 1)}%`, '-', '-']);
row([`global vs micro balance, R=2 virtual ranks x A=2, same tokens (interleaved)`, `${fmt(oursGlobal * 1e3)} ms vs ${fmt(oursMicro * 1e3)} ms`, '-', '-', `overhead ${fmt((100 * (oursGlobal - oursMicro)) / oursMicro, 1)}%`, '-', '-']);
row([
  'MPI: communication per training step, 2 local processes (demo model, A=2, global)',
  mpiComm ? `${fmt(mpiComm.ms as number)} ms of a ${fmt(mpiStepMs)} ms step (${fmt((100 * (mpiComm.ms as number)) / mpiStepMs, 1)}%)` : 'MPI unavailable (Open MPI + npm run build:mpi)',
  '-', '-', '-', '-', '-',
]);
for (const cells of dataRows(data, fmt)) row(cells);
for (const cells of loadRows(load, fmt)) row(cells);
for (const cells of scaleRows(scale, fmt)) row(cells);
for (const group of ['tokens', 'experts']) {
  const rs = rust.filter((r) => r.kind === 'layer' && (r.group === group || r.group === 'main')).sort((a, b) => (group === 'tokens' ? (a.T as number) - (b.T as number) : (a.E as number) - (b.E as number)));
  row([
    group === 'tokens' ? 'layer fwd+bwd vs tokens T (E=16, K=4)' : 'layer fwd+bwd vs experts E at K=4 (T=4096)',
    rs.map((r) => `${group === 'tokens' ? `T=${r.T}` : `E=${r.E}`}: ${fmt(((r.forward as number) + (r.backward as number)) * 1e3)} ms`).join(', '),
    '-', '-', '-', rs.map((r) => fmt((r.gflop as number) / ((r.forward as number) + (r.backward as number)), 0)).join(', '), '-',
  ]);
}
// What a 2x lead over the eager block would take: the peer does the same useful FLOPs.
const headroom = ['main', 'fine'].flatMap((group) => {
  const o = rust.find((r) => r.kind === 'layer' && r.group === group)!;
  const p = peers.find((x) => x.kind === 'layer' && x.group === group && x.impl === 'hf-eager');
  if (!p) return [];
  const rate = (o.gflop as number) / ((p.forward as number) + (p.backward as number));
  return [`E=${o.E} K=${o.K}: the eager block runs at ${fmt(rate)} GFLOP/s (${fmt((100 * rate) / peak, 0)}% of the GEMM peak), so 2x its speed needs ${fmt((200 * rate) / peak, 0)}% of the peak`];
});
// Whether the CPU could multiply bf16 natively (our bf16 setting computes in f32 either way).
const flags = existsSync('/proc/cpuinfo') ? (/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim().split(/\s+/) ?? []) : [];
const bf16Hw = ['avx512_bf16', 'amx_bf16'].filter((f) => flags.includes(f));
const machine = `${os.cpus()[0]?.model} x${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, bf16 instructions: ${bf16Hw.length ? bf16Hw.join(', ') : 'none (no avx512_bf16, no amx_bf16)'}, ${THREADS} threads for everyone; peers: ${peerNote}`;
const table = lines.join('\n');
console.log(`\n${machine}\n\n${table}`);
if (headroom.length) console.log(`\n${headroom.join('\n')}`);
if (process.argv.includes('--write')) {
  // Everything from the NOTES marker on is written by hand (profiles, explanations) and kept.
  const NOTES = '<!-- notes: kept by npm run bench -- --write -->';
  const old = existsSync('BENCHMARKS.md') ? readFileSync('BENCHMARKS.md', 'utf8') : '';
  const notes = old.includes(NOTES) ? old.slice(old.indexOf(NOTES)) : `${NOTES}\n`;
  mkdirSync('docs/figures', { recursive: true });
  const charts = scaleCharts(scale);
  for (const c of charts) writeFileSync(`docs/figures/${c.file}`, c.svg);
  writeFileSync(
    'BENCHMARKS.md',
    `# Benchmarks\n\nMeasured by \`npm run bench -- --write\` (which rewrites this file up to the notes) on ${new Date().toISOString().slice(0, 10)}.\nMachine: ${machine}.\n` +
      `Peers are installed into \`.venv\` by \`bash scripts/install-peers.sh\`. Times are medians after a warm-up;\nGFLOP/s count only the useful FLOPs of the router and the K chosen experts (forward + backward = 3x forward).\n\n${table}\n\n` +
      headroom.map((h) => `- ${h}.\n`).join('') +
      `\nThe scale rows drawn (one sequence; \`docs/figures\`, rewritten with this file):\n\n` +
      charts.map((c) => `![${c.file}](docs/figures/${c.file})\n`).join('\n') +
      `\n${notes}`,
  );
  console.error('wrote BENCHMARKS.md');
}
