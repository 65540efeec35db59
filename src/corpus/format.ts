// The on-disk corpus: `<dir>/<domain>.jsonl` (one {"id","text"} object per line, one whole
// document each), `<dir>/MANIFEST.json` (provenance, licence, split membership and checksums),
// `<dir>/LICENSES/`. readCorpus refuses a file whose sha256 differs from the manifest.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MoeTrainerError } from '../errors.js';
import { splitOf, type Split } from './split.js';

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

export function readManifest(dir: string): CorpusManifest {
  const path = join(dir, MANIFEST);
  if (!existsSync(path)) throw new MoeTrainerError('CORPUS_MISSING', `no corpus manifest at ${path}`);
  const m = JSON.parse(readFileSync(path, 'utf8')) as CorpusManifest;
  if (m.format !== 'moe-trainer-corpus/1') throw new MoeTrainerError('CORPUS_FORMAT', `${path}: unknown format ${JSON.stringify(m.format)}`);
  return m;
}

/** Every domain's documents, after checking each file against the manifest's sha256. */
export function readCorpus(dir: string): Map<string, Doc[]> {
  const manifest = readManifest(dir);
  const out = new Map<string, Doc[]>();
  for (const [domain, dm] of Object.entries(manifest.domains)) {
    const path = join(dir, dm.file);
    if (!existsSync(path)) throw new MoeTrainerError('CORPUS_MISSING', `corpus file ${path} (domain ${domain}) is missing`);
    const bytes = readFileSync(path);
    const actual = sha256(bytes);
    if (actual !== dm.sha256) {
      throw new MoeTrainerError('CORPUS_CHECKSUM', `${path}: sha256 ${actual}, manifest says ${dm.sha256}; rebuild the corpus`);
    }
    const docs = bytes
      .toString('utf8')
      .split('\n')
      .filter((line) => line !== '')
      .map((line, i): Doc => {
        const d = JSON.parse(line) as Doc;
        if (typeof d.id !== 'string' || typeof d.text !== 'string') throw new MoeTrainerError('CORPUS_FORMAT', `${path}:${i + 1}: not a {"id","text"} object`);
        return { id: d.id, text: d.text };
      });
    out.set(domain, docs);
  }
  return out;
}

/** A domain's documents grouped by split. */
export function bySplit(domain: string, docs: Doc[]): Record<Split, Doc[]> {
  const out: Record<Split, Doc[]> = { train: [], validation: [], test: [] };
  for (const d of docs) out[splitOf(domain, d.id)].push(d);
  return out;
}
