/**
 * Cluster mode: a stranger with no key cannot get a relay "from" a node on
 * a WebSocket delivered through another instance (issue 19, item 1).
 *
 * - The attack, reproduced: V and D on WebSockets at instance a; a stranger
 *   sprays UDP at instance b (batched I/O), Relay(M→D) and Relay(V→D,
 *   "FORGED") interleaved. b drops every V→D (`wss_node_over_udp`) and
 *   forwards M→D to a. When the forwarder held a batch past the turn and
 *   copied it later, recvmmsg had refilled the slot meanwhile, and D got
 *   FORGED "from V". D must get M's relays and never one from V.
 * - The receiving instance's own check: batches put straight on NATS that
 *   name an instance other than the one holding the sender's socket are
 *   dropped (`cluster_sender_elsewhere`); the rest of the batch is delivered.
 * Real nats-server, instances as child processes.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { encodeBatch } from '../lib/cluster/wire';
import { PacketType, decodePacket, encodeRelay } from '../lib/protocol';
import { allSee, joinedInstance, relayUntilDelivered, writeKeys, type Instance } from './helpers/cluster';
import { UdpClient } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

const V = makeIdentity(1001); // the victim the stranger speaks for: WebSocket, instance a
const D = makeIdentity(2002); // the destination: WebSocket, instance a
const W = makeIdentity(3003); // WebSocket, instance b
const M = 4004; // a node nobody holds: its relays may come through any instance

let nats: NatsServer;
let a: Instance;
let b: Instance;

before(async () => {
  nats = await NatsServer.start();
  const keys = writeKeys([V, D, W]);
  // b reads UDP with recvmmsg (the path whose receive slots are reused), and lets one source send fast.
  const bExtra = ['--udp-io', 'batched', '--udp-rate-per-ip', '1000000'];
  [a, b] = await Promise.all([
    joinedInstance('a', { nats: nats.url(), keys }),
    joinedInstance('b', { nats: nats.url(), keys, extra: bExtra }),
  ]);
  await allSee([a, b], 2);
});

after(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.close();
});

/** Counts what D receives, by sender, and keeps the payloads from V. */
function tally(peer: WsPeer): { bySender: Map<number, number>; fromV: string[] } {
  const bySender = new Map<number, number>();
  const fromV: string[] = [];
  peer.ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    const packet = decodePacket(data as Buffer);
    if (packet?.type !== PacketType.RelayDeliver) return;
    const { sender, payload } = packet;
    bySender.set(sender, (bySender.get(sender) ?? 0) + 1);
    if (sender === V.nodeId && fromV.length < 5) fromV.push(payload.toString());
  });
  return { bySender, fromV };
}

test('a stranger spraying Relay(M->D) and Relay(V->D, FORGED) at another instance never gets FORGED to D as from V', async () => {
  const pv = await WsPeer.connect(a.url, V);
  const pd = await WsPeer.connect(a.url, D);
  const stranger = await UdpClient.open();
  try {
    // b routes M->D to a once its directory has D.
    const probe = encodeRelay(M, D.nodeId, Buffer.from('probe'));
    for (const deadline = Date.now() + 8_000; ;) {
      stranger.send(probe, b.udpPort);
      if (await pd.next(100).catch(() => undefined)) break;
      if (Date.now() > deadline) throw new Error('b does not forward to D');
    }
    while (await pd.next(200).catch(() => undefined)); // the probe's repeats
    const seen = tally(pd);
    const droppedBefore = (await b.metric('beacon_dropped_total', { reason: 'wss_node_over_udp' }))!;
    const caughtBefore = (await a.metric('beacon_dropped_total', { reason: 'cluster_sender_elsewhere' }))!;

    // Bursts of interleaved pairs, with a turn between bursts: recvmmsg batches on b, and the
    // forwarder's batches for a fall within its coalescing window and are held past the turn.
    const PAIRS = 20_000;
    const BURST = 100;
    const forged = encodeRelay(V.nodeId, D.nodeId, Buffer.from('FORGED'));
    for (let sent = 0; sent < PAIRS; sent += BURST) {
      for (let i = sent; i < sent + BURST; i++) {
        stranger.send(encodeRelay(M, D.nodeId, Buffer.from(`M${i}`)), b.udpPort);
        stranger.send(forged, b.udpPort);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    // b reads the stranger's datagrams in order, so once a relay sent after the spray reaches D, b has
    // read (and dropped or forwarded) every datagram of it that the kernel did not drop. On a loaded
    // machine the kernel drops a share of a spray this fast: how many arrive is not the beacon's doing.
    const end = encodeRelay(M, D.nodeId, Buffer.from('END'));
    const isEnd = (msg: Buffer) => decodePacket(msg)?.type === PacketType.RelayDeliver && msg.subarray(-3).toString() === 'END';
    for (let arrived = false, deadline = Date.now() + 20_000; !arrived;) {
      stranger.send(end, b.udpPort);
      // Read what D has had so far; send again only after 200 ms without anything.
      let got = await pd.next(200).catch(() => undefined);
      while (got && !(arrived = isEnd(got))) got = await pd.next(200).catch(() => undefined);
      if (!arrived && Date.now() > deadline) throw new Error('the relay sent after the spray never reached D');
    }
    const dropped = (await b.metric('beacon_dropped_total', { reason: 'wss_node_over_udp' }))! - droppedBefore;
    assert.ok(dropped > PAIRS / 4, `b read and dropped ${dropped} of the ${PAIRS} relays "from V"`);
    // What b forwarded has arrived.
    const framesOut = (await b.metric('beacon_cluster_frames_total', { direction: 'out' }))!;
    await a.waitForMetric('beacon_cluster_frames_total', { direction: 'in' }, (n) => n >= framesOut, 10_000);
    while (await pd.next(300).catch(() => undefined)); // until D has had everything

    const fromM = seen.bySender.get(M) ?? 0;
    assert.ok(fromM > PAIRS / 4, `D got ${fromM} of M's ${PAIRS} relays`);
    assert.equal(seen.bySender.get(V.nodeId) ?? 0, 0, `D got relays "from V": ${JSON.stringify(seen.fromV)}`);
    assert.deepEqual([...seen.bySender.keys()], [M], 'every relay D got is from M');
    // Nor did b forward one "from V" that a's own check then had to catch: b's batches held M's bytes only.
    assert.equal(await a.metric('beacon_dropped_total', { reason: 'cluster_sender_elsewhere' }), caughtBefore);
  } finally {
    pv.close();
    pd.close();
    stranger.close();
  }
});

test('the receiving instance drops a forwarded relay whose sender is on a WebSocket at another instance than the one that sent it', async () => {
  const pv = await WsPeer.connect(a.url, V);
  const pd = await WsPeer.connect(a.url, D);
  const pw = await WsPeer.connect(b.url, W);
  const nc = await connect({ servers: `127.0.0.1:${nats.port}` });
  try {
    // a knows W is on a WebSocket at b once b's relays from W reach D.
    await relayUntilDelivered(pw, W, pd, D.nodeId, 'ready');
    const before = (await a.metric('beacon_dropped_total', { reason: 'cluster_sender_elsewhere' }))!;
    const batch = (relays: Buffer[]) => encodeBatch(relays, relays.reduce((n, r) => n + r.length, 0));
    // Named as sent by b: W (at b) and M (nobody's) pass; V (on a WebSocket at a itself) cannot come from b.
    nc.publish('beacon.fwd.a', batch([
      encodeRelay(V.nodeId, D.nodeId, Buffer.from('V via b')),
      encodeRelay(W.nodeId, D.nodeId, Buffer.from('W via b')),
      encodeRelay(M, D.nodeId, Buffer.from('M via b')),
    ]), { reply: 'beacon.fwd.b' });
    // Named as sent by an instance c that does not hold W.
    nc.publish('beacon.fwd.a', batch([encodeRelay(W.nodeId, D.nodeId, Buffer.from('W via c'))]), { reply: 'beacon.fwd.c' });
    // A reply subject that names no instance: the whole batch is not ours.
    const malformedBefore = (await a.metric('beacon_dropped_total', { reason: 'cluster_malformed' }))!;
    nc.publish('beacon.fwd.a', batch([encodeRelay(M, D.nodeId, Buffer.from('M via nobody'))]), { reply: '_INBOX.x' });
    await nc.flush();

    await a.waitForMetric('beacon_dropped_total', { reason: 'cluster_sender_elsewhere' }, (n) => n === before + 2);
    await a.waitForMetric('beacon_dropped_total', { reason: 'cluster_malformed' }, (n) => n === malformedBefore + 1);
    const got: string[] = [];
    for (let msg = await pd.next(500).catch(() => undefined); msg; msg = await pd.next(300).catch(() => undefined)) {
      const packet = decodePacket(msg);
      if (packet?.type === PacketType.RelayDeliver) got.push(`${packet.sender}:${packet.payload.toString()}`);
    }
    assert.deepEqual(got.filter((line) => !line.endsWith(':ready')), [`${W.nodeId}:W via b`, `${M}:M via b`]);
  } finally {
    await nc.close();
    pv.close();
    pd.close();
    pw.close();
  }
});
