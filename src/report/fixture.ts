// Deterministic synthetic runs for the report's test and for working on its look: "micro" routes
// near-uniformly, "global" specialises experts by domain, the contrast Qiu et al. 2025 report.
// Seeded (src/rng.ts), so every call returns identical data.

import { jsDivergence, maxOverUniform, mutualInformation } from '../metrics.js';
import type { DomainEval, EvalResult, LayerSpecialisation, RunResult, StepMetrics } from '../results.js';
import { rng } from '../rng.js';
import type { RunData } from './render.js';

const DOMAINS = ['en', 'es', 'tex', 'legal', 'code'];
const K = 2;
const STEPS = 50;
const EVAL_STEPS = [16, 33, 49];
const TOKENS = [4096, 3072, 2048, 2560, 3584];
/** Per-domain loss offsets (nats): code and tex are easier for a byte model than prose. */
const DOMAIN_LOSS = [0.12, 0.2, -0.15, 0.05, -0.25];

/** Experts a domain prefers: two of up to 16 experts; beyond, about one in 2D, scattered over the indices. */
function prefers(E: number, d: number, l: number, i: number): boolean {
  if (E <= 16) return i === (d * 3 + l) % E || i === (d * 3 + l + 5) % E;
  return (i * 7 + l) % (2 * DOMAINS.length) === d;
}

/**
 * One layer's routing at "sharpness" s: each domain prefers its experts with weight s + 1 against
 * 1 for the others (plus jitter), scaled so each row sums to K. Every entry stays below 1 as a real
 * top-k frequency must: 2 (s + 1) / (6 + 2 (s + 1)) < 1.
 */
function layer(E: number, sharpness: number, l: number, r: () => number): LayerSpecialisation {
  const frequency = DOMAINS.map((_, d) => {
    const w = Array.from({ length: E }, (_, i) => {
      const preferred = prefers(E, d, l, i);
      return (preferred ? sharpness + 1 : 1) * (0.9 + 0.2 * r());
    });
    const sum = w.reduce((a, v) => a + v, 0);
    return w.map((v) => (K * v) / sum);
  });
  const counts = frequency.map((row, d) => row.map((f) => f * TOKENS[d]));
  return {
    frequency,
    maxOverUniform: maxOverUniform(frequency, K),
    mutualInformation: mutualInformation(counts),
    topkScore: DOMAINS.map(() => 0.55 + 0.1 * sharpness / (sharpness + 4) + 0.02 * r()),
    jsDivergence: frequency.map((p) => frequency.map((q) => jsDivergence(p, q))),
  };
}

function domainEval(loss: number, tokens: number): DomainEval {
  return { loss, bitsPerByte: loss / Math.LN2, perplexity: Math.exp(loss), tokens };
}

/** Training loss of the toy curve at a step: fast initial drop, slow tail. */
const curve = (step: number, floor: number): number => floor + 3.6 * Math.exp(-step / 9) + 0.5 * Math.exp(-step / 40);

function run(name: string, seed: number, specialise: boolean, E: number, L: number): RunData {
  const r = rng(seed);
  const floor = specialise ? 1.45 : 1.55;
  const metrics: StepMetrics[] = Array.from({ length: STEPS }, (_, step) => {
    // Global-batch balancing lets single micro-batches stay imbalanced; micro balancing does not.
    const lblMicro = Array.from({ length: L }, (_, l) => (specialise ? 1.12 + 0.05 * l : 1.01) + 0.03 * r() + 0.3 * Math.exp(-step / 6));
    const lblGlobal = Array.from({ length: L }, () => (specialise ? 1.02 : 1.01) + 0.02 * r() + 0.25 * Math.exp(-step / 6));
    return {
      kind: 'step',
      step,
      loss: curve(step, floor) + 0.08 * (r() - 0.5),
      lbl: { [name]: specialise ? lblGlobal : lblMicro },
      lblMicro,
      lblGlobal,
      zLoss: 2e-4 * (1 + r()),
      globalImbalance: Array.from({ length: L }, () => 0.04 + 0.06 * r() + 0.5 * Math.exp(-step / 8)),
      microImbalance: Array.from({ length: L }, () => (specialise ? 0.35 : 0.12) + 0.1 * r()),
      gradNorm: 0.6 + 2 * Math.exp(-step / 10) + 0.1 * r(),
      lr: 3e-3 * Math.min(1, (step + 1) / 5),
      tokensPerSec: 41000 + 2000 * r(),
      stepMs: 195 + 10 * r(),
    };
  });
  const evals: EvalResult[] = EVAL_STEPS.map((step, k) => {
    const base = curve(step, floor) + 0.06;
    const perDomain = Object.fromEntries(DOMAINS.map((d, i) => [d, domainEval(base + DOMAIN_LOSS[i], TOKENS[i])]));
    const total = TOKENS.reduce((a, v) => a + v, 0);
    const meanLoss = DOMAINS.reduce((a, d, i) => a + perDomain[d].loss * TOKENS[i], 0) / total;
    // Specialisation grows with training and with depth; micro stays close to uniform throughout.
    const layers = Array.from({ length: L }, (_, l) => layer(E, specialise ? (1.5 + 2 * l) * (k + 1) / EVAL_STEPS.length : 0.08, l, r));
    return { step, perDomain, mean: domainEval(meanLoss, total), layers };
  });
  const result: RunResult = {
    name,
    config: { preset: 'fixture', balance: { terms: [{ scope: name, coef: 1e-3 }] }, steps: STEPS, layers: L, experts: E, topK: K },
    domains: DOMAINS,
    numExperts: E,
    topK: K,
    evals,
    seconds: STEPS * 0.2,
    stepsDone: STEPS,
    machine: 'synthetic fixture',
  };
  return { result, metrics };
}

/** The micro and global runs, with 8 experts in 4 layers unless asked for others. */
export function fixtureRuns(opts: { experts?: number; layers?: number } = {}): RunData[] {
  const { experts = 8, layers = 4 } = opts;
  return [run('micro', 1, false, experts, layers), run('global', 2, true, experts, layers)];
}
