// The fixed train / validation / test assignment of whole documents: FNV-1a 32-bit of
// "<domain>/<docId>", mod 20. A hash rather than a random draw, so that adding or removing one
// document never moves another between splits.

export type Split = 'train' | 'validation' | 'test';

export const SPLITS: readonly Split[] = ['train', 'validation', 'test'];

/** FNV-1a 32-bit over the UTF-8 bytes of `s`, as an unsigned integer. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(s, 'utf8')) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** Bucket 0 of 20 is test, bucket 1 validation, the other 18 train (5% / 5% / 90%). */
export function splitOf(domain: string, docId: string): Split {
  const bucket = fnv1a32(`${domain}/${docId}`) % 20;
  return bucket === 0 ? 'test' : bucket === 1 ? 'validation' : 'train';
}
