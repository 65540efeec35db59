// The cache of prepared inputs under concurrency: runs that start together on the same raw inputs
// (ava's tests in one process, `compare` variants, several processes) each get a whole dataset;
// none sees another's half-written files, and the cache ends with one complete dataset.

import test from 'ava';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveDataset } from '../src/data/dataset.js';

test('concurrent preparations of the same inputs all get one whole dataset', async (t) => {
  // The race is one of timing: several rounds, each into an empty cache.
  for (let round = 0; round < 8; round++) {
    const cache = mkdtempSync(join(tmpdir(), 'moe-cache-'));
    process.env.MOE_CACHE_DIR = cache;
    try {
      const opened = await Promise.all(Array.from({ length: 4 }, () => resolveDataset('data', { tokenizer: 'byte' })));
      for (const o of opened) {
        t.notThrows(() => o.dataset.verify(), `round ${round}: every file matches its manifest`);
        t.is(o.dataset.tokens('en', 'train'), opened[0].dataset.tokens('en', 'train'));
      }
      t.deepEqual(readdirSync(cache), [opened[0].dir.split('/').pop()], `round ${round}: one dataset, no partial folder left`);
    } finally {
      delete process.env.MOE_CACHE_DIR;
      rmSync(cache, { recursive: true, force: true });
    }
  }
});
