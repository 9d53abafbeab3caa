import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  KEYS_FILE_DEBOUNCE_MS, KeysFile, KeysFileError, loadKeysFile, writeKeysFileAtomic, type RegisteredKey,
} from '../lib/auth';
import { generatePublicKey } from './helpers/fake-registry';
import { nextKeysEvent } from './helpers/keys-events';
import { tempDirMaker } from './helpers/temp-dir';


const tempDir = tempDirMaker('beacon-keys-');

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value));
}

/** `keys` written atomically to `file`, opened and watched; closed after the test. */
function watchedKeysFile(t: TestContext, file: string, keys: Map<number, string>): KeysFile {
  writeKeysFileAtomic(file, keys);
  const keysFile = KeysFile.open(file);
  t.after(() => keysFile.close());
  keysFile.watch();
  return keysFile;
}

function rawOf(base64: string): Buffer {
  return Buffer.from(base64, 'base64');
}


function assertKeysFileError(fn: () => unknown, expected: { code: string; file: string; entry?: string; message: RegExp }): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof KeysFileError, `expected a KeysFileError, got ${String(err)}`);
    assert.equal(err.code, expected.code);
    assert.equal(err.file, expected.file);
    assert.equal(err.entry, expected.entry);
    assert.match(err.message, expected.message);
    assert.ok(err.message.startsWith(`keys file ${expected.file}: `), err.message);
    if (expected.entry !== undefined) assert.ok(err.message.includes(`entry ${JSON.stringify(expected.entry)}`), err.message);
    return true;
  });
}

test('a valid keys file loads every entry as a file key', () => {
  const dir = tempDir();
  const file = path.join(dir, 'keys.json');
  const a = generatePublicKey();
  const b = generatePublicKey();
  writeJson(file, { '7777': a, '4294967295': b });
  const keys = loadKeysFile(file);
  assert.equal(keys.size, 2);
  const k7777 = keys.get(7777) as RegisteredKey;
  assert.equal(k7777.nodeId, 7777);
  assert.equal(k7777.source, 'file');
  assert.deepEqual(k7777.raw, rawOf(a));
  assert.equal(k7777.key.asymmetricKeyType, 'ed25519');
  assert.deepEqual(keys.get(4294967295)?.raw, rawOf(b));
});

test('an empty object is a valid keys file with no keys', () => {
  const file = path.join(tempDir(), 'keys.json');
  fs.writeFileSync(file, '{}\n');
  assert.equal(loadKeysFile(file).size, 0);
});

test('a bad node ID names the file, the entry and the valid range', () => {
  const file = path.join(tempDir(), 'keys.json');
  const key = generatePublicKey();
  for (const entry of ['abc', '0', '007', '+7', '-7', ' 7', '7 ', '1.5', '1e3', '4294967296', '99999999999', '']) {
    writeJson(file, { '1': key, [entry]: key });
    assertKeysFileError(() => loadKeysFile(file), {
      code: 'bad_node_id', file, entry,
      message: /node ID must be a decimal number from 1 to 4294967295; correct or delete this entry/,
    });
  }
});

test('a bad public key names the file, the entry and what was found', () => {
  const file = path.join(tempDir(), 'keys.json');
  const good = generatePublicKey();
  const cases: [unknown, RegExp][] = [
    [Buffer.alloc(31, 1).toString('base64'), /public key must be base64 of 32 bytes \(got 31 bytes\); set it with: beacon keys add/],
    [Buffer.alloc(33, 1).toString('base64'), /public key must be base64 of 32 bytes \(got 33 bytes\); set it with: beacon keys add/],
    ['', /\(got 0 bytes\); set it with: beacon keys add/],
    [rawOf(good).toString('base64url'), /not standard base64 with padding/],
    [good.replace(/=+$/, ''), /not standard base64 with padding/],
    [`${good} `, /not standard base64 with padding/],
    [12345, /\(got a number\); set it with: beacon keys add/],
    [null, /\(got null\); set it with: beacon keys add/],
    [[good], /\(got an array\); set it with: beacon keys add/],
  ];
  for (const [value, message] of cases) {
    writeJson(file, { '1': good, '7': value });
    assertKeysFileError(() => loadKeysFile(file), { code: 'bad_public_key', file, entry: '7', message });
  }
});

test('a missing keys file says how to create one', () => {
  const file = path.join(tempDir(), 'missing.json');
  assertKeysFileError(() => loadKeysFile(file), {
    code: 'not_found', file,
    message: new RegExp(`not found \\(create it with: beacon keys add --keys ${file} --node-id N --public-key B64\\)$`),
  });
  assertKeysFileError(() => KeysFile.open(file), { code: 'not_found', file, message: /not found/ });
});

test('a directory in place of the keys file is refused', () => {
  const dir = tempDir();
  assertKeysFileError(() => loadKeysFile(dir), { code: 'unreadable', file: dir, message: /is a directory/ });
});

test('invalid JSON carries the parser message', () => {
  const file = path.join(tempDir(), 'keys.json');
  fs.writeFileSync(file, '{"7": "abc",}');
  let parserMessage = '';
  try {
    JSON.parse('{"7": "abc",}');
  } catch (err) {
    parserMessage = (err as Error).message;
  }
  assert.ok(parserMessage.length > 0);
  assertKeysFileError(() => loadKeysFile(file), { code: 'bad_json', file, message: /invalid JSON/ });
  assert.throws(() => loadKeysFile(file), (err: Error) => err.message.includes(parserMessage));
});

test('JSON that is not an object is refused', () => {
  const file = path.join(tempDir(), 'keys.json');
  for (const [text, got] of [['[]', 'an array'], ['null', 'null'], ['"x"', 'a string'], ['7', 'a number']]) {
    fs.writeFileSync(file, text);
    assertKeysFileError(() => loadKeysFile(file), { code: 'not_object', file, message: new RegExp(`got ${got}\\)$`) });
  }
});

test('reload() swaps in the new keys and emits reload', async () => {
  const file = path.join(tempDir(), 'keys.json');
  const a = generatePublicKey();
  const b = generatePublicKey();
  writeJson(file, { '1': a });
  const keysFile = KeysFile.open(file);
  assert.equal(keysFile.size, 1);
  const seen: ReadonlyMap<number, RegisteredKey>[] = [];
  keysFile.on('reload', (keys) => seen.push(keys));
  writeJson(file, { '1': b, '2': a });
  assert.equal(await keysFile.reload(), true);
  assert.equal(seen.length, 1);
  assert.equal(seen[0], keysFile.keys);
  assert.equal(keysFile.size, 2);
  assert.deepEqual(keysFile.keys.get(1)?.raw, rawOf(b));
});

test('a failed reload() keeps the old keys and emits reloadError', async () => {
  const file = path.join(tempDir(), 'keys.json');
  const a = generatePublicKey();
  writeJson(file, { '1': a });
  const keysFile = KeysFile.open(file);
  const before = keysFile.keys;
  const errors: KeysFileError[] = [];
  let reloads = 0;
  keysFile.on('reloadError', (err) => errors.push(err));
  keysFile.on('reload', () => reloads++);

  writeJson(file, { '1': a, x: a });
  assert.equal(await keysFile.reload(), false);
  fs.rmSync(file);
  assert.equal(await keysFile.reload(), false);

  assert.equal(reloads, 0);
  assert.deepEqual(errors.map((e) => e.code), ['bad_node_id', 'not_found']);
  assert.equal(errors[0].entry, 'x');
  assert.equal(keysFile.keys, before);
  assert.deepEqual(keysFile.keys.get(1)?.raw, rawOf(a));
});

test('the watcher reloads when the file is replaced by rename', async (t) => {
  const file = path.join(tempDir(), 'keys.json');
  const a = generatePublicKey();
  const b = generatePublicKey();
  const keysFile = watchedKeysFile(t, file, new Map([[1, a]]));

  const reloaded = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  writeKeysFileAtomic(file, new Map([[1, a], [2, b]]));
  const [keys] = await reloaded;
  assert.equal(keys.size, 2);
  assert.deepEqual(keys.get(2)?.raw, rawOf(b));
  assert.equal(keysFile.keys, keys);

  // A second replacement is seen too: the watch survived the first rename.
  const again = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  writeKeysFileAtomic(file, new Map([[3, b]]));
  const [third] = await again;
  assert.deepEqual([...third.keys()], [3]);
});

test('the watcher reloads when the file is rewritten in place', async (t) => {
  const file = path.join(tempDir(), 'keys.json');
  const a = generatePublicKey();
  writeJson(file, {});
  const keysFile = KeysFile.open(file);
  t.after(() => keysFile.close());
  keysFile.watch();
  const reloaded = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  writeJson(file, { '42': a });
  const [keys] = await reloaded;
  assert.deepEqual([...keys.keys()], [42]);
});

test('the watcher keeps the old keys and emits reloadError for a bad file', async (t) => {
  const file = path.join(tempDir(), 'keys.json');
  const a = generatePublicKey();
  writeJson(file, { '1': a });
  const keysFile = KeysFile.open(file);
  t.after(() => keysFile.close());
  keysFile.watch();
  const failed = nextKeysEvent<[KeysFileError]>(keysFile, 'reloadError');
  fs.writeFileSync(file, '{"1": ');
  const [err] = await failed;
  assert.equal(err.code, 'bad_json');
  assert.equal(keysFile.size, 1);
  assert.deepEqual(keysFile.keys.get(1)?.raw, rawOf(a));
});

test('the watcher ignores other files and byte-identical rewrites', async (t) => {
  const dir = tempDir();
  const file = path.join(dir, 'keys.json');
  const a = generatePublicKey();
  const b = generatePublicKey();
  const keysFile = watchedKeysFile(t, file, new Map([[1, a]]));
  const events: string[] = [];
  keysFile.on('reload', () => events.push('reload'));
  keysFile.on('reloadError', () => events.push('reloadError'));

  writeKeysFileAtomic(file, new Map([[1, a]])); // same bytes
  fs.writeFileSync(path.join(dir, 'other.json'), '{not json');
  // Absence of an event can only be observed by waiting past the debounce.
  await sleep(KEYS_FILE_DEBOUNCE_MS * 4);
  assert.deepEqual(events, []);

  const reloaded = nextKeysEvent(keysFile, 'reload');
  writeKeysFileAtomic(file, new Map([[1, b]]));
  await reloaded;
  assert.deepEqual(events, ['reload']);
  assert.deepEqual(keysFile.keys.get(1)?.raw, rawOf(b));
});

test('close() stops the watcher', async () => {
  const file = path.join(tempDir(), 'keys.json');
  writeJson(file, {});
  const keysFile = KeysFile.open(file);
  keysFile.watch();
  let reloads = 0;
  keysFile.on('reload', () => reloads++);
  keysFile.close();
  writeJson(file, { '1': generatePublicKey() });
  await sleep(KEYS_FILE_DEBOUNCE_MS * 4);
  assert.equal(reloads, 0);
  assert.equal(keysFile.size, 0);
});

test('writeKeysFileAtomic writes sorted, indented, 0644 JSON that loads back', () => {
  const dir = tempDir();
  const file = path.join(dir, 'keys.json');
  const keys = new Map([[4294967295, generatePublicKey()], [10, generatePublicKey()], [9, generatePublicKey()]]);
  writeKeysFileAtomic(file, keys);

  const text = fs.readFileSync(file, 'utf8');
  assert.equal(text, `{\n  "9": "${keys.get(9)}",\n  "10": "${keys.get(10)}",\n  "4294967295": "${keys.get(4294967295)}"\n}\n`);
  assert.equal(fs.statSync(file).mode & 0o777, 0o644);
  assert.deepEqual(fs.readdirSync(dir), ['keys.json'], 'no temp file is left behind');

  const loaded = loadKeysFile(file);
  assert.deepEqual([...loaded.keys()].sort((x, y) => x - y), [9, 10, 4294967295]);
  for (const [nodeId, key] of keys) assert.equal(loaded.get(nodeId)?.raw.toString('base64'), key);

  writeKeysFileAtomic(file, new Map());
  assert.equal(fs.readFileSync(file, 'utf8'), '{}\n');
});

test('writeKeysFileAtomic refuses an invalid entry and leaves the file alone', () => {
  const dir = tempDir();
  const file = path.join(dir, 'keys.json');
  const good = generatePublicKey();
  writeKeysFileAtomic(file, new Map([[1, good]]));
  const before = fs.readFileSync(file, 'utf8');
  assertKeysFileError(() => writeKeysFileAtomic(file, new Map([[1, good], [2, 'short']])),
    { code: 'bad_public_key', file, entry: '2', message: /base64 of 32 bytes/ });
  assertKeysFileError(() => writeKeysFileAtomic(file, new Map([[0, good]])),
    { code: 'bad_node_id', file, entry: '0', message: /from 1 to 4294967295/ });
  assert.equal(fs.readFileSync(file, 'utf8'), before);
  assert.deepEqual(fs.readdirSync(dir), ['keys.json']);
});
