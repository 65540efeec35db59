// The `en` domain: Jane Austen's six novels from janeaustenr's lazy-load database, read without R.
// `Rdata.rdx` (gzip, R XDR serialisation) maps each novel's name to (offset, length) in
// `Rdata.rdb`, where an entry is a 4-byte big-endian length and a zlib stream holding one XDR
// serialised character vector: the novel's lines. One document per chapter.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync, inflateSync } from 'node:zlib';
import { MoeTrainerError } from '../errors.js';
import type { Doc } from './format.js';
import { decodeUtf8, normalise } from './text.js';

/** The subset of R values the two files use: NULL, a symbol or string, or a vector with its attributes. */
type RValue = null | string | RVector;
interface RVector {
  vec: (RValue | number | boolean)[];
  attr: Map<string, RValue>;
}

const NILVALUE = 254;
const REF = 255;
const [SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC] = [1, 2, 9, 10, 13, 14, 16, 19];

/** A reader for R's XDR serialisation format, versions 2 and 3. */
class XdrReader {
  private pos = 0;
  private readonly refs: RValue[] = [];

  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {
    if (buf.toString('latin1', 0, 2) !== 'X\n') this.fail('not an XDR serialisation');
    this.pos = 2;
    const version = this.int();
    this.pos += 8; // writer and minimal reader R versions
    if (version === 3) {
      const n = this.int(); // native encoding name, e.g. "UTF-8"
      this.pos += n;
    } else if (version !== 2) this.fail(`serialisation version ${version}`);
  }

  private fail(msg: string): never {
    throw new MoeTrainerError('CORPUS_FORMAT', `${this.what}: ${msg} at byte ${this.pos}`);
  }

  private int(): number {
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  private length(): number {
    const n = this.int();
    if (n === -1) this.fail('long vectors are not supported');
    return n;
  }

  item(): RValue {
    const flags = this.int();
    const type = flags & 0xff;
    const hasAttr = (flags & 0x200) !== 0;
    switch (type) {
      case NILVALUE:
        return null;
      case REF: {
        const idx = flags >>> 8 || this.int();
        return this.refs[idx - 1];
      }
      case SYM: {
        const name = this.item();
        this.refs.push(name);
        return name;
      }
      case CHAR: {
        const n = this.int();
        if (n === -1) return null; // NA_character_
        const s = decodeUtf8(this.buf.subarray(this.pos, this.pos + n), this.what);
        this.pos += n;
        return s;
      }
      case LIST: {
        // A pairlist (here always attributes): a chain of (tag, value) cells ending in NILVALUE.
        const attr = new Map<string, RValue>();
        let f = flags;
        for (;;) {
          if (f & 0x200) this.item();
          const tag = f & 0x400 ? this.item() : null;
          attr.set(String(tag), this.item());
          f = this.int();
          if ((f & 0xff) === NILVALUE) break;
          if ((f & 0xff) !== LIST) this.fail(`pairlist cell of type ${f & 0xff}`);
        }
        return { vec: [], attr };
      }
      case LGL:
      case INT:
      case REAL:
      case STR:
      case VEC: {
        const n = this.length();
        const vec: RVector['vec'] = [];
        for (let i = 0; i < n; i++) {
          if (type === STR || type === VEC) vec.push(this.item());
          else if (type === REAL) {
            vec.push(this.buf.readDoubleBE(this.pos));
            this.pos += 8;
          } else {
            const v = this.int();
            vec.push(v === -0x80000000 ? null : type === LGL ? v !== 0 : v);
          }
        }
        const attrList = hasAttr ? this.item() : null;
        return { vec, attr: attrList && typeof attrList === 'object' ? attrList.attr : new Map() };
      }
      default:
        return this.fail(`unsupported R type ${type}`);
    }
  }
}

function vector(v: RValue | number | boolean, what: string): RVector {
  if (v === null || typeof v !== 'object') throw new MoeTrainerError('CORPUS_FORMAT', `${what}: expected a vector`);
  return v;
}

const names = (v: RVector) => vector(v.attr.get('names') ?? null, 'names').vec as string[];

/** Each novel's lines, by the dataset name janeaustenr gives it (`emma`, `prideprejudice`, ...). */
export function readNovels(dataDir: string): Map<string, string[]> {
  const rdxPath = join(dataDir, 'Rdata.rdx');
  const index = vector(new XdrReader(gunzipSync(readFileSync(rdxPath)), rdxPath).item(), rdxPath);
  const part = (name: string) => vector(index.vec[names(index).indexOf(name)] ?? null, `${rdxPath} ${name}`);
  if (part('compressed').vec[0] !== true) throw new MoeTrainerError('CORPUS_FORMAT', `${rdxPath}: only zlib-compressed databases are supported`);
  const variables = part('variables');
  const rdb = readFileSync(join(dataDir, 'Rdata.rdb'));
  const novels = new Map<string, string[]>();
  names(variables).forEach((name, i) => {
    const [offset, length] = vector(variables.vec[i], name).vec as number[];
    const raw = inflateSync(rdb.subarray(offset + 4, offset + length));
    const lines = vector(new XdrReader(raw, `Rdata.rdb ${name}`).item(), name).vec;
    novels.set(name, lines.map((l) => (typeof l === 'string' ? l : '')));
  });
  return novels;
}

const CHAPTER = /^chapter [\divxlc]+/i;
const VOLUME = /^volume [ivx]+$/i;

/**
 * One document per chapter, id `<novel>/chNN` numbered through the novel (Emma restarts its printed
 * numerals each volume). The title page goes with the first chapter, and a "VOLUME II" heading
 * with the chapter it opens.
 */
export function austenDocs(dataDir: string): Doc[] {
  const docs: Doc[] = [];
  for (const [novel, lines] of readNovels(dataDir)) {
    const starts: number[] = [];
    for (let i = 0; i < lines.length; i++) {
      if (!CHAPTER.test(lines[i])) continue;
      let s = i;
      for (let j = i - 1; j >= 0 && (lines[j].trim() === '' || VOLUME.test(lines[j])); j--) if (VOLUME.test(lines[j])) s = j;
      starts.push(starts.length === 0 ? 0 : s);
    }
    starts.forEach((s, c) => {
      const text = normalise(lines.slice(s, starts[c + 1] ?? lines.length).join('\n'));
      docs.push({ id: `${novel}/ch${String(c + 1).padStart(2, '0')}`, text });
    });
  }
  return docs;
}
