// Balance configuration: one or more load-balancing terms, each with its own scope and coefficient,
// plus the router z-loss. Validated with zod so a bad config fails with one readable line.

import { z } from 'zod';
import { MoeTrainerError } from '../errors.js';

export const SCOPES = ['sequence', 'micro', 'dp', 'global', 'global-exact', 'shuffle'] as const;
export type Scope = (typeof SCOPES)[number];
/** The scopes auxiliary-loss-free balancing votes over (`shuffle` is a loss-term estimator only). */
export const LOSS_FREE_SCOPES = ['sequence', 'micro', 'dp', 'global', 'global-exact'] as const;

export const balanceTermSchema = z
  .object({
    /** Which sequences estimate the expert frequencies f (DESIGN §2). */
    scope: z.enum(SCOPES).optional(),
    /** The paper's "Balance BSZ": f over consecutive groups of this many sequences. */
    balanceSequences: z.number().int().positive().optional(),
    /**
     * With balanceSequences N > R b: count each group of N sequences in full, from a statistics
     * pre-pass over the global batch, instead of through the buffer of Algorithm 1 (whose early
     * micro-steps see only part of their group). The paper's Balance BSZ "without buffer".
     */
    exact: z.boolean().optional(),
    /** alpha: the term's weight in the loss (LBL = 1 at perfect balance). */
    coef: z.number().nonnegative(),
  })
  .strict()
  .refine((t) => (t.scope === undefined) !== (t.balanceSequences === undefined), {
    message: 'each balance term needs exactly one of `scope` or `balanceSequences`',
  })
  .refine((t) => t.exact === undefined || t.balanceSequences !== undefined, {
    message: '`exact` belongs to a `balanceSequences` term',
  });

/**
 * Auxiliary-loss-free balancing (Wang et al. 2024, used by DeepSeek-V3): a per-expert bias added to
 * the router scores for top-k selection only, moved after every step against each expert's load.
 * The scope says which token sets must be balanced, as for the loss terms: each group G of the
 * scope (a sequence, a micro-batch, a micro-step over all ranks, the global batch) votes
 * sign(mean_j c_j(G) - c_i(G)) for expert i, and  b_i += rate * (mean of the votes).
 */
export const lossFreeSchema = z
  .object({
    scope: z.enum(LOSS_FREE_SCOPES),
    /** u: the bias update speed (DeepSeek-V3 used 1e-3) */
    rate: z.number().positive(),
  })
  .strict();

/**
 * A change of the balance at an optimiser step (the paper's switch from micro to global balance,
 * or back, in mid-training): from step `step` (0-based, the first step trained with it) on, these
 * terms and this loss-free setting replace the ones before. Router biases learnt by loss-free
 * balancing stay as they are when a phase turns it off.
 */
export const balancePhaseSchema = z
  .object({
    step: z.number().int().positive(),
    terms: z.array(balanceTermSchema),
    lossFree: lossFreeSchema.optional(),
  })
  .strict();

export const balanceConfigSchema = z
  .object({
    terms: z.array(balanceTermSchema),
    /** beta of the router z-loss  beta * (1/T_glob) * sum_t logsumexp(z_t)^2. */
    zLoss: z.number().nonnegative().default(0),
    lossFree: lossFreeSchema.optional(),
    /** later phases, by increasing step; the terms above hold until the first */
    phases: z
      .array(balancePhaseSchema)
      .optional()
      .refine((ps) => !ps || ps.every((p, i) => i === 0 || p.step > ps[i - 1].step), { message: 'phases must come in increasing step order' }),
  })
  .strict();

export type BalanceTerm = z.infer<typeof balanceTermSchema>;
export type LossFree = z.infer<typeof lossFreeSchema>;
export type BalanceConfig = z.output<typeof balanceConfigSchema>;
export type BalanceConfigInput = z.input<typeof balanceConfigSchema>;

export function parseBalanceConfig(input: unknown): BalanceConfig {
  const r = balanceConfigSchema.safeParse(input);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue.path.length ? `balance.${issue.path.join('.')}: ` : 'balance: ';
    throw new MoeTrainerError('INVALID_CONFIG', where + issue.message);
  }
  return r.data;
}

/** A readable name of a term, used as its key in logs ("global", "micro", "bsz=4", "bsz=16-exact"). */
export function termName(t: BalanceTerm): string {
  return t.scope ?? `bsz=${t.balanceSequences}${t.exact ? '-exact' : ''}`;
}

/** The balance in force at optimiser step `step` (0-based): the base terms or the last phase begun. */
export function balanceAt(config: BalanceConfig, step: number): BalanceConfig {
  const phase = config.phases?.filter((p) => p.step <= step).at(-1);
  if (!phase) return { ...config, phases: undefined };
  return { terms: phase.terms, zLoss: config.zLoss, lossFree: phase.lossFree, phases: undefined };
}

/** Which phase holds at `step`: 0 for the base terms, i for phases[i - 1]. */
export function phaseAt(config: BalanceConfig, step: number): number {
  return config.phases?.filter((p) => p.step <= step).length ?? 0;
}
