/**
 * The JSON keys file of docs/protocol.md §4: `{"7777": "<base64 of 32 bytes>", …}`.
 *
 * - `loadKeysFile` reads and validates the whole file, or throws a
 *   KeysFileError naming the file, the entry at fault and the fix; a file
 *   that is only partly valid is never used. Keys are held in a KeySet
 *   (36 bytes a key; keys-file-codec.ts reads and writes the bytes).
 * - `KeysFile` holds the current keys. `reload()` parses on a worker thread
 *   (a million keys take about a second to parse; the event loop keeps
 *   relaying meanwhile), then swaps the new KeySet in in one step and emits
 *   'reload', or keeps the old keys and emits 'reloadError'.
 * - `lookup()` gives a verify-ready key, built on use and kept, bounded,
 *   for the nodes that reconnect (VerifyKeyCache).
 * - Opened with `mayBeMissing` (the CLI's default ./keys.json), a file that
 *   does not exist yet means no keys, and is loaded once it appears.
 * - `watch()` reloads on change (file-watch.ts: renames, symlink swaps such
 *   as a Kubernetes ConfigMap's `..data`, a file created later), and skips
 *   content identical to the last load (compared by SHA-256, not by keeping
 *   the file's bytes).
 * - `writeKeysFileAtomic` (temp file, fsync, rename over) serves `beacon keys
 *   add`. Not here: revoking peers and SIGHUP; the beacon listens to 'reload'
 *   and calls `reload()` itself.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { NodeId } from '../protocol';
import type { RegisteredKey } from './keys';
import { watchFile, type FileWatch } from './file-watch';
import { KeySet } from './key-set';
import { formatKeySet, keySetFromText, parseKeysFile } from './keys-file-codec';
import { KeysFileError, readError } from './keys-file-error';
import { keysFileDigest, readKeysFileBytes } from './keys-file-read';
import { runKeysFileJob, type KeysFileJob, type KeysFileJobResult } from './keys-file-job';
import { VerifyKeyCache } from './verify-key-cache';

export { KeysFileError, type KeysFileErrorCode } from './keys-file-error';
export { KeySet } from './key-set';

/** Changes closer together than this become one reload (editors write in several steps). */
export const KEYS_FILE_DEBOUNCE_MS = 100;

/** The most keys kept for nodes that reconnect, whatever the beacon's --max-peers (~52 MB at ~1.6 KB a key). */
export const MAX_RETURNING_KEYS = 32_768;

export interface KeysFileOptions {
  /** A missing file is no error: the beacon starts with no keys and waits for it. */
  mayBeMissing?: boolean;
  /** Keys kept for nodes that reconnect (VerifyKeyCache): the beacon gives --max-peers, up to MAX_RETURNING_KEYS. */
  returningKeys?: number;
}

/**
 * Files up to this size are parsed on the event loop (under ~3 ms, about
 * 4,000 keys), after a read on the thread pool: a worker thread would cost
 * more than it saves. Bigger ones go to a worker.
 */
export const KEYS_FILE_INLINE_PARSE_BYTES = 256 * 1024;

/** Reads and validates the keys file; throws KeysFileError. */
export function loadKeysFile(file: string): KeySet {
  return parseKeysFile(file, readKeysFileBytes(file));
}

/** What a KeysFile emits. */
export interface KeysFileEvents {
  /** The file changed and was loaded; the set is the new keys. */
  reload: [keys: KeySet];
  /** A reload failed; the previous keys stay in use. */
  reloadError: [error: KeysFileError];
}

/** One load at a time; a load asked for while one runs waits for it, and joins any already waiting. */
interface QueuedLoad {
  skipIfUnchanged: boolean;
  done: Promise<boolean>;
}

/** The keys file as loaded now, reloadable on demand and on change. */
export class KeysFile extends EventEmitter<KeysFileEvents> {
  readonly path: string;
  #keys: KeySet;
  #digest: Buffer;
  readonly #verifyKeys: VerifyKeyCache;
  #watcher: FileWatch | undefined;
  /** False while a file opened with `mayBeMissing` has not appeared yet. */
  #exists: boolean;
  #loading: Promise<boolean> | undefined;
  #queued: QueuedLoad | undefined;
  #worker: Worker | undefined;
  #closed = false;

  private constructor(file: string, digest: Buffer, keys: KeySet, exists: boolean, returningKeys: number) {
    super();
    this.#verifyKeys = new VerifyKeyCache(Math.min(returningKeys, MAX_RETURNING_KEYS));
    this.path = file;
    this.#digest = digest;
    this.#keys = keys;
    this.#exists = exists;
  }

  /**
   * Loads the file on this thread (start-up: nothing is served yet); throws
   * KeysFileError when it is invalid, or missing unless `mayBeMissing` (then
   * it starts with no keys and `exists` is false until the file appears).
   */
  static open(file: string, options: KeysFileOptions = {}): KeysFile {
    const returning = options.returningKeys ?? 0;
    if (options.mayBeMissing && !fs.existsSync(file)) return new KeysFile(file, Buffer.alloc(0), KeySet.EMPTY, false, returning);
    const bytes = readKeysFileBytes(file);
    return new KeysFile(file, keysFileDigest(bytes), parseKeysFile(file, bytes), true, returning);
  }

  /** False while a file opened with `mayBeMissing` has not appeared yet. */
  get exists(): boolean {
    return this.#exists;
  }

  get keys(): KeySet {
    return this.#keys;
  }

  get size(): number {
    return this.#keys.size;
  }

  /** The node's verify-ready key, or undefined when the file does not list it. */
  lookup(nodeId: NodeId): RegisteredKey | undefined {
    return this.#verifyKeys.lookup(this.#keys, nodeId);
  }

  /**
   * Re-reads the file off the event loop (SIGHUP). Resolves true once the new
   * keys are in ('reload' emitted), false when the file was invalid
   * ('reloadError' emitted, old keys kept) or the KeysFile was closed.
   */
  reload(): Promise<boolean> {
    return this.#load(false);
  }

  /** Reloads automatically when the file changes (file-watch.ts); idempotent. Throws KeysFileError ('watch_failed'). */
  watch(): void {
    if (this.#watcher) return;
    try {
      this.#watcher = watchFile(this.path, {
        debounceMs: KEYS_FILE_DEBOUNCE_MS,
        onChange: () => void this.#load(true),
        onError: (err) => {
          this.#watcher = undefined;
          this.emit('reloadError', new KeysFileError('watch_failed', this.path,
            `watching stopped (${err.message}); changes are picked up on SIGHUP only`));
        },
      });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      throw new KeysFileError('watch_failed', this.path,
        `cannot watch ${path.dirname(path.resolve(this.path))} (${message}); changes are picked up on SIGHUP only`);
    }
  }

  /** Stops watching and any load in progress (its promise resolves false). */
  close(): void {
    this.#closed = true;
    this.#stopWatching();
    void this.#worker?.terminate();
    this.#verifyKeys.clear();
  }

  #stopWatching(): void {
    this.#watcher?.close();
    this.#watcher = undefined;
  }

  #load(skipIfUnchanged: boolean): Promise<boolean> {
    if (this.#closed) return Promise.resolve(false);
    if (!this.#loading) return this.#startLoad(skipIfUnchanged);
    // The file may have changed after the running load read it: one more
    // load after it, shared by everyone who asks meanwhile.
    if (this.#queued) {
      this.#queued.skipIfUnchanged &&= skipIfUnchanged;
      return this.#queued.done;
    }
    const queued: QueuedLoad = {
      skipIfUnchanged,
      done: this.#loading.then(() => {
        this.#queued = undefined;
        return this.#closed ? false : this.#startLoad(queued.skipIfUnchanged);
      }),
    };
    this.#queued = queued;
    return queued.done;
  }

  #startLoad(skipIfUnchanged: boolean): Promise<boolean> {
    const loading = this.#loadOffThread(skipIfUnchanged).finally(() => {
      if (this.#loading === loading) this.#loading = undefined;
    });
    this.#loading = loading;
    return loading;
  }

  async #loadOffThread(skipIfUnchanged: boolean): Promise<boolean> {
    // A file that may be missing and never was there: still no keys, nothing failed.
    if (!this.#exists && !fs.existsSync(this.path)) return false;
    const job: KeysFileJob = { file: this.path, ...(skipIfUnchanged ? { unlessDigest: this.#digest } : {}) };
    let result: KeysFileJobResult | undefined;
    try {
      result = await this.#isSmall() ? await runKeysFileJobInline(job) : await this.#runWorker(job);
    } catch (err) {
      result = { kind: 'failed', code: 'unreadable', problem: `could not be loaded (${(err as Error).message}); the previous keys stay in use` };
    }
    if (this.#closed || result === undefined) return false;
    switch (result.kind) {
      case 'unchanged':
        return true;
      case 'failed':
        this.emit('reloadError', new KeysFileError(result.code, this.path, result.problem, result.entry));
        return false;
      case 'loaded':
        this.#digest = Buffer.from(result.digest);
        this.#keys = new KeySet(result.ids, result.raws);
        this.#exists = true;
        this.emit('reload', this.#keys);
        return true;
    }
  }

  /** Whether the file is small enough to parse on the event loop; a file that cannot be stat'ed goes to the worker, which reports why. */
  async #isSmall(): Promise<boolean> {
    try {
      return (await fs.promises.stat(this.path)).size <= KEYS_FILE_INLINE_PARSE_BYTES;
    } catch {
      return false;
    }
  }

  /** The worker's one reply; undefined when it was terminated (close()). */
  #runWorker(job: KeysFileJob): Promise<KeysFileJobResult | undefined> {
    return new Promise((resolve, reject) => {
      const worker = new Worker(path.join(__dirname, 'keys-file-worker.js'), { workerData: job });
      this.#worker = worker;
      let result: KeysFileJobResult | undefined;
      let failure: Error | undefined;
      worker.once('message', (message: KeysFileJobResult) => {
        result = message;
      });
      worker.once('error', (err) => {
        failure = err;
      });
      worker.once('exit', () => {
        if (this.#worker === worker) this.#worker = undefined;
        if (failure && !result) reject(failure);
        else resolve(result);
      });
    });
  }
}

/** A small file's job on the event loop: the read on the thread pool, the rest (a few ms at most) here. */
async function runKeysFileJobInline(job: KeysFileJob): Promise<KeysFileJobResult> {
  let bytes: Buffer;
  try {
    bytes = await fs.promises.readFile(job.file);
  } catch (err) {
    const error = readError(job.file, err);
    return { kind: 'failed', code: error.code, problem: error.problem };
  }
  return runKeysFileJob(job, bytes).result;
}

/** The file's text: sorted by node ID, 2-space indent, trailing newline. Throws KeysFileError for an invalid entry. */
export function formatKeysFile(file: string, keys: ReadonlyMap<NodeId, string>): string {
  return formatKeySet(keySetFromText(file, keys)).toString('latin1');
}

/**
 * Writes the keys file so that a reader sees the old or the new file, never
 * half of one: temp file in the same directory, fsync, rename over, mode 0644.
 * Takes a KeySet (already valid) or entries as base64 text; throws
 * KeysFileError for an invalid entry (nothing is written).
 */
export function writeKeysFileAtomic(file: string, keys: KeySet | ReadonlyMap<NodeId, string>): void {
  const bytes = formatKeySet(keys instanceof KeySet ? keys : keySetFromText(file, keys));
  const dir = path.dirname(path.resolve(file));
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    writeAndSync(temp, bytes);
    fs.renameSync(temp, file);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw err;
  }
  syncDirectory(dir);
}

function writeAndSync(file: string, bytes: Buffer): void {
  const fd = fs.openSync(file, 'wx', 0o644);
  try {
    fs.fchmodSync(fd, 0o644); // the umask may have narrowed the mode
    fs.writeFileSync(fd, bytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Makes the rename durable; some platforms cannot fsync a directory. */
function syncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Best effort: the data itself is already synced.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
