// Text cleanup shared by every domain: strict UTF-8 decoding (a bad byte is an error, never a
// replacement character) and one normal form of line endings and blank lines.

import { MoeTrainerError } from '../errors.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function decodeUtf8(bytes: Uint8Array, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new MoeTrainerError('CORPUS_FORMAT', `${what} is not valid UTF-8`);
  }
}

/**
 * `\n` line endings, no trailing spaces, at most one blank line in a row, no leading or
 * trailing blank lines. Control characters other than tab and newline (form feeds in licence
 * texts) are dropped so that no document holds a byte a tokenizer reserves.
 */
export function normalise(text: string): string {
  return text
    .replace(/\r\n?/g, '\n')
    .replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, '')
    .replace(/[ \t]+$/gm, '')
    .replace(/\n{3,}/g, '\n\n')
    .replace(/^\n+|\n+$/g, '');
}
