// The `code` domain: three.js's library source, `src/**/*.js` of the npm package. One document per
// file, id = its path in the package (`src/math/Vector3.js`).

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Doc } from './format.js';
import { decodeUtf8, normalise } from './text.js';

/** Paths under `dir`, relative to `root`, sorted by code unit so the order never depends on the file system. */
function jsFiles(root: string, dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...jsFiles(root, rel));
    else if (e.isFile() && e.name.endsWith('.js')) out.push(rel);
  }
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** src/Three.Legacy.js is an empty file in 0.187.0: it is no document, so 756 of the 757 files are. */
export function codeDocs(packageDir: string): Doc[] {
  return jsFiles(packageDir, 'src')
    .map((id) => ({ id, text: normalise(decodeUtf8(readFileSync(join(packageDir, id)), id)) }))
    .filter((d) => d.text !== '');
}
