/**
 * The pure parts of cluster mode, without NATS: the wire (subjects, values,
 * batches), liveness, the forwarder's per-turn batches, the directory's
 * last-writer-wins rules (driven through its store interface the way the KV
 * watch drives it), and the router's cluster route.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BeaconStats } from '../lib/metrics';
import { encodeRelay } from '../lib/protocol';
import { Directory, type DirectoryStore } from '../lib/cluster/directory';
import { BATCH_BYTES, Forwarder, SLAB_BYTES } from '../lib/cluster/forwarder';
import { Instances } from '../lib/cluster/instances';
import { RelayRouter, type ClusterInstance } from '../lib/relay/router';
import {
  decodeBatch, decodeHeartbeat, decodeNodeKey, decodePlacement, encodeBatch, encodeHeartbeat, encodePlacement, natsAddress, subjectsFor,
} from '../lib/cluster/wire';

test('wire: subjects escape the dots of host names; values and heartbeats round-trip; foreign ones are refused', () => {
  const s = subjectsFor('prod');
  assert.equal(s.forward('host.example:8443'), 'prod.fwd.host%2Eexample:8443');
  assert.equal(s.forwardedBy(s.forward('host.example:8443')), 'host.example:8443', 'a batch\'s reply subject names its sender');
  for (const bad of ['prod.fwd.', 'other.fwd.a', 'prod.hb.a', 'prod.fwd.has space', '_INBOX.x']) assert.equal(s.forwardedBy(bad), undefined, bad);
  assert.equal(s.heartbeat('a'), 'prod.hb.a');
  assert.equal(s.bucket, 'prod-directory');
  assert.deepEqual(decodePlacement(encodePlacement('wss', 'host:8443')), { kind: 'wss', instanceId: 'host:8443' });
  assert.deepEqual(decodePlacement(encodePlacement('udp', 'b')), { kind: 'udp', instanceId: 'b' });
  for (const bad of ['', 'w', 'w ', 'x host', 'w has space', `w ${'a'.repeat(65)}`]) assert.equal(decodePlacement(bad), undefined, bad);
  assert.equal(decodeNodeKey('4294967295'), 4294967295);
  for (const bad of ['0', '4294967296', '01', '-1', 'abc', '1.5']) assert.equal(decodeNodeKey(bad), undefined, bad);
  assert.deepEqual(decodeHeartbeat(encodeHeartbeat('a:1', '00ff')), { instanceId: 'a:1', incarnation: '00ff' });
  for (const bad of ['', 'a', 'a zz', 'a 00 extra', ' 00']) assert.equal(decodeHeartbeat(bad), undefined, bad);
});

test('wire: a --cluster URL becomes host:port for the client, IPv6 hosts with their brackets once', () => {
  assert.equal(natsAddress(new URL('nats://127.0.0.1:4333')), '127.0.0.1:4333');
  assert.equal(natsAddress(new URL('tls://nats.example:4222')), 'nats.example:4222');
  assert.equal(natsAddress(new URL('nats://user:pw@[::1]:4222')), '[::1]:4222');
  assert.equal(natsAddress(new URL('nats://[fd00::5]')), '[fd00::5]:4222');
});

test('wire: a batch is relays with u32 lengths; any bad length or non-Relay refuses the whole message', () => {
  const relays = [encodeRelay(1, 2, Buffer.from('x')), encodeRelay(3, 4, Buffer.alloc(300, 7))];
  const batch = encodeBatch(relays, relays[0]!.length + relays[1]!.length);
  assert.deepEqual(decodeBatch(batch), relays);
  assert.equal(decodeBatch(Buffer.alloc(0)), undefined);
  assert.equal(decodeBatch(batch.subarray(0, batch.length - 1)), undefined, 'truncated');
  assert.equal(decodeBatch(Buffer.concat([batch, Buffer.from([0, 0])])), undefined, 'trailing bytes');
  const notRelay = Buffer.from(batch);
  notRelay[4] = 0x06;
  assert.equal(decodeBatch(notRelay), undefined, 'a RelayDeliver inside');
  const zeroSender = encodeBatch([encodeRelay(1, 2, Buffer.alloc(0))], 9);
  zeroSender.writeUInt32BE(0, 5);
  assert.equal(decodeBatch(zeroSender), undefined, 'sender 0');
});

test('liveness: an instance is live from its heartbeat until dead-after; the lowest live ID sweeps the dead', () => {
  const members = new Instances('b', 1_000, (id) => `fwd.${id}`);
  assert.equal(members.liveCount, 1);
  members.heartbeat('a', '01', 0);
  members.heartbeat('c', '02', 0);
  assert.equal(members.liveCount, 3);
  assert.deepEqual(members.expire(1_000), [], 'not past dead-after yet');
  members.heartbeat('c', '02', 900);
  const died = members.expire(1_001);
  assert.deepEqual(died.map((i) => i.id), ['a']);
  assert.equal(members.get('a').live, false);
  assert.deepEqual(members.toSweep().map((i) => i.id), ['a'], 'b is now the lowest live ID');
  members.heartbeat('a', '03', 1_100);
  assert.equal(members.get('a').live, true, 'a new incarnation is live again');
  assert.deepEqual(members.toSweep(), [], 'a is lower than b: a sweeps');
});

test('forwarder: relays for one instance in one turn share one message; cut off, they are dropped as cluster_unavailable', async () => {
  const stats = new BeaconStats();
  const members = new Instances('self', 1_000, (id) => `fwd.${id}`);
  const published: Array<[string, Buffer]> = [];
  let connected = true;
  const forwarder = new Forwarder(stats, () => connected, (subject, data) => { published.push([subject, Buffer.from(data)]); return true; });
  const b = members.get('b');
  const c = members.get('c');
  const relays = Array.from({ length: 10 }, (_, i) => encodeRelay(1, 100 + i, Buffer.from(`r${i}`)));
  for (const relay of relays) forwarder.forward(b, relay);
  forwarder.forward(c, relays[0]!);
  assert.equal(published.length, 0, 'nothing before the end of the turn');
  await new Promise(setImmediate);
  assert.deepEqual(published.map(([subject]) => subject), ['fwd.b', 'fwd.c']);
  assert.deepEqual(decodeBatch(published[0]![1]), relays);
  assert.deepEqual(stats.cluster, { framesOut: 11, framesIn: 0, batchesOut: 2, batchesIn: 0 });
  connected = false;
  forwarder.forward(b, relays[0]!);
  await new Promise(setImmediate);
  assert.equal(published.length, 2);
  assert.equal(stats.dropped.cluster_unavailable, 1);
});

test('forwarder: a relay is copied when queued (it may be a borrowed slot); published batches are never written again', async () => {
  const stats = new BeaconStats();
  const members = new Instances('self', 1_000, (id) => `fwd.${id}`);
  const published: Uint8Array[] = [];
  const forwarder = new Forwarder(stats, () => true, (_subject, data) => { published.push(data); return true; });
  const b = members.get('b');
  const slot = encodeRelay(1, 2, Buffer.from('first'));
  const first = Buffer.from(slot);
  forwarder.forward(b, slot);
  slot.set(encodeRelay(3, 4, Buffer.from('later')), 0); // the receive area refilled within the batch's life
  await new Promise(setImmediate);
  assert.deepEqual(decodeBatch(published[0]!), [first]);
  // Many more batches, some large, through several slabs: the first one still reads the same.
  const big = encodeRelay(5, 6, Buffer.alloc(60_000, 7));
  for (let i = 0; i < (3 * SLAB_BYTES) / big.length; i++) forwarder.forward(b, big);
  forwarder.flushAll();
  assert.ok(published.length > 3 && published.slice(1).every((batch) => batch.length <= BATCH_BYTES + big.length + 4));
  assert.deepEqual(decodeBatch(published[0]!), [first]);
  assert.ok(published.slice(1).every((batch) => decodeBatch(batch)!.every((relay) => relay.equals(big))));
});

test('forwarder: a batch within the coalescing window of the last one waits for the window, gathering the frames of several turns', async () => {
  const stats = new BeaconStats();
  const members = new Instances('self', 1_000, (id) => `fwd.${id}`);
  const published: Array<[number, Buffer]> = [];
  const WINDOW_MS = 300; // the default is 1 ms; a wide one keeps this test's turns inside it on a loaded machine
  const forwarder = new Forwarder(stats, () => true, (_subject, data) => { published.push([performance.now(), Buffer.from(data)]); return true; }, WINDOW_MS);
  const b = members.get('b');
  const relays = Array.from({ length: 6 }, (_, i) => encodeRelay(1, 100 + i, Buffer.from(`r${i}`)));
  // A quiet link: the first relay leaves at the end of its turn.
  forwarder.forward(b, relays[0]!);
  await new Promise(setImmediate);
  assert.equal(published.length, 1);
  // More within the window, over three turns: held, then one message for all of them.
  const heldFrom = performance.now();
  for (const relay of relays.slice(1, 4)) {
    forwarder.forward(b, relay);
    await new Promise(setImmediate);
  }
  assert.equal(published.length, 1, 'held inside the window');
  while (published.length < 2) await new Promise((resolve) => setTimeout(resolve, 1));
  assert.deepEqual(decodeBatch(published[1]![1]), relays.slice(1, 4));
  assert.ok(published[1]![0] - heldFrom >= WINDOW_MS * 0.9, 'not before the window ends');
  // Quiet again for longer than the window: the next one goes at the end of its turn.
  await new Promise((resolve) => setTimeout(resolve, WINDOW_MS + 20));
  forwarder.forward(b, relays[4]!);
  await new Promise(setImmediate);
  assert.equal(published.length, 3);
  // Shutdown: flushAll sends what is held at once.
  forwarder.forward(b, relays[5]!);
  forwarder.flushAll();
  assert.equal(published.length, 4);
  assert.deepEqual(stats.cluster, { framesOut: 6, framesIn: 0, batchesOut: 4, batchesIn: 0 });
});

/** A store that records operations and answers with revisions we choose. */
class FakeStore implements DirectoryStore {
  rev = 100;
  readonly ops: string[] = [];
  deleteRefused = false;
  put(key: string, value: string): Promise<number> {
    this.ops.push(`put ${key} ${value}`);
    return Promise.resolve(++this.rev);
  }
  delete(key: string, previousRev: number): Promise<void> {
    this.ops.push(`delete ${key} @${previousRev}`);
    return this.deleteRefused ? Promise.reject(new Error('wrong last sequence: 7')) : Promise.resolve();
  }
}

function directoryWith(store: FakeStore) {
  const members = new Instances('a', 1_000, (id) => `fwd.${id}`);
  const evicted: string[] = [];
  const directory = new Directory({ self: members.self, evict: (nodeId, kind) => evicted.push(`${nodeId} ${kind}`), onStoreError: (err) => { throw err; } });
  directory.store = store;
  return { directory, members, evicted };
}

const settle = () => new Promise(setImmediate);

test('directory: attach writes, detach deletes at our revision, a later write elsewhere evicts ours', async () => {
  const store = new FakeStore();
  const { directory, members, evicted } = directoryWith(store);
  const b = members.get('b');
  members.heartbeat('b', '01', Date.now());

  directory.attached(7, 'wss');
  await settle();
  assert.deepEqual(store.ops, ['put 7 w a']);
  directory.applyPut(7, members.self, 'wss', 101); // our own write, seen by the watch
  assert.equal(directory.instanceOf(7), undefined, 'never routed to ourselves');

  directory.applyPut(7, b, 'wss', 150); // the node authenticated on b since
  assert.deepEqual(evicted, ['7 wss']);
  assert.equal(directory.instanceOf(7), b);
  assert.equal(directory.isWssElsewhere(7), true);
  directory.detached(7, 'wss'); // our socket's teardown: must not delete b's entry
  await settle();
  assert.deepEqual(store.ops, ['put 7 w a'], 'no delete after eviction');

  directory.attached(8, 'udp');
  await settle();
  directory.detached(8, 'udp');
  await settle();
  assert.deepEqual(store.ops.slice(1), ['put 8 u a', 'delete 8 @102']);
});

test('directory: an older write elsewhere, seen while ours is in flight, does not evict; a newer one does when ours lands', async () => {
  const store = new FakeStore();
  const { directory, members, evicted } = directoryWith(store);
  const b = members.get('b');
  members.heartbeat('b', '01', Date.now());
  store.rev = 200;
  directory.attached(9, 'wss'); // will land at 201
  directory.applyPut(9, b, 'wss', 150); // older than ours
  await settle();
  assert.deepEqual(evicted, []);
  directory.attached(10, 'wss'); // will land at 202
  directory.applyPut(10, b, 'wss', 300); // newer than ours
  await settle();
  assert.deepEqual(evicted, ['10 wss']);
});

test('directory: our entry deleted by someone else is written again; a stale entry of ours is deleted; dead instances are not routed to', async () => {
  const store = new FakeStore();
  const { directory, members } = directoryWith(store);
  directory.attached(11, 'wss');
  await settle();
  directory.applyDelete(11, 500); // a survivor took us for dead
  await settle();
  assert.deepEqual(store.ops, ['put 11 w a', 'put 11 w a']);

  directory.applyPut(12, members.self, 'wss', 600); // ours, but not held here
  await settle();
  assert.equal(store.ops.at(-1), 'delete 12 @600');

  const c = members.get('c');
  directory.applyPut(13, c, 'udp', 700);
  assert.equal(directory.instanceOf(13), undefined, 'c has never heartbeated');
  members.heartbeat('c', '01', Date.now());
  assert.equal(directory.instanceOf(13), c);
  assert.equal(directory.isWssElsewhere(13), false, 'a UDP node');
  directory.applyDelete(13, 650); // an older delete
  assert.equal(directory.instanceOf(13), c);
  directory.applyDelete(13, 701);
  assert.equal(directory.instanceOf(13), undefined);
  assert.equal(directory.size, 1, 'the stale entry of ours stays mirrored until its delete comes back');
});

test('router: the cluster route comes after local ones and before beacon peers; a forwarded relay is never forwarded again (cluster_moved)', () => {
  const stats = new BeaconStats();
  const other: ClusterInstance = { id: 'b' };
  const forwarded: Array<[string, number]> = [];
  const delivered: number[] = [];
  const datagrams: Array<[number, number]> = [];
  const local = { address: '10.0.0.1', port: 1, ip: '10.0.0.1' };
  const shared = { address: '10.0.0.2', port: 2, ip: '10.0.0.2' };
  const router = new RelayRouter({
    isAttachedOverWss: (id) => id === 1,
    writeFrame: (id) => { delivered.push(id); return true; },
    // 4: a UDP node here, also claimed by a sharing instance (ours wins); 5: claimed by one (b) sharing this address.
    udpEndpointOf: (id) => (id === 4 ? local : undefined),
    sharedUdpEndpointOf: (id) => (id === 4 || id === 5 ? shared : undefined),
    beaconFor: (id) => (id === 3 || id === 2 ? { address: '127.0.0.1', port: 9, ip: '127.0.0.1' } : undefined),
    sendDatagram: (packet, to) => { datagrams.push([packet[0]!, to.port]); },
    instanceOf: (id) => (id === 2 || id === 5 ? other : undefined),
    forwardToInstance: (instance, relay) => { forwarded.push([instance.id, relay.readUInt32BE(5)]); },
  }, stats);
  assert.equal(router.route(encodeRelay(9, 1, Buffer.from('a')), 'wss'), 'wss');
  assert.equal(router.route(encodeRelay(9, 2, Buffer.from('b')), 'wss'), 'cluster', 'before the beacon peer that also announced 2');
  assert.equal(router.route(encodeRelay(9, 2, Buffer.from('c')), 'beacon'), 'cluster', 'a Go beacon\'s relay crosses the cluster');
  assert.equal(router.route(encodeRelay(9, 3, Buffer.from('d')), 'wss'), 'beacon');
  assert.equal(router.route(encodeRelay(9, 1, Buffer.from('e')), 'cluster'), 'wss', 'delivered locally');
  assert.equal(router.route(encodeRelay(9, 2, Buffer.from('f')), 'cluster'), 'unknown', 'never forwarded again');
  assert.equal(router.route(encodeRelay(9, 3, Buffer.from('g')), 'cluster'), 'unknown', 'nor to a beacon peer');
  assert.equal(router.route(encodeRelay(9, 4, Buffer.from('h')), 'wss'), 'udp', 'this instance\'s own endpoint first');
  assert.equal(router.route(encodeRelay(9, 5, Buffer.from('i')), 'udp'), 'udp_shared', 'sent from this socket, not forwarded');
  assert.equal(router.route(encodeRelay(9, 5, Buffer.from('j')), 'cluster'), 'udp_shared', 'a forwarded relay too');
  assert.deepEqual(forwarded, [['b', 2], ['b', 2]]);
  assert.deepEqual(delivered, [1, 1]);
  // The beacon peer gets the Relay unchanged (0x05); UDP nodes get a RelayDeliver (0x06).
  assert.deepEqual(datagrams, [[0x05, 9], [0x06, 1], [0x06, 2], [0x06, 2]]);
  assert.equal(stats.relay.cluster, 2);
  assert.equal(stats.relay.udp_shared, 2);
  assert.equal(stats.dropped.cluster_moved, 2);
  assert.equal(stats.dropped.unknown_dest, 0);
});
