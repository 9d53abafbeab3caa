/**
 * The keys file at scale (issue 12, part 1): the compact KeySet, the fast
 * scanner against JSON.parse, the bounded cache of verify-ready keys, a
 * reload of a big file that leaves the event loop free, and `keys add` on
 * a big file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, verify } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KEYS_FILE_INLINE_PARSE_BYTES, KeySet, KeysFile, KeysFileError, loadKeysFile, writeKeysFileAtomic } from '../lib/auth/keys-file';
import { sortedKeySet } from '../lib/auth/key-set';
import { formatKeySet, parseKeysFile, scanPlainKeysFile } from '../lib/auth/keys-file-codec';
import { VerifyKeyCache } from '../lib/auth/verify-key-cache';
import { COMPAT_PATH, encodeRelay, decodePacket, PacketType, PUBLIC_KEY_BYTES } from '../lib/protocol';
import { makeIdentity, sign, type TestIdentity } from './helpers/identity';
import { startBeacon, type Beacon } from '../lib/beacon';
import { connectPeer, nextMessage, testConfig, withTimeout } from './helpers/harness';
import { tempDirMaker } from './helpers/temp-dir';

const tempDir = tempDirMaker('beacon-keys-scale-');

const FILE = 'keys.json';

/** What JSON.parse says the file holds: the oracle for the scanner. */
function viaJsonParse(text: string): [number, string][] {
  const entries = Object.entries(JSON.parse(text.replace(/^\uFEFF/, '')) as Record<string, string>);
  return entries.map(([id, key]): [number, string] => [Number(id), key]).sort((a, b) => a[0] - b[0]);
}

function asEntries(keys: KeySet): [number, string][] {
  return [...keys.rawEntries()].map(([id, raw]): [number, string] => [id, raw.toString('base64')]);
}

/** `count` random keys for node IDs first, first + 1, ... (the file parser does not check curve points). */
function randomKeySet(count: number, first = 1): KeySet {
  const ids = Uint32Array.from({ length: count }, (_, i) => first + i);
  return sortedKeySet(ids, new Uint8Array(randomBytes(count * PUBLIC_KEY_BYTES)), count);
}

/** The beacon_keys_loaded gauge, as /metrics serves it. */
async function keysLoaded(beacon: Beacon): Promise<number> {
  const line = (await beacon.metricsText()).split('\n').find((l) => l.startsWith('beacon_keys_loaded '));
  return Number(line?.split(' ')[1]);
}

function withIdentities(keys: KeySet, ids: readonly TestIdentity[]): KeySet {
  return ids.reduce((set, id) => set.with(id.nodeId, id.publicKey), keys);
}

test('the plain-form scanner reads what JSON.parse reads, in every layout a file comes in', () => {
  const k = Array.from({ length: 4 }, () => randomBytes(32).toString('base64'));
  const plain: [string, string][] = [
    ['compact', JSON.stringify({ 1: k[0], 4294967295: k[1], 70: k[2] })],
    ['pretty', JSON.stringify({ 9: k[0], 10: k[1] }, null, 2)],
    ['tabs, CRLF and spaces around the colon', `{\r\n\t"5" :\t"${k[0]}" ,\r\n\t"3"  :  "${k[1]}"\r\n}\r\n`],
    ['a byte order mark', `\uFEFF{"8": "${k[3]}"}`],
    ['out of order', `{"300": "${k[0]}", "2": "${k[1]}", "65536": "${k[2]}", "65535": "${k[3]}", "1": "${k[0]}"}`],
    ['a node written twice: the last key wins', `{"7": "${k[0]}", "6": "${k[1]}", "7": "${k[2]}"}`],
    ['empty', ' { } '],
  ];
  for (const [name, text] of plain) {
    const bytes = Buffer.from(text);
    const scanned = scanPlainKeysFile(bytes);
    assert.ok(scanned, `${name}: the scanner takes it`);
    assert.deepEqual(asEntries(scanned), viaJsonParse(text), name);
    assert.deepEqual(asEntries(parseKeysFile(FILE, bytes)), viaJsonParse(text), name);
  }
  // Valid JSON the scanner leaves to JSON.parse: the result is the same.
  const general: [string, string][] = [
    ['an escaped node ID', `{"\\u0031\\u0032": "${k[0]}"}`],
    ['an escaped character in the key', `{"12": "\\u${k[1]!.charCodeAt(0).toString(16).padStart(4, '0')}${k[1]!.slice(1)}"}`],
  ];
  for (const [name, text] of general) {
    const bytes = Buffer.from(text);
    assert.deepEqual(asEntries(parseKeysFile(FILE, bytes)), viaJsonParse(text), name);
  }
  assert.equal(scanPlainKeysFile(Buffer.from(general[0]![1])), undefined, 'escapes are not the plain form');
});

test('the scanner hands anything off the plain form to the general path, which names the fault', () => {
  const key = randomBytes(32).toString('base64');
  const cases: [string, string, string | undefined][] = [
    [`{"1": "${key}", "01": "${key}"}`, 'bad_node_id', '01'],
    [`{"1": "${key}", "4294967296": "${key}"}`, 'bad_node_id', '4294967296'],
    [`{"1": "${key}", "12345678901": "${key}"}`, 'bad_node_id', '12345678901'],
    [`{"1": "${key.replace('=', 'A')}"}`, 'bad_public_key', '1'],
    [`{"1": "${key.slice(0, 40)}"}`, 'bad_public_key', '1'],
    [`{"1": "${key}",}`, 'bad_json', undefined],
    [`{"1": "${key}"} x`, 'bad_json', undefined],
    [`{"1": "${key}"`, 'bad_json', undefined],
    ['', 'bad_json', undefined],
    [`[{"1": "${key}"}]`, 'not_object', undefined],
  ];
  for (const [text, code, entry] of cases) {
    const bytes = Buffer.from(text);
    assert.equal(scanPlainKeysFile(bytes), undefined, text);
    assert.throws(() => parseKeysFile(FILE, bytes), (err: { code?: string; entry?: string }) => {
      assert.equal(err.code, code, text);
      assert.equal(err.entry, entry, text);
      return true;
    });
  }
});

test('formatKeySet writes what the scanner reads back, byte for byte', () => {
  const keys = randomKeySet(1_000, 4_294_966_000);
  const bytes = formatKeySet(keys);
  const again = scanPlainKeysFile(bytes);
  assert.ok(again);
  assert.deepEqual(asEntries(again), asEntries(keys));
  assert.ok(formatKeySet(again).equals(bytes));
  assert.deepEqual(asEntries(again), viaJsonParse(bytes.toString()));
});

test('KeySet: lookups, with and without return new sets and leave the old one alone', () => {
  const keys = randomKeySet(100, 10); // nodes 10..109
  assert.equal(keys.size, 100);
  assert.equal(keys.indexOf(10), 0);
  assert.equal(keys.indexOf(109), 99);
  assert.equal(keys.indexOf(9), -1);
  assert.equal(keys.indexOf(110), -1);
  const raw = randomBytes(32);
  const added = keys.with(5, raw).with(200, raw).with(50, raw);
  assert.deepEqual([...added.keys()].slice(0, 2), [5, 10]);
  assert.equal(added.size, 102);
  assert.deepEqual(added.rawOf(50), raw);
  assert.deepEqual(added.rawOf(200), raw);
  assert.notDeepEqual(keys.rawOf(50), raw, 'the old set keeps its key');
  assert.equal(keys.has(5), false);
  const removed = added.without(50).without(5).without(12345);
  assert.deepEqual([...removed.keys()], [...keys.keys()].filter((id) => id !== 50).concat(200));
  const key = removed.get(10);
  assert.equal(key?.source, 'file');
  assert.deepEqual(key?.raw, keys.rawOf(10));
  assert.equal(KeySet.EMPTY.size, 0);
  assert.equal(KeySet.EMPTY.get(1), undefined);
});

test('sortedKeySet sorts any order and keeps the last key of a node given twice', () => {
  const ids = Uint32Array.from([70_000, 3, 65_536, 3, 1, 4_294_967_295, 65_535]);
  const raws = new Uint8Array(ids.length * 32);
  ids.forEach((_, i) => raws.fill(i, i * 32, (i + 1) * 32));
  const keys = sortedKeySet(ids, raws, ids.length);
  assert.deepEqual([...keys.keys()], [1, 3, 65_535, 65_536, 70_000, 4_294_967_295]);
  assert.equal(keys.rawOf(3)?.[0], 3, 'the later of the two entries for node 3');
  assert.equal(keys.rawOf(70_000)?.[0], 0);
});

test('verify-ready keys: kept from a node\'s second lookup, reused while the key is the same, bounded, and never stale', () => {
  const alice = makeIdentity(7);
  let keys = withIdentities(randomKeySet(50, 100), [alice]);
  const cache = new VerifyKeyCache(10);
  const first = cache.lookup(keys, 7);
  assert.ok(first);
  const message = Buffer.from('compat_auth:7:nonce');
  assert.equal(verify(null, message, first.key, Buffer.from(sign(alice, message), 'base64')), true);
  assert.equal(cache.size, 0, 'a node seen once leaves no key behind (its KeyObject dies young)');
  const second = cache.lookup(keys, 7);
  assert.ok(second);
  assert.equal(cache.size, 1, 'seen again: it reconnects, its key is kept');
  assert.equal(cache.lookup(keys, 7), second, 'the same object while the key is unchanged');
  assert.equal(cache.lookup(keys, 99), undefined);

  // 30 nodes reconnecting (within the 40 IDs it remembers): more than it keeps.
  for (let pass = 0; pass < 2; pass++) for (let id = 100; id < 130; id++) assert.ok(cache.lookup(keys, id));
  assert.equal(cache.size, 10, 'never more than its capacity');

  const renewed = makeIdentity(7);
  keys = keys.with(7, renewed.publicKey);
  for (let pass = 0; pass < 2; pass++) cache.lookup(keys, 7); // kept again after the round above pushed it out
  const after = cache.lookup(keys, 7);
  assert.deepEqual(after?.raw, Buffer.from(renewed.publicKey));
  const renewedAgain = makeIdentity(7);
  const keysAgain = keys.with(7, renewedAgain.publicKey);
  const changed = cache.lookup(keysAgain, 7);
  assert.notEqual(changed, after, 'a changed key is a miss, never the cached object');
  assert.deepEqual(changed?.raw, Buffer.from(renewedAgain.publicKey));
  assert.equal(cache.lookup(keysAgain.without(7), 7), undefined, 'a removed key is not answered from the cache');
});

test('verify-ready keys of nodes that reconnect stay cached; nodes that connect once leave only their node ID', () => {
  const withMany = randomKeySet(300, 100); // nodes 100..399
  // 300 nodes connecting once each: no key kept.
  const once = new VerifyKeyCache(8);
  for (let id = 100; id < 400; id++) assert.ok(once.lookup(withMany, id));
  assert.equal(once.size, 0);

  // Six nodes reconnecting in turn: from their third round on (kept at the second), every key is a hit.
  const cache = new VerifyKeyCache(8);
  const round = () => [100, 101, 102, 103, 104, 105].map((id) => cache.lookup(withMany, id));
  round();
  const second = round();
  const third = round();
  third.forEach((key, i) => assert.equal(key, second[i], `node ${100 + i}: the same key object`));
  assert.equal(cache.size, 6);

  // A fleet that comes back stays cached however many daemons connect once in between (up to 4 x capacity of them).
  for (let id = 200; id < 230; id++) cache.lookup(withMany, id);
  const fourth = round();
  fourth.forEach((key, i) => assert.equal(key, second[i], `node ${100 + i}: still cached after 30 one-time daemons`));

  // Bounded too: 20 reconnecting nodes hold at most the capacity's 8 keys.
  const busy = new VerifyKeyCache(8);
  for (let pass = 0; pass < 3; pass++) for (let id = 100; id < 120; id++) busy.lookup(withMany, id);
  assert.equal(busy.size, 8);

  // No capacity: nothing kept, nothing remembered.
  const none = new VerifyKeyCache(0);
  for (let pass = 0; pass < 3; pass++) for (let id = 100; id < 110; id++) assert.ok(none.lookup(withMany, id));
  assert.equal(none.size, 0);
});

test('a reload of a big keys file leaves the event loop free: /health answers and relays go through while it runs', async (t) => {
  const alice = makeIdentity(7777);
  const bob = makeIdentity(8888);
  const carol = makeIdentity(9999);
  // Big enough that parsing takes many loop turns on any machine.
  const big = randomKeySet(100_000, 100_000);
  const keysPath = path.join(tempDir(), FILE);
  writeKeysFileAtomic(keysPath, withIdentities(big, [alice, bob]));
  const beacon = await startBeacon(testConfig({ keysFile: keysPath }));
  t.after(() => beacon.close());
  const base = `127.0.0.1:${beacon.httpAddress.port}`;
  assert.equal(await keysLoaded(beacon), 100_002);

  const a = await connectPeer(`ws://${base}${COMPAT_PATH}`, alice);
  const b = await connectPeer(`ws://${base}${COMPAT_PATH}`, bob);
  t.after(() => { a.terminate(); b.terminate(); });

  /**
   * One reload, probed: /health and a relay, round after round, while it runs. A round that ends after the
   * swap is no evidence either way; on a loaded machine the first round can outlast a whole reload, so the
   * test reloads again (the file with and without carol, in turn: identical content is not reloaded).
   */
  const probedReload = async (ids: readonly TestIdentity[]) => {
    writeKeysFileAtomic(keysPath, withIdentities(big, ids));
    let turns = 0;
    let reloading = true;
    const countTurns = () => {
      turns++;
      if (reloading) setImmediate(countTurns);
    };
    setImmediate(countTurns);
    const reload = beacon.reloadKeys().finally(() => { reloading = false; });
    let healthAnswers = 0;
    let relayed = 0;
    while (reloading) {
      const got = nextMessage(b);
      a.send(encodeRelay(7777, 8888, Buffer.from(`frame ${relayed}`)));
      const [health, frame] = await Promise.all([fetch(`http://${base}/health`), got]);
      if (!reloading) break; // answered after the swap: not evidence of anything
      if (health.status === 200) healthAnswers++;
      const packet = decodePacket(frame.data);
      if (packet?.type === PacketType.RelayDeliver && packet.payload.toString() === `frame ${relayed}`) relayed++;
    }
    assert.equal(await reload, true);
    return { healthAnswers, relayed, turns };
  };
  let probe = { healthAnswers: 0, relayed: 0, turns: 0 };
  let withCarol = true;
  for (let attempt = 0; attempt < 6 && (probe.healthAnswers === 0 || probe.relayed === 0); attempt++) {
    withCarol = attempt % 2 === 0;
    probe = await probedReload(withCarol ? [alice, bob, carol] : [alice, bob]);
  }
  assert.ok(probe.healthAnswers >= 1, `/health answered ${probe.healthAnswers} times during the reload`);
  assert.ok(probe.relayed >= 1, `${probe.relayed} relays crossed during the reload`);
  assert.ok(probe.turns > probe.healthAnswers, `the loop turned ${probe.turns} times during the reload`);
  if (!withCarol) {
    writeKeysFileAtomic(keysPath, withIdentities(big, [alice, bob, carol]));
    assert.equal(await beacon.reloadKeys(), true);
  }

  // The new keys are in, and the peers whose key did not change are still there.
  assert.equal(await keysLoaded(beacon), 100_003);
  const c = await withTimeout(connectPeer(`ws://${base}${COMPAT_PATH}`, carol), 5_000, 'carol to connect');
  c.terminate();
  assert.equal(beacon.isConnected(7777), true);
  assert.equal(beacon.isConnected(8888), true);
  assert.equal(beacon.metrics().stats.revokedPeers, 0);
});

test('a big file reloaded on a worker thread fails with the same error as a load on the loop, and keeps the old keys', async (t) => {
  const file = path.join(tempDir(), FILE);
  const big = randomKeySet(20_000);
  writeKeysFileAtomic(file, big);
  assert.ok(fs.statSync(file).size > KEYS_FILE_INLINE_PARSE_BYTES, 'big enough for the worker');
  const keysFile = KeysFile.open(file);
  t.after(() => keysFile.close());
  const errors: KeysFileError[] = [];
  keysFile.on('reloadError', (err) => errors.push(err));

  const text = fs.readFileSync(file, 'utf8');
  fs.writeFileSync(file, text.replace(/\n}\n$/, ',\n  "0777": "short"\n}\n'));
  let expected: unknown;
  assert.throws(() => loadKeysFile(file), (err) => { expected = err; return true; });
  assert.equal(await keysFile.reload(), false);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof KeysFileError);
  assert.deepEqual([errors[0].code, errors[0].entry, errors[0].message],
    [(expected as KeysFileError).code, '0777', (expected as KeysFileError).message]);
  assert.equal(keysFile.size, 20_000);

  fs.rmSync(file);
  assert.equal(await keysFile.reload(), false);
  assert.equal(errors[1]?.code, 'not_found');
  assert.equal(keysFile.size, 20_000);
});

test('keys add on a big file changes one entry and rewrites every other byte as it was', () => {
  const dir = tempDir();
  const file = path.join(dir, FILE);
  const big = randomKeySet(100_000, 1_000);
  writeKeysFileAtomic(file, big);
  const before = fs.readFileSync(file);
  const added = makeIdentity(500);
  const cli = path.join(__dirname, '..', 'cmd', 'beacon.js');
  const run = spawnSync(process.execPath, [cli, 'keys', 'add', '--keys', file, '--node-id', '500', '--public-key', added.publicKeyB64], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /added node 500 to .* \(100001 keys\)/);
  const after = fs.readFileSync(file);
  const line = Buffer.from(`  "500": "${added.publicKeyB64}",\n`);
  const head = Buffer.from('{\n');
  assert.ok(after.equals(Buffer.concat([head, line, before.subarray(head.length)])), 'only the new line was added');
  assert.deepEqual(fs.readdirSync(dir), [FILE], 'no temp file is left behind');
  assert.equal(loadKeysFile(file).size, 100_001);
});
