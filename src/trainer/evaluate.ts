// Held-out evaluation per domain (DESIGN §7): loss in bits per byte and perplexity, and per layer
// the routing specialisation — selection frequency per domain, max-frequency / uniform, mutual
// information between domain and expert, top-k score, Jensen–Shannon divergence between domains.
// Statistics-only forwards: nothing is stored and no balance buffer is touched.

import type { MoeModel } from '../../index.js';
import type { Split } from '../corpus/split.js';
import type { DataPipeline } from '../data/pipeline.js';
import { jsDivergence, maxOverUniform, mutualInformation, selectionFrequency } from '../metrics.js';
import type { DomainEval, EvalResult, LayerSpecialisation } from '../results.js';

const EVAL_BATCH = 8;

function domainEval(nats: number, tokens: number, bytes: number): DomainEval {
  const loss = tokens > 0 ? nats / tokens : NaN;
  return { loss, bitsPerByte: bytes > 0 ? nats / Math.LN2 / bytes : NaN, perplexity: Math.exp(loss), tokens };
}

export async function evaluate(model: MoeModel, data: DataPipeline, split: Split, maxTokens: number, step: number): Promise<EvalResult> {
  const { num_experts: E, num_experts_per_tok: K } = model.config;
  const L = model.moeLayers.length;
  const D = data.domains.length;
  const counts = Array.from({ length: L }, () => Array.from({ length: D }, () => new Array<number>(E).fill(0)));
  const topk = Array.from({ length: L }, () => new Array<number>(D).fill(0));
  const perDomain: Record<string, DomainEval> = {};
  let [allNats, allTokens, allBytes] = [0, 0, 0];
  for (const [d, domain] of data.domains.entries()) {
    const seqs = data.evalSequences(split, domain, maxTokens);
    let [nats, tokens, bytes] = [0, 0, 0];
    for (let i = 0; i < seqs.length; i += EVAL_BATCH) {
      const group = seqs.slice(i, i + EVAL_BATCH);
      const B = group.length;
      const tokensIn = new Uint32Array(B * data.cfg.seqLen);
      group.forEach((s, j) => tokensIn.set(s, j * data.cfg.seqLen));
      const out = await model.forward(tokensIn, B, { store: false });
      nats += out.lossSum;
      tokens += out.validTokens.reduce((a, v) => a + v, 0);
      bytes += group.reduce((a, s) => a + data.targetBytes(s), 0);
      for (let l = 0; l < L; l++) {
        for (let q = 0; q < B; q++) {
          for (let e = 0; e < E; e++) counts[l][d][e] += out.counts[(l * B + q) * E + e];
          topk[l][d] += out.topkScoreSums[l * B + q];
        }
      }
    }
    perDomain[domain] = domainEval(nats, tokens, bytes);
    [allNats, allTokens, allBytes] = [allNats + nats, allTokens + tokens, allBytes + bytes];
  }
  const layers: LayerSpecialisation[] = counts.map((c, l) => {
    const tokensPerDomain = data.domains.map((dm) => perDomain[dm].tokens);
    const frequency = selectionFrequency(c, tokensPerDomain);
    return {
      frequency,
      maxOverUniform: maxOverUniform(frequency, K),
      mutualInformation: mutualInformation(c),
      topkScore: topk[l].map((v, d) => v / tokensPerDomain[d]),
      jsDivergence: c.map((a) => c.map((b) => jsDivergence(a, b))),
    };
  });
  return { step, perDomain, mean: domainEval(allNats, allTokens, allBytes), layers };
}
