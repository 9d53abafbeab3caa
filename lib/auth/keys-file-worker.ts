/**
 * A worker thread's whole job: read the keys file, skip it if its digest is
 * the one already loaded, parse it, and post the key table back.
 *
 * - The table's two buffers are transferred, not copied; the event loop only
 *   wraps them in a KeySet and swaps it in.
 * - A KeysFileError comes back as its parts (code, problem, entry), so the
 *   loop rebuilds the same error with the same message.
 * - Run through `loadKeysFileOffThread` (keys-file.ts), one worker per load;
 *   the thread ends after posting, and its parse garbage with it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { readKeysFileBytes, keysFileDigest } from './keys-file-read';
import { parseKeysFile } from './keys-file-codec';
import { KeysFileError, readError, type KeysFileErrorCode } from './keys-file-error';

export interface KeysFileJob {
  file: string;
  /** Reply 'unchanged' without parsing when the file's digest is this one. */
  unlessDigest?: Uint8Array;
}

export type KeysFileJobResult =
  | { kind: 'unchanged' }
  | { kind: 'loaded'; ids: Uint32Array; raws: Uint8Array; digest: Uint8Array }
  | { kind: 'failed'; code: KeysFileErrorCode; problem: string; entry?: string };

function run(job: KeysFileJob): { result: KeysFileJobResult; transfer: ArrayBuffer[] } {
  try {
    const bytes = readKeysFileBytes(job.file);
    const digest = keysFileDigest(bytes);
    if (job.unlessDigest && Buffer.from(job.unlessDigest).equals(digest)) return { result: { kind: 'unchanged' }, transfer: [] };
    const { ids, raws } = parseKeysFile(job.file, bytes).tables;
    return { result: { kind: 'loaded', ids, raws, digest }, transfer: [ids.buffer as ArrayBuffer, raws.buffer as ArrayBuffer] };
  } catch (err) {
    const error = err instanceof KeysFileError ? err : readError(job.file, err);
    return { result: { kind: 'failed', code: error.code, problem: error.problem, ...(error.entry === undefined ? {} : { entry: error.entry }) }, transfer: [] };
  }
}

if (parentPort) {
  const { result, transfer } = run(workerData as KeysFileJob);
  parentPort.postMessage(result, transfer);
}
