/**
 * The beacon as real Pilot Go daemons use it (issue 20), over real UDP
 * sockets on 127.0.0.1, on SUITE_UDP_IO (the -dgram twin runs it on dgram):
 *
 * - A daemon's start: a Discover for node 0 from its tunnel port before it
 *   registers (an address query), then, registered, a Discover with its ID
 *   from that same port, again after every registry heartbeat. The query
 *   is answered byte for byte as the Go beacon answers it, and nothing is
 *   recorded for node 0.
 * - Node 0 is refused everywhere else: Relay sender or destination,
 *   PunchRequest requester or target (UDP and WebSocket), and auth.
 * - Many daemons behind one address at the default per-address budgets,
 *   each bouncing relays at its partner as Go daemons bounce FIN|ACK after
 *   a close: everything is delivered, in order, nothing rate-limited.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { test, type TestContext } from 'node:test';
import {
  PacketType, authReplyMessage, decodePacket, encodeDiscover, encodeDiscoverReply,
  encodePunchCommand, encodePunchRequest, encodeRelay, encodeRelayDeliver,
} from '../lib/protocol';
import { DEFAULTS } from '../lib/config';
import { SUITE_UDP_IO } from './helpers/udp-io';
import {
  UdpClient, beaconFor, closed, eventually, openCompat, udpClientFor, withTimeout, type TestBeacon,
} from './helpers/harness';
import { makeIdentity, sign } from './helpers/identity';
import { WsPeer, promValue } from './helpers/wire';

/** Every beacon of this suite runs on SUITE_UDP_IO, with the default UDP budgets. */
const beacon: typeof beaconFor = (t, ids = [], overrides = {}) => beaconFor(t, ids, { udpIo: SUITE_UDP_IO, ...overrides });

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const port16 = (port: number): string => port.toString(16).padStart(4, '0');

/** Exactly what a Go daemon sends first: type 0x01, node 0. */
const GO_ADDRESS_QUERY = hex('01 00000000');

/** A UDP socket bound to 127.0.0.1:`port` (0: any), with a queue of what it receives. */
async function socketOn(t: TestContext, port: number): Promise<{ socket: dgram.Socket; port: number; next: (ms?: number) => Promise<Buffer>; close: () => Promise<void> }> {
  const socket = dgram.createSocket('udp4');
  const queue: Buffer[] = [];
  let waiter: ((msg: Buffer) => void) | undefined;
  socket.on('message', (msg) => {
    if (waiter) { const w = waiter; waiter = undefined; w(msg); } else queue.push(msg);
  });
  socket.bind(port, '127.0.0.1');
  await once(socket, 'listening');
  let open = true;
  const close = async () => {
    if (!open) return;
    open = false;
    socket.close();
    await once(socket, 'close');
  };
  t.after(close);
  return {
    socket,
    port: socket.address().port,
    next: (ms = 3_000) => {
      const queued = queue.shift();
      if (queued) return Promise.resolve(queued);
      return withTimeout(new Promise<Buffer>((resolve) => { waiter = resolve; }), ms, 'a datagram');
    },
    close,
  };
}

async function expectNothing(next: (ms: number) => Promise<Buffer>, ms = 200): Promise<void> {
  const msg = await next(ms).catch(() => undefined);
  if (msg) throw new Error(`unexpected datagram ${msg.toString('hex')}`);
}

async function discover(tb: TestBeacon, client: UdpClient, nodeId: number): Promise<void> {
  client.send(encodeDiscover(nodeId), tb.udpPort);
  assert.deepEqual(await client.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: client.port }));
}

test('a Go daemon\'s start: Discover 0 from the tunnel port is answered byte for byte and recorded nowhere; then Discover with its ID registers it', async (t) => {
  const tb = await beacon(t);
  const bob = await udpClientFor(t);
  await discover(tb, bob, 2222); // another daemon, already up

  // 1. Before registering: a temporary socket on the tunnel's port asks its address with node 0.
  const temp = await socketOn(t, 0);
  const tunnelPort = temp.port;
  temp.socket.send(GO_ADDRESS_QUERY, tb.udpPort, '127.0.0.1');
  const reply = await temp.next();
  assert.equal(reply.toString('hex'), `02047f000001${port16(tunnelPort)}`, 'DiscoverReply: ip_len 4, 127.0.0.1, the tunnel port');

  let m = tb.beacon.metrics();
  assert.equal(m.udpEndpoints, 1, 'no endpoint for node 0: bob only');
  assert.equal(m.stats.addressQueries.udp, 1);
  assert.equal(m.stats.udpPackets.discover, 2);
  assert.equal(m.stats.dropped.malformed, 0, 'the query is not malformed');
  let text = await tb.beacon.metricsText();
  assert.equal(promValue(text, 'beacon_address_queries_total', { transport: 'udp' }), 1);
  assert.equal(promValue(text, 'beacon_udp_endpoints'), 1);

  // A relay to node 0 still goes nowhere: 0 names no node.
  bob.send(encodeRelay(2222, 0, Buffer.from('to nobody')), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.malformed === 1, 3_000, 'the relay to 0 dropped');
  await expectNothing(temp.next);
  assert.equal(tb.beacon.metrics().stats.relay.udp + tb.beacon.metrics().stats.relay.unknown, 0, 'not routed');

  // 2. The temporary socket closes and the tunnel binds the same port; registered as 7777, it Discovers from there.
  await temp.close();
  const tunnel = await socketOn(t, tunnelPort);
  tunnel.socket.send(hex('01 00001e61'), tb.udpPort, '127.0.0.1'); // Discover 7777
  assert.equal((await tunnel.next()).toString('hex'), `02047f000001${port16(tunnelPort)}`);
  assert.equal(tb.beacon.metrics().udpEndpoints, 2);

  // 3. After each registry heartbeat it Discovers again from the tunnel socket: answered, one endpoint still.
  for (let i = 0; i < 3; i++) {
    tunnel.socket.send(encodeDiscover(7777), tb.udpPort, '127.0.0.1');
    assert.deepEqual(await tunnel.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: tunnelPort }));
  }
  assert.equal(tb.beacon.metrics().udpEndpoints, 2);

  // Relays to 7777 reach the tunnel socket; its PunchRequest is coordinated both ways.
  bob.send(encodeRelay(2222, 7777, Buffer.from('PILS over the relay')), tb.udpPort);
  assert.deepEqual(await tunnel.next(), encodeRelayDeliver(2222, Buffer.from('PILS over the relay')));
  tunnel.socket.send(encodePunchRequest(7777, 2222), tb.udpPort, '127.0.0.1');
  assert.deepEqual(await tunnel.next(), encodePunchCommand({ ip: '127.0.0.1', port: bob.port }));
  assert.deepEqual(await bob.next(), encodePunchCommand({ ip: '127.0.0.1', port: tunnelPort }));

  // Node 0 never entered the table: a relay to it is still dropped, the query counted once.
  bob.send(encodeRelay(2222, 0, Buffer.from('to nobody, again')), tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.malformed === 2, 3_000, 'the second relay to 0 dropped');
  await expectNothing(tunnel.next);
  m = tb.beacon.metrics();
  assert.equal(m.stats.addressQueries.udp, 1);
  assert.equal(m.stats.addressQueries.wss, 0);
  text = await tb.beacon.metricsText();
  assert.equal(promValue(text, 'beacon_udp_endpoints'), 2);
  assert.equal(promValue(text, 'beacon_address_queries_total', { transport: 'udp' }), 1);
});

test('many address queries from one source record nothing: the endpoint table and its per-source share stay untouched', async (t) => {
  const tb = await beacon(t, [], { maxUdpEndpointsPerIp: 2 });
  const clients = await Promise.all(Array.from({ length: 20 }, () => udpClientFor(t)));
  for (const client of clients) client.send(GO_ADDRESS_QUERY, tb.udpPort);
  for (const client of clients) assert.deepEqual(await client.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: client.port }));
  assert.equal(tb.beacon.metrics().udpEndpoints, 0);
  assert.equal(tb.beacon.metrics().stats.addressQueries.udp, 20);
  assert.equal(tb.beacon.metrics().stats.dropped.endpoint_source_full, 0, 'the queries used none of the source\'s share');
  // The source's whole share is still there for real nodes.
  await discover(tb, clients[0], 1111);
  await discover(tb, clients[1], 1112);
  assert.equal(tb.beacon.metrics().udpEndpoints, 2);
});

test('node 0 is refused everywhere else: Relay sender or destination, PunchRequest requester or target, over UDP and WebSocket, and auth', async (t) => {
  const alice = makeIdentity(7777);
  const tb = await beacon(t, [alice]);
  const carol = await udpClientFor(t);
  const dave = await udpClientFor(t);
  await discover(tb, carol, 3333);
  await discover(tb, dave, 4444);
  const peer = await WsPeer.connect(tb.url, alice);
  t.after(() => peer.close());

  // UDP: each is malformed, nothing delivered, nothing recorded.
  const overUdp = [
    encodeRelay(0, 4444, Buffer.from('from nobody')),
    encodeRelay(3333, 0, Buffer.from('to nobody')),
    encodePunchRequest(0, 4444),
    encodePunchRequest(3333, 0),
  ];
  for (const packet of overUdp) carol.send(packet, tb.udpPort);
  await eventually(() => tb.beacon.metrics().stats.dropped.malformed === overUdp.length, 3_000, 'the UDP packets dropped');
  await dave.expectNothing();
  await carol.expectNothing();

  // WebSocket: the same four, also malformed (not spoofed_sender: 0 is no node's ID).
  peer.send(encodeRelay(0, 4444, Buffer.from('from nobody')));
  peer.send(encodeRelay(7777, 0, Buffer.from('to nobody')));
  peer.send(encodePunchRequest(0, 4444));
  peer.send(encodePunchRequest(7777, 0));
  await eventually(() => tb.beacon.metrics().stats.dropped.malformed === overUdp.length + 4, 3_000, 'the WebSocket packets dropped');
  await dave.expectNothing();
  await peer.expectNothing();

  let m = tb.beacon.metrics();
  assert.equal(m.udpEndpoints, 2, 'carol and dave only');
  assert.deepEqual(m.stats.relay, { wss: 0, udp: 0, udp_shared: 0, cluster: 0, beacon: 0, unknown: 0 }, 'nothing routed');
  assert.equal(m.stats.dropped.spoofed_sender, 0);
  assert.equal(m.stats.dropped.punch_unavailable, 0);
  assert.equal(m.stats.addressQueries.udp + m.stats.addressQueries.wss, 0);

  // Auth as node 0, signed with a real key over the right text: refused.
  const before = m.stats.authFailed.bad_node_id;
  const { ws, nonce } = await openCompat(tb.url);
  ws.send(authReplyMessage({ node_id: 0, public_key: alice.publicKeyB64, sig: sign(alice, `compat_auth:0:${nonce}`) }));
  assert.deepEqual(await closed(ws), { code: 1008, reason: 'auth failed' });
  m = tb.beacon.metrics();
  assert.equal(m.stats.authFailed.bad_node_id, before + 1);
  assert.equal(m.peers, 1, 'alice only');

  // Positive control: the same sockets still relay.
  carol.send(encodeRelay(3333, 4444, Buffer.from('legit')), tb.udpPort);
  assert.deepEqual(await dave.next(), encodeRelayDeliver(3333, Buffer.from('legit')));
});

test('over WebSocket, a Discover for node 0 is answered with the address the beacon sees, counted, and registers nothing', async (t) => {
  const alice = makeIdentity(7777);
  const tb = await beacon(t, [alice]);
  const peer = await WsPeer.connect(tb.url, alice);
  t.after(() => peer.close());
  peer.send(GO_ADDRESS_QUERY);
  const reply = await peer.next();
  assert.deepEqual(decodePacket(reply), { type: PacketType.DiscoverReply, endpoint: { ip: '127.0.0.1', port: peer.localPort } });
  // The same reply as for the peer's own ID.
  peer.send(encodeDiscover(7777));
  assert.deepEqual(await peer.next(), reply);
  const m = tb.beacon.metrics();
  assert.equal(m.stats.addressQueries.wss, 1);
  assert.equal(m.stats.dropped.spoofed_sender, 0);
  assert.equal(m.udpEndpoints, 0);
  assert.equal(promValue(await tb.beacon.metricsText(), 'beacon_address_queries_total', { transport: 'wss' }), 1);
});

// ---- many daemons behind one address ------------------------------------------

/** Pairs of daemons behind one address (127.0.0.1), and how many relays each daemon sends. */
const PAIRS = 12;
const RELAYS_PER_DAEMON = 3_000;
/** Relays each daemon has in flight towards its partner, as in a FIN|ACK bounce on a few connections. */
const IN_FLIGHT = 4;
/** No relay delivered for this long: some were lost, and their pairs wait for ever. */
const STALL_MS = 5_000;
/** The size of a Go daemon's encrypted FIN|ACK: PILS, node ID, nonce, 34-byte header, GCM tag. */
const FRAME_BYTES = 4 + 4 + 12 + 34 + 16;

interface SimulatedDaemon {
  nodeId: number;
  socket: dgram.Socket;
  partner: number;
  sent: number;
  received: number;
  /** The last sequence number received from the partner: relays must arrive in the order sent. */
  lastSeq: number;
  outOfOrder: number;
}

test(`${PAIRS * 2} daemons behind one address bounce relays at each other at the default budgets: all delivered, in order, nothing rate-limited`, async (t) => {
  const tb = await beacon(t);
  const daemons: SimulatedDaemon[] = [];
  for (let i = 0; i < PAIRS * 2; i++) {
    const client = await udpClientFor(t);
    const nodeId = 10_001 + i;
    // The Go daemon's start: the address query, then Discover with its ID.
    client.send(GO_ADDRESS_QUERY, tb.udpPort);
    await client.next();
    await discover(tb, client, nodeId);
    client.socket.removeAllListeners('message');
    daemons.push({ nodeId, socket: client.socket, partner: nodeId + (i % 2 === 0 ? 1 : -1), sent: 0, received: 0, lastSeq: 0, outOfOrder: 0 });
  }
  assert.equal(tb.beacon.metrics().udpEndpoints, PAIRS * 2);

  const frame = (d: SimulatedDaemon): Buffer => {
    const payload = Buffer.alloc(FRAME_BYTES, 0x5a);
    payload.write('PILS', 0, 'latin1');
    payload.writeUInt32BE(d.nodeId, 4);
    payload.writeUInt32BE(d.sent + 1, 8); // sequence number, where the nonce counter is
    return encodeRelay(d.nodeId, d.partner, payload);
  };
  const sendOne = (d: SimulatedDaemon) => {
    d.socket.send(frame(d), tb.udpPort, '127.0.0.1');
    d.sent++;
  };
  const started = performance.now();
  const done = new Promise<void>((resolve) => {
    let finished = 0;
    for (const d of daemons) {
      d.socket.on('message', (msg: Buffer) => {
        // RelayDeliver: type, sender u32, then the frame (PILS, node ID, sequence number, ...).
        if (msg[0] !== PacketType.RelayDeliver || msg.readUInt32BE(1) !== d.partner) return;
        const seq = msg.readUInt32BE(5 + 8);
        if (seq <= d.lastSeq) d.outOfOrder++;
        d.lastSeq = seq;
        d.received++;
        if (d.sent < RELAYS_PER_DAEMON) sendOne(d); // bounce it back at once
        if (d.received === RELAYS_PER_DAEMON && ++finished === daemons.length) resolve();
      });
    }
  });
  // A lost relay stalls its pair for good, so stop at the first refusal, or after STALL_MS without progress.
  const received = () => daemons.reduce((sum, d) => sum + d.received, 0);
  const failFast = new Promise<never>((_, reject) => {
    let last = -1;
    let lastChange = performance.now();
    const watch = setInterval(() => {
      const { dropped } = tb.beacon.metrics().stats;
      const now = received();
      if (now !== last) [last, lastChange] = [now, performance.now()];
      if (dropped.rate_limited + dropped.byte_rate_limited > 0) reject(new Error('relays were refused by a per-address budget'));
      else if (performance.now() - lastChange > STALL_MS) reject(new Error(`no relay delivered for ${STALL_MS} ms (lost)`));
    }, 50);
    void done.finally(() => clearInterval(watch));
    t.after(() => clearInterval(watch));
  });
  for (const d of daemons) for (let i = 0; i < IN_FLIGHT; i++) sendOne(d);
  await withTimeout(Promise.race([done, failFast]), 30_000, 'every relay to be delivered').catch((err: Error) => {
    const { stats } = tb.beacon.metrics();
    const short = daemons.filter((d) => d.received < RELAYS_PER_DAEMON).map((d) => `${d.nodeId}: ${d.received}`);
    throw new Error(`${err.message}; rate_limited ${stats.dropped.rate_limited}, byte_rate_limited ${stats.dropped.byte_rate_limited}, `
      + `relayed ${stats.relay.udp} of ${PAIRS * 2 * RELAYS_PER_DAEMON}; short: ${short.join(', ')}`);
  });
  const seconds = (performance.now() - started) / 1000;
  const total = PAIRS * 2 * RELAYS_PER_DAEMON;
  t.diagnostic(`${total} relays from one address in ${seconds.toFixed(2)} s: ${Math.round(total / seconds)}/s in all, `
    + `${Math.round(RELAYS_PER_DAEMON / seconds)}/s per daemon (${SUITE_UDP_IO}; budget ${DEFAULTS.udpRatePerIp}/s)`);

  const { stats } = tb.beacon.metrics();
  assert.equal(stats.dropped.rate_limited, 0);
  assert.equal(stats.dropped.byte_rate_limited, 0);
  assert.equal(stats.relay.udp, total);
  for (const d of daemons) {
    assert.equal(d.received, RELAYS_PER_DAEMON, `${d.nodeId} got all its partner sent`);
    assert.equal(d.outOfOrder, 0, `${d.nodeId}: relays arrive in the order they were sent`);
  }
  assert.equal(stats.addressQueries.udp, PAIRS * 2);
});
