/**
 * The JSON keys file of PROTOCOL.md §4: `{"7777": "<base64 of 32 bytes>", …}`.
 *
 * - `loadKeysFile` reads and validates the whole file, or throws a
 *   KeysFileError naming the file, the entry at fault and the fix; a file
 *   that is only partly valid is never used.
 * - `KeysFile` holds the current keys; `reload()` swaps them in one step and
 *   emits 'reload', or keeps the old ones and emits 'reloadError'.
 * - `watch()` watches the directory (editors and `beacon keys add` replace the
 *   file by rename), debounced, and skips content identical to the last load.
 * - `writeKeysFileAtomic` (temp file, fsync, rename over) serves `beacon keys
 *   add`. Not here: revoking peers and SIGHUP; the beacon listens to 'reload'
 *   and calls `reload()` itself.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { MAX_NODE_ID, PUBLIC_KEY_BYTES, decodeBase64Exact, type NodeId } from '../protocol';
import { registeredKey, type RegisteredKey } from './keys';

/** Changes closer together than this become one reload (editors write in several steps). */
export const KEYS_FILE_DEBOUNCE_MS = 100;

/** A decimal node ID as written in the file: no sign, no spaces, no leading zeros. */
const NODE_ID_TEXT = /^[1-9][0-9]{0,9}$/;

/** Stable codes, so callers and tests match on codes, not on text. */
export type KeysFileErrorCode =
  | 'not_found'
  | 'unreadable'
  | 'bad_json'
  | 'not_object'
  | 'bad_node_id'
  | 'bad_public_key'
  | 'watch_failed';

export class KeysFileError extends Error {
  override name = 'KeysFileError';
  readonly code: KeysFileErrorCode;
  readonly file: string;
  /** The entry (node ID as written) at fault, when one is. */
  readonly entry?: string;

  constructor(code: KeysFileErrorCode, file: string, problem: string, entry?: string) {
    const where = entry === undefined ? `keys file ${file}` : `keys file ${file}: entry ${JSON.stringify(entry)}`;
    super(`${where}: ${problem}`);
    this.code = code;
    this.file = file;
    if (entry !== undefined) this.entry = entry;
  }
}

/** Reads and validates the keys file; throws KeysFileError. */
export function loadKeysFile(file: string): Map<NodeId, RegisteredKey> {
  return parseKeysFile(file, readKeysFileBytes(file));
}

function readKeysFileBytes(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw readError(file, err);
  }
}

function readError(file: string, err: unknown): KeysFileError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') {
    return new KeysFileError('not_found', file,
      `not found (create it with: beacon keys add --keys ${file} --node-id N --public-key B64)`);
  }
  if (code === 'EISDIR') return new KeysFileError('unreadable', file, 'is a directory; give the path of the JSON file');
  const message = err instanceof Error ? err.message : String(err);
  return new KeysFileError('unreadable', file, `cannot be read (${message}); check that the beacon's user may read it`);
}

function parseKeysFile(file: string, bytes: Buffer): Map<NodeId, RegisteredKey> {
  const entries = parseJsonObject(file, bytes);
  const keys = new Map<NodeId, RegisteredKey>();
  for (const [entry, value] of Object.entries(entries)) {
    const nodeId = parseNodeIdText(file, entry);
    keys.set(nodeId, registeredKey(nodeId, parsePublicKey(file, entry, value), 'file'));
  }
  return keys;
}

function parseJsonObject(file: string, bytes: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    // A UTF-8 byte order mark is what some editors put first; JSON does not allow it.
    value = JSON.parse(bytes.toString('utf8').replace(/^\uFEFF/, ''));
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new KeysFileError('bad_json', file, `invalid JSON (${message}); fix the syntax or rewrite it with beacon keys add`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
    throw new KeysFileError('not_object', file,
      `must be a JSON object mapping node IDs to public keys, e.g. {"7777": "<base64>"} (got ${got})`);
  }
  return value as Record<string, unknown>;
}

function parseNodeIdText(file: string, entry: string): NodeId {
  const nodeId = NODE_ID_TEXT.test(entry) ? Number(entry) : NaN;
  if (!(nodeId >= 1 && nodeId <= MAX_NODE_ID)) {
    throw new KeysFileError('bad_node_id', file, `node ID must be a decimal number from 1 to ${MAX_NODE_ID}`, entry);
  }
  return nodeId;
}

function parsePublicKey(file: string, entry: string, value: unknown): Buffer {
  const raw = decodeBase64Exact(value, PUBLIC_KEY_BYTES);
  if (raw) return raw;
  throw new KeysFileError('bad_public_key', file,
    `public key must be base64 of ${PUBLIC_KEY_BYTES} bytes (got ${describeBadKey(value)})`, entry);
}

/** Says what was found instead of a key, for the error message. */
function describeBadKey(value: unknown): string {
  if (typeof value !== 'string') return value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
  const length = Buffer.from(value, 'base64').length;
  if (decodeBase64Exact(value, length)) return `${length} bytes`;
  return 'text that is not standard base64 with padding (alphabet A-Z a-z 0-9 + /, padded with =)';
}

/** What a KeysFile emits. */
export interface KeysFileEvents {
  /** The file changed and was loaded; the map is the new set of keys. */
  reload: [keys: ReadonlyMap<NodeId, RegisteredKey>];
  /** A reload failed; the previous keys stay in use. */
  reloadError: [error: KeysFileError];
}

/** The keys file as loaded now, reloadable on demand and on change. */
export class KeysFile extends EventEmitter<KeysFileEvents> {
  readonly path: string;
  #keys: Map<NodeId, RegisteredKey>;
  #lastBytes: Buffer;
  #watcher: fs.FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;

  private constructor(file: string, bytes: Buffer, keys: Map<NodeId, RegisteredKey>) {
    super();
    this.path = file;
    this.#lastBytes = bytes;
    this.#keys = keys;
  }

  /** Loads the file; throws KeysFileError when it is missing or invalid. */
  static open(file: string): KeysFile {
    const bytes = readKeysFileBytes(file);
    return new KeysFile(file, bytes, parseKeysFile(file, bytes));
  }

  get keys(): ReadonlyMap<NodeId, RegisteredKey> {
    return this.#keys;
  }

  get size(): number {
    return this.#keys.size;
  }

  /** Re-reads the file (SIGHUP); false, 'reloadError' and the old keys kept when it is invalid. */
  reload(): boolean {
    return this.#load(false);
  }

  /** Reloads automatically when the file changes; idempotent. Throws KeysFileError ('watch_failed'). */
  watch(): void {
    if (this.#watcher) return;
    const name = path.basename(this.path);
    // The directory, not the file: a rename over the file would leave a file
    // watch on the old, unlinked inode. Not persistent: watching alone never
    // keeps the process alive.
    const dir = path.dirname(path.resolve(this.path));
    try {
      this.#watcher = fs.watch(dir, { persistent: false }, (_event, changed) => {
        if (changed === null || changed === name) this.#scheduleReload();
      });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      throw new KeysFileError('watch_failed', this.path, `cannot watch ${dir} (${message}); changes are picked up on SIGHUP only`);
    }
    this.#watcher.on('error', (err) => {
      this.close();
      this.emit('reloadError', new KeysFileError('watch_failed', this.path,
        `watching stopped (${err.message}); changes are picked up on SIGHUP only`));
    });
  }

  /** Stops watching. */
  close(): void {
    clearTimeout(this.#debounce);
    this.#debounce = undefined;
    this.#watcher?.close();
    this.#watcher = undefined;
  }

  #scheduleReload(): void {
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined;
      this.#load(true);
    }, KEYS_FILE_DEBOUNCE_MS);
    this.#debounce.unref();
  }

  #load(skipIfUnchanged: boolean): boolean {
    let bytes: Buffer;
    let keys: Map<NodeId, RegisteredKey>;
    try {
      bytes = readKeysFileBytes(this.path);
      if (skipIfUnchanged && bytes.equals(this.#lastBytes)) return true;
      keys = parseKeysFile(this.path, bytes);
    } catch (err) {
      this.emit('reloadError', err instanceof KeysFileError ? err : readError(this.path, err));
      return false;
    }
    this.#lastBytes = bytes;
    this.#keys = keys;
    this.emit('reload', keys);
    return true;
  }
}

/** The file's text: sorted by node ID, 2-space indent, trailing newline. */
export function formatKeysFile(file: string, keys: ReadonlyMap<NodeId, string>): string {
  const ids = [...keys.keys()].sort((a, b) => a - b);
  const lines = ids.map((nodeId) => {
    const entry = String(nodeId);
    parseNodeIdText(file, entry);
    const key = keys.get(nodeId);
    parsePublicKey(file, entry, key);
    return `  ${JSON.stringify(entry)}: ${JSON.stringify(key)}`;
  });
  return lines.length === 0 ? '{}\n' : `{\n${lines.join(',\n')}\n}\n`;
}

/**
 * Writes the keys file so that a reader sees the old or the new file, never
 * half of one: temp file in the same directory, fsync, rename over, mode 0644.
 * Throws KeysFileError for an invalid entry (nothing is written).
 */
export function writeKeysFileAtomic(file: string, keys: ReadonlyMap<NodeId, string>): void {
  const text = formatKeysFile(file, keys);
  const dir = path.dirname(path.resolve(file));
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    writeAndSync(temp, text);
    fs.renameSync(temp, file);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw err;
  }
  syncDirectory(dir);
}

function writeAndSync(file: string, text: string): void {
  const fd = fs.openSync(file, 'wx', 0o644);
  try {
    fs.fchmodSync(fd, 0o644); // the umask may have narrowed the mode
    fs.writeFileSync(fd, text);
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
