// Tokenizers and the specialisation metrics, on inputs whose answers are known by hand.

import test from 'ava';
import { imbalance, jsDivergence, maxOverUniform, mutualInformation, selectionFrequency } from '../src/metrics.js';
import { BpeTokenizer, ByteTokenizer, tokenizerFromJSON } from '../src/tokenizer/index.js';

test('byte tokenizer round-trips UTF-8 and counts bytes', (t) => {
  const tok = new ByteTokenizer();
  const text = 'Señor, π ≈ 3.14\n';
  const ids = tok.encode(text);
  t.is(ids.length, Buffer.byteLength(text));
  t.is(tok.decode([tok.bos, ...ids, tok.eos]), text);
  t.is(tok.byteLength(65), 1);
  t.is(tok.byteLength(tok.eos), 1);
  t.is(tok.byteLength(tok.pad), 0);
});

test('BPE learns frequent pairs first, round-trips, and reloads from JSON', (t) => {
  const texts = ['the cat the hat the bat', 'the theme', 'función de la función'];
  const bpe = BpeTokenizer.train(texts, 280);
  t.true(bpe.vocabSize > 259 && bpe.vocabSize <= 280);
  // "th" and "he" both occur 5 times; the tie goes to the lower pair, "he".
  t.deepEqual(bpe.merges[0], ['h'.charCodeAt(0), 'e'.charCodeAt(0)]);
  for (const s of [...texts, 'unseen words: théâtre!']) t.is(bpe.decode(bpe.encode(s)), s);
  t.true(bpe.encode('the the the').length < new ByteTokenizer().encode('the the the').length);
  const again = tokenizerFromJSON(JSON.parse(JSON.stringify(bpe.toJSON())));
  t.deepEqual(again.encode('the cat'), bpe.encode('the cat'));
  const ids = bpe.encode(' the');
  t.is(ids.reduce((a, id) => a + bpe.byteLength(id), 0), 4);
  t.throws(() => BpeTokenizer.train(texts, 100), { code: 'INVALID_CONFIG' });
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
