/**
 * Every route of the relay router against real beacons (docs/protocol.md §1, §3):
 * WSS->WSS, WSS->UDP, UDP->WSS, UDP->UDP, unknown, beacon peers (real pairs
 * and UDP sockets configured as beacon peers), stranger Syncs, both
 * anti-spoofing rules, and Discover over WebSocket (direct and proxied).
 *
 * Each route test asserts the delivered bytes and the `relay` counter.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { BeaconConfig } from '../lib/config';
import {
  PacketType, decodePacket, encodeDiscover, encodeDiscoverReply, encodePunchCommand, encodePunchRequest,
  encodeRelay, encodeRelayDeliver, encodeSync,
} from '../lib/protocol';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { SUITE_UDP_IO } from './helpers/udp-io';
import { UdpClient, beaconFor, eventually, udpClientFor, type TestBeacon } from './helpers/harness';
import { WsPeer, promValue } from './helpers/wire';
import { freeUdpPort } from './helpers/free-ports';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const carolId = 3333; // UDP nodes have no key: UDP is unauthenticated
const daveId = 4444;

/** Every beacon of this suite runs on SUITE_UDP_IO (the -dgram twin runs it on dgram). */
const beacon: typeof beaconFor = (t, ids = [], overrides = {}) => beaconFor(t, ids, { udpIo: SUITE_UDP_IO, ...overrides });
const udpClient = udpClientFor;

async function wsPeer(t: TestContext, tb: TestBeacon, id: TestIdentity, headers: Record<string, string> = {}): Promise<WsPeer> {
  const peer = await WsPeer.connect(tb.url, id, headers);
  t.after(() => peer.close());
  return peer;
}

/** Registers `client` as `nodeId` with a Discover and checks the reply. */
async function discover(tb: TestBeacon, client: UdpClient, nodeId: number): Promise<void> {
  client.send(encodeDiscover(nodeId), tb.udpPort);
  assert.deepEqual(await client.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: client.port }));
}

function relays(tb: TestBeacon): Record<'wss' | 'udp' | 'beacon' | 'unknown', number> {
  return { ...tb.beacon.metrics().stats.relay };
}

const none = { wss: 0, udp: 0, udp_shared: 0, cluster: 0, beacon: 0, unknown: 0 };

/** Asserts `got` is exactly the RelayDeliver of `sender` and `payload`. */
function assertDeliver(got: Buffer, sender: number, payload: Buffer): void {
  assert.equal(got.toString('hex'), encodeRelayDeliver(sender, payload).toString('hex'));
}

// ---- local routes -----------------------------------------------------------

test('WSS -> WSS: RelayDeliver over WebSocket, relay.wss', async (t) => {
  const tb = await beacon(t, [alice, bob]);
  const a = await wsPeer(t, tb, alice);
  const b = await wsPeer(t, tb, bob);
  const payload = Buffer.from('hello bob');
  a.send(encodeRelay(7777, 8888, payload));
  assertDeliver(await b.next(), 7777, payload);
  assert.deepEqual(relays(tb), { ...none, wss: 1 });

  // Empty and maximum-size payloads cross unchanged.
  const big = Buffer.alloc(16 * 1024 + 34, 0x3c);
  b.send(encodeRelay(8888, 7777, Buffer.alloc(0)));
  assertDeliver(await a.next(), 8888, Buffer.alloc(0));
  b.send(encodeRelay(8888, 7777, big));
  assertDeliver(await a.next(), 8888, big);
  assert.deepEqual(relays(tb), { ...none, wss: 3 });
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_relay_total', { route: 'wss' }), 3);
});

test('WSS -> UDP: RelayDeliver datagram to the Discovered endpoint, relay.udp', async (t) => {
  const tb = await beacon(t, [alice]);
  const a = await wsPeer(t, tb, alice);
  const carol = await udpClient(t);
  await discover(tb, carol, carolId);
  const payload = Buffer.from('hello carol');
  a.send(encodeRelay(7777, carolId, payload));
  assertDeliver(await carol.next(), 7777, payload);
  assert.deepEqual(relays(tb), { ...none, udp: 1 });

  const big = Buffer.alloc(16 * 1024 + 34, 0x7e);
  a.send(encodeRelay(7777, carolId, big));
  assertDeliver(await carol.next(), 7777, big);
  assert.deepEqual(relays(tb), { ...none, udp: 2 });
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_relay_total', { route: 'udp' }), 2);
});

test('WSS -> UDP: a RelayDeliver too large for one datagram is dropped and counted udp_send_error', async (t) => {
  const tb = await beacon(t, [alice]);
  const a = await wsPeer(t, tb, alice);
  const carol = await udpClient(t);
  await discover(tb, carol, carolId);
  // Positive control: the largest datagram (65507 bytes of UDP payload over IPv4) is delivered.
  const largest = Buffer.alloc(65_507 - 5, 0x11);
  a.send(encodeRelay(7777, carolId, largest));
  assertDeliver(await carol.next(), 7777, largest);
  assert.equal(tb.beacon.metrics().stats.dropped.udp_send_error, 0);

  // One byte more fits in a WebSocket message (64 KiB) but not in a datagram.
  a.send(encodeRelay(7777, carolId, Buffer.alloc(65_507 - 4, 0x22)));
  await eventually(() => tb.beacon.metrics().stats.dropped.udp_send_error === 1, 2_000, 'udp_send_error to be counted');
  await carol.expectNothing();
  a.send(encodeRelay(7777, carolId, Buffer.from('still serving')));
  assertDeliver(await carol.next(), 7777, Buffer.from('still serving'));
});

test('UDP -> WSS: RelayDeliver over WebSocket, relay.wss', async (t) => {
  const tb = await beacon(t, [alice]);
  const a = await wsPeer(t, tb, alice);
  const carol = await udpClient(t); // not Discovered: UDP senders need no registration
  const payload = Buffer.from('hello alice');
  carol.send(encodeRelay(carolId, 7777, payload), tb.udpPort);
  assertDeliver(await a.next(), carolId, payload);
  assert.deepEqual(relays(tb), { ...none, wss: 1 });
  assert.equal(tb.beacon.metrics().stats.udpPackets.relay, 1);
});

test('UDP -> WSS: bursts of datagrams reach the WebSocket peer whole and in order', async (t) => {
  // Datagrams read in one event-loop turn leave in one WebSocket write; a
  // turn that brings the peer more than half its send buffer (20 KB here,
  // against 16 KiB) is written early rather than dropped.
  const tb = await beacon(t, [alice], { sendBufferBytes: 16 * 1024 });
  const a = await wsPeer(t, tb, alice);
  const carol = await udpClient(t);
  const bursts = 10;
  const perBurst = 20;
  const payloadOf = (i: number) => {
    const payload = Buffer.alloc(1_000, i % 251);
    payload.writeUInt16BE(i, 0);
    return payload;
  };
  for (let burst = 0; burst < bursts; burst++) {
    for (let i = burst * perBurst; i < (burst + 1) * perBurst; i++) carol.send(encodeRelay(carolId, 7777, payloadOf(i)), tb.udpPort);
    await new Promise((resolve) => setImmediate(resolve)); // the beacon reads this burst in one turn
  }
  for (let i = 0; i < bursts * perBurst; i++) assertDeliver(await a.next(), carolId, payloadOf(i));
  assert.deepEqual(relays(tb), { ...none, wss: bursts * perBurst });
  assert.equal(tb.beacon.metrics().stats.dropped.send_buffer_full, 0);
});

test('UDP -> UDP: RelayDeliver datagram, relay.udp', async (t) => {
  const tb = await beacon(t, []);
  const carol = await udpClient(t);
  const dave = await udpClient(t);
  await discover(tb, carol, carolId);
  await discover(tb, dave, daveId);
  const payload = Buffer.from('hello dave');
  carol.send(encodeRelay(carolId, daveId, payload), tb.udpPort);
  assertDeliver(await dave.next(), carolId, payload);
  assert.deepEqual(relays(tb), { ...none, udp: 1 });
  await carol.expectNothing();
});

test('unknown destination: dropped, relay.unknown and dropped.unknown_dest', async (t) => {
  const tb = await beacon(t, [alice, bob]);
  const a = await wsPeer(t, tb, alice);
  const b = await wsPeer(t, tb, bob);
  const carol = await udpClient(t);
  await discover(tb, carol, carolId);

  a.send(encodeRelay(7777, 9999, Buffer.from('to nobody, over wss')));
  carol.send(encodeRelay(carolId, 9999, Buffer.from('to nobody, over udp')), tb.udpPort);
  await eventually(() => relays(tb).unknown === 2, 3_000, 'relay.unknown');
  assert.deepEqual(relays(tb), { ...none, unknown: 2 });
  assert.equal(tb.beacon.metrics().stats.dropped.unknown_dest, 2);
  const text = await tb.beacon.metricsText();
  assert.equal(promValue(text, 'beacon_relay_total', { route: 'unknown' }), 2);
  assert.equal(promValue(text, 'beacon_dropped_total', { reason: 'unknown_dest' }), 2);

  // Nothing was delivered anywhere: each side's next message is a later, legitimate one.
  a.send(encodeRelay(7777, 8888, Buffer.from('control')));
  assertDeliver(await b.next(), 7777, Buffer.from('control'));
  a.send(encodeRelay(7777, carolId, Buffer.from('control')));
  assertDeliver(await carol.next(), 7777, Buffer.from('control'));
  await a.expectNothing();
  assert.equal(tb.beacon.metrics().stats.udpSent, 2, 'DiscoverReply and the control only');
});

// ---- beacon peers -------------------------------------------------------------

/**
 * Two beacons configured as each other's peers. Ports are only known after
 * start and the beacon has no API to add peers later, so A's UDP port is
 * probed first: B starts (port 0) with A's probed port as its peer, then
 * A starts on that port with B's actual port as its peer.
 */
async function beaconPair(t: TestContext, idsA: readonly TestIdentity[], idsB: readonly TestIdentity[]) {
  const portA = await freeUdpPort();
  const b = await beacon(t, idsB, { beaconId: 2, peers: [{ host: '127.0.0.1', port: portA }], syncIntervalMs: 50 });
  const a = await beacon(t, idsA, {
    beaconId: 1, udp: { host: '127.0.0.1', port: portA }, peers: [{ host: '127.0.0.1', port: b.udpPort }], syncIntervalMs: 50,
  });
  return { a, b };
}

test('peer beacons: a Relay to a node attached to B is forwarded by A (relay.beacon) and delivered by B (relay.wss)', async (t) => {
  const { a, b } = await beaconPair(t, [alice], [bob]);
  const bobPeer = await wsPeer(t, b, bob);
  await eventually(() => a.beacon.metrics().beaconRoutes === 1, 3_000, 'A to learn bob from B\'s Sync');
  assert.ok(a.beacon.metrics().stats.syncsReceived >= 1);

  // From a WebSocket peer on A.
  const alicePeer = await wsPeer(t, a, alice);
  const payload = Buffer.from('alice on A to bob on B');
  alicePeer.send(encodeRelay(7777, 8888, payload));
  assertDeliver(await bobPeer.next(), 7777, payload);
  assert.deepEqual(relays(a), { ...none, beacon: 1 });
  assert.deepEqual(relays(b), { ...none, wss: 1 });

  // From a UDP node on A.
  const carol = await udpClient(t);
  carol.send(encodeRelay(carolId, 8888, Buffer.from('carol via A')), a.udpPort);
  assertDeliver(await bobPeer.next(), carolId, Buffer.from('carol via A'));
  assert.deepEqual(relays(a), { ...none, beacon: 2 });
  assert.deepEqual(relays(b), { ...none, wss: 2 });

  // And back: B learned alice from A's Sync.
  await eventually(() => b.beacon.metrics().beaconRoutes === 1, 3_000, 'B to learn alice from A\'s Sync');
  bobPeer.send(encodeRelay(8888, 7777, Buffer.from('bob on B to alice on A')));
  assertDeliver(await alicePeer.next(), 8888, Buffer.from('bob on B to alice on A'));
  assert.deepEqual(relays(b), { ...none, wss: 2, beacon: 1 });
  assert.deepEqual(relays(a), { ...none, beacon: 2, wss: 1 });
  assert.equal(promValue(await a.beacon.metricsText(), 'beacon_relay_total', { route: 'beacon' }), 2);
});

/** A beacon whose configured beacon peers are plain UDP sockets the test controls. */
async function beaconWithFakePeers(t: TestContext, ids: readonly TestIdentity[], count: number, overrides: Partial<BeaconConfig> = {}) {
  const fakes: UdpClient[] = [];
  for (let i = 0; i < count; i++) fakes.push(await udpClient(t));
  const tb = await beacon(t, ids, {
    beaconId: 1, peers: fakes.map((f) => ({ host: '127.0.0.1', port: f.port })), syncIntervalMs: 60_000, ...overrides,
  });
  // The Sync sent at start (nothing attached yet); the next is a minute away.
  for (const fake of fakes) assert.deepEqual(decodePacket(await fake.next()), { type: PacketType.Sync, beaconId: 1, nodeIds: [] });
  return { tb, fakes };
}

test('peer beacons: the original Relay is forwarded unchanged', async (t) => {
  const { tb, fakes: [peer] } = await beaconWithFakePeers(t, [alice], 1);
  peer!.send(encodeSync(2, [5555]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().beaconRoutes === 1, 3_000, 'the beacon route');

  const a = await wsPeer(t, tb, alice);
  const fromWss = encodeRelay(7777, 5555, Buffer.from('forward me'));
  a.send(fromWss);
  assert.equal((await peer!.next()).toString('hex'), fromWss.toString('hex'));
  const carol = await udpClient(t);
  const fromUdp = encodeRelay(carolId, 5555, Buffer.alloc(16 * 1024 + 34, 0x42));
  carol.send(fromUdp, tb.udpPort);
  assert.deepEqual(await peer!.next(), fromUdp);
  assert.deepEqual(relays(tb), { ...none, beacon: 2 });
});

test('peer beacons: a Relay from a beacon peer for a node not attached here is not forwarded again', async (t) => {
  const { tb, fakes: [p1, p2] } = await beaconWithFakePeers(t, [alice], 2);
  p2!.send(encodeSync(2, [5555]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().beaconRoutes === 1, 3_000, 'the beacon route');

  // Positive control: from a plain UDP node, 5555 is reached through p2.
  const carol = await udpClient(t);
  const control = encodeRelay(carolId, 5555, Buffer.from('control'));
  carol.send(control, tb.udpPort);
  assert.deepEqual(await p2!.next(), control);
  assert.deepEqual(relays(tb), { ...none, beacon: 1 });

  // From beacon peer p1: 5555 is not attached here, so it is dropped, not sent to p2.
  p1!.send(encodeRelay(carolId, 5555, Buffer.from('from p1')), tb.udpPort);
  // From p2 itself: not bounced back either.
  p2!.send(encodeRelay(carolId, 5555, Buffer.from('from p2')), tb.udpPort);
  await eventually(() => relays(tb).unknown === 2, 3_000, 'relay.unknown');
  assert.deepEqual(relays(tb), { ...none, beacon: 1, unknown: 2 });
  assert.equal(tb.beacon.metrics().stats.dropped.unknown_dest, 2);
  await p1!.expectNothing();
  await p2!.expectNothing();

  // A Relay from a beacon peer for a node attached here is delivered.
  const a = await wsPeer(t, tb, alice);
  p1!.send(encodeRelay(carolId, 7777, Buffer.from('for alice')), tb.udpPort);
  assertDeliver(await a.next(), carolId, Buffer.from('for alice'));
  assert.deepEqual(relays(tb), { ...none, beacon: 1, unknown: 2, wss: 1 });
});

test('peer beacons: routes from a peer that stops sending Sync expire after a few Sync intervals', async (t) => {
  const syncIntervalMs = 100;
  const peer = await udpClient(t);
  const tb = await beacon(t, [alice], { beaconId: 1, peers: [{ host: '127.0.0.1', port: peer.port }], syncIntervalMs });
  const a = await wsPeer(t, tb, alice);
  // While the peer keeps sending Sync, its route stays, past the lifetime.
  const startedAt = Date.now();
  let lastSyncAt = startedAt;
  while (Date.now() - startedAt < 5 * syncIntervalMs) {
    peer.send(encodeSync(2, [5555]), tb.udpPort);
    lastSyncAt = Date.now();
    await new Promise((resolve) => setTimeout(resolve, syncIntervalMs / 2));
  }
  assert.equal(tb.beacon.metrics().beaconRoutes, 1);
  const relay = encodeRelay(7777, 5555, Buffer.from('to the peer'));
  a.send(relay);
  await eventually(() => tb.beacon.metrics().stats.relay.beacon === 1, 3_000, 'the relay to the peer');
  // It fell silent after its last Sync (the beacon died): its routes go a few intervals later.
  // Measured from that Sync, not from here: waiting for the relay above can take longer than
  // the lifetime on a loaded machine.
  await eventually(() => tb.beacon.metrics().beaconRoutes === 0, 3_000, 'the route to expire');
  const silentFor = Date.now() - lastSyncAt;
  assert.ok(silentFor >= 2 * syncIntervalMs, `expired after ${silentFor} ms, before the lifetime`);
  a.send(encodeRelay(7777, 5555, Buffer.from('nowhere now')));
  await eventually(() => tb.beacon.metrics().stats.dropped.unknown_dest === 1, 3_000, 'the relay to be dropped');
  assert.equal(tb.beacon.metrics().stats.relay.beacon, 1);
});

test('peer beacons: a Sync replaces what that peer announced and skips nodes attached here', async (t) => {
  const { tb, fakes: [peer] } = await beaconWithFakePeers(t, [alice], 1);
  const a = await wsPeer(t, tb, alice);
  peer!.send(encodeSync(2, [5555, 6666, 7777]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.syncsReceived === 1, 3_000, 'the Sync');
  assert.equal(tb.beacon.metrics().beaconRoutes, 2, '7777 is attached here, so not a beacon route');

  peer!.send(encodeSync(2, [6666]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.syncsReceived === 2, 3_000, 'the second Sync');
  assert.equal(tb.beacon.metrics().beaconRoutes, 1);
  const carol = await udpClient(t);
  carol.send(encodeRelay(carolId, 5555, Buffer.from('forgotten')), tb.udpPort);
  carol.send(encodeRelay(carolId, 6666, Buffer.from('kept')), tb.udpPort);
  assert.deepEqual(await peer!.next(), encodeRelay(carolId, 6666, Buffer.from('kept')));
  await eventually(() => relays(tb).unknown === 1, 3_000, 'relay.unknown');
  assert.deepEqual(relays(tb), { ...none, beacon: 1, unknown: 1 });
  a.send(encodeRelay(7777, 7777, Buffer.from('self')));
  assertDeliver(await a.next(), 7777, Buffer.from('self'));
});

test('peer beacons on a dual-stack socket: an IPv4 beacon peer is recognised and routed to', async (t) => {
  const { tb, fakes: [peer] } = await beaconWithFakePeers(t, [], 1, { udp: { host: '::', port: 0 } });
  peer!.send(encodeSync(2, [5555]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().beaconRoutes === 1, 3_000, 'the beacon route');
  assert.equal(tb.beacon.metrics().stats.dropped.stranger_sync, 0);
  const carol = await udpClient(t);
  const relay = encodeRelay(carolId, 5555, Buffer.from('via a dual-stack beacon'));
  carol.send(relay, tb.udpPort);
  assert.deepEqual(await peer!.next(), relay);
  assert.deepEqual(relays(tb), { ...none, beacon: 1 });
});

test('Sync from a stranger is ignored, counted stranger_sync, and never routed to', async (t) => {
  const { tb, fakes: [peer] } = await beaconWithFakePeers(t, [], 1);
  const stranger = await udpClient(t);
  // Positive control: the beacon can reach the stranger's socket.
  await discover(tb, stranger, 4321);

  stranger.send(encodeSync(99, [5555]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.stranger_sync === 1, 3_000, 'stranger_sync');
  assert.equal(tb.beacon.metrics().beaconRoutes, 0);
  assert.equal(tb.beacon.metrics().stats.syncsReceived, 0);

  const carol = await udpClient(t);
  carol.send(encodeRelay(carolId, 5555, Buffer.from('not to the stranger')), tb.udpPort);
  await eventually(() => relays(tb).unknown === 1, 3_000, 'relay.unknown');
  assert.deepEqual(relays(tb), { ...none, unknown: 1 });
  await stranger.expectNothing();

  // The same Sync from the configured peer is accepted (so the refusal is about the source).
  peer!.send(encodeSync(99, [5555]), tb.udpPort);
  await eventually(() => tb.beacon.metrics().beaconRoutes === 1, 3_000, 'the beacon route');
  assert.equal(tb.beacon.metrics().stats.dropped.stranger_sync, 1);
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_dropped_total', { reason: 'stranger_sync' }), 1);
});

test('Sync sent to beacon peers announces nodes attached over WebSocket and UDP', async (t) => {
  const peer = await udpClient(t);
  const tb = await beacon(t, [alice], { beaconId: 42, peers: [{ host: '127.0.0.1', port: peer.port }], syncIntervalMs: 50 });
  await wsPeer(t, tb, alice);
  const carol = await udpClient(t);
  await discover(tb, carol, carolId);
  const want = [carolId, 7777].sort().join();
  const deadline = Date.now() + 3_000;
  for (;;) {
    const p = decodePacket(await peer.next(Math.max(1, deadline - Date.now())));
    assert.equal(p?.type, PacketType.Sync, 'only Syncs go to a beacon peer here');
    if (p?.type === PacketType.Sync && [...p.nodeIds].sort().join() === want) {
      assert.equal(p.beaconId, 42);
      break;
    }
  }
  assert.ok(tb.beacon.metrics().stats.syncsSent >= 2);
});

// ---- anti-spoofing (§3) ---------------------------------------------------------

test('over WebSocket, a Relay, Discover or PunchRequest for another node is dropped as spoofed_sender', async (t) => {
  const tb = await beacon(t, [alice, bob]);
  const a = await wsPeer(t, tb, alice);
  const b = await wsPeer(t, tb, bob);
  const carol = await udpClient(t);
  const dave = await udpClient(t);
  await discover(tb, carol, carolId);
  await discover(tb, dave, daveId);

  a.send(encodeRelay(8888, 8888, Buffer.from('as bob, to bob')));
  a.send(encodeRelay(carolId, 8888, Buffer.from('as carol, to bob')));
  a.send(encodeRelay(8888, carolId, Buffer.from('as bob, to carol')));
  a.send(encodeDiscover(8888));
  a.send(encodePunchRequest(carolId, daveId));
  await eventually(() => tb.beacon.metrics().stats.dropped.spoofed_sender === 5, 3_000, 'spoofed_sender');
  assert.deepEqual(relays(tb), none, 'nothing routed');
  assert.equal(tb.beacon.metrics().stats.dropped.punch_unavailable, 0);

  // Nothing was delivered: each receiver's next message is the legitimate one sent after.
  a.send(encodeRelay(7777, 8888, Buffer.from('legit to bob')));
  assertDeliver(await b.next(), 7777, Buffer.from('legit to bob'));
  a.send(encodeRelay(7777, carolId, Buffer.from('legit to carol')));
  assertDeliver(await carol.next(), 7777, Buffer.from('legit to carol'));
  a.send(encodeRelay(7777, daveId, Buffer.from('legit to dave')));
  assertDeliver(await dave.next(), 7777, Buffer.from('legit to dave'));
  a.send(encodeDiscover(7777));
  assert.equal(decodePacket(await a.next())?.type, PacketType.DiscoverReply, 'alice\'s first reply is to her own Discover');
  assert.deepEqual(relays(tb), { ...none, wss: 1, udp: 2 });
  assert.equal(tb.beacon.metrics().stats.dropped.spoofed_sender, 5);
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_dropped_total', { reason: 'spoofed_sender' }), 5);
});

test('over UDP, a Relay, Discover or PunchRequest for a node attached over WebSocket is dropped as wss_node_over_udp', async (t) => {
  const tb = await beacon(t, [alice, bob]);
  const a = await wsPeer(t, tb, alice);
  const b = await wsPeer(t, tb, bob);
  const carol = await udpClient(t);
  await discover(tb, carol, carolId);
  const mallory = await udpClient(t);

  mallory.send(encodeRelay(7777, 8888, Buffer.from('as alice, to bob')), tb.udpPort);
  mallory.send(encodeRelay(7777, carolId, Buffer.from('as alice, to carol')), tb.udpPort);
  mallory.send(encodeDiscover(7777), tb.udpPort);
  mallory.send(encodePunchRequest(7777, carolId), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.wss_node_over_udp === 4, 3_000, 'wss_node_over_udp');
  assert.deepEqual(relays(tb), none, 'nothing routed');
  assert.equal(tb.beacon.metrics().udpEndpoints, 1, 'no endpoint for 7777');

  // Nothing was delivered: each receiver's next message is the legitimate one sent after.
  mallory.send(encodeRelay(5555, 8888, Buffer.from('legit to bob')), tb.udpPort);
  assertDeliver(await b.next(), 5555, Buffer.from('legit to bob'));
  mallory.send(encodeRelay(5555, carolId, Buffer.from('legit to carol')), tb.udpPort);
  assertDeliver(await carol.next(), 5555, Buffer.from('legit to carol'));
  mallory.send(encodeDiscover(5555), tb.udpPort);
  assert.deepEqual(await mallory.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: mallory.port }));
  await a.expectNothing();
  assert.deepEqual(relays(tb), { ...none, wss: 1, udp: 1 });
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_dropped_total', { reason: 'wss_node_over_udp' }), 4);

  // The rule is about nodes *currently* attached: once alice leaves, UDP may speak for 7777.
  a.close();
  await eventually(() => !tb.beacon.isConnected(7777), 3_000, 'alice to detach');
  mallory.send(encodeDiscover(7777), tb.udpPort);
  assert.deepEqual(await mallory.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: mallory.port }));
  mallory.send(encodePunchRequest(7777, carolId), tb.udpPort);
  assert.deepEqual(await mallory.next(), encodePunchCommand({ ip: '127.0.0.1', port: carol.port }));
  assert.deepEqual(await carol.next(), encodePunchCommand({ ip: '127.0.0.1', port: mallory.port }));
  assert.equal(tb.beacon.metrics().stats.dropped.wss_node_over_udp, 4);
});

// ---- Discover over WebSocket (§3) -------------------------------------------------

test('Discover over WebSocket: DiscoverReply with 127.0.0.1 and the client\'s source port, no UDP endpoint', async (t) => {
  const tb = await beacon(t, [alice]);
  const a = await wsPeer(t, tb, alice);
  assert.ok(a.localPort > 0);
  a.send(encodeDiscover(7777));
  const reply = await a.next();
  assert.equal(reply.toString('hex'), `02047f000001${a.localPort.toString(16).padStart(4, '0')}`);
  assert.equal(tb.beacon.metrics().udpEndpoints, 0);

  // Relays to alice still go over WebSocket, never to a UDP endpoint.
  const carol = await udpClient(t);
  carol.send(encodeRelay(carolId, 7777, Buffer.from('x')), tb.udpPort);
  assertDeliver(await a.next(), carolId, Buffer.from('x'));
  assert.deepEqual(relays(tb), { ...none, wss: 1 });
  assert.equal(tb.beacon.metrics().udpEndpoints, 0);
});

test('Discover over WebSocket through a trusted proxy carries the forwarded address', async (t) => {
  const tb = await beacon(t, [alice]); // default trustProxy: loopback
  const a = await wsPeer(t, tb, alice, { 'X-Forwarded-For': '203.0.113.9' });
  a.send(encodeDiscover(7777));
  const reply = decodePacket(await a.next());
  assert.ok(reply?.type === PacketType.DiscoverReply);
  assert.equal(reply.endpoint.ip, '203.0.113.9');
  // Behind a proxy the client's port is unknown; the proxy's own port is never reported.
  assert.notEqual(reply.endpoint.port, a.localPort);
  assert.equal(tb.beacon.metrics().udpEndpoints, 0);
});

test('Discover over WebSocket with trustProxy [] ignores X-Forwarded-For', async (t) => {
  const tb = await beacon(t, [alice], { trustProxy: [] });
  const a = await wsPeer(t, tb, alice, { 'X-Forwarded-For': '203.0.113.9' });
  a.send(encodeDiscover(7777));
  assert.deepEqual(await a.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: a.localPort }));
});

test('Discover over WebSocket through a trusted proxy with an IPv6 client: 16-byte address', async (t) => {
  const tb = await beacon(t, [alice]);
  const a = await wsPeer(t, tb, alice, { 'X-Forwarded-For': '2001:db8::9' });
  a.send(encodeDiscover(7777));
  const reply = await a.next();
  assert.equal(reply[1], 16);
  const decoded = decodePacket(reply);
  assert.ok(decoded?.type === PacketType.DiscoverReply);
  assert.equal(decoded.endpoint.ip, '2001:db8::9');
});

test('a forwarded address that is not an IP is refused with 400 and never crashes the beacon', async (t) => {
  // Loopback is trusted by default, so any local client can send this header.
  const tb = await beacon(t, [alice, bob]);
  const b = await wsPeer(t, tb, bob);
  const refusal = await WsPeer.connect(tb.url, alice, { 'X-Forwarded-For': 'not-an-ip' }).then(
    (a) => { a.close(); return 'accepted'; },
    (err: Error) => err.message,
  );
  assert.match(refusal, /400/);
  assert.equal(tb.beacon.metrics().stats.refused.bad_forwarded_address, 1);
  // The beacon still serves new peers.
  const again = await wsPeer(t, tb, alice);
  again.send(encodeRelay(7777, 8888, Buffer.from('still serving')));
  assertDeliver(await b.next(), 7777, Buffer.from('still serving'));
});

test('WSS -> UDP: 300 Relays sent at once all leave, whole and in order (sends queued outside a UDP batch)', async (t) => {
  const tb = await beacon(t, [alice]);
  const a = await wsPeer(t, tb, alice);
  // Two receivers, 150 each: the test's own sockets read only after the beacon's turn, and one
  // socket's default receive buffer holds about 270 small datagrams.
  const receivers = [await udpClient(t), await udpClient(t)] as const;
  await discover(tb, receivers[0], carolId);
  await discover(tb, receivers[1], daveId);
  const count = 300;
  const payloadOf = (i: number) => {
    const payload = Buffer.alloc(8 + (i % 64), i & 0xff);
    payload.writeUInt32BE(i, 0);
    return payload;
  };
  // Sent in one turn: the beacon reads many per callback and queues more than one sendmmsg holds.
  for (let i = 0; i < count; i++) a.send(encodeRelay(7777, i % 2 === 0 ? carolId : daveId, payloadOf(i)));
  for (let i = 0; i < count; i++) assertDeliver(await receivers[i % 2]!.next(), 7777, payloadOf(i));
  assert.deepEqual(relays(tb), { ...none, udp: count });
  assert.equal(tb.beacon.metrics().stats.udpSent, count + 2);
});
