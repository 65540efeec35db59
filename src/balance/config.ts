// Balance configuration: one or more load-balancing terms, each with its own scope and coefficient,
// plus the router z-loss. Validated with zod so a bad config fails with one readable line.

import { z } from 'zod';
import { MoeTrainerError } from '../errors.js';

export const SCOPES = ['sequence', 'micro', 'dp', 'global', 'global-exact'] as const;
export type Scope = (typeof SCOPES)[number];

export const balanceTermSchema = z
  .object({
    /** Which sequences estimate the expert frequencies f (DESIGN §2). */
    scope: z.enum(SCOPES).optional(),
    /** The paper's "Balance BSZ": f over consecutive groups of this many sequences. */
    balanceSequences: z.number().int().positive().optional(),
    /** alpha: the term's weight in the loss (LBL = 1 at perfect balance). */
    coef: z.number().nonnegative(),
  })
  .strict()
  .refine((t) => (t.scope === undefined) !== (t.balanceSequences === undefined), {
    message: 'each balance term needs exactly one of `scope` or `balanceSequences`',
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
    scope: z.enum(SCOPES),
    /** u: the bias update speed (DeepSeek-V3 used 1e-3) */
    rate: z.number().positive(),
  })
  .strict();

export const balanceConfigSchema = z
  .object({
    terms: z.array(balanceTermSchema),
    /** beta of the router z-loss  beta * (1/T_glob) * sum_t logsumexp(z_t)^2. */
    zLoss: z.number().nonnegative().default(0),
    lossFree: lossFreeSchema.optional(),
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

/** A readable name of a term, used as its key in logs ("global", "micro", "bsz=4"). */
export function termName(t: BalanceTerm): string {
  return t.scope ?? `bsz=${t.balanceSequences}`;
}
