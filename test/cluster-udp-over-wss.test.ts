/**
 * Cluster mode: a UDP claim never takes a node from its WebSocket (issue
 * 19, item 2). A Discover is unauthenticated; an Ed25519 handshake is proof.
 * X is on a WebSocket at instance a; a stranger sends Discover(X) to
 * instance b:
 * - while b starts (before it has loaded the directory and heard a),
 * - after b stalled long enough for a to take it for dead, holding a claim
 *   for X made before X attached,
 * - while b alone is cut off from NATS, X attaching at a meanwhile,
 * - as an entry `u <instance>` in the directory (an older version),
 * - and as a claim standing at another live instance (routes ask the
 *   WebSocket placements first).
 * Each time X's WebSocket stays open, relays to X reach X (from a and from
 * b), and the stranger's socket gets none. Real nats-server, instances as
 * child processes.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { encodeClaims } from '../lib/cluster/udp-claims';
import { encodeHeartbeat } from '../lib/cluster/wire';
import { PacketType, decodePacket, encodeDiscover, encodeRelay } from '../lib/protocol';
import { VIEW_COMPLETE, allSee, joinedInstance, relayUntilDelivered, spawnInstance, writeKeys, type Instance } from './helpers/cluster';
import { UdpClient } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { TcpProxy } from './helpers/tcp-proxy';
import { WsPeer } from './helpers/wire';
import { freeUdpPort } from './helpers/free-ports';

const X = makeIdentity(1001); // the target: WebSocket, instance a
const Y1 = makeIdentity(2002); // WebSocket, instance a
const Y2 = makeIdentity(3003); // WebSocket, instance b
const keys = writeKeys([X, Y1, Y2]);

const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function nats(): Promise<NatsServer> {
  const server = await NatsServer.start();
  cleanup.push(() => server.close());
  return server;
}

async function instance(promise: Promise<Instance>): Promise<Instance> {
  const started = await promise;
  cleanup.push(() => started.stop());
  return started;
}

async function peer(url: string, id: typeof X): Promise<WsPeer> {
  const p = await WsPeer.connect(url, id);
  cleanup.push(() => p.close());
  return p;
}

/** X's WebSocket: the close code if it was closed. */
function watchClose(p: WsPeer): { code: number | undefined } {
  const seen: { code: number | undefined } = { code: undefined };
  p.ws.on('close', (code) => { seen.code = code; });
  return seen;
}

/** The stranger: its UDP socket, and every RelayDeliver it was sent. */
async function stranger(): Promise<{ socket: UdpClient; relays: () => number }> {
  const socket = await UdpClient.open();
  cleanup.push(() => socket.close());
  let relays = 0;
  socket.socket.on('message', (msg) => { if (decodePacket(msg)?.type === PacketType.RelayDeliver) relays++; });
  return { socket, relays: () => relays };
}

/** What `p` receives from `sender`, counted. */
function countFrom(p: WsPeer, sender: number): () => number {
  let n = 0;
  p.ws.on('message', (data, isBinary) => {
    const packet = isBinary ? decodePacket(data as Buffer) : undefined;
    if (packet?.type === PacketType.RelayDeliver && packet.sender === sender) n++;
  });
  return () => n;
}

test('Discover(X) sprayed at an instance while it starts: X\'s WebSocket elsewhere stays, relays to X reach X', async () => {
  const server = await nats();
  const a = await instance(joinedInstance('start-a', { nats: server.url(), keys }));
  const px = await peer(a.url, X);
  const closed = watchClose(px);
  const fromY1 = countFrom(px, Y1.nodeId);
  const fromY2 = countFrom(px, Y2.nodeId);
  const py1 = await peer(a.url, Y1);
  const liar = await stranger();
  const bUdp = await freeUdpPort();
  // From before b listens until well after it knows the cluster.
  let spraying = true;
  const spray = (async () => {
    while (spraying) {
      liar.socket.send(encodeDiscover(X.nodeId), bUdp);
      await sleep(2);
    }
  })();
  try {
    const b = await instance(spawnInstance('start-b', { nats: server.url(), keys, extra: ['--udp', `127.0.0.1:${bUdp}`] }));
    await b.waitForLog((l) => l.msg === VIEW_COMPLETE, 'b taking UDP claims');
    const py2 = await peer(b.url, Y2);
    const RELAYS = 100;
    for (let i = 0; i < RELAYS; i++) {
      py1.send(encodeRelay(Y1.nodeId, X.nodeId, Buffer.from(`y1 ${i}`)));
      py2.send(encodeRelay(Y2.nodeId, X.nodeId, Buffer.from(`y2 ${i}`)));
      await sleep(10);
    }
    spraying = false;
    await spray;
    await sleep(300); // the last relays' way
    assert.equal(closed.code, undefined, `X's WebSocket was closed (${closed.code})`);
    assert.equal(fromY1(), RELAYS, 'every relay from Y1 (a) reached X');
    assert.ok(fromY2() >= RELAYS * 0.9, `${fromY2()} of ${RELAYS} relays from Y2 (b) reached X`);
    assert.equal(liar.relays(), 0, 'the stranger got relays');
    assert.ok((await b.metric('beacon_dropped_total', { reason: 'cluster_not_ready' }))! > 0, 'b refused claims while starting');
    assert.ok((await b.metric('beacon_dropped_total', { reason: 'wss_node_over_udp' }))! > 0, 'b refused them once it knew X');
    assert.equal(await b.metric('beacon_udp_endpoints'), 0);
    assert.equal(await a.metric('beacon_cluster_evictions_total', { kind: 'wss' }), 0);
  } finally {
    spraying = false;
    await spray;
  }
});

test('an instance taken for dead comes back holding a UDP claim for X, now on a WebSocket elsewhere: X stays, b gives its claim up', async () => {
  const server = await nats();
  const [a, b] = await Promise.all([
    instance(joinedInstance('stall-a', { nats: server.url(), keys })),
    instance(joinedInstance('stall-b', { nats: server.url(), keys })),
  ]);
  await allSee([a, b], 2);
  const py2 = await peer(b.url, Y2);
  const liar = await stranger();
  // b takes the claim while X is nowhere; a hears of it.
  liar.socket.send(encodeDiscover(X.nodeId), b.udpPort);
  await liar.socket.next();
  await a.waitForMetric('beacon_cluster_udp_claims_total', { direction: 'in' }, (n) => n >= 1);
  // b stalls; a takes it for dead (and removes its entries); X attaches at a meanwhile.
  process.kill(b.child.pid!, 'SIGSTOP');
  try {
    await a.waitForMetric('beacon_cluster_instances', {}, (n) => n === 1);
    await sleep(1_500); // a's sweep of b's entries
  } finally {
    process.kill(b.child.pid!, 'SIGCONT');
  }
  const px = await peer(a.url, X);
  const closed = watchClose(px);
  await allSee([a, b], 2);
  // b learns X is on a WebSocket at a, and drops the stranger's endpoint.
  await b.waitForMetric('beacon_cluster_evictions_total', { kind: 'udp' }, (n) => n >= 1);
  await relayUntilDelivered(py2, Y2, px, X.nodeId, 'from b after the stall');
  await sleep(1_500); // a refresh round, a sweep: nothing may close X later
  assert.equal(closed.code, undefined, `X's WebSocket was closed (${closed.code})`);
  assert.equal(liar.relays(), 0, 'the stranger got relays');
  assert.equal(await a.metric('beacon_cluster_evictions_total', { kind: 'wss' }), 0);
  assert.equal(await b.metric('beacon_udp_endpoints'), 0);
});

test('an instance cut off from NATS takes no new UDP claim, so none is announced on reconnect over X on a WebSocket', async () => {
  const server = await nats();
  const proxy = await TcpProxy.start(server.port);
  cleanup.push(() => proxy.close());
  const [a, b] = await Promise.all([
    instance(joinedInstance('cut-a', { nats: server.url(), keys })),
    instance(joinedInstance('cut-b', { nats: proxy.url(), keys })),
  ]);
  await allSee([a, b], 2);
  const py2 = await peer(b.url, Y2);
  const liar = await stranger();
  proxy.cut();
  await b.waitForMetric('beacon_cluster_connected', {}, (n) => n === 0);
  const px = await peer(a.url, X); // b cannot hear of it
  const closed = watchClose(px);
  const refusedBefore = (await b.metric('beacon_dropped_total', { reason: 'cluster_not_ready' }))!;
  liar.socket.send(encodeDiscover(X.nodeId), b.udpPort);
  await liar.socket.next(); // answered all the same
  await b.waitForMetric('beacon_dropped_total', { reason: 'cluster_not_ready' }, (n) => n === refusedBefore + 1);
  assert.equal(await b.metric('beacon_udp_endpoints'), 0, 'nothing recorded while cut off');
  proxy.heal();
  await b.waitForLog((l) => l.msg === 'cluster rejoined', "b's 'cluster rejoined'");
  await b.waitForMetric('beacon_cluster_connected', {}, (n) => n === 1);
  await relayUntilDelivered(py2, Y2, px, X.nodeId, 'from b after the reconnect');
  await sleep(1_500);
  assert.equal(closed.code, undefined, `X's WebSocket was closed (${closed.code})`);
  assert.equal(liar.relays(), 0, 'the stranger got relays');
  assert.equal(await a.metric('beacon_cluster_evictions_total', { kind: 'wss' }), 0);
});

test('a `u` entry over X\'s WebSocket entry in the directory (an instance of an older version): X stays, its entry is written again', async () => {
  const server = await nats();
  const a = await instance(joinedInstance('old-a', { nats: server.url(), keys }));
  const px = await peer(a.url, X);
  const closed = watchClose(px);
  const nc = await connect({ servers: `127.0.0.1:${server.port}` });
  cleanup.push(() => nc.close());
  const kv = await new Kvm(nc).open('beacon-directory');
  const key = String(X.nodeId);
  for (let i = 0; i < 50 && (await kv.get(key))?.string() !== 'w old-a'; i++) await sleep(50);
  assert.equal((await kv.get(key))?.string(), 'w old-a');
  await kv.put(key, 'u old-b');
  for (let i = 0; i < 100 && (await kv.get(key))?.string() !== 'w old-a'; i++) await sleep(50);
  assert.equal((await kv.get(key))?.string(), 'w old-a', 'a wrote its entry again');
  assert.equal(closed.code, undefined, `X's WebSocket was closed (${closed.code})`);
  assert.equal(await a.metric('beacon_cluster_evictions_total', { kind: 'wss' }), 0);
});

test('a UDP claim for X standing at another live instance never shadows X\'s WebSocket route', async () => {
  const server = await nats();
  const [a, b] = await Promise.all([
    instance(joinedInstance('shadow-a', { nats: server.url(), keys })),
    instance(joinedInstance('shadow-b', { nats: server.url(), keys })),
  ]);
  await allSee([a, b], 2);
  const px = await peer(a.url, X);
  const closed = watchClose(px);
  const py2 = await peer(b.url, Y2);
  await relayUntilDelivered(py2, Y2, px, X.nodeId, 'before the claim');
  // A third instance, "shadow-c", live by its heartbeats, claims X over UDP (as a stranger's Discover there would).
  const nc = await connect({ servers: `127.0.0.1:${server.port}` });
  cleanup.push(() => nc.close());
  const beat = setInterval(() => nc.publish('beacon.hb.shadow-c', encodeHeartbeat('shadow-c', 'c0ffee')), 100);
  cleanup.push(() => clearInterval(beat));
  await allSee([a, b], 3);
  for (const message of encodeClaims([{ op: 'claim', nodeId: X.nodeId, stamp: Date.now(), endpoint: { address: '127.0.0.9', port: 9 } }])) {
    nc.publish('beacon.udp.shadow-c', message);
  }
  await b.waitForMetric('beacon_cluster_udp_claims_total', { direction: 'in' }, (n) => n >= 1);
  // b still sends X's relays to a, where its WebSocket is; nothing goes to shadow-c.
  const forwarded = new Set<string>();
  nc.subscribe('beacon.fwd.shadow-c', { callback: () => { forwarded.add('shadow-c'); } });
  await nc.flush();
  await relayUntilDelivered(py2, Y2, px, X.nodeId, 'after the claim');
  assert.deepEqual([...forwarded], [], 'a relay for X went to the claiming instance');
  assert.equal(closed.code, undefined, `X's WebSocket was closed (${closed.code})`);
  assert.equal(await a.metric('beacon_cluster_evictions_total', { kind: 'wss' }), 0);
});
