// The data part of `npm run bench` (also `node --import tsx benches/data.ts` alone): preparing a
// corpus of at least 200 MB with a byte-level BPE against Hugging Face `tokenizers` from Python
// (`encode_batch`, the same tokenizer.json, the same threads), and the peak resident memory of a
// 200-step training run on a 1 GB prepared corpus against the embedded slice. The text is the full
// corpus of `moe corpus build` (built into the cache on first use), repeated with fresh ids.

import { spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export interface DataFigures {
  /** MB of text prepared */
  mb: number;
  /** seconds: ours (read + tokenise + write + checksums), theirs (encode_batch alone) */
  oursSeconds: number;
  peerSeconds: number;
  peerNote: string;
  /** peak resident memory (MB) of 200-step runs on the slice and on the 1 GB dataset */
  rssSliceMb: number;
  rssBigMb: number;
  bigMb: number;
}

const WORK = join(os.tmpdir(), 'moe-bench-data');
const cli = (args: string[], env: NodeJS.ProcessEnv) => spawnSync(process.execPath, ['dist/cli.js', ...args], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });

/** The full corpus's documents repeated until `mb` megabytes of text, as one JSONL file. */
async function repeated(corpus: string, mb: number, path: string): Promise<number> {
  const manifest = JSON.parse(readFileSync(join(corpus, 'MANIFEST.json'), 'utf8'));
  const docs: { domain: string; text: string }[] = [];
  for (const [domain, dm] of Object.entries<{ file: string }>(manifest.domains)) {
    for (const line of readFileSync(join(corpus, dm.file), 'utf8').split('\n').filter(Boolean)) docs.push({ domain, text: JSON.parse(line).text });
  }
  const out = createWriteStream(path);
  let bytes = 0;
  for (let copy = 0; bytes < mb * 1e6; copy++) {
    for (const [i, d] of docs.entries()) {
      const line = JSON.stringify({ id: `${copy}/${i}`, domain: d.domain, text: d.text }) + '\n';
      bytes += Buffer.byteLength(d.text);
      if (!out.write(line)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
  }
  await new Promise<void>((r) => out.end(() => r()));
  return bytes / 1e6;
}

/** Peak resident memory (MB) of `moe train` on a corpus, 200 steps of the demo model. */
function trainRss(corpus: string, env: NodeJS.ProcessEnv, out: string): number {
  const r = spawnSync('/usr/bin/time', ['-f', 'maxrss %M', process.execPath, 'dist/cli.js', 'train', '--corpus', corpus, '--steps', '200', '--no-progress', '--out', out,
    '--set', 'data.tokenizer={"kind":"byte"}', '--set', 'train.evalEvery=200', '--set', 'train.evalTokens=4096'], { env, encoding: 'utf8' });
  const m = /maxrss (\d+)/.exec(r.stderr);
  if (r.status !== 0 || !m) throw new Error(`moe train on ${corpus} failed: ${r.stderr.slice(-2000)}`);
  return Number(m[1]) / 1024;
}

export async function dataBench(env: NodeJS.ProcessEnv, threads: number): Promise<DataFigures> {
  mkdirSync(WORK, { recursive: true });
  const corpus = join(os.homedir(), '.cache', 'moe-trainer', 'corpus-full');
  if (!existsSync(join(corpus, 'MANIFEST.json'))) {
    console.error('building the full corpus (once) ...');
    if (cli(['corpus', 'build', '--out', corpus], env).status !== 0) throw new Error('moe corpus build failed');
  }
  // The BPE: 1,024 tokens trained on the full corpus once; then ≥ 200 MB tokenised with it.
  const bpe = join(WORK, 'bpe');
  if (!existsSync(join(bpe, 'tokenizer.json'))) cli(['data', 'prepare', corpus, '--tokenizer', 'bpe', '--vocab-size', '1024', '--out', bpe, '--force', '--no-progress'], env);
  const text = join(WORK, 'text-200mb.jsonl');
  const mb = await repeated(corpus, 205, text);
  console.error(`preparing ${mb.toFixed(0)} MB with the BPE ...`);
  const t0 = performance.now();
  const r = cli(['data', 'prepare', text, '--tokenizer', join(bpe, 'tokenizer.json'), '--out', join(WORK, 'ds-200mb'), '--force', '--no-progress'], env);
  const oursSeconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error('moe data prepare failed');
  rmSync(join(WORK, 'ds-200mb'), { recursive: true });
  let peerSeconds = NaN;
  let peerNote = 'peer unavailable (run scripts/install-peers.sh)';
  if (existsSync('.venv/bin/python')) {
    console.error('running HF tokenizers encode_batch on the same text ...');
    const p = spawnSync('.venv/bin/python', ['benches/peer_tokenizers.py', join(bpe, 'tokenizer.json'), text], { env: { ...env, RAYON_NUM_THREADS: String(threads), TOKENIZERS_PARALLELISM: 'true' }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    const row = p.stdout.split('\n').find((l) => l.startsWith('{'));
    if (p.status === 0 && row) {
      const j = JSON.parse(row);
      peerSeconds = j.seconds;
      peerNote = `Hugging Face tokenizers ${j.tokenizers} (Python encode_batch, ${threads} threads; encoding only, text already in memory)`;
    } else peerNote = `peer unavailable (benches/peer_tokenizers.py exited with ${p.status})`;
  }
  rmSync(text);
  // Peak memory: 200 steps on a 1 GB prepared dataset against the embedded slice (byte tokenizer
  // for both, so the model is the same).
  const big = join(WORK, 'text-1gb.jsonl');
  const bigMb = await repeated(corpus, 1024, big);
  console.error(`preparing ${bigMb.toFixed(0)} MB (byte tokenizer) and training on it ...`);
  const bigDs = join(WORK, 'ds-1gb');
  if (cli(['data', 'prepare', big, '--out', bigDs, '--force', '--no-progress'], env).status !== 0) throw new Error('preparing 1 GB failed');
  rmSync(big);
  const slice = join(WORK, 'ds-slice');
  cli(['data', 'prepare', 'data', '--out', slice, '--force', '--no-progress'], env);
  const rssSliceMb = trainRss(slice, env, join(WORK, 'run-slice'));
  const rssBigMb = trainRss(bigDs, env, join(WORK, 'run-1gb'));
  console.error(`dataset: ${(statSync(join(bigDs, 'manifest.json')).size / 1e3).toFixed(0)} kB manifest`);
  rmSync(WORK, { recursive: true, force: true });
  return { mb, oursSeconds, peerSeconds, peerNote, rssSliceMb, rssBigMb, bigMb };
}

/** The table rows of the data figures. */
export function dataRows(f: DataFigures, fmt: (x: number, d?: number) => string): string[][] {
  return [
    [`prepare ${fmt(f.mb, 0)} MB of text, BPE 1,024 (read, tokenise, write, sha256)`, `${fmt(f.oursSeconds)} s = ${fmt(f.mb / f.oursSeconds)} MB/s`, f.peerNote, Number.isFinite(f.peerSeconds) ? `${fmt(f.peerSeconds)} s = ${fmt(f.mb / f.peerSeconds)} MB/s` : '-', Number.isFinite(f.peerSeconds) ? `${fmt(f.peerSeconds / f.oursSeconds, 2)}x` : '-', '-', '-'],
    [`peak RSS, 200 training steps: ${fmt(f.bigMb, 0)} MB corpus vs the embedded slice`, `${fmt(f.rssBigMb, 0)} MB vs ${fmt(f.rssSliceMb, 0)} MB (+${fmt(f.rssBigMb - f.rssSliceMb, 0)} MB)`, '-', '-', '-', '-', '-'],
  ];
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const threads = Number(process.env.BENCH_THREADS ?? 2);
  const f = await dataBench({ ...process.env, MOE_NUM_THREADS: String(threads) }, threads);
  console.log(JSON.stringify(f));
}
