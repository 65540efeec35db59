// Every error the package throws carries a stable `code`: the native core's (crossing napi as a
// JS Error with `code`) and the TypeScript side's (`MoeTrainerError`). This file is the one list of
// codes; the README's "Errors" table documents each. Callers match on `err.code`, never on messages.

/** Codes of the native crates (`MoeError` in crates/moe-core/src/error.rs, `DataError` in crates/moe-data/src/error.rs). */
export const NATIVE_ERROR_CODES = [
  'INVALID_CONFIG',
  'INVALID_ARGUMENT',
  'SHAPE_MISMATCH',
  'NON_FINITE',
  'TOKEN_OUT_OF_RANGE',
  'CHECKPOINT_CORRUPT',
  'CHECKPOINT_MISSING',
  'UNSUPPORTED_MODEL',
  'IO_ERROR',
  'UNKNOWN_PARAMETER',
  'INVALID_STATE',
  'DEVICE_LOST',
  'OUT_OF_MEMORY',
  'NO_DEVICE',
  'INTERNAL',
  'CORPUS_MISSING',
  'CORPUS_FORMAT',
  'CORPUS_EMPTY',
  'CORPUS_CHECKSUM',
  'DATASET_EXISTS',
  'CANCELLED',
] as const;

/** Codes thrown by the TypeScript side only. */
export const TS_ERROR_CODES = [
  'BALANCE_STATE',
  'CORPUS_FETCH',
  'RUN_NOT_FOUND',
  'RUN_EXISTS',
  'RUN_LOCKED',
  'RESUME_CONFLICT',
  'RUN_INCOMPLETE',
  'NO_RUNS',
  'MPI_UNAVAILABLE',
] as const;

/** Every code an error of this package can carry. */
export type ErrorCode = (typeof NATIVE_ERROR_CODES)[number] | (typeof TS_ERROR_CODES)[number];

/** An Error with a stable `code`, like the native ones. */
export class MoeTrainerError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'MoeTrainerError';
  }
}

/** The code of an error thrown by this package (native or TypeScript), or undefined for any other. */
export function errorCode(e: unknown): ErrorCode | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (NATIVE_ERROR_CODES as readonly string[]).concat(TS_ERROR_CODES).includes(code) ? (code as ErrorCode) : undefined;
}
