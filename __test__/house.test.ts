// The house rules a reviewer would otherwise check by hand: no import circle among the files of the
// Rust core or of the TypeScript sources, every README heading once, every error code documented
// once, and a Layout section that names every folder of the tree.

import test from 'ava';
import { execSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { NATIVE_ERROR_CODES, TS_ERROR_CODES } from '../src/errors.js';

const ROOT = resolve(import.meta.dirname, '..');

function files(dir: string, ext: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p, ext) : p.endsWith(ext) ? [p] : [];
  });
}

/** A cycle in a file graph (as a list of files), or null. */
function findCycle(graph: Map<string, Set<string>>): string[] | null {
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (f: string): string[] | null => {
    if (state.get(f) === 'done') return null;
    if (state.get(f) === 'open') return [...path.slice(path.indexOf(f)), f];
    state.set(f, 'open');
    path.push(f);
    for (const g of graph.get(f) ?? []) {
      const c = visit(g);
      if (c) return c;
    }
    path.pop();
    state.set(f, 'done');
    return null;
  };
  for (const f of graph.keys()) {
    const c = visit(f);
    if (c) return c;
  }
  return null;
}

/**
 * The Rust core's file graph: an edge from a file to the module file of every `crate::a::b` and
 * `super::x` path its code names (comments and `#[cfg(test)]` modules left out; a `mod x;`
 * declaration is not an import).
 */
function rustGraph(src: string): Map<string, Set<string>> {
  const moduleFile = (segments: string[]): string | null => {
    for (let n = segments.length; n > 0; n--) {
      const base = join(src, ...segments.slice(0, n));
      for (const f of [`${base}.rs`, join(base, 'mod.rs')]) if (existsSync(f)) return f;
    }
    return null;
  };
  const graph = new Map<string, Set<string>>();
  for (const file of files(src, '.rs')) {
    const rel = relative(src, file).replace(/\.rs$/, '').split('/');
    const self = rel.at(-1) === 'mod' || rel.at(-1) === 'lib' ? rel.slice(0, -1) : rel;
    const parent = self.slice(0, -1);
    let code = readFileSync(file, 'utf8');
    code = code.slice(0, code.search(/#\[cfg\(test\)\]\s*mod /) >>> 0); // tests sit at the end of a file
    code = code.replace(/\/\/.*$/gm, '');
    const edges = new Set<string>();
    // `use super::{a, b::c}` and `use crate::x::{y, z}`: expand one level of braces.
    for (const m of code.matchAll(/\b(crate|super)((?:::[a-z_0-9]+)*)::\{([^}]*)\}/g)) {
      const base = (m[1] === 'crate' ? [] : parent).concat(m[2].split('::').filter(Boolean));
      for (const item of m[3].split(',')) {
        const seg = item.trim().split('::').filter((x) => /^[a-z_0-9]+$/.test(x));
        const f = moduleFile(base.concat(seg));
        if (f) edges.add(f);
      }
    }
    for (const m of code.matchAll(/\b(crate|super)((?:::[a-z_0-9]+)+)/g)) {
      const f = moduleFile((m[1] === 'crate' ? [] : parent).concat(m[2].split('::').filter(Boolean)));
      if (f) edges.add(f);
    }
    edges.delete(file);
    graph.set(file, edges);
  }
  return graph;
}

/** The TypeScript sources' file graph: relative `import`/`export ... from` specifiers. */
function tsGraph(src: string): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const file of files(src, '.ts')) {
    const edges = new Set<string>();
    for (const m of readFileSync(file, 'utf8').matchAll(/(?:import|export)[^'"]*?from\s+'(\.[^']+)'/g)) {
      const target = resolve(dirname(file), m[1]).replace(/\.js$/, '.ts');
      if (target.startsWith(src)) edges.add(target);
    }
    graph.set(file, edges);
  }
  return graph;
}

test('no import circle in the Rust core or the TypeScript sources', (t) => {
  const rust = rustGraph(join(ROOT, 'crates/moe-core/src'));
  t.true(rust.get(join(ROOT, 'crates/moe-core/src/model.rs'))!.has(join(ROOT, 'crates/moe-core/src/cpu/model.rs')), 'the graph sees imports');
  for (const [name, graph] of [['crates/moe-core', rust], ['src', tsGraph(join(ROOT, 'src'))]] as const) {
    const cycle = findCycle(graph);
    t.is(cycle, null, `${name}: ${cycle?.map((f) => relative(ROOT, f)).join(' -> ')}`);
    t.log(`${name}: ${graph.size} files, ${[...graph.values()].reduce((a, e) => a + e.size, 0)} imports, no circle`);
  }
  const circle = new Map([['a', new Set(['b'])], ['b', new Set(['a'])]]);
  t.deepEqual(findCycle(circle), ['a', 'b', 'a'], 'the check finds a circle when there is one');
});

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

test('every README heading appears once', (t) => {
  const headings = README.split('\n').filter((l) => /^#{1,4} /.test(l));
  const seen = new Set<string>();
  for (const h of headings) {
    t.false(seen.has(h), `repeated heading: ${h}`);
    seen.add(h);
  }
});

test('every error code is documented once in the README, and the native list matches the core', (t) => {
  const table = README.slice(README.indexOf('## Errors'), README.indexOf('\n## ', README.indexOf('## Errors') + 1));
  const documented = [...table.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
  t.deepEqual([...documented].sort(), [...NATIVE_ERROR_CODES, ...TS_ERROR_CODES].sort());
  const native = ['crates/moe-core/src/error.rs', 'crates/moe-data/src/error.rs'].map((f) => readFileSync(join(ROOT, f), 'utf8')).join('\n');
  const nativeCodes = new Set([...native.matchAll(/=> "([A-Z_]+)"/g)].map((m) => m[1]));
  t.deepEqual([...nativeCodes].sort(), [...NATIVE_ERROR_CODES].sort());
});

test('the README Layout names every folder of the tree', (t) => {
  const layout = README.slice(README.indexOf('## Layout'));
  const tracked = execSync('git ls-files', { cwd: ROOT, encoding: 'utf8' }).split('\n').filter(Boolean);
  // The folders among the tracked files' paths under `prefix`, one level down.
  const folders = (prefix: string) => [...new Set(tracked.filter((f) => f.startsWith(prefix)).map((f) => f.slice(prefix.length).split('/')).filter((p) => p.length > 1 && !p[0].startsWith('.')).map((p) => p[0]))];
  const wanted = [
    ...folders('').map((d) => `${d}/`),
    ...folders('crates/').map((d) => `crates/${d}/`),
    ...folders('src/').map((d) => `${d}/`),
    ...folders('crates/moe-core/src/').map((d) => `src/${d}/`),
  ];
  t.true(wanted.length > 10);
  for (const w of wanted) t.true(layout.includes(w), `Layout does not mention ${w}`);
});
