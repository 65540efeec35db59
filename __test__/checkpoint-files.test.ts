// Faults 1 and 3 of the reliability review, besides kills: a reader loading a checkpoint while
// another process saves over it, a save that fails part-way (a full disk), `save('')`, and flipped
// bytes inside tensor data. Also the run folder's checkpoints: rotation (keepLast), each one
// self-contained (config, weights, optimiser, tokenizer, checksums).

import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MoeModel, type ModelConfig } from '../index.js';
import { listCheckpoints } from '../src/trainer/runfolder.js';
import { train } from '../src/trainer/train.js';

const CFG: ModelConfig = {
  vocab_size: 64, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 8, moe_intermediate_size: 32, num_experts: 4, num_experts_per_tok: 2, max_position_embeddings: 64, seed: 1,
};

test('a reader loading while another process saves over the same folder always gets one whole save', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'moe-race-')), 'ckpt');
  await new MoeModel(CFG).save(dir, '{"saver":-1}');
  // The saver: another process writing 200 saves of different models into the same folder.
  const script = `
    import { MoeModel } from './index.js';
    for (let i = 0; i < 200; i++) await new MoeModel({ ...${JSON.stringify(CFG)}, seed: i }).save(${JSON.stringify(dir)}, JSON.stringify({ saver: i }));
  `;
  const saver = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  saver.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => saver.on('exit', r));
  let running = true;
  exited.then(() => (running = false));
  let loads = 0;
  const failures: string[] = [];
  const seen = new Set<string>();
  while (running || loads < 20) {
    try {
      const m = await MoeModel.fromCheckpoint(dir);
      // Whole: the parameters are exactly the ones of the save the trainer state names.
      const saver = JSON.parse(m.trainerState!).saver as number;
      seen.add(String(saver));
      if (saver >= 0) {
        const want = new MoeModel({ ...CFG, seed: saver });
        if (!Buffer.from(want.getParams().buffer).equals(Buffer.from(m.getParams().buffer))) failures.push(`load ${loads}: parameters of another save than ${saver}`);
        want.dispose();
      }
      m.dispose();
    } catch (e) {
      failures.push(`load ${loads}: ${(e as Error & { code?: string }).code} ${(e as Error).message}`);
    }
    loads++;
  }
  t.is(await exited, 0, stderr);
  t.log(`${loads} loads during 200 saves, ${seen.size} different saves seen, ${failures.length} failures`);
  t.deepEqual(failures, []);
  t.true(seen.size > 5, 'the loads overlapped the saves');
  t.deepEqual(readdirSync(join(dir, '..')), ['ckpt'], 'no temporary folder stays');
  rmSync(join(dir, '..'), { recursive: true });
});

test('a save that fails part-way (a full disk) keeps the previous checkpoint and leaves nothing behind; save("") is refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-enospc-'));
  const script = `
    import { MoeModel } from './index.js';
    const m = new MoeModel(${JSON.stringify(CFG)});
    await m.save(${JSON.stringify(join(dir, 'ckpt'))}, '{"n":1}');
    try { await m.save(${JSON.stringify(join(dir, 'ckpt'))}, '{"n":2}'); } catch (e) { console.log(e.code); }
    try { await m.save(''); } catch (e) { console.log(e.code); }
    console.log((await MoeModel.fromCheckpoint(${JSON.stringify(join(dir, 'ckpt'))})).trainerState);
  `;
  // The failpoint fails the 5th file written (the second save's second file) as ENOSPC would.
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, MOE_FAILPOINTS: 'checkpoint.file=4*off->return' } });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split('\n'), ['IO_ERROR', 'INVALID_ARGUMENT', '{"n":1}']);
  t.deepEqual(readdirSync(dir), ['ckpt'], 'the temporary folder was removed');
  t.false(existsSync('model.safetensors'), 'nothing was written into the working directory');
  rmSync(dir, { recursive: true });
});

test('a flipped byte inside tensor data fails with CHECKPOINT_CORRUPT naming the file (fault 3)', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'moe-flip-')), 'ckpt');
  const m = new MoeModel(CFG);
  await m.save(dir, '{}', { 'tokenizer.json': '{"model":{}}' });
  const manifest = JSON.parse(readFileSync(join(dir, 'moe_checkpoint.json'), 'utf8'));
  t.deepEqual(Object.keys(manifest.files).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'training_state.safetensors']);
  const path = join(dir, 'model.safetensors');
  const good = readFileSync(path);
  const bad = Buffer.from(good);
  bad[bad.length - 1000] ^= 0x7f; // an exponent byte of a weight deep inside the data
  writeFileSync(path, bad);
  const live = new MoeModel({ ...CFG, seed: 2 });
  const before = live.getParams();
  const e = await t.throwsAsync(MoeModel.fromCheckpoint(dir), { code: 'CHECKPOINT_CORRUPT' });
  t.regex(e!.message, /model\.safetensors: its sha256 differs from the manifest's/);
  await t.throwsAsync(live.loadCheckpoint(dir), { code: 'CHECKPOINT_CORRUPT' });
  t.deepEqual(live.getParams(), before, 'the live model is untouched');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'sample', dir], { encoding: 'utf8' });
  t.is(r.status, 2);
  t.regex(r.stderr, /^moe: error \[CHECKPOINT_CORRUPT\]: .*model\.safetensors/);
  writeFileSync(path, good);
  await t.notThrowsAsync(MoeModel.fromCheckpoint(dir));
  rmSync(join(dir, '..'), { recursive: true });
});

test('a run keeps its latest checkpoints, each self-contained', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-rotate-'));
  const cfg = {
    model: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, moe_intermediate_size: 16, num_experts: 4, num_experts_per_tok: 2 },
    data: { seqLen: 16, tokenizer: { kind: 'byte' } },
    batch: { ranks: 1, accumSteps: 1, microBatch: 2 },
    train: { steps: 6, evalEvery: 100, evalTokens: 64, checkpointEvery: 1, keepLast: 3, progress: false },
  };
  const r = await train(cfg, { outDir: dir });
  t.deepEqual(listCheckpoints(dir).map((c) => c.step), [4, 5, 6]);
  t.is(r.checkpoint, join(dir, 'checkpoints', 'step-00000006'));
  for (const c of listCheckpoints(dir)) {
    t.deepEqual(readdirSync(c.dir).sort(), ['config.json', 'model.safetensors', 'moe_checkpoint.json', 'tokenizer.json', 'tokenizer_config.json', 'training_state.safetensors']);
    const m = await MoeModel.fromCheckpoint(c.dir);
    t.is(m.optimizerStep, c.step);
    m.dispose();
  }
  t.deepEqual(readdirSync(join(dir, 'checkpoints')).filter((n) => n.startsWith('.')), [], 'no temporary or retired folder stays');
  rmSync(dir, { recursive: true });
});
