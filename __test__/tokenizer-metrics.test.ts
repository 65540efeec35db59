// Tokenizers and the specialisation metrics, on inputs whose answers are known by hand.

import test from 'ava';
import { imbalance, jsDivergence, maxOverUniform, mutualInformation, selectionFrequency } from '../src/metrics.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatasetPrep, Tokenizer } from '../index.js';

/** A folder holding `tok`'s tokenizer.json. */
function writeTokenizer(tok: Tokenizer): string {
  const dir = mkdtempSync(join(tmpdir(), 'moe-tok-'));
  writeFileSync(join(dir, 'tokenizer.json'), tok.toJson());
  return dir;
}

test('byte tokenizer round-trips UTF-8 and counts bytes', (t) => {
  const tok = Tokenizer.bytes();
  t.is(tok.vocabSize, 257);
  t.is(tok.eosId, 0);
  const text = 'Señor, π ≈ 3.14\n';
  const ids = tok.encode(text);
  t.is(ids.length, Buffer.byteLength(text));
  t.is(tok.decode(Uint32Array.from([...ids, tok.eosId])), text + '<|endoftext|>');
  const lens = tok.byteLengths();
  t.true(Array.from(ids).every((id) => lens[id] === 1));
  t.is(lens[tok.eosId], 1, 'end-of-text counts as the one separator byte');
  t.deepEqual(Tokenizer.fromFile(writeTokenizer(tok)).encode(text), ids, 'reloaded from tokenizer.json');
  t.throws(() => tok.decode(Uint32Array.of(999)), { code: 'INVALID_CONFIG' });
});

test('BPE trained by prepare learns frequent pairs, round-trips, and counts bytes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-bpe-'));
  const texts = ['the cat the hat the bat', 'the theme', 'función de la función'];
  writeFileSync(join(dir, 'd.jsonl'), Array.from({ length: 30 }, (_, i) => JSON.stringify({ text: texts[i % 3] })).join('\n'));
  await new DatasetPrep({ inputs: [join(dir, 'd.jsonl')], out: join(dir, 'ds'), tokenizer: 'bpe', vocabSize: 280 }).run();
  const bpe = Tokenizer.fromFile(join(dir, 'ds'));
  t.true(bpe.vocabSize > 257 && bpe.vocabSize <= 280);
  for (const s of [...texts, 'unseen words: théâtre!']) t.is(bpe.decode(bpe.encode(s)), s);
  t.true(bpe.encode('the the the').length < Tokenizer.bytes().encode('the the the').length);
  const lens = bpe.byteLengths();
  t.is(Array.from(bpe.encode(' the')).reduce((a, id) => a + lens[id], 0), 4);
  await t.throwsAsync(new DatasetPrep({ inputs: [join(dir, 'd.jsonl')], out: join(dir, 'ds2'), tokenizer: 'bpe', vocabSize: 100 }).run(), { code: 'INVALID_CONFIG' });
  rmSync(dir, { recursive: true });
});

test('specialisation metrics on hand-built routing tables', (t) => {
  // Two domains, E = 4, K = 1. Fully specialised: each domain on its own experts.
  const special = [
    [10, 10, 0, 0],
    [0, 0, 10, 10],
  ];
  const uniform = [
    [5, 5, 5, 5],
    [5, 5, 5, 5],
  ];
  t.is(mutualInformation(special), 1, 'one bit: the expert tells the domain');
  t.is(mutualInformation(uniform), 0);
  const f = selectionFrequency(special, [20, 20]);
  t.deepEqual(f[0], [0.5, 0.5, 0, 0]);
  t.is(maxOverUniform(f, 1), 2, 'max frequency 0.5 against uniform 0.25');
  t.is(maxOverUniform(selectionFrequency(uniform, [20, 20]), 1), 1);
  t.is(jsDivergence(special[0], special[1]), 1, 'disjoint supports: 1 bit');
  t.is(jsDivergence(uniform[0], uniform[1]), 0);
  t.is(imbalance([2, 2, 2, 2]), 0);
  t.is(imbalance([4, 2, 1, 1]), 1);
});
