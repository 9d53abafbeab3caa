/**
 * How a keys file's changes reach the beacon without a restart
 * (lib/auth/file-watch.ts through KeysFile): a file created after start
 * (the default ./keys.json), a Kubernetes ConfigMap update (the `..data`
 * symlink swapped), a symlinked file whose target changes, and unrelated
 * churn in the same directory. Every wait is bounded by KEYS_EVENT_TIMEOUT_MS.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { KeysFile, type KeysFileError, type RegisteredKey } from '../lib/auth';
import { watchFile } from '../lib/auth/file-watch';
import { startBeacon } from '../lib/beacon';
import { COMPAT_PATH, CloseCode } from '../lib/protocol';
import { closed, connectPeer, testConfig } from './helpers/harness';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { KEYS_EVENT_TIMEOUT_MS, nextKeysEvent } from './helpers/keys-events';
import { tempDirMaker } from './helpers/temp-dir';


const tempDir = tempDirMaker('beacon-watch-');


function openWatched(t: TestContext, file: string, options: { mayBeMissing?: boolean } = {}): KeysFile {
  const keysFile = KeysFile.open(file, options);
  t.after(() => keysFile.close());
  keysFile.watch();
  return keysFile;
}

/**
 * A directory laid out as the kubelet mounts a ConfigMap: `keys.json` ->
 * `..data/keys.json`, `..data` -> `..<version>`, the file inside it.
 */
class ConfigMapDir {
  readonly dir = tempDir();
  readonly file = path.join(this.dir, 'keys.json');
  private version = 0;
  private current = '';

  constructor(content: string) {
    this.current = this.writeVersion(content);
    fs.symlinkSync(this.current, path.join(this.dir, '..data'));
    fs.symlinkSync(path.join('..data', 'keys.json'), this.file);
  }

  /** The kubelet's update: a new version directory, `..data_tmp` pointing at it, renamed over `..data`, the old one removed. */
  update(content: string): void {
    const next = this.writeVersion(content);
    const tmpLink = path.join(this.dir, '..data_tmp');
    fs.symlinkSync(next, tmpLink);
    fs.renameSync(tmpLink, path.join(this.dir, '..data'));
    fs.rmSync(path.join(this.dir, this.current), { recursive: true });
    this.current = next;
  }

  private writeVersion(content: string): string {
    const name = `..2026_11_30_00_00_0${++this.version}.000000001`;
    fs.mkdirSync(path.join(this.dir, name));
    fs.writeFileSync(path.join(this.dir, name, 'keys.json'), content);
    return name;
  }
}

test('a keys file that may be missing starts with no keys and is loaded when it is created', async (t) => {
  const file = path.join(tempDir(), 'keys.json');
  const alice = makeIdentity(7777);
  const keysFile = openWatched(t, file, { mayBeMissing: true });
  assert.equal(keysFile.exists, false);
  assert.equal(keysFile.size, 0);

  const reloaded = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  fs.writeFileSync(file, keysFileJson([alice]));
  const [keys] = await reloaded;
  assert.deepEqual([...keys.keys()], [7777]);
  assert.equal(keysFile.exists, true);
});

test('reload() (SIGHUP) loads a file created after start; while it is missing, reload() is a no-op, not a failure', async (t) => {
  const file = path.join(tempDir(), 'keys.json');
  const keysFile = KeysFile.open(file, { mayBeMissing: true });
  t.after(() => keysFile.close());
  const events: string[] = [];
  keysFile.on('reload', () => events.push('reload'));
  keysFile.on('reloadError', (err: KeysFileError) => events.push(err.code));

  assert.equal(await keysFile.reload(), false);
  assert.deepEqual(events, []);
  fs.writeFileSync(file, keysFileJson([makeIdentity(1), makeIdentity(2)]));
  assert.equal(await keysFile.reload(), true);
  assert.deepEqual(events, ['reload']);
  assert.equal(keysFile.size, 2);
});

test('once loaded, a file that may be missing is handled like any other: deleting it keeps the keys and is a failed reload', async (t) => {
  const file = path.join(tempDir(), 'keys.json');
  fs.writeFileSync(file, keysFileJson([makeIdentity(1)]));
  const keysFile = KeysFile.open(file, { mayBeMissing: true });
  t.after(() => keysFile.close());
  const errors: string[] = [];
  keysFile.on('reloadError', (err: KeysFileError) => errors.push(err.code));
  fs.rmSync(file);
  assert.equal(await keysFile.reload(), false);
  assert.deepEqual(errors, ['not_found']);
  assert.equal(keysFile.size, 1);
});

test('without mayBeMissing a missing file is still an error at open', () => {
  const file = path.join(tempDir(), 'keys.json');
  assert.throws(() => KeysFile.open(file), { code: 'not_found' });
});

test('a ConfigMap update (the ..data symlink swapped) is picked up without SIGHUP, twice', async (t) => {
  const a = makeIdentity(1);
  const b = makeIdentity(2);
  const c = makeIdentity(3);
  const mount = new ConfigMapDir(keysFileJson([a]));
  const keysFile = openWatched(t, mount.file);
  assert.deepEqual([...keysFile.keys.keys()], [1]);

  const first = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  mount.update(keysFileJson([a, b]));
  assert.deepEqual([...(await first)[0].keys()].sort(), [1, 2]);

  const second = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  mount.update(keysFileJson([c]));
  assert.deepEqual([...(await second)[0].keys()], [3]);
});

test('a keys file that is a symlink is reloaded when the link is pointed at another file', async (t) => {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'v1.json'), keysFileJson([makeIdentity(1)]));
  fs.writeFileSync(path.join(dir, 'v2.json'), keysFileJson([makeIdentity(2)]));
  const file = path.join(dir, 'keys.json');
  fs.symlinkSync('v1.json', file);
  const keysFile = openWatched(t, file);

  const reloaded = nextKeysEvent<[ReadonlyMap<number, RegisteredKey>]>(keysFile, 'reload');
  fs.symlinkSync('v2.json', path.join(dir, 'next.json'));
  fs.renameSync(path.join(dir, 'next.json'), file);
  assert.deepEqual([...(await reloaded)[0].keys()], [2]);
});

test('watchFile: churn in the directory that leaves the file as it was calls nothing; a change to the file calls once', async (t) => {
  const dir = tempDir();
  const file = path.join(dir, 'keys.json');
  fs.writeFileSync(file, '{}');
  let calls = 0;
  const watch = watchFile(file, { debounceMs: 20, onChange: () => calls++, onError: (err) => assert.fail(err) });
  t.after(() => watch.close());

  for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(dir, `other-${i}.json`), 'x');
  fs.mkdirSync(path.join(dir, 'sub'));
  // The absence of a call can only be seen by waiting past the debounce.
  await sleep(200);
  assert.equal(calls, 0);

  fs.writeFileSync(file, '{"1": "x"}');
  fs.appendFileSync(file, '\n');
  const deadline = Date.now() + KEYS_EVENT_TIMEOUT_MS;
  while (calls === 0 && Date.now() < deadline) await sleep(10);
  await sleep(100); // both writes fall in one debounce window
  assert.equal(calls, 1);
});

test('a beacon on a keys file that did not exist at start lets a daemon in once the file appears, and revokes it when removed again', async (t) => {
  const dir = tempDir();
  const file = path.join(dir, 'keys.json');
  const alice = makeIdentity(7777);
  const beacon = await startBeacon(testConfig({ keysFile: file, keysFileMayBeMissing: true }));
  t.after(() => beacon.close());
  const url = `ws://127.0.0.1:${beacon.httpAddress.port}${COMPAT_PATH}`;
  await assert.rejects(connectPeer(url, alice));

  const reloaded = once(beacon, 'keysReloaded');
  fs.writeFileSync(file, keysFileJson([alice]));
  await Promise.race([reloaded, sleep(KEYS_EVENT_TIMEOUT_MS).then(() => { throw new Error('no keysReloaded event'); })]);
  const ws = await connectPeer(url, alice);
  const gone = closed(ws);
  fs.writeFileSync(file, '{}');
  const { code, reason } = await gone;
  assert.equal(code, CloseCode.PolicyViolation);
  assert.equal(reason, 'key revoked');
});
