/**
 * The UDP side against a real beacon (docs/protocol.md §1): Discover,
 * PunchRequest, malformed and unexpected datagrams, and the
 * beacon_udp_packets_total counter, with real sockets on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { test, type TestContext } from 'node:test';
import {
  PacketType, decodePacket, encodeDiscover, encodeDiscoverReply, encodePunchCommand, encodePunchRequest,
  encodeRelay, encodeRelayDeliver, encodeSync,
} from '../lib/protocol';
import { EndpointTable } from '../lib/udp/endpoints';
import { makeIdentity } from './helpers/identity';
import { SUITE_UDP_IO } from './helpers/udp-io';
import { UdpClient, beaconFor, eventually, udpClientFor, type TestBeacon } from './helpers/harness';
import { WsPeer, promValue } from './helpers/wire';

/** Every beacon of this suite runs on SUITE_UDP_IO (the -dgram twin runs it on dgram). */
const beacon: typeof beaconFor = (t, ids = [], overrides = {}) => beaconFor(t, ids, { udpIo: SUITE_UDP_IO, ...overrides });
const udpClient = udpClientFor;

/** Sends a Discover for `nodeId` and returns the reply, checked byte for byte. */
async function discover(tb: TestBeacon, client: UdpClient, nodeId: number): Promise<void> {
  client.send(encodeDiscover(nodeId), tb.udpPort);
  const reply = await client.next();
  assert.equal(reply.toString('hex'), encodeDiscoverReply({ ip: '127.0.0.1', port: client.port }).toString('hex'));
}

/** A beacon with UDP nodes 1111 (`a`) and 2222 (`b`) Discovered. */
async function twoDiscoveredNodes(t: TestContext): Promise<{ tb: TestBeacon; a: UdpClient; b: UdpClient }> {
  const tb = await beacon(t);
  const a = await udpClient(t);
  const b = await udpClient(t);
  await discover(tb, a, 1111);
  await discover(tb, b, 2222);
  return { tb, a, b };
}

test('Discover is answered with the observed 127.0.0.1 and the client port, and the endpoint is recorded', async (t) => {
  const tb = await beacon(t);
  const client = await udpClient(t);
  assert.equal(tb.beacon.metrics().udpEndpoints, 0);
  client.send(encodeDiscover(3333), tb.udpPort);
  const reply = await client.next();
  const port = client.port.toString(16).padStart(4, '0');
  assert.equal(reply.toString('hex'), `02047f000001${port}`, 'DiscoverReply, ip_len 4, 127.0.0.1, client port');
  assert.deepEqual(decodePacket(reply), { type: PacketType.DiscoverReply, endpoint: { ip: '127.0.0.1', port: client.port } });
  const m = tb.beacon.metrics();
  assert.equal(m.udpEndpoints, 1);
  assert.equal(m.stats.udpPackets.discover, 1);
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_udp_endpoints'), 1);

  // A second node from another socket is a second endpoint; a repeat is not.
  const other = await udpClient(t);
  await discover(tb, other, 4444);
  await discover(tb, client, 3333);
  assert.equal(tb.beacon.metrics().udpEndpoints, 2);
});

test('PunchRequest: each side receives a PunchCommand with the other side\'s endpoint', async (t) => {
  const { tb, a, b } = await twoDiscoveredNodes(t);

  a.send(encodePunchRequest(1111, 2222), tb.udpPort);
  const toA = await a.next();
  const toB = await b.next();
  assert.deepEqual(toA, encodePunchCommand({ ip: '127.0.0.1', port: b.port }));
  assert.deepEqual(toB, encodePunchCommand({ ip: '127.0.0.1', port: a.port }));
  assert.equal(toA.toString('hex'), `04047f000001${b.port.toString(16).padStart(4, '0')}`);
  assert.equal(tb.beacon.metrics().stats.udpPackets.punch_request, 1);
  assert.equal(tb.beacon.metrics().stats.dropped.punch_unavailable, 0);
});

test('PunchRequest updates the requester\'s endpoint to the source address', async (t) => {
  const { tb, a, b } = await twoDiscoveredNodes(t);

  // Node 1111 moved to a new socket (new NAT mapping) and punches from there.
  const moved = await udpClient(t);
  moved.send(encodePunchRequest(1111, 2222), tb.udpPort);
  assert.deepEqual(await moved.next(), encodePunchCommand({ ip: '127.0.0.1', port: b.port }));
  assert.deepEqual(await b.next(), encodePunchCommand({ ip: '127.0.0.1', port: moved.port }));
  await a.expectNothing();
  assert.equal(tb.beacon.metrics().udpEndpoints, 2);

  // And relays to 1111 now go to the new socket.
  b.send(encodeRelay(2222, 1111, Buffer.from('to the new endpoint')), tb.udpPort);
  assert.deepEqual(await moved.next(), encodeRelayDeliver(2222, Buffer.from('to the new endpoint')));
});

test('PunchRequest for an unknown target: nothing is sent, counted punch_unavailable', async (t) => {
  const { tb, a, b } = await twoDiscoveredNodes(t);
  // Positive control: the same path works for a known target.
  a.send(encodePunchRequest(1111, 2222), tb.udpPort);
  await a.next();
  await b.next();

  a.send(encodePunchRequest(1111, 9999), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.punch_unavailable === 1, 3_000, 'punch_unavailable');
  await a.expectNothing();
  await b.expectNothing();
  assert.equal(tb.beacon.metrics().stats.udpPackets.punch_request, 2);
});

test('PunchRequest for a node attached over WebSocket is not coordinated', async (t) => {
  const alice = makeIdentity(7777);
  const tb = await beacon(t, [alice]);
  const peer = await WsPeer.connect(tb.url, alice);
  t.after(() => peer.close());
  const a = await udpClient(t);
  await discover(tb, a, 1111);

  a.send(encodePunchRequest(1111, 7777), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.punch_unavailable === 1, 3_000, 'punch_unavailable');
  await a.expectNothing();
  await peer.expectNothing();
});

test('malformed and unknown-type datagrams are counted, never answered, and the beacon keeps serving', async (t) => {
  const tb = await beacon(t);
  const client = await udpClient(t);
  await discover(tb, client, 3333); // positive control: this socket gets answers

  const malformed: Buffer[] = [
    Buffer.alloc(0),                                     // empty
    Buffer.from([PacketType.Discover, 0, 0, 1]),         // short Discover
    Buffer.from([PacketType.PunchRequest, 0, 0, 0, 1]),  // short PunchRequest
    encodePunchRequest(0, 3333),                         // zero requester
    encodePunchRequest(3333, 0),                         // zero target
    Buffer.from([PacketType.Relay, 0, 0, 0x0d, 0x05]),   // short Relay
    encodeRelay(3333, 0, Buffer.from('x')),              // zero dest
    encodeRelay(0, 3333, Buffer.from('x')),              // zero sender
    Buffer.from('0700000001000500000001', 'hex'),        // Sync count larger than the data
    Buffer.from([0x00, 1, 2, 3, 4, 5, 6, 7, 8]),         // unknown type 0x00
    Buffer.from([0x08, 0, 0, 0x0d, 0x05]),               // unknown type 0x08
    Buffer.from([0xff]),                                 // unknown type 0xff
    Buffer.from([PacketType.DiscoverReply, 5, 1, 2, 3, 4, 5, 0, 1]), // ip_len 5
  ];
  const unexpected: Buffer[] = [
    encodeDiscoverReply({ ip: '127.0.0.1', port: 1 }),
    encodePunchCommand({ ip: '::1', port: 2 }),
    encodeRelayDeliver(3333, Buffer.from('a deliver sent to the beacon')),
  ];
  for (const packet of [...malformed, ...unexpected]) client.send(packet, tb.udpPort);

  await eventually(() => {
    const { dropped } = tb.beacon.metrics().stats;
    return dropped.malformed === malformed.length && dropped.unexpected_type === unexpected.length;
  }, 3_000, 'malformed and unexpected_type drops');
  await client.expectNothing();
  const m = tb.beacon.metrics();
  assert.equal(m.stats.dropped.malformed, malformed.length);
  assert.equal(m.stats.dropped.unexpected_type, unexpected.length);
  assert.equal(m.stats.relay.unknown + m.stats.relay.udp + m.stats.relay.wss + m.stats.relay.beacon, 0, 'nothing routed');
  assert.equal(m.udpEndpoints, 1, 'nothing registered');

  // Still serving.
  await discover(tb, client, 3333);
  const other = await udpClient(t);
  await discover(tb, other, 4444);
  const text = await tb.beacon.metricsText();
  assert.equal(promValue(text, 'beacon_dropped_total', { reason: 'malformed' }), malformed.length);
  assert.equal(promValue(text, 'beacon_dropped_total', { reason: 'unexpected_type' }), unexpected.length);
});

test('beacon_udp_packets_total counts by type, in metrics() and in the Prometheus text', async (t) => {
  const tb = await beacon(t);
  const a = await udpClient(t);
  const b = await udpClient(t);
  const types = ['discover', 'punch_request', 'relay', 'sync', 'other'] as const;
  const before = await tb.beacon.metricsText();
  for (const type of types) assert.equal(promValue(before, 'beacon_udp_packets_total', { type }), 0, type);

  await discover(tb, a, 1111);                                         // discover 1
  await discover(tb, b, 2222);                                         // discover 2
  a.send(encodePunchRequest(1111, 2222), tb.udpPort);                  // punch_request 1
  await a.next();
  await b.next();
  a.send(encodeRelay(1111, 2222, Buffer.from('r1')), tb.udpPort);      // relay 1
  assert.deepEqual(await b.next(), encodeRelayDeliver(1111, Buffer.from('r1')));
  b.send(encodeRelay(2222, 1111, Buffer.from('r2')), tb.udpPort);      // relay 2
  assert.deepEqual(await a.next(), encodeRelayDeliver(2222, Buffer.from('r2')));
  a.send(encodeRelay(1111, 2222, Buffer.from('r3')), tb.udpPort);      // relay 3
  await b.next();
  a.send(encodeSync(5, [1234]), tb.udpPort);                           // sync 1 (a stranger's)
  a.send(encodeRelayDeliver(1111, Buffer.from('x')), tb.udpPort);      // other 1
  a.send(Buffer.from([0x42, 0, 0, 0, 0]), tb.udpPort);                 // other 2

  const expected = { discover: 2, punch_request: 1, relay: 3, sync: 1, other: 2 };
  await eventually(() => {
    const got = tb.beacon.metrics().stats.udpPackets;
    return types.every((type) => got[type] === expected[type]);
  }, 3_000, 'udp packet counters');
  assert.deepEqual({ ...tb.beacon.metrics().stats.udpPackets }, expected);
  const text = await tb.beacon.metricsText();
  for (const type of types) {
    assert.equal(promValue(text, 'beacon_udp_packets_total', { type }), expected[type], `prometheus ${type}`);
  }
  // Sent: 2 DiscoverReply + 2 PunchCommand + 3 RelayDeliver.
  assert.equal(tb.beacon.metrics().stats.udpSent, 7);
  assert.equal(promValue(text, 'beacon_udp_sent_total'), 7);
});

/** A UDP socket bound to another loopback address: another source for the beacon. */
async function udpFrom(t: TestContext, address: string): Promise<dgram.Socket> {
  const socket = dgram.createSocket('udp4');
  t.after(() => socket.close());
  await new Promise<void>((resolve) => socket.bind(0, address, resolve));
  return socket;
}

test('one source cannot fill the endpoint table: past its share its new nodes are refused and counted, real nodes still get in', async (t) => {
  // The attack: Discovers with random node IDs from one socket used to fill
  // the whole table, and every real node after them was refused.
  const tb = await beacon(t, [], { maxUdpEndpoints: 50, maxUdpEndpointsPerIp: 10 });
  const attacker = await udpFrom(t, '127.0.0.2');
  for (let i = 0; i < 50; i++) attacker.send(encodeDiscover(100_000 + i), tb.udpPort, '127.0.0.1');
  await eventually(() => tb.beacon.metrics().stats.udpPackets.discover === 50, 3_000, 'the 50 Discovers');
  assert.equal(tb.beacon.metrics().udpEndpoints, 10);
  assert.equal(tb.beacon.metrics().stats.dropped.endpoint_source_full, 40);
  // A known node of that source still refreshes.
  attacker.send(encodeDiscover(100_000), tb.udpPort, '127.0.0.1');
  await eventually(() => tb.beacon.metrics().stats.udpPackets.discover === 51, 3_000, 'the refresh');
  assert.equal(tb.beacon.metrics().stats.dropped.endpoint_source_full, 40);

  // Real nodes elsewhere: recorded, punched, relayed to.
  const a = await udpClient(t);
  const b = await udpClient(t);
  await discover(tb, a, 1111);
  await discover(tb, b, 2222);
  a.send(encodePunchRequest(1111, 2222), tb.udpPort);
  assert.equal((await a.next()).toString('hex'), encodePunchCommand({ ip: '127.0.0.1', port: b.port }).toString('hex'));
  assert.equal((await b.next()).toString('hex'), encodePunchCommand({ ip: '127.0.0.1', port: a.port }).toString('hex'));
  a.send(encodeRelay(1111, 2222, Buffer.from('x')), tb.udpPort);
  assert.equal((await b.next()).toString('hex'), encodeRelayDeliver(1111, Buffer.from('x')).toString('hex'));
});

test('a full endpoint table makes room by dropping the least recently refreshed entry, counted', async (t) => {
  const tb = await beacon(t, [], { maxUdpEndpoints: 3 });
  const clients = [await udpClient(t), await udpClient(t), await udpClient(t), await udpClient(t)];
  await discover(tb, clients[0]!, 1111);
  await discover(tb, clients[1]!, 2222);
  await discover(tb, clients[2]!, 3333);
  await discover(tb, clients[0]!, 1111); // refreshed: 2222 is now the stalest
  await discover(tb, clients[3]!, 4444);
  assert.equal(tb.beacon.metrics().udpEndpoints, 3);
  assert.equal(tb.beacon.metrics().stats.udpEndpointsEvicted, 1);
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_udp_endpoints_evicted_total'), 1);
  clients[3]!.send(encodeRelay(4444, 2222, Buffer.from('x')), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.unknown_dest === 1, 3_000, '2222 to be gone');
  clients[3]!.send(encodeRelay(4444, 1111, Buffer.from('y')), tb.udpPort);
  assert.equal((await clients[0]!.next()).toString('hex'), encodeRelayDeliver(4444, Buffer.from('y')).toString('hex'));
});

test('EndpointTable: least recently refreshed out first, per-source share by IPv6 prefix, expiry from the oldest', () => {
  const table = new EndpointTable({ ttlMs: 100, maxEntries: 3, maxPerSource: 2, ipv6PrefixBits: 64 });
  assert.equal(table.record(1, '2001:db8::1', 9), 'recorded');
  assert.equal(table.record(2, '2001:db8::2', 9, 1), 'recorded');
  assert.equal(table.record(3, '2001:db8::3', 9, 2), 'source_full'); // same /64
  assert.equal(table.record(3, '2001:db8:0:1::3', 9, 2), 'recorded'); // the next /64
  assert.equal(table.record(1, '2001:db8::1', 9, 3), 'recorded'); // refresh: 2 is the stalest
  assert.equal(table.record(4, '198.51.100.1', 9, 4), 'evicted_oldest');
  assert.deepEqual([...table.nodeIds()], [3, 1, 4]);
  assert.equal(table.entriesFrom('2001:db8::77'), 1);
  // A node moving to a source that holds its share keeps its old endpoint.
  assert.equal(table.record(5, '198.51.100.1', 9, 5), 'evicted_oldest');
  assert.equal(table.record(3, '198.51.100.1', 9, 6), 'source_full');
  assert.equal(table.get(3), undefined); // 3 was evicted by 5 already
  assert.equal(table.expire(103), 1); // 1 (refreshed at 3)
  assert.deepEqual([...table.nodeIds()], [4, 5]);
});

test('authenticating over WebSocket removes the node\'s UDP endpoint, so a stranger\'s Discover cannot outlive the attachment', async (t) => {
  const n103 = makeIdentity(103);
  const sender = makeIdentity(104);
  const tb = await beacon(t, [n103, sender]);
  const stranger = await udpClient(t);
  await discover(tb, stranger, 103); // before 103 attaches, UDP may claim it
  assert.equal(tb.beacon.metrics().udpEndpoints, 1);
  const peer = await WsPeer.connect(tb.url, n103);
  assert.equal(tb.beacon.metrics().udpEndpoints, 0);
  peer.close();
  await eventually(() => !tb.beacon.isConnected(103), 3_000, '103 to leave');
  const other = await WsPeer.connect(tb.url, sender);
  t.after(() => other.close());
  other.send(encodeRelay(104, 103, Buffer.from('for 103 only')));
  await eventually(() => tb.beacon.metrics().stats.dropped.unknown_dest === 1, 3_000, 'the relay to be dropped');
  await stranger.expectNothing();
});

test('dual-stack socket: IPv4 clients are answered as IPv4 (4 bytes), IPv6 clients as IPv6 (16 bytes)', async (t) => {
  const tb = await beacon(t, [], { udp: { host: '::', port: 0 } });
  const v4 = await udpClient(t);
  await discover(tb, v4, 1111); // source seen as ::ffff:127.0.0.1, carried as 127.0.0.1
  assert.equal(tb.beacon.metrics().udpEndpoints, 1);

  const v6 = dgram.createSocket('udp6');
  t.after(() => v6.close());
  await new Promise<void>((resolve) => v6.bind(0, '::1', resolve));
  const v6Port = v6.address().port;
  const fromV6: Buffer[] = [];
  v6.on('message', (msg) => { fromV6.push(msg); });
  const nextV6 = async (): Promise<Buffer> => {
    await eventually(() => fromV6.length > 0, 3_000, 'a datagram on ::1');
    return fromV6.shift()!;
  };
  v6.send(encodeDiscover(2222), tb.udpPort, '::1');
  const reply = await nextV6();
  assert.equal(reply.toString('hex'), `0210${'00'.repeat(15)}01${v6Port.toString(16).padStart(4, '0')}`);

  // PunchCommand across families: each side gets the other's address in its own form.
  v6.send(encodePunchRequest(2222, 1111), tb.udpPort, '::1');
  assert.deepEqual(await nextV6(), encodePunchCommand({ ip: '127.0.0.1', port: v4.port }));
  assert.deepEqual(await v4.next(), encodePunchCommand({ ip: '::1', port: v6Port }));

  // Relays cross families.
  v4.send(encodeRelay(1111, 2222, Buffer.from('to v6')), tb.udpPort);
  assert.deepEqual(await nextV6(), encodeRelayDeliver(1111, Buffer.from('to v6')));
  v6.send(encodeRelay(2222, 1111, Buffer.from('to v4')), tb.udpPort, '::1');
  assert.deepEqual(await v4.next(), encodeRelayDeliver(2222, Buffer.from('to v4')));
  assert.deepEqual({ ...tb.beacon.metrics().stats.relay }, { wss: 0, udp: 2, udp_shared: 0, cluster: 0, beacon: 0, unknown: 0 });
});

test(`the beacon runs on the ${SUITE_UDP_IO} transport and says so in beacon_udp_io`, async (t) => {
  const tb = await beacon(t);
  assert.equal(tb.beacon.metrics().udpIo, SUITE_UDP_IO);
  const text = await tb.beacon.metricsText();
  assert.equal(promValue(text, 'beacon_udp_io', { io: SUITE_UDP_IO }), 1);
  assert.equal(promValue(text, 'beacon_udp_io', { io: SUITE_UDP_IO === 'batched' ? 'dgram' : 'batched' }), undefined);
});

test('a 0-byte datagram is counted malformed and the next datagram is served', async (t) => {
  const tb = await beacon(t);
  const client = await udpClient(t);
  client.send(Buffer.alloc(0), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.malformed === 1, 3_000, 'the empty datagram to be counted');
  assert.equal(tb.beacon.metrics().stats.udpPackets.other, 1);
  await discover(tb, client, 5555);
});

test('a 65,507-byte Relay (the largest IPv4 datagram) is relayed UDP -> UDP whole', async (t) => {
  const { tb, a, b } = await twoDiscoveredNodes(t);
  const payload = Buffer.alloc(65_507 - 9);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  const relay = encodeRelay(1111, 2222, payload);
  assert.equal(relay.length, 65_507);
  a.send(relay, tb.udpPort);
  const got = await b.next();
  assert.equal(got.length, 65_507 - 4);
  assert.ok(got.equals(encodeRelayDeliver(1111, payload)), 'RelayDeliver byte for byte');
  assert.equal(tb.beacon.metrics().stats.relay.udp, 1);
});

test('bursts across batch boundaries: 300 Relays from one socket arrive whole and in order', async (t) => {
  const { tb, a, b } = await twoDiscoveredNodes(t);
  const count = 300;
  const got: Buffer[] = [];
  // Bursts of 100 (over one batch of 64), each read before the next: one socket's
  // default receive buffer holds a few hundred small datagrams, and a loss there is not the beacon's.
  for (let burst = 0; burst < count / 100; burst++) {
    for (let i = burst * 100; i < (burst + 1) * 100; i++) {
      const payload = Buffer.alloc(4 + (i % 50));
      payload.writeUInt32BE(i);
      a.send(encodeRelay(1111, 2222, payload), tb.udpPort);
    }
    for (let i = 0; i < 100; i++) got.push(await b.next());
  }
  got.forEach((msg, i) => {
    const payload = Buffer.alloc(4 + (i % 50));
    payload.writeUInt32BE(i);
    assert.ok(msg.equals(encodeRelayDeliver(1111, payload)), `datagram ${i} whole and in order`);
  });
  assert.equal(tb.beacon.metrics().stats.relay.udp, count);
  assert.equal(tb.beacon.metrics().stats.udpSent, count + 2);
});

test('IPv6: a beacon on ::1 answers Discover with the 16-byte address and relays UDP -> UDP', async (t) => {
  const tb = await beacon(t, [], { udp: { host: '::1', port: 0 } });
  const clients = await Promise.all([0, 1].map(async () => {
    const socket = dgram.createSocket('udp6');
    await new Promise<void>((resolve) => socket.bind(0, '::1', resolve));
    t.after(() => socket.close());
    const queue: Buffer[] = [];
    socket.on('message', (msg) => queue.push(msg));
    return { socket, queue, port: socket.address().port };
  }));
  const [a, b] = clients as [typeof clients[0], typeof clients[0]];
  a.socket.send(encodeDiscover(1111), tb.udpPort, '::1');
  b.socket.send(encodeDiscover(2222), tb.udpPort, '::1');
  await eventually(() => a.queue.length === 1 && b.queue.length === 1, 3_000, 'both DiscoverReplies');
  assert.deepEqual(decodePacket(a.queue[0]!), { type: PacketType.DiscoverReply, endpoint: { ip: '::1', port: a.port } });
  assert.equal(a.queue[0]!.length, 2 + 16 + 2, 'ip_len 16');
  a.socket.send(encodeRelay(1111, 2222, Buffer.from('over six')), tb.udpPort, '::1');
  await eventually(() => b.queue.length === 2, 3_000, 'the RelayDeliver');
  assert.ok(b.queue[1]!.equals(encodeRelayDeliver(1111, Buffer.from('over six'))));
});
