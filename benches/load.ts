// The checkpoint part of `npm run bench` (also `node --import tsx benches/load.ts` alone): loading a
// Qwen3-MoE of about 1.1 GB in f32 written by transformers' save_pretrained (index + shards, random
// init; benches/peer_load.py makes it once into the OS temp folder), by `MoeModel.fromCheckpoint`
// against `AutoModelForCausalLM.from_pretrained` in the same run: seconds and peak resident memory
// of a process that only loads, against the parameters' own size.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export interface LoadFigures {
  /** parameters and their size in f32 (MB) */
  params: number;
  mb: number;
  oursSeconds: number;
  oursRssMb: number;
  /** NaN without the peers */
  peerSeconds: number;
  peerRssMb: number;
}

const DIR = join(os.tmpdir(), 'moe-bench-hf-1gb');
const PY = '.venv/bin/python';

/** Runs a command under /usr/bin/time: its JSON line on stdout and its peak RSS (MB). */
export function measured(cmd: string, args: string[], env: NodeJS.ProcessEnv): { out: Record<string, number>; rssMb: number } {
  const r = spawnSync('/usr/bin/time', ['-f', 'maxrss %M', cmd, ...args], { env, encoding: 'utf8' });
  const m = /maxrss (\d+)/.exec(r.stderr);
  if (r.status !== 0 || !m) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.slice(-2000)}`);
  return { out: JSON.parse(r.stdout.trim().split('\n').pop()!), rssMb: Number(m[1]) / 1024 };
}

const OURS = `
const { MoeModel } = await import(${JSON.stringify(pathToFileURL(join(process.cwd(), 'index.js')).href)});
const t = performance.now();
const m = await MoeModel.fromCheckpoint(process.argv[1], { device: 'cpu' });
console.log(JSON.stringify({ seconds: (performance.now() - t) / 1000, params: m.numParameters }));`;

export function loadBench(env: NodeJS.ProcessEnv): LoadFigures | null {
  if (!existsSync(PY)) return null;
  if (!existsSync(join(DIR, 'config.json'))) {
    console.error(`writing a 1.1 GB transformers checkpoint into ${DIR} ...`);
    const r = spawnSync(PY, ['benches/peer_load.py', 'make', DIR], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    if (r.status !== 0) throw new Error('benches/peer_load.py make failed');
  }
  // Each side twice; the second (warm page cache for both) is kept.
  let ours = measured(process.execPath, ['--input-type=module', '-e', OURS, DIR], env);
  ours = measured(process.execPath, ['--input-type=module', '-e', OURS, DIR], env);
  let peer = measured(PY, ['benches/peer_load.py', 'load', DIR], env);
  peer = measured(PY, ['benches/peer_load.py', 'load', DIR], env);
  if (ours.out.params !== peer.out.params) throw new Error(`parameter counts differ: ours ${ours.out.params}, transformers ${peer.out.params}`);
  return { params: ours.out.params, mb: (ours.out.params * 4) / 1e6, oursSeconds: ours.out.seconds, oursRssMb: ours.rssMb, peerSeconds: peer.out.seconds, peerRssMb: peer.rssMb };
}

export function loadRows(f: LoadFigures | null, fmt: (x: number, d?: number) => string): string[][] {
  if (!f) return [['load a 1.1 GB transformers checkpoint (sharded)', 'peer unavailable (scripts/install-peers.sh)', '-', '-', '-', '-', '-']];
  return [
    [`load a transformers checkpoint: ${fmt(f.params / 1e6, 0)} M params = ${fmt(f.mb, 0)} MB f32, 5 shards`, `${fmt(f.oursSeconds, 2)} s, peak RSS ${fmt(f.oursRssMb, 0)} MB`, 'AutoModelForCausalLM.from_pretrained', `${fmt(f.peerSeconds, 2)} s, peak RSS ${fmt(f.peerRssMb, 0)} MB`, `${fmt(f.peerSeconds / f.oursSeconds, 2)}x`, '-', '-'],
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify(loadBench({ ...process.env, MOE_NUM_THREADS: process.env.BENCH_THREADS ?? '2' })));
}
