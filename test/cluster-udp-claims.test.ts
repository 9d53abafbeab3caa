/**
 * UDP claims across the cluster (lib/cluster/udp-claims.ts) and the
 * directory's rule that a UDP placement never takes a node from a
 * WebSocket, without NATS: the wire, which claim wins, withdrawals, a node
 * on a WebSocket, the two generations and the cap.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Directory, type DirectoryStore } from '../lib/cluster/directory';
import { Instances } from '../lib/cluster/instances';
import { UdpClaims, decodeClaims, encodeClaims, type ClaimRecord } from '../lib/cluster/udp-claims';
import { BeaconStats } from '../lib/metrics';
import type { UdpEndpoint } from '../lib/udp/endpoints';

const ENDPOINT: UdpEndpoint = { address: '::ffff:10.0.0.1', port: 4000, ip: '10.0.0.1' };

test('wire: claims and withdrawals round-trip; anything else refuses the whole message', () => {
  const records: ClaimRecord[] = [
    { op: 'claim', nodeId: 7, stamp: 1_700_000_000_123, endpoint: { address: '::ffff:10.0.0.1', port: 4000 } },
    { op: 'withdraw', nodeId: 4294967295, stamp: 5, endpoint: undefined },
  ];
  const [message, ...more] = encodeClaims(records);
  assert.equal(more.length, 0);
  assert.deepEqual(decodeClaims(message!), records);
  assert.deepEqual(decodeClaims(Buffer.from([1])), [], 'no records');
  for (const [bad, why] of [
    [Buffer.alloc(0), 'empty'],
    [Buffer.concat([Buffer.from([2]), message!.subarray(1)]), 'another version'],
    [message!.subarray(0, message!.length - 1), 'truncated'],
    [Buffer.concat([message!, Buffer.from([9])]), 'trailing byte'],
  ] as const) assert.equal(decodeClaims(bad), undefined, why);
  const zero = encodeClaims([{ op: 'withdraw', nodeId: 1, stamp: 1, endpoint: undefined }])[0]!;
  zero.writeUInt32BE(0, 2);
  assert.equal(decodeClaims(zero), undefined, 'node 0');
  // Many records split into messages of at most 64 KiB.
  const many = Array.from({ length: 5_000 }, (_, i): ClaimRecord => ({ op: 'claim', nodeId: i + 1, stamp: i, endpoint: { address: '192.168.100.200', port: 1 + i } }));
  const messages = encodeClaims(many);
  assert.ok(messages.length > 1 && messages.every((m) => m.length <= 64 * 1024));
  assert.deepEqual(messages.flatMap((m) => decodeClaims(m)!), many);
});

/** Two instances' claims, each seeing what the other publishes when the test hands it over. */
function pair(maxRemoteClaims?: number) {
  const stats = new BeaconStats();
  let now = 1_000_000;
  const clock = () => now;
  const members = new Instances('a', 1_000, (id) => `fwd.${id}`);
  const b = members.get('b');
  b.live = true;
  const outbox: Buffer[] = [];
  const evicted: number[] = [];
  const endpoints = new Map<number, UdpEndpoint>();
  const wssHere = new Set<number>();
  const claims = new UdpClaims({
    self: members.self, stats, clock, maxRemoteClaims,
    publish: (message) => { outbox.push(Buffer.from(message)); return true; },
    endpointOf: (nodeId) => endpoints.get(nodeId),
    isWssHere: (nodeId) => wssHere.has(nodeId),
    evict: (nodeId) => { evicted.push(nodeId); endpoints.delete(nodeId); },
  });
  const sent = async () => {
    await new Promise(setImmediate);
    return outbox.splice(0).flatMap((m) => decodeClaims(m)!);
  };
  const fromB = (records: ClaimRecord[]) => claims.apply(b, records);
  return { stats, claims, members, b, sent, fromB, evicted, endpoints, wssHere, tick: (ms: number) => { now += ms; } };
}

test('claims: the newest claim for a node wins everywhere; ours, beaten, goes with its endpoint; an older one gets ours again', async () => {
  const { claims, b, sent, fromB, evicted, endpoints, tick } = pair();
  endpoints.set(7, ENDPOINT);
  claims.claim(7, ENDPOINT, true);
  const [ours] = await sent();
  assert.equal(ours!.op, 'claim');
  assert.equal(ours!.nodeId, 7);
  claims.claim(7, ENDPOINT, false); // a refresh of a standing claim is free
  assert.deepEqual(await sent(), []);
  // b's claim, older than ours (it crossed ours): ours stands and goes out again, so b yields.
  fromB([{ op: 'claim', nodeId: 7, stamp: ours!.stamp - 1, endpoint: { address: '10.9.9.9', port: 1 } }]);
  assert.deepEqual(evicted, []);
  assert.deepEqual((await sent()).map((r) => [r.op, r.nodeId, r.stamp]), [['claim', 7, ours!.stamp]]);
  assert.equal(claims.instanceOf(7), undefined, 'ours: not routed elsewhere');
  // b's newer claim: ours goes, and the node is at b.
  tick(10);
  fromB([{ op: 'claim', nodeId: 7, stamp: ours!.stamp + 10, endpoint: { address: '10.9.9.9', port: 1 } }]);
  assert.deepEqual(evicted, [7]);
  assert.equal(claims.isOwn(7), false);
  assert.equal(claims.instanceOf(7), b);
  // Equal stamps: the higher instance ID wins, the same way on every instance.
  endpoints.set(8, ENDPOINT);
  claims.claim(8, ENDPOINT, true);
  const [eight] = await sent();
  fromB([{ op: 'claim', nodeId: 8, stamp: eight!.stamp, endpoint: { address: '10.9.9.9', port: 1 } }]);
  assert.deepEqual(evicted, [7, 8], '"b" > "a"');
  // Our next stamp is past every stamp seen.
  endpoints.set(9, ENDPOINT);
  claims.claim(9, ENDPOINT, true);
  assert.ok((await sent())[0]!.stamp > eight!.stamp);
  // A dead instance is not routed to.
  b.live = false;
  assert.equal(claims.instanceOf(7), undefined);
});

test('claims: a withdrawal removes only the claim it names; a node on a WebSocket here is not taken; yieldTo withdraws ours', async () => {
  const { claims, b, sent, fromB, evicted, endpoints, wssHere } = pair();
  fromB([{ op: 'claim', nodeId: 5, stamp: 100, endpoint: { address: '10.9.9.9', port: 1 } }]);
  fromB([{ op: 'withdraw', nodeId: 5, stamp: 99, endpoint: undefined }]);
  assert.equal(claims.instanceOf(5), b, 'a withdrawal of an older claim leaves the newer one');
  fromB([{ op: 'withdraw', nodeId: 5, stamp: 100, endpoint: undefined }]);
  assert.equal(claims.instanceOf(5), undefined);
  wssHere.add(6);
  fromB([{ op: 'claim', nodeId: 6, stamp: 100, endpoint: { address: '10.9.9.9', port: 1 } }]);
  assert.equal(claims.instanceOf(6), undefined, 'a claim for a node on a WebSocket here is not taken');
  assert.deepEqual(evicted, []);
  endpoints.set(7, ENDPOINT);
  claims.claim(7, ENDPOINT, true);
  await sent();
  claims.yieldTo(7);
  assert.deepEqual(evicted, [7]);
  assert.deepEqual((await sent()).map((r) => [r.op, r.nodeId]), [['withdraw', 7]]);
  claims.yieldTo(8); // not ours: nothing
  assert.deepEqual(await sent(), []);
});

test('claims: unheard for two rotations a claim is forgotten; a restarted instance\'s are void; a stamp far ahead is refused', () => {
  const { claims, b, fromB, stats, tick } = pair();
  fromB([{ op: 'claim', nodeId: 5, stamp: 100, endpoint: { address: '10.9.9.9', port: 1 } }]);
  fromB([{ op: 'claim', nodeId: 6, stamp: 100, endpoint: { address: '10.9.9.9', port: 1 } }]);
  claims.rotate();
  fromB([{ op: 'claim', nodeId: 6, stamp: 100, endpoint: { address: '10.9.9.9', port: 1 } }]); // refreshed
  assert.equal(claims.instanceOf(5), b, 'kept one rotation');
  claims.rotate();
  assert.equal(claims.instanceOf(5), undefined, 'forgotten after two');
  assert.equal(claims.instanceOf(6), b);
  claims.forgetInstance(b);
  assert.equal(claims.instanceOf(6), undefined);
  tick(0);
  fromB([{ op: 'claim', nodeId: 7, stamp: 1_000_000 + 3_600_000, endpoint: { address: '10.9.9.9', port: 1 } }]);
  assert.equal(claims.instanceOf(7), undefined);
  assert.equal(stats.dropped.cluster_malformed, 1);
});

test('claims: at the cap, a claim for a new node is refused and counted; one replacing a held claim is not', () => {
  const { claims, b, fromB, stats } = pair(2);
  const claim = (nodeId: number, stamp: number): ClaimRecord => ({ op: 'claim', nodeId, stamp, endpoint: { address: '10.9.9.9', port: 1 } });
  fromB([claim(1, 10), claim(2, 10), claim(3, 10)]);
  assert.equal(claims.instanceOf(3), undefined);
  assert.equal(stats.dropped.cluster_claims_full, 1);
  fromB([claim(2, 11)]);
  assert.equal(claims.instanceOf(2), b);
  assert.equal(stats.dropped.cluster_claims_full, 1);
  fromB([{ op: 'withdraw', nodeId: 1, stamp: 10, endpoint: undefined }, claim(3, 12)]);
  assert.equal(claims.instanceOf(3), b, 'room again after a withdrawal');
});

/** A store that answers puts with increasing revisions and records them. */
class RecordingStore implements DirectoryStore {
  rev = 100;
  readonly puts: Array<[string, string, number]> = [];
  put(key: string, value: string): Promise<number> {
    const rev = ++this.rev;
    this.puts.push([key, value, rev]);
    return Promise.resolve(rev);
  }
  delete(): Promise<void> {
    return Promise.resolve();
  }
}

test('directory: a `u` entry (an older version) never evicts our WebSocket node, which is written again, nor replaces another live instance\'s', async () => {
  const members = new Instances('a', 1_000, (id) => `fwd.${id}`);
  const b = members.get('b');
  const c = members.get('c');
  b.live = true;
  c.live = true;
  const evicted: Array<[number, string]> = [];
  const yielded: number[] = [];
  const store = new RecordingStore();
  const directory = new Directory({
    self: members.self,
    evict: (nodeId, kind) => evicted.push([nodeId, kind]),
    wssAttachedElsewhere: (nodeId) => yielded.push(nodeId),
    onStoreError: (err) => { throw err; },
  });
  directory.store = store;
  directory.attached(7, 'wss');
  await new Promise(setImmediate);
  const [, , ours] = store.puts[0]!;
  directory.applyPut(7, members.self, 'wss', ours);
  directory.applyPut(7, b, 'udp', ours + 1);
  await new Promise(setImmediate);
  assert.deepEqual(evicted, []);
  assert.deepEqual(store.puts.map(([key, value]) => [key, value]), [['7', 'w a'], ['7', 'w a']], 'ours written again');
  assert.equal(directory.isOwn(7, 'wss'), true);
  // c's node on a WebSocket: a `u` entry from b does not replace it in the mirror.
  directory.applyPut(8, c, 'wss', 200);
  assert.deepEqual(yielded, [8], 'a WebSocket entry elsewhere: our UDP claim for it would give way');
  directory.applyPut(8, b, 'udp', 201);
  assert.equal(directory.instanceOf(8), c);
  assert.equal(directory.isWssElsewhere(8), true);
  // Once c is dead, a UDP entry may take the node (nothing holds its WebSocket any more).
  c.live = false;
  directory.applyPut(8, b, 'udp', 202);
  assert.equal(directory.instanceOf(8), b);
});

test('claims: the endpoint is kept; an instance sharing this address lends it for a send, one elsewhere or dead does not', () => {
  const { claims, b, fromB, stats } = pair();
  const claim = (nodeId: number, stamp: number, address: string, port: number): ClaimRecord => ({ op: 'claim', nodeId, stamp, endpoint: { address, port } });
  fromB([claim(5, 10, '::ffff:10.9.9.9', 40_000), claim(6, 10, '::ffff:10.9.9.9', 40_001), claim(7, 10, '2001:db8::7', 65_535)]);
  assert.equal(claims.sharedEndpointOf(5), undefined, 'b is on another machine (or without --reuse-port): forwarded to, never sent to from here');
  assert.equal(claims.instanceOf(5), b);
  b.sharesAddress = true;
  assert.deepEqual({ ...claims.sharedEndpointOf(5)! }, { address: '::ffff:10.9.9.9', port: 40_000, ip: '10.9.9.9' });
  assert.deepEqual({ ...claims.sharedEndpointOf(7)! }, { address: '2001:db8::7', port: 65_535, ip: '2001:db8::7' });
  assert.equal(claims.sharedEndpointOf(8), undefined, 'nobody claims 8');
  // Kept through a rotation (the previous generation), replaced by a newer claim with its own endpoint.
  claims.rotate();
  fromB([claim(6, 11, '10.1.1.1', 7)]);
  assert.deepEqual({ ...claims.sharedEndpointOf(5)! }, { address: '::ffff:10.9.9.9', port: 40_000, ip: '10.9.9.9' });
  assert.deepEqual({ ...claims.sharedEndpointOf(6)! }, { address: '10.1.1.1', port: 7, ip: '10.1.1.1' });
  assert.deepEqual(claims.claimsOf(b).map(({ nodeId, endpoint }) => [nodeId, endpoint.address, endpoint.port]).sort(),
    [[5, '::ffff:10.9.9.9', 40_000], [6, '10.1.1.1', 7], [7, '2001:db8::7', 65_535]]);
  b.live = false;
  assert.equal(claims.sharedEndpointOf(5), undefined, 'a dead instance\'s claims are adopted, not used as they are');
  b.live = true;
  // A claim whose address is no IP is refused and counted; the one it would replace stands.
  fromB([claim(5, 12, 'not-an-address', 1)]);
  assert.equal(stats.dropped.cluster_malformed, 1);
  assert.deepEqual({ ...claims.sharedEndpointOf(5)! }, { address: '::ffff:10.9.9.9', port: 40_000, ip: '10.9.9.9' });
});
