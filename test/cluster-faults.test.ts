/**
 * Cluster mode, faults: NATS down at start, nats-server restarted under
 * traffic, wrong credentials, garbage on the cluster's subjects and bucket,
 * two processes with one instance ID, and Sync with a (Go) beacon peer from
 * an instance in a cluster. Real nats-server, instances as child processes.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, before, test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { PacketType, decodePacket, encodeRelay, encodeRelayDeliver, encodeSync } from '../lib/protocol';
import { Instance, FAST, allSee, joinedInstance, relayUntilDelivered, spawnInstance, writeKeys } from './helpers/cluster';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { freeTcpPort } from './helpers/free-ports';
import { WsPeer } from './helpers/wire';
import { withTimeout } from './helpers/harness';

const alice = makeIdentity(1001);
const bob = makeIdentity(2002);
const carol = makeIdentity(3003);
let keys: string;

before(() => {
  keys = writeKeys([alice, bob, carol]);
});

const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

async function peer(url: string, id: TestIdentity): Promise<WsPeer> {
  const p = await WsPeer.connect(url, id);
  cleanup.push(() => p.close());
  return p;
}

test('NATS down at start: the beacon starts, serves its own peers, says so, and joins when NATS comes', async () => {
  const port = await freeTcpPort();
  const url = `nats://127.0.0.1:${port}`;
  const a = await spawnInstance('late-a', { nats: url, keys, extra: ['--cluster-name', 'late'] });
  cleanup.push(() => a.stop());
  await a.waitForLog((l) => /NATS unreachable/.test(l.msg), 'the unreachable warning');
  assert.equal(await a.metric('beacon_cluster_connected'), 0);
  // Its own peers are served meanwhile.
  const aliceA = await peer(a.url, alice);
  const bobA = await peer(a.url, bob);
  aliceA.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('local')));
  assert.deepEqual(await bobA.next(), encodeRelayDeliver(alice.nodeId, Buffer.from('local')));

  const nats = await NatsServer.start({}, port);
  cleanup.push(() => nats.close());
  await a.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'", 15_000);
  assert.equal(await a.metric('beacon_cluster_connected'), 1);
  // Its nodes were announced on joining: a second instance reaches them.
  const b = await joinedInstance('late-b', { nats: url, keys, extra: ['--cluster-name', 'late'] });
  cleanup.push(() => b.stop());
  await allSee([a, b], 2);
  const carolB = await peer(b.url, carol);
  await relayUntilDelivered(carolB, carol, aliceA, alice.nodeId, 'joined late');
});

test('nats-server restarted under traffic: no beacon exits, cross-instance relays are dropped as cluster_unavailable, then the cluster converges', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const opts = { nats: nats.url(), keys, extra: ['--cluster-name', 'restart'] };
  const [a, b] = await Promise.all([joinedInstance('restart-a', opts), joinedInstance('restart-b', opts)]);
  cleanup.push(() => a.stop(), () => b.stop());
  await allSee([a, b], 2);
  const aliceA = await peer(a.url, alice);
  const bobB = await peer(b.url, bob);
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'before');

  // Traffic all along: a relay every 5 ms, bounded.
  let sent = 0;
  const traffic = setInterval(() => { if (sent++ < 4_000) aliceA.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('t'))); }, 5);
  cleanup.push(() => clearInterval(traffic));
  await nats.stop();
  await a.waitForMetric('beacon_cluster_connected', {}, (n) => n === 0);
  await a.waitForMetric('beacon_dropped_total', { reason: 'cluster_unavailable' }, (n) => n > 0);
  // Meanwhile carol attaches to b: it can only be announced once NATS is back.
  const carolB = await peer(b.url, carol);
  await nats.start();
  await a.waitForMetric('beacon_cluster_connected', {}, (n) => n === 1, 15_000);
  await b.waitForMetric('beacon_cluster_connected', {}, (n) => n === 1, 15_000);
  clearInterval(traffic);
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'after the restart');
  await relayUntilDelivered(aliceA, alice, carolB, carol.nodeId, 'attached during the outage');
  assert.equal(a.child.exitCode, null, 'a is still running');
  assert.equal(b.child.exitCode, null, 'b is still running');
  assert.ok(a.logs.some((l) => /lost NATS/.test(l.msg)), 'a said it lost NATS');
});

test('wrong credentials: one line naming the problem and the fix, exit 2; the right ones join', async () => {
  const nats = await NatsServer.start({ user: 'beacon', password: 'right' });
  cleanup.push(() => nats.close());
  const wrong = new Instance('wrong-creds', [...FAST, '--keys', keys, '--cluster', nats.url('beacon', 'wrong'), '--instance-id', 'w']);
  const { code } = await withTimeout(wrong.exited, 15_000, 'the beacon with wrong credentials to exit');
  assert.equal(code, 2);
  const lines = wrong.stderr.trim().split('\n');
  assert.equal(lines.length, 1, wrong.stderr);
  assert.match(lines[0]!, /^beacon: --cluster: NATS refused this beacon's credentials .*check user:password in the --cluster URL or the --cluster-creds file/);
  assert.doesNotMatch(lines[0]!, /wrong/, 'the password is not printed');

  const right = await joinedInstance('right-creds', { nats: nats.url(), keys });
  cleanup.push(() => right.stop());
  assert.equal(await right.metric('beacon_cluster_connected'), 1);
});

test('two live processes with one instance ID: the second is refused with one line, exit 2', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const first = await joinedInstance('same', { nats: nats.url(), keys, id: 'same-id' });
  cleanup.push(() => first.stop());
  const second = new Instance('same-2', [...FAST, '--keys', keys, '--cluster', nats.url(), '--instance-id', 'same-id']);
  const { code } = await withTimeout(second.exited, 15_000, 'the duplicate to exit');
  assert.equal(code, 2);
  assert.match(second.stderr.trim(), /^beacon: --instance-id same-id: another live process in cluster "beacon" already uses this ID; if it is a second copy of this instance, stop one of them; otherwise give each process its own --instance-id$/);
  assert.equal(second.stderr.trim().split('\n').length, 1);
  assert.equal(first.child.exitCode, null, 'the first keeps running');
});

test('garbage on the cluster\'s subjects and bucket is counted cluster_malformed and dropped; the cluster keeps working', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const opts = { nats: nats.url(), keys };
  const [a, b] = await Promise.all([joinedInstance('garbage-a', opts), joinedInstance('garbage-b', opts)]);
  cleanup.push(() => a.stop(), () => b.stop());
  await allSee([a, b], 2);
  const nc = await connect({ servers: `127.0.0.1:${nats.port}` });
  cleanup.push(() => nc.close());
  const kv = await new Kvm(nc).open('beacon-directory');
  const before = (await a.metric('beacon_dropped_total', { reason: 'cluster_malformed' }))!;
  nc.publish('beacon.fwd.garbage-a', Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])); // a length past the end
  nc.publish('beacon.fwd.garbage-a', Buffer.from([0, 0, 0, 9, 0x06, 0, 0, 0, 1, 0, 0, 0, 2])); // not a Relay
  nc.publish('beacon.fwd.garbage-a', Buffer.alloc(0));
  nc.publish('beacon.hb.garbage-x', Buffer.from('not a heartbeat at all'));
  nc.publish('beacon.hb.garbage-x', Buffer.from('garbage-y 00ff')); // a heartbeat on another instance's subject
  await kv.put('not-a-node', 'w garbage-b');
  await kv.put('777', 'x what');
  await kv.put('0', 'w garbage-b');
  await nc.flush();
  await a.waitForMetric('beacon_dropped_total', { reason: 'cluster_malformed' }, (n) => n === before + 8);
  // Nothing was routed from it, no instance was invented, and relaying goes on.
  assert.equal(await a.metric('beacon_cluster_instances'), 2);
  const aliceA = await peer(a.url, alice);
  const bobB = await peer(b.url, bob);
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'still working');
  assert.equal(a.child.exitCode, null);
});

test('Sync with a beacon peer from an instance in a cluster: routes to and from the Go beacon, and across instances', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const goBeacon = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => goBeacon.bind(0, '127.0.0.1', resolve));
  cleanup.push(() => goBeacon.close());
  const received: Buffer[] = [];
  goBeacon.on('message', (msg) => received.push(msg));
  const goPort = goBeacon.address().port;
  const [a, b] = await Promise.all([
    joinedInstance('sync-a', { nats: nats.url(), keys, extra: ['--beacon-id', '10', '--peer', `127.0.0.1:${goPort}`, '--sync-interval', '200ms'] }),
    joinedInstance('sync-b', { nats: nats.url(), keys }),
  ]);
  cleanup.push(() => a.stop(), () => b.stop());
  await allSee([a, b], 2);
  const aliceA = await peer(a.url, alice);
  const bobB = await peer(b.url, bob);
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'cluster ready');

  // a announces its own nodes to the Go beacon, as today.
  const deadline = Date.now() + 5_000;
  while (!received.some((m) => { const p = decodePacket(m); return p?.type === PacketType.Sync && p.nodeIds.includes(alice.nodeId); })) {
    if (Date.now() > deadline) throw new Error('no Sync listing alice reached the Go beacon');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  // The Go beacon announces node 5555; alice's relay to it goes to the Go beacon unchanged.
  goBeacon.send(encodeSync(99, [5555]), a.udpPort, '127.0.0.1');
  await a.waitForMetric('beacon_sync_total', { direction: 'received' }, (n) => n >= 1);
  received.length = 0;
  const toGo = encodeRelay(alice.nodeId, 5555, Buffer.from('to the go beacon'));
  aliceA.send(toGo);
  const deadline2 = Date.now() + 5_000;
  while (!received.some((m) => m.equals(toGo))) {
    if (Date.now() > deadline2) throw new Error('the relay for 5555 did not reach the Go beacon');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  // A relay from the Go beacon for bob (attached to b) crosses the cluster.
  goBeacon.send(encodeRelay(5555, bob.nodeId, Buffer.from('from the go beacon')), a.udpPort, '127.0.0.1');
  assert.deepEqual(await bobB.next(), encodeRelayDeliver(5555, Buffer.from('from the go beacon')));
  assert.ok((await a.metric('beacon_relay_total', { route: 'beacon' }))! >= 1);
});
