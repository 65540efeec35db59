// The committed corpus slice under data/ (DATA.md), read back without network: manifest checks,
// the fixed FNV-1a split, and refusal of corrupted or missing files with stable codes when a run
// prepares it.

import test from 'ava';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCorpus } from '../src/corpus/build.js';
import { DatasetPrep } from '../index.js';
import type { CorpusManifest, Doc } from '../src/corpus/format.js';
import { PACKAGES } from '../src/corpus/packages.js';
import { fnv1a32, splitOf, SPLITS } from '../src/corpus/split.js';
import { osisToText } from '../src/corpus/sword.js';
import { normalise } from '../src/corpus/text.js';

const DATA = 'data';
const DOMAINS = ['en', 'es', 'tex', 'legal', 'code'];

const readManifest = (dir: string): CorpusManifest => JSON.parse(readFileSync(join(dir, 'MANIFEST.json'), 'utf8'));

/** Every domain's documents, read straight from the slice's files. */
function readCorpus(dir: string): Map<string, Doc[]> {
  return new Map(
    Object.entries(readManifest(dir).domains).map(([domain, dm]) => [
      domain,
      readFileSync(join(dir, dm.file), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Doc),
    ]),
  );
}

/** Prepares a corpus folder into a scratch dataset (the way every run reads a corpus). */
const prepare = (dir: string) => new DatasetPrep({ inputs: [dir], out: join(dir, '..', `ds-${Math.random()}`), tokenizer: 'byte' }).run();

/** A scratch copy of data/ that a test may damage. */
function copyOfData(): string {
  const dir = mkdtempSync(join(tmpdir(), 'moe-corpus-'));
  cpSync(DATA, dir, { recursive: true });
  return dir;
}

test('the slice has five domains, each with every split non-empty', (t) => {
  const corpus = readCorpus(DATA);
  t.deepEqual([...corpus.keys()].sort(), [...DOMAINS].sort());
  const manifest = readManifest(DATA);
  t.is(manifest.kind, 'slice');
  for (const [domain, docs] of corpus) {
    const splits = Object.fromEntries(SPLITS.map((s) => [s, docs.filter((d) => splitOf(domain, d.id) === s)]));
    for (const s of SPLITS) {
      t.true(splits[s].length > 0, `${domain} ${s} is empty`);
      // The manifest's membership and byte counts agree with the hash and the texts.
      t.deepEqual(splits[s].map((d) => d.id), manifest.domains[domain].docs[s], `${domain} ${s} ids`);
      t.is(splits[s].reduce((n, d) => n + Buffer.byteLength(d.text), 0), manifest.domains[domain].bytes[s], `${domain} ${s} bytes`);
    }
  }
});

test('FNV-1a matches hand-computed values and the split is fixed', (t) => {
  // Offset basis for the empty string; the rest are the published FNV-1a 32-bit test vectors.
  t.is(fnv1a32(''), 0x811c9dc5);
  t.is(fnv1a32('a'), 0xe40c292c);
  t.is(fnv1a32('foobar'), 0xbf9cf968);
  // Multi-byte UTF-8 is hashed by bytes (é = C3 A9); values computed independently in Python.
  t.is(fnv1a32('é'), 0x1e9de8c1);
  t.is(fnv1a32('es/Lam'), 0x8ddd5d64); // mod 20 = 0
  t.is(fnv1a32('es/2Pet'), 0x0fac8321); // mod 20 = 1
  t.is(fnv1a32('es/Ruth'), 0x449dff2b); // mod 20 = 3
  t.is(splitOf('es', 'Lam'), 'test');
  t.is(splitOf('es', '2Pet'), 'validation');
  t.is(splitOf('es', 'Ruth'), 'train');
  for (const id of ['Ruth', 'emma/ch01', 'src/math/Vector3.js']) t.is(splitOf('x', id), splitOf('x', id));
});

test('documents are disjoint across splits and texts are clean UTF-8', (t) => {
  const strict = new TextDecoder('utf-8', { fatal: true });
  const manifest = readManifest(DATA);
  for (const [domain, docs] of readCorpus(DATA)) {
    const ids = docs.map((d) => d.id);
    t.is(new Set(ids).size, ids.length, `${domain}: duplicate ids`);
    // The manifest's three id lists partition the file's ids.
    const listed = SPLITS.flatMap((s) => manifest.domains[domain].docs[s]);
    t.is(new Set(listed).size, listed.length, `${domain}: an id in two splits`);
    t.deepEqual([...listed].sort(), [...ids].sort());
    for (const d of docs) {
      t.true(d.text.length > 0, `${domain}/${d.id} is empty`);
      t.false(d.text.includes('\0'), `${domain}/${d.id} holds NUL`);
      t.false(d.text.includes('\r'), `${domain}/${d.id} holds CR`);
      t.is(strict.decode(Buffer.from(d.text, 'utf8')), d.text, `${domain}/${d.id} is not valid UTF-8`);
    }
  }
});

test('every licence file the manifest names is shipped', (t) => {
  for (const [domain, dm] of Object.entries(readManifest(DATA).domains)) {
    t.true(dm.licence.files.length > 0, domain);
    for (const f of dm.licence.files) t.true(readFileSync(join(DATA, f)).length > 0, `${domain}: ${f}`);
    for (const src of dm.sources) t.regex(src.sha256, /^[0-9a-f]{64}$/);
  }
});

test('a corrupted corpus file is refused with CORPUS_CHECKSUM', async (t) => {
  const dir = copyOfData();
  try {
    const path = join(dir, 'es.jsonl');
    const bytes = readFileSync(path);
    bytes[100] ^= 0x01;
    writeFileSync(path, bytes);
    const err = await t.throwsAsync(prepare(dir), { code: 'CORPUS_CHECKSUM' });
    t.regex(err!.message, /es\.jsonl/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing corpus file is refused with CORPUS_MISSING', async (t) => {
  const dir = copyOfData();
  try {
    rmSync(join(dir, 'code.jsonl'));
    await t.throwsAsync(prepare(dir), { code: 'CORPUS_MISSING', message: /code\.jsonl/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a cached package with the wrong sha256 stops the build before any download', async (t) => {
  const cache = mkdtempSync(join(tmpdir(), 'moe-cache-'));
  try {
    // The first package fetched; being present in the cache, it is verified, not downloaded.
    const pkg = PACKAGES.janeaustenr;
    writeFileSync(join(cache, pkg.file), 'not a deb');
    const err = await t.throwsAsync(buildCorpus({ out: join(cache, 'out'), slice: true, cacheDir: cache }), { code: 'CORPUS_CHECKSUM' });
    t.true(err!.message.includes(pkg.file) && err!.message.includes(pkg.sha256), err!.message);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});

test('OSIS markup becomes plain text and text is normalised', (t) => {
  const osis =
    '<div osisID="Jude" type="book"/><title type="main">Judas</title><chapter n="1" sID="Jude.1"/>' +
    '<w lemma="strong:G2455">JUDAS</w>,<note type="x-footnote">a note</note> <transChange type="added">siervo</transChange> &amp; hermano.<chapter eID="Jude.1"/>';
  t.is(osisToText(osis), 'Judas\n\nJUDAS, siervo & hermano.');
  t.is(normalise('\r\na \r\n\r\n\r\n\r\nb\f\t \n\n'), 'a\n\nb');
});
