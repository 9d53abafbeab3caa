/**
 * UDP endpoints across instances that share one address (--reuse-port),
 * with real processes and a real nats-server: UDP daemons and WebSocket
 * daemons spread over two instances; every UDP→UDP and WebSocket→UDP relay
 * between daemons on different instances arrives from the shared port and
 * none crosses NATS (beacon_cluster_frames_total stays 0 and the relays
 * count as route "udp_shared"); after a SIGKILL the survivor adopts the
 * dead instance's UDP nodes, so they are reachable at once, before any
 * Discover, and its WebSocket daemons reconnect to the same address; a
 * restarted instance takes new daemons. Rebalancing is off here
 * (--rebalance-rate 0), so daemons stay where the kernel put them:
 * test/reuse-port-rebalance.test.ts has it on.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { encodeDiscover, encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { allSee, sharedInstance, writeKeys, type Instance, type SharedAddress } from './helpers/cluster';
import { UdpClient, eventually, withTimeout } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

/** UDP daemons (one flow each) and WebSocket daemons: all on one of two instances has odds 2^-23. */
const FLOWS = 24;
const DAEMONS = 24;
const UDP_NODE = 50_000;

const wsIds: TestIdentity[] = Array.from({ length: 2 * DAEMONS }, (_, i) => makeIdentity(10_000 + i));
const keys = writeKeys(wsIds);
const address: SharedAddress = { bindPort: 0, udpPort: 0 };
let nats: NatsServer;
const instances: Instance[] = [];
const flows: UdpClient[] = [];
const strangers: UdpClient[] = [];
const peers: WsPeer[] = [];

before(async () => {
  nats = await NatsServer.start();
});

after(async () => {
  for (const peer of peers) peer.ws.terminate();
  for (const flow of [...flows, ...strangers]) flow.close();
  await Promise.all(instances.map((i) => i.stop()));
  await nats?.close();
});

async function start(name: string): Promise<Instance> {
  const instance = await sharedInstance(name, address, { nats: nats.url(), keys, extra: ['--rebalance-rate', '0'] });
  instances.push(instance);
  return instance;
}

async function gauge(instance: Instance, name: string, labels: Record<string, string> = {}): Promise<number> {
  const value = await instance.metric(name, labels);
  assert.ok(value !== undefined, `${instance.name} has ${name}${JSON.stringify(labels)}`);
  return value;
}

async function sum(of: readonly Instance[], name: string, labels: Record<string, string> = {}): Promise<number> {
  let total = 0;
  for (const instance of of) total += await gauge(instance, name, labels);
  return total;
}

/** UDP daemons for nodes base, base + 1, ...: each opens a flow of its own and Discovers; resolves once every reply came back. */
async function udpDaemons(base: number): Promise<UdpClient[]> {
  const opened: UdpClient[] = [];
  for (let i = 0; i < FLOWS; i++) {
    const flow = await UdpClient.open();
    flows.push(flow);
    opened.push(flow);
    flow.send(encodeDiscover(base + i), address.udpPort);
    await flow.next(5_000);
  }
  return opened;
}

/** Waits for `flow` to get `expected` (skipping anything else), and checks it came from the shared port. */
async function expectFrom(flow: UdpClient, expected: Buffer, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (true) {
    const { msg, from } = await flow.nextFrom(Math.max(1, deadline - Date.now())).catch(() => {
      throw new Error(`${what}: not delivered within 5 s`);
    });
    if (!msg.equals(expected)) continue;
    assert.deepEqual([from.address, from.port], ['127.0.0.1', address.udpPort], `${what} left from the shared address`);
    return;
  }
}

/** Every UDP daemon (node base + i) relays to the next one round the ring; each relay must arrive, from the shared port. */
async function udpRing(ring: readonly UdpClient[], base: number, tag: string): Promise<void> {
  for (let i = 0; i < ring.length; i++) {
    const next = (i + 1) % ring.length;
    ring[i]!.send(encodeRelay(base + i, base + next, Buffer.from(`${tag} ${i}`)), address.udpPort);
    await expectFrom(ring[next]!, encodeRelayDeliver(base + i, Buffer.from(`${tag} ${i}`)), `${tag}: ${base + i} → ${base + next}`);
  }
}

/** Every WebSocket daemon in `from` relays to a UDP daemon of `to` (node base + its index, round them). */
async function wsToUdp(from: readonly WsPeer[], ids: readonly TestIdentity[], to: readonly UdpClient[], base: number, tag: string): Promise<void> {
  for (let i = 0; i < from.length; i++) {
    const dest = i % to.length;
    const payload = Buffer.from(`${tag} ${ids[i]!.nodeId}`);
    from[i]!.send(encodeRelay(ids[i]!.nodeId, base + dest, payload));
    await expectFrom(to[dest]!, encodeRelayDeliver(ids[i]!.nodeId, payload), `${tag}: ${ids[i]!.nodeId} → UDP ${base + dest}`);
  }
}

let a: Instance;
let b: Instance;
let udpOnB = 0;

test('two instances on one address: UDP→UDP and WebSocket→UDP relays between daemons on different instances leave from the shared port, none crosses NATS', async () => {
  a = await start('a');
  b = await start('b');
  await allSee([a, b], 2);

  await udpDaemons(UDP_NODE);
  const [udpA, udpB] = [await gauge(a, 'beacon_udp_endpoints'), await gauge(b, 'beacon_udp_endpoints')];
  assert.equal(udpA + udpB, FLOWS);
  assert.ok(udpA > 0 && udpB > 0, `the kernel spread the UDP flows: ${udpA} / ${udpB}`);
  udpOnB = udpB;
  // Each instance has heard the other's claims (with their endpoints).
  for (const instance of [a, b]) await instance.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === FLOWS);

  await udpRing(flows, UDP_NODE, 'udp ring');
  const shared = await sum([a, b], 'beacon_relay_total', { route: 'udp_shared' });
  assert.equal(shared + await sum([a, b], 'beacon_relay_total', { route: 'udp' }), FLOWS, 'every relay delivered from a socket of the shared address');
  assert.ok(shared >= 2, `a ring over two instances crosses between them at least twice: ${shared} relays went to a node of the other instance`);

  peers.push(...await Promise.all(wsIds.slice(0, DAEMONS).map((id) => WsPeer.connect(a.url, id))));
  const [wsA, wsB] = [await gauge(a, 'beacon_wss_peers'), await gauge(b, 'beacon_wss_peers')];
  assert.ok(wsA > 0 && wsB > 0 && wsA + wsB === DAEMONS, `the kernel spread the WebSocket daemons: ${wsA} / ${wsB}`);
  await wsToUdp(peers, wsIds, flows, UDP_NODE, 'ws to udp');
  const sharedAfter = await sum([a, b], 'beacon_relay_total', { route: 'udp_shared' });
  assert.ok(sharedAfter > shared, 'WebSocket daemons reached UDP daemons of the other instance from this one\'s socket');

  // The point: nothing crossed NATS.
  assert.equal(await sum([a, b], 'beacon_cluster_frames_total', { direction: 'out' }), 0, 'no relay forwarded over NATS');
  assert.equal(await sum([a, b], 'beacon_cluster_frames_total', { direction: 'in' }), 0);
  assert.equal(await sum([a, b], 'beacon_relay_total', { route: 'cluster' }), 0);

  // A stranger's Discover for a WebSocket daemon is refused (not answered, nothing taken), whichever instance it
  // reaches: relays for that node still go to its WebSocket (over NATS when it is on the other instance), none to the stranger.
  const stranger = await UdpClient.open();
  strangers.push(stranger);
  const dropsBefore = await sum([a, b], 'beacon_dropped_total', { reason: 'wss_node_over_udp' });
  stranger.send(encodeDiscover(wsIds[0]!.nodeId), address.udpPort);
  for (const deadline = Date.now() + 5_000; await sum([a, b], 'beacon_dropped_total', { reason: 'wss_node_over_udp' }) === dropsBefore;) {
    assert.ok(Date.now() < deadline, 'the stranger\'s Discover was refused within 5 s');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.equal(await sum([a, b], 'beacon_dropped_total', { reason: 'wss_node_over_udp' }), dropsBefore + 1);
  flows[1]!.send(encodeRelay(UDP_NODE + 1, wsIds[0]!.nodeId, Buffer.from('to the real one')), address.udpPort);
  assert.deepEqual(await peers[0]!.next(5_000), encodeRelayDeliver(UDP_NODE + 1, Buffer.from('to the real one')));
  await stranger.expectNothing(300);
});

test('SIGKILL of one instance: the survivor adopts its UDP nodes (reachable at once, without a Discover); its WebSocket daemons reconnect to the same address', async () => {
  const before = await gauge(a, 'beacon_relay_total', { route: 'udp' });
  b.kill('SIGKILL');
  await withTimeout(b.exited, 10_000, 'b to die');
  const adopted = await a.waitForLog((l) => l.msg === 'cluster: adopted a dead instance\'s UDP nodes (it shared this address)', 'the adoption', 15_000);
  assert.deepEqual([adopted.nodes, adopted.adopted], [udpOnB, udpOnB], 'every UDP node of b');
  assert.equal(await gauge(a, 'beacon_cluster_udp_adopted_total'), udpOnB);
  assert.equal(await gauge(a, 'beacon_udp_endpoints'), FLOWS, 'a holds every UDP node now');

  // No Discover since the kill: b's flows now reach a (the kernel moved them), and a reaches their nodes.
  await udpRing(flows, UDP_NODE, 'after the kill');
  assert.equal(await gauge(a, 'beacon_relay_total', { route: 'udp' }) - before, FLOWS, 'all delivered from a\'s own table now');

  // b's WebSocket daemons lost their connection; reconnecting to the same address lands them on a.
  await eventually(() => peers.some((peer) => peer.ws.readyState !== WebSocket.OPEN), 10_000, 'b\'s daemons to lose their connection');
  const lost = peers.map((peer, i) => [peer, wsIds[i]!] as const).filter(([peer]) => peer.ws.readyState !== WebSocket.OPEN);
  const back = await Promise.all(lost.map(([, id]) => WsPeer.connect(a.url, id)));
  peers.push(...back);
  assert.equal(await gauge(a, 'beacon_wss_peers'), DAEMONS);
  await wsToUdp(back, lost.map(([, id]) => id), flows, UDP_NODE, 'reconnected to udp');
  // And the other way: a UDP daemon reaches a reconnected WebSocket daemon.
  const [first, firstId] = [back[0]!, lost[0]![1]];
  flows[0]!.send(encodeRelay(UDP_NODE, firstId.nodeId, Buffer.from('udp to ws')), address.udpPort);
  assert.deepEqual(await first.next(5_000), encodeRelayDeliver(UDP_NODE, Buffer.from('udp to ws')));
});

test('a restarted instance on the address takes new daemons and its share of new UDP flows, still without NATS hops', async () => {
  // (Test 1's last relay may have crossed NATS to reach a WebSocket daemon on b: count from here.)
  const forwardedBefore = await gauge(a, 'beacon_cluster_frames_total', { direction: 'out' });
  const c = await start('c');
  await allSee([a, c], 2);
  const fresh = await Promise.all(wsIds.slice(DAEMONS).map((id) => WsPeer.connect(a.url, id)));
  peers.push(...fresh);
  const onC = await gauge(c, 'beacon_wss_peers');
  assert.ok(onC > 0, 'the restarted instance got some of the new daemons');
  assert.equal(await gauge(a, 'beacon_wss_peers') + onC, 2 * DAEMONS);
  // New UDP daemons: some land on c. Once each instance has heard the other's claims, every relay arrives.
  const more = await udpDaemons(UDP_NODE + FLOWS);
  assert.ok(await gauge(c, 'beacon_udp_endpoints') > 0, 'c took some of the new flows');
  for (const instance of [a, c]) {
    await instance.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 2 * FLOWS + 2 * DAEMONS);
  }
  await udpRing(more, UDP_NODE + FLOWS, 'with c');
  await wsToUdp(fresh, wsIds.slice(DAEMONS), more, UDP_NODE + FLOWS, 'new daemons to udp');
  assert.equal(await sum([a, c], 'beacon_cluster_frames_total', { direction: 'out' }), forwardedBefore, 'nothing crossed NATS');
});
