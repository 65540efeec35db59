// The scale part of `npm run bench` (also `node --import tsx benches/scale.ts` alone): the training
// step of the ~100 M-parameter model of configs/qwen3-moe-100m.json on one sequence of 1,024 tokens
// — ours with each activation-recomputation setting against transformers' Qwen3MoeForCausalLM +
// torch.optim.AdamW, eager and torch.compile'd; both with bf16 GEMM inputs (ours
// `precision: "bf16"`, theirs torch.autocast on the CPU) — then ours against the sequence length
// (256 ... 4,096) and against the number of experts (8 ... 256 at the same K and F: the same
// active parameters), also drawn as two figures (`scaleCharts`). Each figure is its own process (benches/scale-step.ts, benches/peer_scale.py) under
// /usr/bin/time: median step time of 3 after warm-up, and peak resident memory.

import { existsSync, readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import type { ModelConfig } from '../index.js';
import { lineChartSvg, standaloneSvg, type Series } from '../src/report/chart.js';
import { measured } from './load.js';

const PY = '.venv/bin/python';
const SEQ = 1024;

/** The model section of configs/qwen3-moe-100m.json with its BPE vocabulary, untied. */
export function scaleModel(): ModelConfig {
  const cfg = JSON.parse(readFileSync('configs/qwen3-moe-100m.json', 'utf8'));
  return { ...cfg.model, vocab_size: cfg.data.tokenizer.vocabSize, tie_word_embeddings: false };
}

export interface Step {
  seconds: number;
  rssMb: number;
  params: number;
}

export interface ScaleFigures {
  model: ModelConfig;
  ours: Record<'none' | 'attention' | 'full', Step>;
  /** ours with bf16 GEMM inputs, recompute none */
  oursBf16: Step;
  /** null without the peers, or when torch.compile fails on this machine (the reason) */
  eager: Step | null;
  compiled: Step | string | null;
  /** eager under torch.autocast(cpu, bfloat16) */
  eagerBf16: Step | null;
  bySeq: { s: number; none: Step | string; full: Step }[];
  byExperts: { e: number; full: Step }[];
}

function ours(env: NodeJS.ProcessEnv, model: ModelConfig, seq: number, recompute: string, precision = 'f32'): Step {
  const r = measured(process.execPath, ['--import', 'tsx', 'benches/scale-step.ts'], { ...env, MODEL: JSON.stringify(model), SEQ: String(seq), RECOMPUTE: recompute, PRECISION: precision, STEPS: '3' });
  return { seconds: r.out.seconds, rssMb: r.rssMb, params: r.out.params };
}

function peer(env: NodeJS.ProcessEnv, model: ModelConfig, impl: string): Step {
  const r = measured(PY, ['benches/peer_scale.py'], { ...env, MODEL: JSON.stringify(model), SEQ: String(SEQ), IMPL: impl, STEPS: '3' });
  return { seconds: r.out.seconds, rssMb: r.rssMb, params: r.out.params };
}

export function scaleBench(env: NodeJS.ProcessEnv): ScaleFigures {
  const model = scaleModel();
  const figures: ScaleFigures = {
    model,
    ours: { none: ours(env, model, SEQ, 'none'), attention: ours(env, model, SEQ, 'attention'), full: ours(env, model, SEQ, 'full') },
    oursBf16: ours(env, model, SEQ, 'none', 'bf16'),
    eager: null,
    compiled: null,
    eagerBf16: null,
    bySeq: [],
    byExperts: [],
  };
  if (existsSync(PY)) {
    figures.eager = peer(env, model, 'eager');
    if (figures.eager.params !== figures.ours.none.params) throw new Error(`parameter counts differ: ours ${figures.ours.none.params}, transformers ${figures.eager.params}`);
    try {
      figures.compiled = peer(env, model, 'compile');
    } catch (e) {
      figures.compiled = `torch.compile failed here: ${String((e as Error).message).split('\n').filter((l) => /Error/.test(l)).pop() ?? 'see stderr'}`;
    }
    figures.eagerBf16 = peer(env, model, 'eager-bf16');
  }
  for (const s of [256, 512, 1024, 2048, 4096]) {
    let none: Step | string;
    try {
      none = ours(env, model, s, 'none');
    } catch (e) {
      none = /OUT_OF_MEMORY/.test(String(e)) ? 'out of memory' : String(e);
    }
    figures.bySeq.push({ s, none, full: ours(env, model, s, 'full') });
  }
  for (const e of [8, 16, 32, 64, 128, 256]) figures.byExperts.push({ e, full: ours(env, { ...model, num_experts: e }, SEQ, 'full') });
  return figures;
}

export function scaleRows(f: ScaleFigures, fmt: (x: number, d?: number) => string): string[][] {
  const m = f.model;
  const tps = (st: Step, tokens = SEQ) => `${fmt(tokens / st.seconds, 0)} tok/s`;
  const step = (st: Step, tokens = SEQ) => `${fmt(st.seconds, 2)} s = ${tps(st, tokens)}, peak RSS ${fmt(st.rssMb, 0)} MB`;
  const shape = `${fmt(f.ours.none.params / 1e6, 0)} M params (${m.num_hidden_layers} layers, hidden ${m.hidden_size}, ${m.num_experts} experts of ${m.moe_intermediate_size}, top-${m.num_experts_per_tok}, vocab ${m.vocab_size})`;
  const rows: string[][] = [];
  for (const r of ['none', 'attention', 'full'] as const) {
    const o = f.ours[r];
    const e = f.eager;
    rows.push([
      `training step, ${shape}, 1 x ${SEQ} tokens, recompute ${r}`,
      step(o),
      'Qwen3MoeForCausalLM (eager) + torch AdamW',
      e ? step(e) : 'peer unavailable (scripts/install-peers.sh)',
      e ? `${fmt(e.seconds / o.seconds, 2)}x` : '-', '-', '-',
    ]);
  }
  const c = f.compiled;
  if (c !== null) {
    rows.push([
      `training step, the same model, against torch.compile`, step(f.ours.none), 'torch.compile(Qwen3MoeForCausalLM) + torch AdamW',
      typeof c === 'string' ? c : step(c), typeof c === 'string' ? '-' : `${fmt(c.seconds / f.ours.none.seconds, 2)}x`, '-', '-',
    ]);
  }
  const b = f.eagerBf16;
  rows.push([
    `training step, the same model, bf16 GEMM inputs (f32 weights and AdamW), recompute none; ours: ${fmt(f.oursBf16.seconds / f.ours.none.seconds, 2)}x the f32 step`,
    step(f.oursBf16), 'the eager peer under torch.autocast(cpu, bfloat16) + torch AdamW',
    b ? step(b) : 'peer unavailable (scripts/install-peers.sh)', b ? `${fmt(b.seconds / f.oursBf16.seconds, 2)}x (ours rounds to bf16 and multiplies in f32: see the notes)` : '-', '-', '-',
  ]);
  rows.push([
    `the same model against sequence length S (1 sequence): step time, peak RSS; recompute full [none]`,
    f.bySeq.map(({ s, none, full }) => `S=${s}: ${fmt(full.seconds, 2)} s, ${fmt(full.rssMb, 0)} MB [${typeof none === 'string' ? none : `${fmt(none.seconds, 2)} s, ${fmt(none.rssMb, 0)} MB`}]`).join('; '),
    '-', '-', '-', '-', '-',
  ]);
  rows.push([
    `the same model against experts E at top-${m.num_experts_per_tok} of ${m.moe_intermediate_size} (same active parameters), S=${SEQ}, recompute full`,
    f.byExperts.map(({ e, full }) => `E=${e} (${fmt(full.params / 1e6, 0)} M): ${fmt(full.seconds, 2)} s, ${fmt(full.rssMb, 0)} MB`).join('; '),
    '-', '-', '-', '-', '-',
  ]);
  return rows;
}

/** Step time and peak memory against S (log scale; recompute full and none) and against E
 * (recompute full): two SVG files of two charts each, for docs/figures. */
export function scaleCharts(f: ScaleFigures): { file: string; svg: string }[] {
  const pow2 = (xs: number[]) => xs.map((x) => ({ value: Math.log2(x), label: String(x) }));
  const at = <T>(rows: T[], x: (r: T) => number, y: (r: T) => number): [number, number][] => rows.map((r) => [Math.log2(x(r)), y(r)]);
  const step = (s: Step | string, get: (st: Step) => number) => (typeof s === 'string' ? NaN : get(s));
  const seconds = (st: Step) => st.seconds;
  const gib = (st: Step) => st.rssMb / 1024;
  const bySeq = (get: (st: Step) => number): Series[] => [
    { name: 'recompute full', colour: '#0072b2', markers: true, points: at(f.bySeq, (r) => r.s, (r) => get(r.full)) },
    { name: 'recompute none', colour: '#d55e00', markers: true, dashed: true, points: at(f.bySeq, (r) => r.s, (r) => step(r.none, get)) },
  ];
  const byE = (get: (st: Step) => number): Series[] => [{ name: 'recompute full', colour: '#0072b2', markers: true, points: at(f.byExperts, (r) => r.e, (r) => get(r.full)) }];
  const title = (what: string) => [what, 'the model of configs/qwen3-moe-100m.json (~100 M parameters at E = 32), one sequence, 2 threads'];
  const seqTicks = pow2(f.bySeq.map((r) => r.s));
  const eTicks = pow2(f.byExperts.map((r) => r.e));
  return [
    {
      file: 'scaling-seq.svg',
      svg: standaloneSvg(title('Step time and peak memory against the sequence length S'), [
        lineChartSvg({ testId: 'seq-time', xLabel: 'sequence length S (1 sequence)', yLabel: 'step time (s)', series: bySeq(seconds), xTicks: seqTicks, width: 420, height: 280, yFromZero: true }),
        lineChartSvg({ testId: 'seq-memory', xLabel: 'sequence length S (1 sequence)', yLabel: 'peak resident memory (GiB)', series: bySeq(gib), xTicks: seqTicks, width: 420, height: 280, yFromZero: true }),
      ]),
    },
    {
      file: 'scaling-experts.svg',
      svg: standaloneSvg(title(`Step time and peak memory against the number of experts E (top-${f.model.num_experts_per_tok} of ${f.model.moe_intermediate_size}: same active parameters)`), [
        lineChartSvg({ testId: 'experts-time', xLabel: `experts E (top-${f.model.num_experts_per_tok}, S = ${SEQ})`, yLabel: 'step time (s)', series: byE(seconds), xTicks: eTicks, width: 420, height: 280, yFromZero: true }),
        lineChartSvg({ testId: 'experts-memory', xLabel: `experts E (top-${f.model.num_experts_per_tok}, S = ${SEQ})`, yLabel: 'peak resident memory (GiB)', series: byE(gib), xTicks: eTicks, width: 420, height: 280, yFromZero: true }),
      ]),
    },
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const threads = process.env.BENCH_THREADS ?? '2';
  const env = { ...process.env, MOE_NUM_THREADS: threads, THREADS: threads, OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
  const f = scaleBench(env);
  console.log(JSON.stringify(f));
  for (const r of scaleRows(f, (x, d = 1) => x.toFixed(d))) console.log(r.join(' | '));
}
