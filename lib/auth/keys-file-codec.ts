/**
 * The keys file's bytes <-> KeySet (docs/protocol.md §4: `{"7777": "<base64 of
 * 32 bytes>", …}`). No I/O: the KeysFile, its reload worker and `beacon
 * keys add` call these.
 *
 * - `parseKeysFile` first tries a one-pass scanner over the bytes for what
 *   files almost always are (any JSON whitespace, entries `"ID": "KEY"`, no
 *   escapes): no JSON.parse, no string per entry, ~10x faster on a million
 *   keys. Anything else, valid or not, goes to the general path (JSON.parse,
 *   every entry checked in order), so results and errors are exactly those
 *   of JSON.parse and the rules below, whichever path runs.
 * - Rules: an object; keys are decimal node IDs 1..MAX_NODE_ID without sign
 *   or leading zeros; values are standard padded base64 of 32 bytes. A node
 *   written twice keeps its last key, as JSON.parse does.
 * - `formatKeySet` writes sorted by node ID, 2-space indent, trailing
 *   newline: the form the scanner reads fastest.
 */
import { MAX_NODE_ID, PUBLIC_KEY_BYTES, decodeBase64Exact, type NodeId } from '../protocol';
import { KeySet, sortedKeySet } from './key-set';
import { KeysFileError } from './keys-file-error';

/** A decimal node ID as written in the file: no sign, no spaces, no leading zeros. */
const NODE_ID_TEXT = /^[1-9][0-9]{0,9}$/;

/** Reads and validates the file's bytes; throws KeysFileError naming `file`. */
export function parseKeysFile(file: string, bytes: Uint8Array): KeySet {
  return scanPlainKeysFile(bytes) ?? parseGeneralKeysFile(file, bytes);
}

/** Validates entries given as base64 text (for writing); throws KeysFileError. */
export function keySetFromText(file: string, keys: ReadonlyMap<NodeId, string>): KeySet {
  const nodeIds = [...keys.keys()].sort((a, b) => a - b);
  const ids = new Uint32Array(nodeIds.length);
  const raws = new Uint8Array(nodeIds.length * PUBLIC_KEY_BYTES);
  nodeIds.forEach((nodeId, i) => {
    const entry = String(nodeId);
    ids[i] = parseNodeIdText(file, entry);
    raws.set(parsePublicKey(file, entry, keys.get(nodeId)), i * PUBLIC_KEY_BYTES);
  });
  return sortedKeySet(ids, raws, ids.length);
}

export function parseNodeIdText(file: string, entry: string): NodeId {
  const nodeId = NODE_ID_TEXT.test(entry) ? Number(entry) : NaN;
  if (!(nodeId >= 1 && nodeId <= MAX_NODE_ID)) {
    throw new KeysFileError('bad_node_id', file, `node ID must be a decimal number from 1 to ${MAX_NODE_ID}; `
      + `correct or delete this entry in an editor, then check with: beacon keys check ${file}`, entry);
  }
  return nodeId;
}

export function parsePublicKey(file: string, entry: string, value: unknown): Buffer {
  const raw = decodeBase64Exact(value, PUBLIC_KEY_BYTES);
  if (raw) return raw;
  throw new KeysFileError('bad_public_key', file,
    `public key must be base64 of ${PUBLIC_KEY_BYTES} bytes (got ${describeBadKey(value)}); `
    + `set it with: beacon keys add --keys ${file} --node-id ${entry} --public-key B64 --replace, `
    + `or drop it with: beacon keys remove --keys ${file} --node-id ${entry}`, entry);
}

/** Says what was found instead of a key, for the error message. */
function describeBadKey(value: unknown): string {
  if (typeof value !== 'string') return value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
  const length = Buffer.from(value, 'base64').length;
  if (decodeBase64Exact(value, length)) return `${length} bytes`;
  return 'text that is not standard base64 with padding (alphabet A-Z a-z 0-9 + /, padded with =)';
}

// ---- the general path: JSON.parse, then every entry in order ----

function parseGeneralKeysFile(file: string, bytes: Uint8Array): KeySet {
  const object = parseJsonObject(file, bytes);
  if (typeof object.public_key === 'string' && typeof object.private_key === 'string') {
    // The likeliest wrong file: a daemon identity (beacon keygen) given as --keys.
    throw new KeysFileError('identity_file', file, 'is a daemon identity file (it has "public_key" and "private_key"), not a keys file; '
      + `register its public key in a keys file with: beacon keys add --keys keys.json --node-id N --identity ${file}`);
  }
  const entries = Object.entries(object);
  const ids = new Uint32Array(entries.length);
  const raws = new Uint8Array(entries.length * PUBLIC_KEY_BYTES);
  entries.forEach(([entry, value], i) => {
    ids[i] = parseNodeIdText(file, entry);
    raws.set(parsePublicKey(file, entry, value), i * PUBLIC_KEY_BYTES);
  });
  return sortedKeySet(ids, raws, entries.length);
}

function parseJsonObject(file: string, bytes: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    // A UTF-8 byte order mark is what some editors put first; JSON does not allow it.
    value = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8').replace(/^\uFEFF/, ''));
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new KeysFileError('bad_json', file, `invalid JSON (${message}); fix the syntax in an editor, then check it with: beacon keys check ${file}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
    throw new KeysFileError('not_object', file,
      `must be a JSON object mapping node IDs to public keys, e.g. {"7777": "<base64>"} (got ${got})`);
  }
  return value as Record<string, unknown>;
}

// ---- the fast path: one pass over the bytes ----

const QUOTE = 0x22;
const COLON = 0x3a;
const COMMA = 0x2c;
const OPEN = 0x7b;
const CLOSE = 0x7d;
const DIGIT_0 = 0x30;
const DIGIT_1 = 0x31;
const DIGIT_9 = 0x39;
const PAD = 0x3d;
const SPACE = 0x20;
const NEWLINE = 0x0a;
const BASE64_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
/** 6 bits -> their base64 character. */
const BASE64_CHAR = Uint8Array.from(BASE64_ALPHABET, (c) => c.charCodeAt(0));
/** Base64 character -> its 6 bits, or -1. */
const BASE64_VALUE = new Int8Array(256).fill(-1);
for (let i = 0; i < BASE64_ALPHABET.length; i++) BASE64_VALUE[BASE64_ALPHABET.charCodeAt(i)] = i;
/** 32 bytes are 43 base64 characters and one '='. */
const KEY_CHARS = 44;
/** The shortest entry, `"1":"<44 chars>"`, bounds how many a file of N bytes can hold. */
const MIN_ENTRY_BYTES = 3 + 1 + KEY_CHARS + 2;
const MAX_NODE_ID_DIGITS = String(MAX_NODE_ID).length;

/** The position of the first byte at or after `at` that is not JSON whitespace. */
function skipSpace(bytes: Uint8Array, at: number): number {
  for (;;) {
    const byte = bytes[at];
    if (byte !== 0x20 && byte !== 0x0a && byte !== 0x0d && byte !== 0x09) return at;
    at++;
  }
}

/**
 * The file's keys when it has the plain form (JSON whitespace anywhere,
 * `"ID": "KEY"` entries, every one valid, an optional byte order mark);
 * undefined for anything else, which the general path then decides.
 */
export function scanPlainKeysFile(input: Uint8Array): KeySet | undefined {
  // One element type at every access (a Buffer is a subclass), so V8 keeps the loop monomorphic.
  const bytes = new Uint8Array(input.buffer, input.byteOffset, input.length);
  const end = bytes.length;
  let at = end >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  at = skipSpace(bytes, at);
  if (bytes[at++] !== OPEN) return undefined;
  at = skipSpace(bytes, at);
  const capacity = Math.floor(end / MIN_ENTRY_BYTES) + 1;
  const ids = new Uint32Array(capacity);
  const raws = new Uint8Array(capacity * PUBLIC_KEY_BYTES);
  let count = 0;
  if (bytes[at] === CLOSE) {
    at++;
  } else {
    for (;;) {
      // "ID"
      if (bytes[at++] !== QUOTE) return undefined;
      let c = bytes[at] ?? 0;
      if (c < DIGIT_1 || c > DIGIT_9) return undefined;
      let nodeId = 0;
      const digitsEnd = at + MAX_NODE_ID_DIGITS;
      while (c >= DIGIT_0 && c <= DIGIT_9 && at < digitsEnd) {
        nodeId = nodeId * 10 + (c - DIGIT_0);
        c = bytes[++at] ?? 0;
      }
      if (c !== QUOTE || nodeId > MAX_NODE_ID) return undefined;
      at = skipSpace(bytes, at + 1);
      if (bytes[at] !== COLON) return undefined;
      at = skipSpace(bytes, at + 1);
      // "KEY"
      if (bytes[at++] !== QUOTE) return undefined;
      if (count === capacity || !decodeKey(bytes, at, raws, count * PUBLIC_KEY_BYTES)) return undefined;
      at += KEY_CHARS;
      if (bytes[at++] !== QUOTE) return undefined;
      ids[count++] = nodeId;
      at = skipSpace(bytes, at);
      const next = bytes[at++];
      if (next === CLOSE) break;
      if (next !== COMMA) return undefined;
      at = skipSpace(bytes, at);
    }
  }
  return skipSpace(bytes, at) === end ? sortedKeySet(ids, raws, count) : undefined;
}

/** Decodes the 44 characters at `from` (standard base64 of 32 bytes) into `out` at `to`. */
function decodeKey(bytes: Uint8Array, from: number, out: Uint8Array, to: number): boolean {
  if (from + KEY_CHARS > bytes.length || bytes[from + KEY_CHARS - 1] !== PAD) return false;
  let bad = 0;
  let i = from;
  let o = to;
  // Ten groups of four characters: 30 bytes.
  for (let group = 0; group < 10; group++, i += 4) {
    const a = BASE64_VALUE[bytes[i]!]!;
    const b = BASE64_VALUE[bytes[i + 1]!]!;
    const c = BASE64_VALUE[bytes[i + 2]!]!;
    const d = BASE64_VALUE[bytes[i + 3]!]!;
    bad |= a | b | c | d;
    out[o++] = (a << 2) | (b >> 4);
    out[o++] = ((b & 0x0f) << 4) | (c >> 2);
    out[o++] = ((c & 0x03) << 6) | d;
  }
  // Three characters and '=': 2 bytes (the last character's low 2 bits are
  // dropped, as Buffer.from(text, 'base64') does).
  const a = BASE64_VALUE[bytes[i]!]!;
  const b = BASE64_VALUE[bytes[i + 1]!]!;
  const c = BASE64_VALUE[bytes[i + 2]!]!;
  bad |= a | b | c;
  out[o++] = (a << 2) | (b >> 4);
  out[o] = ((b & 0x0f) << 4) | (c >> 2);
  return bad >= 0;
}

// ---- writing ----

const HEAD = '{\n';
const TAIL = '}\n';
/** `  "` + `": "` + 44 characters + `"` + `,` + newline, besides the digits. */
const LINE_FIXED_BYTES = 3 + 4 + KEY_CHARS + 1 + 1 + 1;

/** The file's bytes: sorted by node ID, 2-space indent, trailing newline. */
export function formatKeySet(keys: KeySet): Buffer {
  if (keys.size === 0) return Buffer.from('{}\n');
  const { ids, raws } = keys.tables;
  let length = HEAD.length + TAIL.length - 1; // the last line has no comma
  for (let i = 0; i < ids.length; i++) length += LINE_FIXED_BYTES + decimalDigits(ids[i]!);
  const out = Buffer.allocUnsafe(length);
  let at = out.write(HEAD, 0, 'latin1');
  for (let i = 0; i < ids.length; i++) {
    out[at++] = SPACE;
    out[at++] = SPACE;
    out[at++] = QUOTE;
    at = writeDecimal(out, at, ids[i]!);
    out[at++] = QUOTE;
    out[at++] = COLON;
    out[at++] = SPACE;
    out[at++] = QUOTE;
    at = encodeKey(raws, i * PUBLIC_KEY_BYTES, out, at);
    out[at++] = QUOTE;
    if (i + 1 < ids.length) out[at++] = COMMA;
    out[at++] = NEWLINE;
  }
  at += out.write(TAIL, at, 'latin1');
  if (at !== length) throw new Error(`formatKeySet: wrote ${at} bytes, expected ${length}`);
  return out;
}

function decimalDigits(n: number): number {
  let digits = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    digits++;
  }
  return digits;
}

function writeDecimal(out: Buffer, at: number, n: number): number {
  const end = at + decimalDigits(n);
  for (let i = end - 1; i >= at; i--) {
    out[i] = DIGIT_0 + (n % 10);
    n = Math.floor(n / 10);
  }
  return end;
}

/** Writes the 44 base64 characters of the 32-byte key at `raws[from]`. */
function encodeKey(raws: Uint8Array, from: number, out: Buffer, at: number): number {
  let i = from;
  for (let group = 0; group < 10; group++, i += 3) {
    const n = (raws[i]! << 16) | (raws[i + 1]! << 8) | raws[i + 2]!;
    out[at++] = BASE64_CHAR[n >>> 18]!;
    out[at++] = BASE64_CHAR[(n >>> 12) & 0x3f]!;
    out[at++] = BASE64_CHAR[(n >>> 6) & 0x3f]!;
    out[at++] = BASE64_CHAR[n & 0x3f]!;
  }
  const n = (raws[i]! << 16) | (raws[i + 1]! << 8);
  out[at++] = BASE64_CHAR[n >>> 18]!;
  out[at++] = BASE64_CHAR[(n >>> 12) & 0x3f]!;
  out[at++] = BASE64_CHAR[(n >>> 6) & 0x3f]!;
  out[at++] = PAD;
  return at;
}
