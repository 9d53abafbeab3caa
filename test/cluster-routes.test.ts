/**
 * Cluster mode, routes across instances: two beacon processes joined through
 * a real nats-server; WebSocket peers and UDP nodes on each; every route
 * across them (WSS->WSS, WSS->UDP, UDP->WSS, UDP->UDP), the anti-spoofing
 * rules across instances, and the cluster metrics moving.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { encodeDiscover, encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { allSee, joinedInstance, writeKeys, type Instance } from './helpers/cluster';
import { UdpClient } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1001); // WebSocket, instance a
const bob = makeIdentity(2002); // WebSocket, instance b
const UDP_A = 3003; // UDP node Discovered through instance a
const UDP_B = 4004; // UDP node Discovered through instance b

let nats: NatsServer;
let a: Instance;
let b: Instance;

before(async () => {
  nats = await NatsServer.start();
  const keys = writeKeys([alice, bob]);
  [a, b] = await Promise.all([joinedInstance('a', { nats: nats.url(), keys }), joinedInstance('b', { nats: nats.url(), keys })]);
  await allSee([a, b], 2);
});

after(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.close();
});

async function discovered(instance: Instance, nodeId: number): Promise<UdpClient> {
  const client = await UdpClient.open();
  client.send(encodeDiscover(nodeId), instance.udpPort);
  await client.next(); // DiscoverReply
  return client;
}

/** Sends until one arrives: the directory entry may still be on its way (convergence is the bench's). */
async function relayUntilDelivered(send: () => void, receive: (ms: number) => Promise<Buffer>, ms = 5_000): Promise<Buffer> {
  const deadline = Date.now() + ms;
  while (true) {
    send();
    const got = await receive(200).catch(() => undefined);
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`nothing delivered within ${ms} ms`);
  }
}

test('every route across two instances: WSS->WSS, WSS->UDP, UDP->WSS, UDP->UDP, delivered byte for byte', async () => {
  const pa = await WsPeer.connect(a.url, alice);
  const pb = await WsPeer.connect(b.url, bob);
  const ua = await discovered(a, UDP_A);
  const ub = await discovered(b, UDP_B);
  try {
    await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n >= 4);
    await b.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n >= 4);

    const wssToWss = await relayUntilDelivered(() => pa.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('w->w'))), (ms) => pb.next(ms));
    assert.deepEqual(wssToWss, encodeRelayDeliver(alice.nodeId, Buffer.from('w->w')));

    const wssToUdp = await relayUntilDelivered(() => pa.send(encodeRelay(alice.nodeId, UDP_B, Buffer.from('w->u'))), (ms) => ub.next(ms));
    assert.deepEqual(wssToUdp, encodeRelayDeliver(alice.nodeId, Buffer.from('w->u')));

    const udpToWss = await relayUntilDelivered(() => ua.send(encodeRelay(UDP_A, bob.nodeId, Buffer.from('u->w')), a.udpPort), (ms) => pb.next(ms));
    assert.deepEqual(udpToWss, encodeRelayDeliver(UDP_A, Buffer.from('u->w')));

    const udpToUdp = await relayUntilDelivered(() => ua.send(encodeRelay(UDP_A, UDP_B, Buffer.from('u->u')), a.udpPort), (ms) => ub.next(ms));
    assert.deepEqual(udpToUdp, encodeRelayDeliver(UDP_A, Buffer.from('u->u')));

    // And back the other way, b -> a, over the same cluster route.
    pb.send(encodeRelay(bob.nodeId, alice.nodeId, Buffer.from('back')));
    assert.deepEqual(await pa.next(), encodeRelayDeliver(bob.nodeId, Buffer.from('back')));

    // The RelayDeliver to a UDP node leaves from the socket of the instance it Discovered through.
    const fromPorts: number[] = [];
    ub.socket.once('message', (_msg, rinfo) => fromPorts.push(rinfo.port));
    pa.send(encodeRelay(alice.nodeId, UDP_B, Buffer.from('from b\'s socket')));
    await ub.next();
    assert.deepEqual(fromPorts, [b.udpPort]);

    // Metrics: a forwarded (route="cluster"), b received; batches carried them.
    const routedA = await a.metric('beacon_relay_total', { route: 'cluster' });
    assert.ok(routedA !== undefined && routedA >= 5, `a: route="cluster" ${routedA}`);
    const outA = await a.metric('beacon_cluster_frames_total', { direction: 'out' });
    const inB = await b.waitForMetric('beacon_cluster_frames_total', { direction: 'in' }, (n) => n >= 5);
    assert.ok(outA !== undefined && outA >= inB, `a out ${outA}, b in ${inB}`);
    assert.ok((await a.metric('beacon_cluster_batches_total', { direction: 'out' }))! >= 1);
    assert.ok((await b.metric('beacon_cluster_batches_total', { direction: 'in' }))! >= 1);
    assert.equal(await a.metric('beacon_cluster_connected'), 1);
    assert.equal(await b.metric('beacon_cluster_instances'), 2);
    assert.equal(await a.metric('beacon_dropped_total', { reason: 'cluster_unavailable' }), 0);
  } finally {
    pa.close();
    pb.close();
    ua.close();
    ub.close();
  }
});

test('many relays in one turn share NATS messages (batched per destination instance)', async () => {
  const pa = await WsPeer.connect(a.url, alice);
  const pb = await WsPeer.connect(b.url, bob);
  try {
    await relayUntilDelivered(() => pa.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('warm'))), (ms) => pb.next(ms));
    while (await pb.next(300).catch(() => undefined)); // drain the warm-up repeats
    const before = { frames: (await a.metric('beacon_cluster_frames_total', { direction: 'out' }))!, batches: (await a.metric('beacon_cluster_batches_total', { direction: 'out' }))! };
    const N = 200;
    // One WebSocket write carrying N frames: one read on the beacon, one turn.
    const frames = Array.from({ length: N }, (_, i) => encodeRelay(alice.nodeId, bob.nodeId, Buffer.from(`m${i}`)));
    pa.ws.send(frames[0]!, { fin: true });
    for (let i = 1; i < N; i++) pa.ws.send(frames[i]!);
    for (let i = 0; i < N; i++) assert.deepEqual(await pb.next(), encodeRelayDeliver(alice.nodeId, Buffer.from(`m${i}`)), `frame ${i}, in order`);
    const frames2 = (await a.metric('beacon_cluster_frames_total', { direction: 'out' }))! - before.frames;
    const batches = (await a.metric('beacon_cluster_batches_total', { direction: 'out' }))! - before.batches;
    assert.equal(frames2, N);
    assert.ok(batches < N / 2, `${N} frames went in ${batches} NATS messages`);
  } finally {
    pa.close();
    pb.close();
  }
});

test('docs/protocol.md §3 across instances: a UDP packet speaking for a node attached over WebSocket elsewhere is dropped', async () => {
  const pa = await WsPeer.connect(a.url, alice);
  const pb = await WsPeer.connect(b.url, bob);
  const liar = await UdpClient.open();
  try {
    await relayUntilDelivered(() => pa.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('ready'))), (ms) => pb.next(ms));
    const before = (await b.metric('beacon_dropped_total', { reason: 'wss_node_over_udp' }))!;
    // alice is on a WebSocket at instance a; a stranger claims to be her over UDP at instance b.
    liar.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('spoofed')), b.udpPort);
    liar.send(encodeDiscover(alice.nodeId), b.udpPort);
    await b.waitForMetric('beacon_dropped_total', { reason: 'wss_node_over_udp' }, (n) => n === before + 2);
    await liar.expectNothing(200);
    await pb.expectNothing(200);
  } finally {
    pa.close();
    pb.close();
    liar.close();
  }
});
