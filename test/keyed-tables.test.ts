/**
 * The tables keyed by node IDs strangers choose (issue 19, items 5 and 6):
 * the keyed hash is HalfSipHash-1-3 under a key secret per process, NodeMap
 * behaves as a Map does, and IDs chosen to collide under the fixed hashes
 * used before (V8's integer hash, Fibonacci hashing) cost a lookup no more
 * than any others. Bounds are on probe counts, never on time.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { PlacementTable } from '../lib/cluster/placement-table';
import { BeaconPeers } from '../lib/relay/beacon-peers';
import { udpEndpoint } from '../lib/udp/endpoints';
import { halfSipHash13, keyedHash } from '../lib/tables/keyed-hash';
import { NodeMap } from '../lib/tables/node-map';
import { V8_COLLIDING_LOW_BITS, idsCollidingUnderFibonacci, idsCollidingUnderV8, v8IntegerHash, v8IntegerUnhash } from './helpers/colliding-ids';

test('halfSipHash13 is the reference HalfSipHash-1-3 (its test vector: key 00..07, message 00 01 02 03)', () => {
  assert.equal(halfSipHash13(0x03020100, 0x07060504, 0x03020100), 0x7e059ea6);
});

test('keyedHash is keyed per process: two processes hash the same IDs differently', () => {
  const script = `const { keyedHash } = require(${JSON.stringify(join(__dirname, '..', 'lib', 'tables', 'keyed-hash.js'))});`
    + 'process.stdout.write(JSON.stringify([1, 2, 3, 4].map(keyedHash)))';
  const first = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  const second = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.notEqual(first, second);
  assert.notEqual(first, JSON.stringify([1, 2, 3, 4].map(keyedHash)));
});

test('the colliding-ID helpers do collide (so the tests below attack what they say)', () => {
  const v8 = idsCollidingUnderV8(30_000);
  assert.equal(new Set(v8).size, 30_000);
  for (const id of v8) assert.equal(v8IntegerHash(id) & 0xffff, V8_COLLIDING_LOW_BITS);
  for (const id of [1, 7777, 0xdeadbeef]) assert.equal(v8IntegerUnhash(v8IntegerHash(id)), id);
  const fib = idsCollidingUnderFibonacci(30_000);
  assert.equal(new Set(fib).size, 30_000);
});

type Op = { op: 'set'; key: number; value: number } | { op: 'delete'; key: number } | { op: 'clear' };

test('NodeMap behaves as a Map: get, has, size and insertion order after any sequence of changes', () => {
  const key = fc.integer({ min: 0, max: 40 }).map((k) => (k * 0x9e3779b9) >>> 0); // few keys, so changes meet
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ op: fc.constant('set' as const), key, value: fc.integer() }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('delete' as const), key }) },
    { weight: 1, arbitrary: fc.constant({ op: 'clear' as const }) },
  );
  fc.assert(fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
    const map = new Map<number, number>();
    const nodeMap = new NodeMap<number>();
    for (const change of ops) {
      if (change.op === 'set') {
        map.set(change.key, change.value);
        nodeMap.set(change.key, change.value);
      } else if (change.op === 'delete') {
        assert.equal(nodeMap.delete(change.key), map.delete(change.key));
      } else {
        map.clear();
        nodeMap.clear();
      }
      assert.equal(nodeMap.size, map.size);
    }
    assert.deepEqual([...nodeMap], [...map]);
    assert.deepEqual([...nodeMap.keys()], [...map.keys()]);
    assert.deepEqual([...nodeMap.values()], [...map.values()]);
    assert.equal(nodeMap.oldest(), map.keys().next().value);
    for (let k = 0; k <= 40; k++) {
      const id = (k * 0x9e3779b9) >>> 0;
      assert.equal(nodeMap.get(id), map.get(id));
      assert.equal(nodeMap.has(id), map.has(id));
    }
  }), { numRuns: 300 });
});

test('NodeMap: deleting during iteration is safe (each entry seen once, deleted ones not at all)', () => {
  const nodeMap = new NodeMap<number>();
  for (let i = 1; i <= 100; i++) nodeMap.set(i, i);
  const seen: number[] = [];
  for (const [k] of nodeMap) {
    seen.push(k);
    nodeMap.delete(k); // shrinks the table on the way
    nodeMap.delete(k + 1); // and the next one, before it is reached
  }
  assert.deepEqual(seen, Array.from({ length: 50 }, (_, i) => 2 * i + 1));
  assert.equal(nodeMap.size, 0);
});

/** Probes to find every key, over the number of keys: 1 is a perfect table. */
function meanProbes(ids: readonly number[], probes: (id: number) => number): number {
  let total = 0;
  for (const id of ids) total += probes(id);
  return total / ids.length;
}

test('NodeMap: IDs colliding under V8\'s integer hash (one bucket of a Map) cost ~1-2 probes, absent IDs too', () => {
  const ids = idsCollidingUnderV8(20_000);
  const nodeMap = new NodeMap<number>();
  for (const id of ids) nodeMap.set(id, id);
  // Linear probing at most 0.7 full: ~1.5 probes for a present key, ~6 for an absent one.
  const present = meanProbes(ids, (id) => nodeMap.probes(id));
  assert.ok(present <= 3, `${present.toFixed(1)} probes per lookup`);
  const absent = meanProbes(ids.map((id) => id + 1), (id) => nodeMap.probes(id));
  assert.ok(absent <= 12, `${absent.toFixed(1)} probes per missing lookup`);
});

test('PlacementTable: IDs colliding under the old Fibonacci hash cost ~1-2 probes, through rebuilds too', () => {
  const ids = idsCollidingUnderFibonacci(20_000);
  const table = new PlacementTable<{ id: string }>(1024);
  const instance = { id: 'b' };
  ids.forEach((id, rev) => table.set(id, instance, 'udp', rev + 1));
  const present = meanProbes(ids, (id) => table.probes(id));
  assert.ok(present <= 3, `${present.toFixed(1)} probes per lookup`);
  for (const id of ids) assert.ok(table.find(id) >= 0);
});

test('keyedHash spreads chosen IDs: 30k IDs colliding under V8 fill 32k buckets like random ones', () => {
  const buckets = new Uint32Array(32_768);
  for (const id of idsCollidingUnderV8(30_000)) buckets[keyedHash(id) & 0x7fff]!++;
  // Balls into bins: the fullest of 32k bins holds about 7 of 30k random keys.
  assert.ok(Math.max(...buckets) <= 16, `fullest bucket ${Math.max(...buckets)}`);
});

test('BeaconPeers: a Sync of IDs colliding under V8\'s integer hash (its source can be spoofed) costs a route lookup ~1-2 probes', () => {
  const ids = idsCollidingUnderV8(20_000);
  const peer = udpEndpoint('127.0.0.1', 9002);
  const peers = new BeaconPeers([peer]);
  peers.acceptSync(peer, ids, () => false);
  assert.equal(peers.routeCount, ids.length);
  const present = meanProbes(ids, (id) => peers.routeProbes(id));
  assert.ok(present <= 3, `${present.toFixed(1)} probes per lookup`);
  // A later Sync replaces the lot: the routes it no longer names go.
  peers.acceptSync(peer, ids.slice(0, 10), () => false);
  assert.equal(peers.routeCount, 10);
  assert.equal(peers.routeOf(ids[10]!), undefined);
  assert.equal(peers.routeOf(ids[0]!), peer);
});
