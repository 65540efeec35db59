// The on-disk corpus the builder writes: `<dir>/<domain>.jsonl` (one {"id","text"} object per line,
// one whole document each), `<dir>/MANIFEST.json` (provenance, licence, split membership and
// checksums), `<dir>/LICENSES/`. `moe data prepare` reads it (checking every sha256) like any input.

import { createHash } from 'node:crypto';
import type { Split } from './split.js';

export interface Doc {
  id: string;
  text: string;
}

/** One package file as published, pinned by version and sha256. */
export interface SourcePackage {
  registry: 'debian' | 'npm';
  name: string;
  version: string;
  /** The file name as published, e.g. `pari-doc_2.15.2-1_all.deb`. */
  file: string;
  sha256: string;
  /** The paths inside the package the text was read from. */
  paths: string[];
}

export interface DomainLicence {
  /** SPDX licence expression covering the domain's text (LicenseRef-PublicDomain where none applies). */
  spdx: string;
  /** Licence and notice files, relative to the corpus folder (`LICENSES/...`). */
  files: string[];
  note: string;
}

export interface DomainManifest {
  description: string;
  sources: SourcePackage[];
  licence: DomainLicence;
  /** Document ids per split, in file order. */
  docs: Record<Split, string[]>;
  /** UTF-8 bytes of document text per split. */
  bytes: Record<Split, number>;
  /** The domain's file, relative to the corpus folder, and its sha256. */
  file: string;
  sha256: string;
}

export interface CorpusManifest {
  format: 'moe-trainer-corpus/1';
  /** `slice`: the small committed subset; `full`: every document of the pinned packages. */
  kind: 'slice' | 'full';
  split: string;
  domains: Record<string, DomainManifest>;
}

export const MANIFEST = 'MANIFEST.json';

export const sha256 = (data: string | Uint8Array): string => createHash('sha256').update(data).digest('hex');

/** One line per document; JSON.stringify escapes newlines, so a line is always one document. */
export function toJsonl(docs: Doc[]): string {
  return docs.map((d) => JSON.stringify({ id: d.id, text: d.text }) + '\n').join('');
}
