// The `legal` domain: the SPDX licence texts (npm spdx-license-list, `spdx-full.json`) in English,
// one per cluster of near-duplicates, plus the US Constitution and Declaration of Independence from
// Debian miscfiles. Without the near-duplicate removal the ~700 texts are mostly copies of a few
// dozen (MIT, BSD, GPL variants): "legal" would look easy and leak across the split.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { Doc } from './format.js';
import { decodeUtf8, normalise } from './text.js';

interface SpdxEntry {
  name: string;
  osiApproved: boolean;
  licenseText: string;
}

const words = (s: string) => new Set(s.split(' '));
const ENGLISH = words('the of and to or in any this is be that for by with you not are as such shall may');
const FOREIGN = words(
  'der die und das ist zu den von mit nicht ein eine dem des sich auf für le les et du une est dans pour que qui par au aux ce het een van niet zijn voor el los las y del con para una en',
);

/**
 * English by stop words: foreign ones (German, French, Dutch, Spanish) under 0.3 of the English
 * ones, and at least 95% of letters ASCII. Drops the translated texts (CECILL-1.0, LiLiQ, the CC
 * -DE/-AT/-FR/-NL/-JP ports...) and the bilingual ones (DL-DE, MulanPSL, OGDL-Taiwan).
 */
export function isEnglish(text: string): boolean {
  const w = text.toLowerCase().match(/\p{L}+/gu) ?? [];
  const en = w.filter((x) => ENGLISH.has(x)).length;
  const foreign = w.filter((x) => FOREIGN.has(x)).length;
  const letters = (text.match(/\p{L}/gu) ?? []).length;
  const ascii = (text.match(/[A-Za-z]/g) ?? []).length;
  return foreign < 0.3 * (en + 1) && ascii >= 0.95 * letters;
}

/** Word 5-grams, lower-cased and without punctuation, so that reflowed copies still match. */
function shingles(text: string): Set<string> {
  const w = text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  const out = new Set<string>();
  for (let i = 0; i + 5 <= w.length; i++) out.add(w.slice(i, i + 5).join(' '));
  if (out.size === 0 && w.length > 0) out.add(w.join(' '));
  return out;
}

/** Texts kept in preference to their variants: the ones a reader would recognise. */
const CANONICAL = ['MIT', 'BSD-3-Clause', 'Apache-2.0', 'MPL-2.0', 'GPL-3.0-only', 'GPL-2.0-only', 'LGPL-2.1-only', 'LGPL-3.0-only', 'AGPL-3.0-only', 'ISC', 'Unlicense', 'CC0-1.0', 'CC-BY-4.0', 'CC-BY-SA-4.0', 'EPL-2.0', 'Zlib'];

/**
 * Greedy near-duplicate removal: visit texts canonical first, then OSI-approved, then by shorter
 * id, and keep one unless more than half of its 5-grams occur in a single text already kept
 * (containment > 0.5). Each kept text thus stands for its cluster of variants.
 */
export function dedupLicences(entries: Record<string, SpdxEntry>): string[] {
  const rank = (id: string) => (CANONICAL.includes(id) ? CANONICAL.indexOf(id) : CANONICAL.length);
  const ids = Object.keys(entries)
    .filter((id) => isEnglish(entries[id].licenseText))
    .sort((a, b) => rank(a) - rank(b) || Number(entries[b].osiApproved) - Number(entries[a].osiApproved) || a.length - b.length || (a < b ? -1 : a > b ? 1 : 0));
  const owners = new Map<string, number[]>();
  const kept: string[] = [];
  for (const id of ids) {
    const grams = shingles(entries[id].licenseText);
    const hits = new Map<number, number>();
    for (const g of grams) for (const k of owners.get(g) ?? []) hits.set(k, (hits.get(k) ?? 0) + 1);
    if (grams.size === 0 || Math.max(0, ...hits.values()) > 0.5 * grams.size) continue;
    for (const g of grams) {
      const o = owners.get(g);
      if (o) o.push(kept.length);
      else owners.set(g, [kept.length]);
    }
    kept.push(id);
  }
  return kept.sort();
}

export function readSpdx(spdxDir: string): Record<string, SpdxEntry> {
  return JSON.parse(decodeUtf8(readFileSync(join(spdxDir, 'spdx-full.json')), 'spdx-full.json')) as Record<string, SpdxEntry>;
}

/** The founding documents first, then the kept licence texts by SPDX id. */
export function legalDocs(spdxDir: string, miscfilesRoot: string): Doc[] {
  const state = (name: string): Doc => ({
    id: name,
    text: normalise(decodeUtf8(gunzipSync(readFileSync(join(miscfilesRoot, 'usr/share/state', `${name}.gz`))), name)),
  });
  const spdx = readSpdx(spdxDir);
  const licences = dedupLicences(spdx).map((id): Doc => ({ id, text: normalise(spdx[id].licenseText) }));
  return [state('us-constitution'), state('us-declaration'), ...licences];
}
