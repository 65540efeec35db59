// Faults 6, 7 and 8 of the reliability review: silent coercion (2.5 sequences, 2^32 + 1 wrapped
// to 1, BigInt sizes and learning rates, an option typo ignored), refusals without a documented
// code (NaN in a config, wrong types, a missing argument), option errors thrown synchronously by
// async methods, and a balancer that took NaN or negative statistics. Every case now fails with a
// documented code naming the argument, async methods reject, and the model is left as it was.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { Dataset, DatasetPrep, MoeLayer, MoeModel, Tokenizer, lrAt, validTokens, type ModelConfig } from '../index.js';
import { Balancer, LocalGroup, SOLO, type MicroStats } from '../src/balance/index.js';
import { NATIVE_ERROR_CODES, TS_ERROR_CODES } from '../src/errors.js';

const CFG: ModelConfig = {
  vocab_size: 32, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
  head_dim: 4, moe_intermediate_size: 12, num_experts: 4, num_experts_per_tok: 2, max_position_embeddings: 64, seed: 1,
};
const TOKENS = Uint32Array.from({ length: 2 * 8 }, (_, i) => i % 32);
const bad = <T>(x: unknown) => x as T;

test('sizes must be integers in range: no truncation, no wrapping, no BigInt', async (t) => {
  const m = new MoeModel(CFG);
  const before = m.getParams();
  for (const [n, re] of [[2.5, /numSequences must be an integer in \[1, 4294967295\], got 2.5/], [2 ** 32 + 1, /got 4294967297/], [0, /got 0/], [NaN, /got NaN/]] as const) {
    const e = await t.throwsAsync(m.forward(TOKENS, n), { code: 'INVALID_ARGUMENT' });
    t.regex(e!.message, re);
  }
  await t.throwsAsync(m.forward(TOKENS, bad(2n)), { code: 'INVALID_ARGUMENT', message: /numSequences must be a number, got a BigInt/ });
  await t.throwsAsync(m.generate(Uint32Array.of(1), 2.7), { code: 'INVALID_ARGUMENT', message: /maxNewTokens/ });
  await t.throwsAsync(m.logits(TOKENS, 3.5), { code: 'INVALID_ARGUMENT' });
  t.throws(() => new MoeModel({ ...CFG, hidden_size: bad(16n) }), { code: 'INVALID_CONFIG', message: /config\.hidden_size is a BigInt/ });
  t.throws(() => new MoeModel({ ...CFG, hidden_size: 16.5 }), { code: 'INVALID_CONFIG', message: /hidden_size/ });
  await t.throwsAsync(m.step({ lr: bad(1n) }), { code: 'INVALID_CONFIG', message: /options\.lr is a BigInt/ });
  t.throws(() => validTokens(10.5, 2), { code: 'INVALID_ARGUMENT', message: /numTokens/ });
  t.throws(() => lrAt({ lr: 1 }, -1), { code: 'INVALID_ARGUMENT', message: /step/ });
  t.deepEqual(m.getParams(), before, 'refused calls changed nothing');
});

test('an unknown option key is refused, not ignored', async (t) => {
  const m = new MoeModel(CFG);
  const e = await t.throwsAsync(m.forward(TOKENS, 2, bad({ maks: new Uint8Array(16) })), { code: 'INVALID_CONFIG' });
  t.regex(e!.message, /options\.maks is not an option \(the options are mask, store\)/);
  await t.throwsAsync(m.generate(Uint32Array.of(1), 2, bad({ temprature: 1 })), { code: 'INVALID_CONFIG', message: /temprature/ });
  await t.throwsAsync(m.step(bad({ lr: 1e-3, weight_decay: 0.1 })), { code: 'INVALID_CONFIG', message: /weight_decay/ });
  t.throws(() => new MoeModel(CFG, bad({ devise: 'cpu' })), { code: 'INVALID_CONFIG', message: /options\.devise/ });
  t.throws(() => new MoeModel(CFG, { device: bad('tpu') }), { code: 'INVALID_CONFIG', message: /options\.device/ });
  await t.throwsAsync(m.forward(TOKENS, 2, { mask: bad([1, 1]) }), { code: 'INVALID_CONFIG', message: /options\.mask must be a Uint8Array, got an object/ });
});

test('NaN and Infinity in a config or options name the field; wrong types get documented codes', async (t) => {
  t.throws(() => new MoeModel({ ...CFG, rope_theta: NaN }), { code: 'INVALID_CONFIG', message: /config\.rope_theta is NaN/ });
  t.throws(() => new MoeModel({ ...CFG, initializer_range: Infinity }), { code: 'INVALID_CONFIG', message: /config\.initializer_range is Infinity/ });
  t.throws(() => new MoeLayer({ hidden_size: 8, moe_intermediate_size: 4, num_experts: 4, num_experts_per_tok: NaN }), { code: 'INVALID_CONFIG', message: /num_experts_per_tok/ });
  t.throws(() => new MoeModel(bad(undefined)), { code: 'INVALID_CONFIG', message: /config must be an object/ });
  t.throws(() => new MoeModel(bad('big')), { code: 'INVALID_CONFIG' });
  const m = new MoeModel(CFG);
  await t.throwsAsync(m.step({ lr: NaN }), { code: 'INVALID_CONFIG', message: /options\.lr is NaN/ });
  await t.throwsAsync(m.forward(bad([1, 2, 3]), 1), { code: 'INVALID_ARGUMENT', message: /tokens must be a Uint32Array/ });
  await t.throwsAsync(m.forward(new Int32Array(16) as never, 2), { code: 'INVALID_ARGUMENT', message: /tokens must be a Uint32Array/ });
  t.throws(() => m.getParameter(bad(3)), { code: 'INVALID_ARGUMENT', message: /name must be a string, got a number/ });
  t.throws(() => m.setParams(bad(null)), { code: 'INVALID_ARGUMENT', message: /data must be a Float32Array, got null/ });
  await m.forward(TOKENS, 2);
  await t.throwsAsync(m.backward(new Float32Array(16), bad(undefined)), { code: 'INVALID_ARGUMENT', message: /scales must be an object with lmScale/ });
  await t.throwsAsync(m.backward(new Float32Array(16), bad({ zScale: 0 })), { code: 'INVALID_CONFIG', message: /scales\.lmScale is required/ });
  await t.throwsAsync(m.backward(new Float32Array(16), { lmScale: Infinity }), { code: 'NON_FINITE' });
  await t.throwsAsync(m.save(bad(42)), { code: 'INVALID_ARGUMENT', message: /dir must be a string/ });
  await t.throwsAsync(MoeModel.fromCheckpoint(bad(undefined)), { code: 'INVALID_ARGUMENT', message: /dir must be a string, got undefined/ });
  t.throws(() => new LocalGroup(0), { code: 'INVALID_ARGUMENT', message: /size must be a positive integer/ });
  t.throws(() => new LocalGroup(2).comm(2), { code: 'INVALID_ARGUMENT' });
  const codes = new Set<string>([...NATIVE_ERROR_CODES, ...TS_ERROR_CODES]);
  t.true(codes.has('INVALID_ARGUMENT'));
});

test('the data entry points check their arguments too', (t) => {
  t.throws(() => Tokenizer.fromFile(bad(3)), { code: 'INVALID_ARGUMENT', message: /path must be a string/ });
  const tok = Tokenizer.bytes();
  t.throws(() => tok.decode(bad([104, 105])), { code: 'INVALID_ARGUMENT', message: /ids must be a Uint32Array/ });
  t.throws(() => tok.encode(bad(undefined)), { code: 'INVALID_ARGUMENT', message: /text must be a string/ });
  t.throws(() => Dataset.open(bad(undefined)), { code: 'INVALID_ARGUMENT', message: /dir must be a string/ });
  t.throws(() => new DatasetPrep(bad({ inputs: ['x'], out: 'y', vocabsize: 300 })), { code: 'INVALID_CONFIG', message: /options\.vocabsize is not an option/ });
  t.throws(() => new DatasetPrep(bad({ inputs: 'x', out: 'y' })), { code: 'INVALID_CONFIG', message: /options\.inputs must be an array of strings/ });
  t.throws(() => new DatasetPrep(bad({ inputs: ['x'], out: 'y', tokenizer: 'bpe', vocabSize: 2.5 })), { code: 'INVALID_CONFIG', message: /options\.vocabSize must be an integer/ });
});

test('async methods reject their Promise for every failure, option errors included', async (t) => {
  const m = new MoeModel(CFG);
  const calls: [string, () => unknown][] = [
    ['step', () => m.step(bad({ lr: 'fast' }))],
    ['step without options', () => m.step(bad(undefined))],
    ['generate', () => m.generate(Uint32Array.of(1), 2, bad({ topK: -1 }))],
    ['forward', () => m.forward(bad(null), 1)],
    ['backward', () => m.backward(bad(null), { lmScale: 1 })],
    ['save', () => m.save(bad(null))],
    ['loadCheckpoint', () => m.loadCheckpoint(bad(null))],
    ['fromCheckpoint', () => MoeModel.fromCheckpoint('/nonexistent', bad({ device: 'tpu' }))],
  ];
  for (const [name, call] of calls) {
    let p: unknown;
    t.notThrows(() => (p = call()), `${name} does not throw synchronously`);
    t.true(p instanceof Promise, name);
    const e = await t.throwsAsync(p as Promise<unknown>);
    t.true(['INVALID_ARGUMENT', 'INVALID_CONFIG'].includes((e as { code?: string }).code ?? ''), `${name}: ${(e as Error).message}`);
  }
});

test('Balancer.microStep refuses NaN, negative and malformed statistics and changes nothing (fault 8)', async (t) => {
  const dims = { layers: 1, experts: 2, topK: 1, seqsPerMicro: 1, accumSteps: 1 };
  const good: MicroStats = { counts: Float32Array.of(2, 1), scoreSums: Float32Array.of(1.8, 1.2), zSums: Float32Array.of(0.5), validTokens: Float32Array.of(3) };
  const bal = new Balancer({ terms: [{ scope: 'global', coef: 0.1 }] }, dims, SOLO);
  await bal.beginStep(3);
  const cases: [MicroStats, string, RegExp][] = [
    [{ ...good, scoreSums: Float32Array.of(NaN, 1) }, 'NON_FINITE', /stats\.scoreSums\[0\] = NaN/],
    [{ ...good, counts: Float32Array.of(-1, 4) }, 'INVALID_ARGUMENT', /stats\.counts\[0\] = -1/],
    [{ ...good, zSums: Float32Array.of(-0.5) }, 'INVALID_ARGUMENT', /stats\.zSums\[0\]/],
    [{ ...good, counts: Float32Array.of(1.5, 1.5) }, 'INVALID_ARGUMENT', /non-negative integer/],
    [{ ...good, counts: Float32Array.of(2, 2) }, 'INVALID_ARGUMENT', /sum to 4, but 3 valid tokens choose 3 experts/],
    [{ ...good, counts: bad([2, 1]) }, 'INVALID_ARGUMENT', /must be a Float32Array/],
    [bad(null), 'INVALID_ARGUMENT', /stats must be/],
  ];
  for (const [s, code, re] of cases) {
    const e = await t.throwsAsync(bal.microStep(s), { code });
    t.regex(e!.message, re);
  }
  await t.throwsAsync(bal.beginStep(bad('3')), { code: 'INVALID_ARGUMENT' });
  // The refused calls did not advance the step: the good statistics still fit.
  await bal.microStep(good);
  const step = await bal.endStep();
  t.true(step.lblGlobal[0] > 0 && Number.isFinite(step.lblGlobal[0]));
});

test('the CLI refuses flag values it would have coerced', (t) => {
  const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { encoding: 'utf8', timeout: 60_000 });
  for (const [args, re] of [
    [['sample', 'runs/none', '--tokens', 'abc'], /--tokens expects an integer in \[1, \d+\], got "abc"/],
    [['eval', 'runs/none', '--tokens', '0'], /--tokens expects an integer/],
    [['sample', 'runs/none', '--temperature', 'hot'], /--temperature expects a number/],
    [['sample', 'runs/none', '--top-k', '2.5'], /--top-k expects an integer/],
  ] as const) {
    const r = cli(...args);
    t.is(r.status, 2, r.stderr);
    t.regex(r.stderr, new RegExp(`^moe: error \\[INVALID_ARGUMENT\\]: ${re.source}`), args.join(' '));
  }
});
