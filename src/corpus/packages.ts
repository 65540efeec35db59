// The pinned source packages and their retrieval: `apt-get download` + `dpkg -x` for Debian,
// `npm pack` + `tar` for npm, into a cache folder. Every archive is checked against its published
// sha256 before it is unpacked, on every run, so a changed mirror or a corrupt cache fails loudly.

import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { MoeTrainerError } from '../errors.js';
import { sha256 } from './format.js';

export interface PinnedPackage {
  registry: 'debian' | 'npm';
  name: string;
  version: string;
  file: string;
  sha256: string;
}

const deb = (name: string, version: string, hash: string): PinnedPackage => ({
  registry: 'debian',
  name,
  version,
  file: `${name}_${version}_all.deb`,
  sha256: hash,
});
const npm = (name: string, version: string, hash: string): PinnedPackage => ({ registry: 'npm', name, version, file: `${name}-${version}.tgz`, sha256: hash });

/** sha256 of the package files as published (DATA.md). */
export const PACKAGES = {
  janeaustenr: deb('r-cran-janeaustenr', '1.0.0-1', 'df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95'),
  sparv: deb('sword-text-sparv', '2.60-1', '5c87f9b2bc97457e8a872f5bae7ea7ce59cb3de1dcee73e4d4740451863694cf'),
  pariDoc: deb('pari-doc', '2.15.2-1', '6806e4ab123811d7234dd3330941a0ab777562708109ccbce7fc8907226deddc'),
  miscfiles: deb('miscfiles', '1.5+dfsg-4', 'b29fdc907760ded52adbc1b4322da22b94108cd124caf0b23da8c23cc3578a28'),
  spdx: npm('spdx-license-list', '6.12.0', '54cc8d13086187333ca1457c8edaa06d9a412144f076aa7f7c1b59c4f3b0a1ef'),
  three: npm('three', '0.187.0', 'ff540832ded0cfe919764d24a3d88f3e2a05f23303f876423e4f893841e90728'),
} as const;

export type PackageKey = keyof typeof PACKAGES;

const exec = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(cmd: string, args: string[], cwd: string): Promise<void> {
  try {
    await exec(cmd, args, { cwd, maxBuffer: 64 << 20 });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new MoeTrainerError('CORPUS_FETCH', `${cmd} ${args.join(' ')} failed: ${(err.stderr || err.message).trim()}`);
  }
}

/** Fetches Debian packages; `apt-get update` runs at most once per Fetcher, and only when a download fails. */
export class Fetcher {
  private updated = false;

  constructor(
    readonly cacheDir: string,
    private readonly log: (msg: string) => void,
  ) {
    mkdirSync(cacheDir, { recursive: true });
  }

  /** The folder holding the unpacked package (a Debian root, or npm's `package/`). */
  async unpacked(pkg: PinnedPackage): Promise<string> {
    const archive = join(this.cacheDir, pkg.file);
    if (!existsSync(archive)) await this.download(pkg);
    const actual = sha256(readFileSync(archive));
    if (actual !== pkg.sha256) {
      throw new MoeTrainerError('CORPUS_CHECKSUM', `${archive}: expected sha256 ${pkg.sha256}, got ${actual}; delete the file to fetch it again`);
    }
    const dir = `${archive}.d`;
    if (!existsSync(dir)) {
      // Unpack beside, then rename, so an interrupted run never leaves a half-unpacked folder.
      const tmp = `${dir}.tmp`;
      rmSync(tmp, { recursive: true, force: true });
      mkdirSync(tmp, { recursive: true });
      if (pkg.registry === 'debian') await run('dpkg', ['-x', archive, tmp], this.cacheDir);
      else await run('tar', ['-xzf', archive, '-C', tmp], this.cacheDir);
      renameSync(tmp, dir);
    }
    return pkg.registry === 'npm' ? join(dir, 'package') : dir;
  }

  private async download(pkg: PinnedPackage): Promise<void> {
    this.log(`fetching ${pkg.name}@${pkg.version} from ${pkg.registry}`);
    if (pkg.registry === 'npm') return run('npm', ['pack', '--silent', `${pkg.name}@${pkg.version}`], this.cacheDir);
    for (let attempt = 1; ; attempt++) {
      try {
        return await run('apt-get', ['download', `${pkg.name}=${pkg.version}`], this.cacheDir);
      } catch (e) {
        const msg = (e as Error).message;
        if (/lock/i.test(msg) && attempt < 30) {
          // Another apt process holds the lock: wait for it rather than fail.
          await sleep(2000);
        } else if (!this.updated) {
          this.log('apt-get download failed; running apt-get update once');
          this.updated = true;
          await this.aptUpdate();
        } else {
          throw e;
        }
      }
    }
  }

  private async aptUpdate(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await run('apt-get', ['update', '-qq'], this.cacheDir);
      } catch (e) {
        if (!/lock/i.test((e as Error).message) || attempt >= 30) throw e;
        await sleep(2000);
      }
    }
  }
}
