/** Reading the keys file's bytes, shared by the event loop (start-up, `keys add`) and the reload worker. */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { readError } from './keys-file-error';

/** The whole file; throws KeysFileError ('not_found', 'unreadable'). */
export function readKeysFileBytes(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw readError(file, err);
  }
}

/** What "the same content" means for skipping a reload: 32 bytes kept, not the file (60 MB for a million keys). */
export function keysFileDigest(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest();
}
