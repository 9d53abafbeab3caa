/**
 * Property tests of the keys file parser (PROTOCOL.md §4), through
 * `loadKeysFile` on real files: any bytes and any JSON value give either a
 * KeysFileError with a stable code that names the file (and the entry at
 * fault), or exactly the keys the file lists; never another exception.
 * The oracle is the rule as written: a decimal node ID from 1 to 2^32-1
 * without sign, spaces or leading zeros, mapped to standard padded base64
 * of 32 bytes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { KeysFileError, loadKeysFile } from '../lib/auth/keys-file';
import { fuzzParams } from './fuzz/settings';

const dir = mkdtempSync(join(tmpdir(), 'beacon-fuzz-keys-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = join(dir, 'keys.json');

const CODES = new Set(['bad_json', 'not_object', 'bad_node_id', 'bad_public_key']);

type Expected = { ok: true; keys: Map<number, Buffer> } | { ok: false; code: string; entry?: string };

/** What the rule says about `text`, computed without the parser under test. */
function expected(text: string): Expected {
  let value: unknown;
  try {
    value = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch {
    return { ok: false, code: 'bad_json' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { ok: false, code: 'not_object' };
  const keys = new Map<number, Buffer>();
  for (const [entry, key] of Object.entries(value)) {
    if (!/^[1-9][0-9]*$/.test(entry) || Number(entry) > 0xffffffff) return { ok: false, code: 'bad_node_id', entry };
    if (typeof key !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(key)) return { ok: false, code: 'bad_public_key', entry };
    keys.set(Number(entry), Buffer.from(key, 'base64'));
  }
  return { ok: true, keys };
}

function check(text: string | Buffer): void {
  writeFileSync(file, text);
  const want = expected(Buffer.isBuffer(text) ? text.toString('utf8') : text);
  let got: ReturnType<typeof loadKeysFile>;
  try {
    got = loadKeysFile(file);
  } catch (err) {
    assert.ok(err instanceof KeysFileError, `not a KeysFileError: ${String(err)}`);
    assert.ok(CODES.has(err.code), `unexpected code ${err.code}`);
    assert.ok(err.message.includes(file), 'the message names the file');
    assert.equal(want.ok, false, `refused a valid file: ${err.message}`);
    if (!want.ok) {
      assert.equal(err.code, want.code, err.message);
      assert.equal(err.entry, want.entry);
      if (want.entry !== undefined) assert.ok(err.message.includes(JSON.stringify(want.entry)), 'the message names the entry');
    }
    return;
  }
  assert.ok(want.ok, `accepted an invalid file (expected ${JSON.stringify(want)})`);
  if (!want.ok) return;
  assert.equal(got.size, want.keys.size);
  for (const [nodeId, raw] of want.keys) {
    const key = got.get(nodeId);
    assert.ok(key, `node ${nodeId} missing`);
    assert.deepEqual(key.raw, raw);
  }
}

const validKey = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('base64'));
const nearKey = fc.oneof(
  validKey.map((k) => k.replace(/=$/, '')), // unpadded
  validKey.map((k) => k.replace(/[+/]/g, '-')), // URL alphabet
  validKey.map((k) => `${k.slice(0, 42)}${'BCDFGH'[k.length % 6]}=`), // non-canonical last char: still 32 bytes
  validKey.map((k) => ` ${k}`),
  fc.uint8Array({ minLength: 0, maxLength: 40 }).map((b) => Buffer.from(b).toString('base64')),
);
const nodeIdText = fc.oneof(
  fc.integer({ min: 1, max: 0xffffffff }).map(String),
  fc.constantFrom('0', '01', '4294967296', '99999999999', '-1', '+1', ' 1', '1 ', '1e3', '0x10', '1.0', '', '٣', '__proto__', 'constructor'),
  fc.string({ maxLength: 12 }),
);
const keyValue = fc.oneof({ weight: 4, arbitrary: validKey }, { weight: 2, arbitrary: nearKey }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) });
/** JSON text of an object whose entries are mostly plausible. */
const keysObjectText = fc.array(fc.tuple(nodeIdText, keyValue), { maxLength: 8 })
  .map((entries) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`);

/** JSON text the way people and tools write it: any whitespace between tokens, \u escapes, duplicate entries. */
const ws = fc.stringMatching(/^[ \t\n\r]{0,3}$/);
const escapedString = (text: string) => fc.array(fc.boolean(), { minLength: text.length, maxLength: text.length })
  .map((escapes) => `"${[...text].map((c, i) => (escapes[i] ? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}` : JSON.stringify(c).slice(1, -1))).join('')}"`);
const looseEntry = fc.tuple(nodeIdText, keyValue).chain(([k, v]) => fc.tuple(
  escapedString(k), typeof v === 'string' ? escapedString(v) : fc.constant(JSON.stringify(v)), ws, ws, ws, ws,
).map(([key, value, a, b, c, d]) => `${a}${key}${b}:${c}${value}${d}`));
const looseObjectText = fc.tuple(fc.array(looseEntry, { maxLength: 6 }), ws, fc.boolean())
  .chain(([entries, space, duplicate]) => fc.constant(`${space}{${(duplicate && entries.length > 0 ? [...entries, entries[0]!] : entries).join(',')}${space}}${space}`));

describe('keys file parser', () => {
  test('whitespace, escapes and duplicate entries mean what JSON says they mean', () => {
    fc.assert(fc.property(looseObjectText, (text) => check(text)), fuzzParams(300));
  });

  test('any JSON value: a KeysFileError or a valid map', () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => check(JSON.stringify(value) ?? 'null')), fuzzParams(200));
  });

  test('objects of plausible and broken entries: exactly the listed keys, or the first bad entry named', () => {
    fc.assert(fc.property(keysObjectText, fc.boolean(), (text, bom) => check(bom ? `\uFEFF${text}` : text)), fuzzParams(300));
  });

  test('arbitrary bytes and broken JSON: bad_json (or a valid map when they happen to be JSON)', () => {
    const broken = keysObjectText.chain((text) => fc.nat({ max: Math.max(0, text.length - 1) }).map((cut) => text.slice(0, cut)));
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), broken), (text) => check(text)),
      fuzzParams(200));
  });
});
