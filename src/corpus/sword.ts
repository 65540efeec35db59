// The `es` domain: the Reina-Valera 1909 Bible from a SWORD zText module. `<ot|nt>.bzs` holds
// 12-byte little-endian records (offset, compressed size, uncompressed size) into `<ot|nt>.bzz`;
// each record is one zlib block, here one book of OSIS markup. One document per book, id = the
// book's OSIS name (Gen, Ruth, Phlm, ...).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { MoeTrainerError } from '../errors.js';
import type { Doc } from './format.js';
import { decodeUtf8, normalise } from './text.js';

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/** OSIS markup to plain text: notes dropped, structural tags become line breaks, other tags vanish. */
export function osisToText(osis: string): string {
  return normalise(
    osis
      .replace(/<note\b[^>]*\/>/g, '')
      .replace(/<note\b[^>]*>[\s\S]*?<\/note>/g, '')
      .replace(/<\/?(?:title|div|chapter|p|lg|l)\b[^>]*>/g, '\n')
      .replace(/<[^>]*>/g, '')
      .replace(/&(#x[0-9a-f]+|#\d+|\w+);/gi, (m, e: string) =>
        e[0] === '#' ? String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : Number(e.slice(1))) : (ENTITIES[e] ?? m),
      )
      .replace(/[ \t]+/g, ' ')
      .replace(/^ | $/gm, ''),
  );
}

/** Every book of the module, in canonical order (ot then nt). */
export function swordBooks(moduleDir: string): Doc[] {
  const docs: Doc[] = [];
  for (const testament of ['ot', 'nt']) {
    const index = readFileSync(join(moduleDir, `${testament}.bzs`));
    const data = readFileSync(join(moduleDir, `${testament}.bzz`));
    for (let r = 0; r + 12 <= index.length; r += 12) {
      const offset = index.readUInt32LE(r);
      const size = index.readUInt32LE(r + 4);
      const osis = decodeUtf8(inflateSync(data.subarray(offset, offset + size)), `${testament}.bzz block ${r / 12}`);
      // Block 0 of each testament holds only the importer's milestone, no book.
      const book = /<div\b[^>]*\btype="book"[^>]*>/.exec(osis);
      if (!book) continue;
      const id = /\bosisID="([^"]+)"/.exec(book[0])?.[1];
      if (!id) throw new MoeTrainerError('CORPUS_FORMAT', `${testament}.bzz block ${r / 12}: book without osisID`);
      docs.push({ id, text: osisToText(osis) });
    }
  }
  return docs;
}
