// The `tex` domain: the PARI/GP manuals, plain TeX source from pari-doc. One document per
// \chapter or \section rather than per file: the twelve files range from 18 KB to 1.4 MB, and
// twelve documents could not fill a 5% test and a 5% validation split by hash.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Doc } from './format.js';
import { decodeUtf8, normalise } from './text.js';

/** The manual's text files; parimacro, pdfmacs, paricfg and users.tex are macros and drivers. */
export const TEX_FILES = [
  'usersch1', 'usersch2', 'usersch3', 'usersch4', 'usersch5', 'usersch6', 'usersch7', 'usersch8',
  'tutorial', 'tutorial-mf', 'develop', 'refcard',
];

const SECTION = /^\\(?:chapter|section)\b/;

/** Id `<file>/NN`, NN counting the file's sections from 01; the file's preamble joins section 01. */
export function texDocs(docDir: string): Doc[] {
  const docs: Doc[] = [];
  for (const stem of TEX_FILES) {
    const lines = decodeUtf8(readFileSync(join(docDir, `${stem}.tex`)), `${stem}.tex`).split(/\r?\n/);
    const starts = [0];
    lines.forEach((line, i) => {
      if (SECTION.test(line) && lines.slice(0, i).some((l) => SECTION.test(l))) starts.push(i);
    });
    starts.forEach((s, k) => {
      const text = normalise(lines.slice(s, starts[k + 1] ?? lines.length).join('\n'));
      docs.push({ id: `${stem}/${String(k + 1).padStart(2, '0')}`, text });
    });
  }
  return docs;
}
