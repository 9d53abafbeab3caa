/**
 * One load of the keys file, as a job with a plain-data result, so that it
 * runs the same on a worker thread (keys-file-worker.ts) and, for a small
 * file, on the event loop.
 *
 * - Skipped ('unchanged') when the file's digest is the one already loaded.
 * - The key table comes back as two typed arrays whose buffers a worker
 *   transfers, not copies.
 * - A KeysFileError comes back as its parts (code, problem, entry), so the
 *   receiver rebuilds the same error with the same message.
 */
import { parseKeysFile } from './keys-file-codec';
import { KeysFileError, readError, type KeysFileErrorCode } from './keys-file-error';
import { keysFileDigest, readKeysFileBytes } from './keys-file-read';

export interface KeysFileJob {
  file: string;
  /** Reply 'unchanged' without parsing when the file's digest is this one. */
  unlessDigest?: Uint8Array;
}

export type KeysFileJobResult =
  | { kind: 'unchanged' }
  | { kind: 'loaded'; ids: Uint32Array; raws: Uint8Array; digest: Uint8Array }
  | { kind: 'failed'; code: KeysFileErrorCode; problem: string; entry?: string };

/** Runs the job on `bytes` (read here when not given); never throws. `transfer` lists the buffers to move to another thread. */
export function runKeysFileJob(job: KeysFileJob, bytes?: Buffer): { result: KeysFileJobResult; transfer: ArrayBuffer[] } {
  try {
    const content = bytes ?? readKeysFileBytes(job.file);
    const digest = keysFileDigest(content);
    if (job.unlessDigest && Buffer.from(job.unlessDigest).equals(digest)) return { result: { kind: 'unchanged' }, transfer: [] };
    const { ids, raws } = parseKeysFile(job.file, content).tables;
    return { result: { kind: 'loaded', ids, raws, digest }, transfer: [ids.buffer as ArrayBuffer, raws.buffer as ArrayBuffer] };
  } catch (err) {
    const error = err instanceof KeysFileError ? err : readError(job.file, err);
    const entry = error.entry === undefined ? {} : { entry: error.entry };
    return { result: { kind: 'failed', code: error.code, problem: error.problem, ...entry }, transfer: [] };
  }
}
