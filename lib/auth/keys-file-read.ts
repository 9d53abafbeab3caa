/** Reading the keys file's bytes, shared by the event loop (start-up, `keys add`) and the reload worker. */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { readError } from './keys-file-error';

/**
 * Read in pieces of this size, not in one call: one read() of a 60 MB file
 * kept the core in the kernel for ~200 ms on the (non-preemptible) VM kernel
 * of the benchmark, and the event loop sharing that core waited that long.
 */
const READ_CHUNK_BYTES = 1024 * 1024;

/** The whole file; throws KeysFileError ('not_found', 'unreadable'). */
export function readKeysFileBytes(file: string): Buffer {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const bytes = Buffer.allocUnsafe(fs.fstatSync(fd).size);
    let at = 0;
    while (at < bytes.length) {
      const n = fs.readSync(fd, bytes, at, Math.min(READ_CHUNK_BYTES, bytes.length - at), null);
      if (n === 0) break; // shorter than it was a moment ago: the parse will say what is wrong
      at += n;
    }
    return at === bytes.length ? bytes : bytes.subarray(0, at);
  } catch (err) {
    throw readError(file, err);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** What "the same content" means for skipping a reload: 32 bytes kept, not the file (60 MB for a million keys). */
export function keysFileDigest(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest();
}
