/**
 * --reuse-port with real processes (dist/cmd/beacon.js) and a real
 * nats-server: two instances on one --bind and one --udp, each with its own
 * --ops-bind. WebSocket daemons and UDP flows to the one address spread over
 * both (the kernel hashes each connection and flow by its 4-tuple, so enough
 * of them make "both got some" near-certain); each ops address answers for
 * its own instance; after a SIGKILL every daemon and flow reaches the
 * survivor on the same address; a restarted instance takes its share again;
 * a draining instance stops accepting at once; instance IDs default apart.
 */
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { COMPAT_PATH, encodeDiscover } from '../lib/protocol';
import { VIEW_COMPLETE, allSee, Instance, writeKeys } from './helpers/cluster';
import { UdpClient, eventually, withTimeout } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';
import { freeTcpPort } from './helpers/free-ports';

/** WebSocket daemons per round: all on one of two instances has odds 2^-23. */
const DAEMONS = 24;
/** UDP flows (source ports) per round, likewise. */
const FLOWS = 24;

const daemons: TestIdentity[] = Array.from({ length: 4 * DAEMONS }, (_, i) => makeIdentity(10_000 + i));
const keys = writeKeys(daemons);
let nats: NatsServer;
let bindPort = 0;
let udpPort = 0;
const peers: WsPeer[] = [];
const udpClients: UdpClient[] = [];
const instances: Instance[] = [];

before(async () => {
  nats = await NatsServer.start();
});

after(async () => {
  for (const peer of peers) peer.ws.terminate();
  for (const client of udpClients) client.close();
  await Promise.all(instances.map((i) => i.stop()));
  await nats?.close();
});

type Shared = Instance;

/** An instance on the shared --bind and --udp (port 0 for the first), with an --ops-bind of its own; its metrics are read there. */
async function startShared(name: string, extra: string[] = []): Promise<Shared> {
  const instance: Shared = new Instance(name, [
    '--bind', `127.0.0.1:${bindPort}`, '--udp', `127.0.0.1:${udpPort}`, '--reuse-port', '--ops-bind', '127.0.0.1:0',
    // Every daemon comes from 127.0.0.1: the per-address limit must hold them all.
    '--auth-timeout', '2s', '--shutdown-grace', '300ms', '--max-per-ip', String(daemons.length), '--keys', keys, '--cluster', nats.url(), '--cluster-dead-after', '1s', ...extra,
  ]);
  instances.push(instance);
  const listening = await instance.waitForLog((l) => l.msg === 'beacon listening', "'beacon listening'", 15_000);
  bindPort = Number(String(listening.bind).split(':').pop());
  udpPort = Number(String(listening.udp).split(':').pop());
  instance.url = `ws://127.0.0.1:${bindPort}${COMPAT_PATH}`;
  instance.httpBase = `http://${String(listening.opsBind)}`;
  instance.udpPort = udpPort;
  instance.instanceId = String(listening.instanceId);
  await instance.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'", 15_000);
  // UDP claims are taken once the instance has heard the whole cluster (a dead-after after joining).
  await instance.waitForLog((l) => l.msg === VIEW_COMPLETE, `'${VIEW_COMPLETE}'`, 15_000);
  return instance;
}

const sharedUrl = () => `ws://127.0.0.1:${bindPort}${COMPAT_PATH}`;

async function connectAll(ids: readonly TestIdentity[]): Promise<WsPeer[]> {
  const connected = await Promise.all(ids.map((id) => WsPeer.connect(sharedUrl(), id)));
  peers.push(...connected);
  return connected;
}

/** A Discover from a new source port (a flow of its own); resolves once the DiscoverReply came back. */
async function discoverFrom(client: UdpClient | undefined, nodeId: number): Promise<UdpClient> {
  const from = client ?? await UdpClient.open();
  if (!client) udpClients.push(from);
  from.send(encodeDiscover(nodeId), udpPort);
  await from.next(5_000);
  return from;
}

async function gauge(instance: Instance, name: string): Promise<number> {
  const value = await instance.metric(name);
  assert.ok(value !== undefined, `${instance.name} has ${name}`);
  return value;
}

let a: Shared;
let b: Shared;
let firstFlows: UdpClient[] = [];
let firstPeers: WsPeer[] = [];

test('two instances on one --bind and --udp: daemons and UDP flows spread over both, each --ops-bind answers for its own instance', async () => {
  a = await startShared('a');
  b = await startShared('b');
  await allSee([a, b], 2);
  assert.equal(a.instanceId, `${hostname()}:${new URL(a.httpBase).port}`, 'the default ID is the host name and the --ops-bind port');
  assert.notEqual(a.instanceId, b.instanceId);

  firstPeers = await connectAll(daemons.slice(0, DAEMONS));
  const [onA, onB] = [await gauge(a, 'beacon_wss_peers'), await gauge(b, 'beacon_wss_peers')];
  assert.equal(onA + onB, DAEMONS);
  assert.ok(onA > 0 && onB > 0, `both instances got daemons: ${onA} / ${onB}`);
  for (const [instance, peerCount] of [[a, onA], [b, onB]] as const) {
    const health = await (await fetch(`${instance.httpBase}/health`)).json();
    assert.deepEqual(health, { status: 'ok', peers: peerCount }, `${instance.name}'s /health is its own`);
    assert.equal(await gauge(instance, 'beacon_cluster_instances'), 2);
  }

  for (let i = 0; i < FLOWS; i++) firstFlows.push(await discoverFrom(undefined, 50_000 + i));
  const [udpA, udpB] = [await gauge(a, 'beacon_udp_endpoints'), await gauge(b, 'beacon_udp_endpoints')];
  assert.equal(udpA + udpB, FLOWS);
  assert.ok(udpA > 0 && udpB > 0, `both instances got UDP flows: ${udpA} / ${udpB}`);
});

test('after SIGKILL of one instance, its daemons reconnect and its UDP flows (and new ones) reach the survivor on the same address', async () => {
  const peersOnA = await gauge(a, 'beacon_wss_peers');
  b.kill('SIGKILL');
  await withTimeout(b.exited, 10_000, 'b to die');
  // b's daemons see their connections closed by the kernel; a's stay.
  const lost = () => firstPeers.filter((peer) => peer.ws.readyState !== WebSocket.OPEN).length;
  await eventually(() => lost() === DAEMONS - peersOnA, 10_000, `b's ${DAEMONS - peersOnA} daemons to lose their connection`);
  const dropped = daemons.slice(0, DAEMONS).filter((_, i) => firstPeers[i]!.ws.readyState !== WebSocket.OPEN);
  await connectAll(dropped);
  await connectAll(daemons.slice(DAEMONS, 2 * DAEMONS));
  assert.equal(await gauge(a, 'beacon_wss_peers'), 2 * DAEMONS, 'every daemon, old and new, is on the survivor');

  // The old flows, b's among them, and new ones are all answered on the same address.
  for (let i = 0; i < FLOWS; i++) await discoverFrom(firstFlows[i], 50_000 + i);
  for (let i = 0; i < FLOWS; i++) await discoverFrom(undefined, 60_000 + i);
  assert.equal(await gauge(a, 'beacon_udp_endpoints'), 2 * FLOWS);
});

test('a restarted instance on the same address takes new daemons; draining, it stops accepting at once and new daemons go to the other', async () => {
  const c = await startShared('c', ['--shutdown-grace', '60s']);
  await allSee([a, c], 2);
  const fresh = await connectAll(daemons.slice(2 * DAEMONS, 3 * DAEMONS));
  const onC = await gauge(c, 'beacon_wss_peers');
  assert.ok(onC > 0, 'the restarted instance got some of the new daemons');
  assert.equal(await gauge(a, 'beacon_wss_peers') + onC, 3 * DAEMONS);

  // c's daemons stop reading: they do not answer its close, so its drain lasts until they read again.
  const rawSockets = fresh.map((peer) => (peer.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket);
  for (const socket of rawSockets) socket.pause();
  c.kill('SIGTERM');
  await c.waitForLog((l) => l.msg === 'shutting down', "c's 'shutting down'");
  const health = await fetch(`${c.httpBase}/health`);
  assert.equal(health.status, 503, 'the ops address answers through the drain, and says so');
  const before = await gauge(a, 'beacon_wss_peers');
  await connectAll(daemons.slice(3 * DAEMONS, 4 * DAEMONS));
  assert.equal(await gauge(a, 'beacon_wss_peers'), before + DAEMONS, 'every new daemon went to a, none was refused by c');
  assert.equal(c.child.exitCode, null, 'c was still draining while they connected');
  for (const socket of rawSockets) socket.resume();
  assert.deepEqual(await withTimeout(c.exited, 15_000, 'c to exit'), { code: 0, signal: null });
});

test('--reuse-port without --ops-bind: processes sharing --bind share the default instance ID, and the second is told to give each its own --ops-bind', async () => {
  const first = new Instance('same-a', [
    '--bind', '127.0.0.1:0', '--udp', '127.0.0.1:0', '--reuse-port', '--keys', keys,
    '--cluster', nats.url(), '--cluster-name', 'ids', '--cluster-dead-after', '1s',
  ]);
  instances.push(first);
  const listening = await first.waitForLog((l) => l.msg === 'beacon listening', "'beacon listening'", 15_000);
  assert.equal(listening.instanceId, `${hostname()}:${String(listening.bind).split(':').pop()}`);
  await first.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'", 15_000);
  const second = new Instance('same-b', [
    '--bind', String(listening.bind), '--udp', String(listening.udp), '--reuse-port', '--keys', keys,
    '--cluster', nats.url(), '--cluster-name', 'ids', '--cluster-dead-after', '1s',
  ]);
  instances.push(second);
  assert.equal((await withTimeout(second.exited, 15_000, 'the second to exit')).code, 2);
  const lines = second.stderr.trim().split('\n');
  assert.equal(lines.length, 1, second.stderr);
  assert.match(lines[0]!, new RegExp(`^beacon: --instance-id ${hostname()}:\\d+: another live process in cluster "ids" already uses this ID; `
    + 'with --reuse-port the processes share --bind: give each its own --ops-bind'));
  assert.equal(first.child.exitCode, null, 'the first keeps running');
});

test('a second copy of an instance (the same --ops-bind) is refused for its ID before it binds anything, and the line names the default', async () => {
  const opsPort = await freeTcpPort();
  const flags = (name: string) => new Instance(name, [
    '--bind', '127.0.0.1:0', '--udp', '127.0.0.1:0', '--reuse-port', '--ops-bind', `127.0.0.1:${opsPort}`, '--keys', keys,
    '--cluster', nats.url(), '--cluster-name', 'copies', '--cluster-dead-after', '1s',
  ]);
  const first = flags('original');
  instances.push(first);
  await first.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'", 15_000);
  const copy = flags('copy');
  instances.push(copy);
  assert.equal((await withTimeout(copy.exited, 15_000, 'the copy to exit')).code, 2);
  const lines = copy.stderr.trim().split('\n');
  assert.equal(lines.length, 1, copy.stderr);
  // Not "--ops-bind …: address already in use": the ID is checked first, so the copy never held the shared sockets.
  assert.equal(lines[0], `beacon: --instance-id ${hostname()}:${opsPort}: another live process in cluster "copies" already uses this ID; `
    + 'if it is a second copy of this instance, stop one of them; otherwise give each its own --ops-bind (the default ID is the host name '
    + 'and the --ops-bind port, the same for one port on hosts of one name) or its own --instance-id');
  assert.ok(!copy.logs.some((l) => l.msg === 'beacon listening'), 'the copy bound nothing');
  assert.equal(first.child.exitCode, null, 'the original keeps running');
});
