import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CachedKeyLookup, KeysFile, RegistryClient, createKeyDirectory, writeKeysFileAtomic,
  type KeyLookup, type KeyLookupFn,
} from '../lib/auth';
import { makeConfig, type BeaconConfig } from '../lib/config';
import { BeaconStats } from '../lib/metrics/stats';
import { closedPort, frame, generatePublicKey, startFakeRegistry, type FakeRegistry } from './helpers/fake-registry';
import { tempDirMaker } from './helpers/temp-dir';

/** Lookups that should succeed get this long; a failure fails fast instead of hanging. */
const TIMEOUT_MS = 2000;

interface Setup {
  registry: FakeRegistry;
  client: RegistryClient;
  stats: BeaconStats;
  keys: Map<number, string>;
}

async function setup(t: { after(fn: () => unknown): void }, nodes: number[] = [1, 2, 3], timeoutMs = TIMEOUT_MS): Promise<Setup> {
  const keys = new Map(nodes.map((n) => [n, generatePublicKey()] as const));
  const registry = await startFakeRegistry(keys);
  const stats = new BeaconStats();
  const client = new RegistryClient({ registry: { host: registry.host, port: registry.port }, stats, timeoutMs });
  t.after(async () => {
    client.close();
    await registry.stop();
  });
  return { registry, client, stats, keys };
}

const tempDir = tempDirMaker('beacon-dir-');

/** Polls `condition` every 5 ms; fails after TIMEOUT_MS instead of hanging. */
async function waitFor(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${TIMEOUT_MS} ms`);
    await sleep(5);
  }
}

function cacheConfig(overrides: Partial<BeaconConfig> = {}): BeaconConfig {
  return makeConfig({ keyCacheTtlMs: 60_000, keyCacheNegativeTtlMs: 60_000, keyCacheMaxEntries: 100, ...overrides });
}

function cached(t: { after(fn: () => unknown): void }, s: Setup, overrides: Partial<BeaconConfig> = {}): CachedKeyLookup {
  const cache = new CachedKeyLookup((n) => s.client.lookup(n), { config: cacheConfig(overrides), stats: s.stats });
  t.after(() => cache.close());
  return cache;
}

function assertFound(result: KeyLookup, nodeId: number, base64: string | undefined): void {
  assert.equal(result.status, 'found', JSON.stringify(result));
  if (result.status !== 'found') return;
  assert.equal(result.key.nodeId, nodeId);
  assert.equal(result.key.raw.toString('base64'), base64);
  assert.equal(result.key.key.asymmetricKeyType, 'ed25519');
}

function assertUnavailable(result: KeyLookup, pattern: RegExp): void {
  assert.equal(result.status, 'unavailable', JSON.stringify(result));
  if (result.status === 'unavailable') assert.match(result.error, pattern);
}

// --- the registry client -------------------------------------------------

test('registry: a known node is found with its key', async (t) => {
  const s = await setup(t);
  const result = await s.client.lookup(2);
  assertFound(result, 2, s.keys.get(2));
  if (result.status === 'found') assert.equal(result.key.source, 'registry');
  assert.equal(s.registry.requestsFor(2), 1);
  assert.deepEqual(s.stats.registryLookups, { found: 1, unknown: 0, error: 0 });
});

test('registry: an error answer means the node is unknown', async (t) => {
  const s = await setup(t);
  assert.deepEqual(await s.client.lookup(99), { status: 'unknown' });
  assert.equal(s.registry.requestsFor(99), 1);
  assert.deepEqual(s.stats.registryLookups, { found: 0, unknown: 1, error: 0 });
});

test('registry: pipelined lookups on one connection get their own answers', async (t) => {
  const s = await setup(t, [1, 2, 3, 4, 5]);
  s.registry.delayMs = 5;
  const nodes = [5, 1, 42, 3, 2, 4];
  const results = await Promise.all(nodes.map((n) => s.client.lookup(n)));
  results.forEach((result, i) => {
    if (nodes[i] === 42) assert.deepEqual(result, { status: 'unknown' });
    else assertFound(result, nodes[i], s.keys.get(nodes[i]));
  });
  assert.equal(s.registry.connections, 1);
  assert.deepEqual(s.stats.registryLookups, { found: 5, unknown: 1, error: 0 });
});

test('registry: malformed answers are unavailable, never found', async (t) => {
  const s = await setup(t, [1]);
  const key = s.keys.get(1) as string;
  const short = Buffer.alloc(31, 7).toString('base64');
  const bad: [number, Parameters<FakeRegistry['replies']['set']>[1], RegExp][] = [
    [10, { json: { type: 'lookup_ok', node_id: 10, public_key: short } }, /not base64 of 32 bytes/],
    [11, { json: { type: 'lookup_ok', node_id: 11, public_key: 'not base64!' } }, /not base64 of 32 bytes/],
    [12, { json: { type: 'lookup_ok', node_id: 999, public_key: key } }, /answer for node 999 to a lookup of node 12/],
    [13, { json: { type: 'lookup_ok', public_key: key } }, /to a lookup of node 13/],
    [14, { body: Buffer.from('{"type": "lookup_ok",') }, /not JSON/],
    [15, { json: ['lookup_ok'] }, /not a JSON object/],
    [16, { json: { type: 'surprise' } }, /unexpected answer type "surprise"/],
    [17, { bytes: Buffer.from([0x00, 0x20, 0x00, 0x00]) }, /2097152-byte message \(limit 1048576\)/],
  ];
  for (const [nodeId, reply, pattern] of bad) {
    s.registry.replies.set(nodeId, reply);
    assertUnavailable(await s.client.lookup(nodeId), pattern);
  }
  // After every kind of bad answer the client still works.
  assertFound(await s.client.lookup(1), 1, key);
  assert.deepEqual(s.stats.registryLookups, { found: 1, unknown: 0, error: bad.length });
});

test('registry: an answer split across many TCP segments is reassembled', async (t) => {
  const s = await setup(t, [1]);
  const key = s.keys.get(1) as string;
  const whole = frame(Buffer.from(JSON.stringify({ type: 'lookup_ok', node_id: 8, public_key: key, pad: 'x'.repeat(70_000) })));
  s.registry.replies.set(8, { bytes: whole });
  const result = await s.client.lookup(8);
  assert.equal(result.status, 'found');
});

test('registry: nothing listening gives unavailable quickly', async () => {
  const stats = new BeaconStats();
  const client = new RegistryClient({ registry: { host: '127.0.0.1', port: await closedPort() }, stats, timeoutMs: 5000 });
  const started = Date.now();
  const result = await client.lookup(1);
  assertUnavailable(result, /ECONNREFUSED/);
  assert.ok(Date.now() - started < 1000, `took ${Date.now() - started} ms`);
  assert.deepEqual(stats.registryLookups, { found: 0, unknown: 0, error: 1 });
  client.close();
});

test('registry: a registry that never answers gives unavailable within the timeout, then recovers', async (t) => {
  const s = await setup(t, [1], 100);
  s.registry.neverAnswer = true;
  const started = Date.now();
  assertUnavailable(await s.client.lookup(1), /did not answer within 100 ms/);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 90 && elapsed < 1000, `took ${elapsed} ms`);

  s.registry.neverAnswer = false;
  assertFound(await s.client.lookup(1), 1, s.keys.get(1));
  assert.equal(s.registry.connections, 2, 'the slow connection was dropped and a fresh one opened');
});

test('registry: a late answer after the oldest request timed out is not given to the next one', async (t) => {
  const s = await setup(t, [1, 2], 30);
  s.registry.delayMs = 150;
  assertUnavailable(await s.client.lookup(1), /did not answer/);
  s.registry.delayMs = 0;
  // Node 1's answer is still due from the registry; node 2 must get its own.
  assertFound(await s.client.lookup(2), 2, s.keys.get(2));
  await sleep(200); // past the moment node 1's late answer would have arrived
  assertFound(await s.client.lookup(2), 2, s.keys.get(2));
});

test('registry: lookups beyond the pending bound fail at once', async (t) => {
  const keys = new Map([[1, generatePublicKey()]]);
  const registry = await startFakeRegistry(keys);
  const stats = new BeaconStats();
  const client = new RegistryClient({ registry: { host: registry.host, port: registry.port }, stats, maxPending: 2 });
  t.after(async () => {
    client.close();
    await registry.stop();
  });
  registry.delayMs = 50;
  const waiting = [client.lookup(1), client.lookup(1)];
  assertUnavailable(await client.lookup(1), /2 registry lookups already waiting/);
  for (const result of await Promise.all(waiting)) assertFound(result, 1, keys.get(1));
});

test('registry: the registry closing the connection fails pending lookups; the next one reconnects', async (t) => {
  const s = await setup(t, [1]);
  s.registry.neverAnswer = true;
  const pending = s.client.lookup(1);
  await waitFor(() => s.registry.requestsFor(1) === 1);
  s.registry.dropConnections();
  assertUnavailable(await pending, /closed the connection|ECONNRESET/);
  s.registry.neverAnswer = false;
  assertFound(await s.client.lookup(1), 1, s.keys.get(1));
  assert.equal(s.registry.connections, 2);
});

test('registry: an idle connection closed by the registry is reopened on the next lookup', async (t) => {
  const s = await setup(t, [1]);
  assertFound(await s.client.lookup(1), 1, s.keys.get(1));
  s.registry.dropConnections();
  await sleep(50); // let the client see the close (nothing observable to wait on)
  assertFound(await s.client.lookup(1), 1, s.keys.get(1));
  assert.equal(s.registry.connections, 2);
});

test('registry: close() fails pending lookups and later ones', async (t) => {
  const s = await setup(t, [1]);
  s.registry.neverAnswer = true;
  const pending = s.client.lookup(1);
  s.client.close();
  assertUnavailable(await pending, /closed/);
  assertUnavailable(await s.client.lookup(1), /closed/);
});

// --- the cache --------------------------------------------------------------

test('cache: a second lookup of a found key is a hit and makes no request', async (t) => {
  const s = await setup(t);
  const cache = cached(t, s);
  assertFound(await cache.lookup(1, TIMEOUT_MS), 1, s.keys.get(1));
  assertFound(await cache.lookup(1, TIMEOUT_MS), 1, s.keys.get(1));
  assert.equal(s.registry.requestsFor(1), 1);
  assert.equal(s.stats.keyCacheHits, 1);
  assert.equal(s.stats.keyCacheMisses, 1);
});

test('cache: an unknown node is remembered (negative cache)', async (t) => {
  const s = await setup(t);
  const cache = cached(t, s);
  assert.deepEqual(await cache.lookup(77, TIMEOUT_MS), { status: 'unknown' });
  assert.deepEqual(await cache.lookup(77, TIMEOUT_MS), { status: 'unknown' });
  assert.equal(s.registry.requestsFor(77), 1);
  assert.equal(s.stats.keyCacheHits, 1);
});

test('cache: an unknown node is asked again once the negative TTL expired', async (t) => {
  const s = await setup(t);
  const cache = cached(t, s, { keyCacheNegativeTtlMs: 30 });
  assert.deepEqual(await cache.lookup(77, TIMEOUT_MS), { status: 'unknown' });
  assert.deepEqual(await cache.lookup(77, TIMEOUT_MS), { status: 'unknown' });
  assert.equal(s.registry.requestsFor(77), 1);
  await sleep(60);
  // The node has registered meanwhile.
  s.keys.set(77, generatePublicKey());
  assertFound(await cache.lookup(77, TIMEOUT_MS), 77, s.keys.get(77));
  assert.equal(s.registry.requestsFor(77), 2);
});

test('cache: concurrent lookups of one node make exactly one request', async (t) => {
  const s = await setup(t);
  s.registry.delayMs = 30;
  const cache = cached(t, s);
  const results = await Promise.all(Array.from({ length: 20 }, () => cache.lookup(3, TIMEOUT_MS)));
  for (const result of results) assertFound(result, 3, s.keys.get(3));
  assert.equal(s.registry.requestsFor(3), 1);
  assert.equal(s.registry.totalRequests(), 1);
  assert.equal(s.stats.keyCacheMisses, 20);
  // Settled: the next lookup is a plain cache hit.
  assertFound(await cache.lookup(3, TIMEOUT_MS), 3, s.keys.get(3));
  assert.equal(s.stats.keyCacheHits, 1);
  assert.equal(s.registry.totalRequests(), 1);
});

test('cache: a caller in a hurry gives up alone; the others get the answer, and the late answer fills the cache', async (t) => {
  const s = await setup(t, [1, 2]);
  s.registry.delayMs = 150;
  const cache = cached(t, s);
  // A stranger's lookup with 30 ms left, then a real daemon's for the same
  // node, and one for another node pipelined behind it.
  const hurried = cache.lookup(1, 30);
  const patient = cache.lookup(1, TIMEOUT_MS);
  const other = cache.lookup(2, TIMEOUT_MS);
  assertUnavailable(await hurried, /30 ms/);
  assertFound(await patient, 1, s.keys.get(1));
  assertFound(await other, 2, s.keys.get(2));
  assert.equal(s.registry.connections, 1, 'the shared connection was never torn down');
  assert.equal(s.registry.requestsFor(1), 1);
  // The answer the stranger did not wait for is cached.
  assertFound(await cache.lookup(1, 1), 1, s.keys.get(1));
  assert.equal(s.stats.keyCacheHits, 1);
});

test('cache: unavailable is never cached', async (t) => {
  const s = await setup(t, [1, 2, 3], 30);
  const cache = cached(t, s);
  s.registry.neverAnswer = true;
  assertUnavailable(await cache.lookup(1, TIMEOUT_MS), /did not answer/);
  s.registry.neverAnswer = false;
  assertFound(await cache.lookup(1, TIMEOUT_MS), 1, s.keys.get(1));
  assert.equal(s.registry.requestsFor(1), 2);
  assert.equal(s.stats.keyCacheHits, 0);
});

test('cache: a full cache stops caching without failing lookups', async (t) => {
  const s = await setup(t, [1, 2, 3]);
  const cache = cached(t, s, { keyCacheMaxEntries: 2 });
  for (const n of [1, 2, 3]) assertFound(await cache.lookup(n, TIMEOUT_MS), n, s.keys.get(n));
  assert.equal(cache.size, 2);
  for (const n of [1, 2, 3]) assertFound(await cache.lookup(n, TIMEOUT_MS), n, s.keys.get(n));
  assert.equal(cache.size, 2);
  assert.equal(s.registry.requestsFor(1), 1);
  assert.equal(s.registry.requestsFor(2), 1);
  assert.equal(s.registry.requestsFor(3), 2, 'node 3 did not fit, so it was asked again');
});

test('cache: a source that rejects becomes unavailable and the slot is freed', async (t) => {
  let calls = 0;
  const source: KeyLookupFn = async () => {
    calls++;
    throw new Error('boom');
  };
  const cache = new CachedKeyLookup(source, { config: cacheConfig(), stats: new BeaconStats() });
  t.after(() => cache.close());
  assertUnavailable(await cache.lookup(5, TIMEOUT_MS), /boom/);
  assertUnavailable(await cache.lookup(5, TIMEOUT_MS), /boom/);
  assert.equal(calls, 2);
});

// --- the directory ------------------------------------------------------------

test('directory: the keys file first, then the cached registry', async (t) => {
  const s = await setup(t, [1, 2]);
  const file = path.join(tempDir(), 'keys.json');
  const fileKey = generatePublicKey();
  writeKeysFileAtomic(file, new Map([[1, fileKey], [5, fileKey]]));
  const keysFile = KeysFile.open(file);
  const stats = new BeaconStats();
  const directory = createKeyDirectory({
    keysFile, registry: { host: s.registry.host, port: s.registry.port }, config: cacheConfig(), stats,
  });
  t.after(() => directory.close());

  const one = await directory.lookup(1, TIMEOUT_MS);
  assertFound(one, 1, fileKey);
  if (one.status === 'found') assert.equal(one.key.source, 'file');
  assertFound(await directory.lookup(5, TIMEOUT_MS), 5, fileKey);
  assert.equal(s.registry.totalRequests(), 0, 'keys in the file never reach the registry');

  const two = await directory.lookup(2, TIMEOUT_MS);
  assertFound(two, 2, s.keys.get(2));
  if (two.status === 'found') assert.equal(two.key.source, 'registry');
  await directory.lookup(2, TIMEOUT_MS);
  assert.deepEqual(await directory.lookup(9, TIMEOUT_MS), { status: 'unknown' });
  assert.equal(s.registry.requestsFor(2), 1);
  assert.equal(stats.keyCacheHits, 1);
  assert.deepEqual(stats.registryLookups, { found: 1, unknown: 1, error: 0 });

  // A reload of the file is seen by the next lookup.
  writeKeysFileAtomic(file, new Map([[9, fileKey]]));
  assert.equal(await keysFile.reload(), true);
  assertFound(await directory.lookup(9, TIMEOUT_MS), 9, fileKey);
});

test('directory: with no source every node is unknown; with only a file, others are unknown', async () => {
  const stats = new BeaconStats();
  const none = createKeyDirectory({ config: cacheConfig(), stats });
  assert.deepEqual(await none.lookup(1, TIMEOUT_MS), { status: 'unknown' });
  none.close();

  const file = path.join(tempDir(), 'keys.json');
  const key = generatePublicKey();
  writeKeysFileAtomic(file, new Map([[1, key]]));
  const onlyFile = createKeyDirectory({ keysFile: KeysFile.open(file), config: cacheConfig(), stats });
  assertFound(await onlyFile.lookup(1, TIMEOUT_MS), 1, key);
  assert.deepEqual(await onlyFile.lookup(2, TIMEOUT_MS), { status: 'unknown' });
  onlyFile.close();
  assert.deepEqual(stats.registryLookups, { found: 0, unknown: 0, error: 0 });
});

test('directory: a registry that is down makes registry nodes unavailable, not unknown', async () => {
  const stats = new BeaconStats();
  const directory = createKeyDirectory({
    registry: { host: '127.0.0.1', port: await closedPort() }, config: cacheConfig(), stats,
  });
  assertUnavailable(await directory.lookup(1, TIMEOUT_MS), /ECONNREFUSED/);
  assert.equal(stats.registryLookups.error, 1);
  directory.close();
});
