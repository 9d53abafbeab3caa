/**
 * Cluster mode, membership: a node moving between instances (the old
 * socket closed with 4001, traffic follows it, the old teardown never
 * removes the newer entry) and an instance killed with SIGKILL (its routes
 * gone within --cluster-dead-after, its daemons reachable again once they
 * reconnect elsewhere). Instances are child processes of a real nats-server.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { CloseCode, CloseReason, encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { allSee, joinedInstance, writeKeys } from './helpers/cluster';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';
import { withTimeout } from './helpers/harness';
import { once } from 'node:events';

const alice = makeIdentity(1001);
const bob = makeIdentity(2002);
const carol = makeIdentity(3003);
const DEAD_AFTER_MS = 1_000;

let nats: NatsServer;
let keys: string;

before(async () => {
  nats = await NatsServer.start();
  keys = writeKeys([alice, bob, carol]);
});

after(async () => {
  await nats?.close();
});

/** Sends until one arrives: the directory entry may still be on its way. */
async function relayUntilDelivered(from: WsPeer, sender: TestIdentity, to: WsPeer, dest: number, text: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (true) {
    from.send(encodeRelay(sender.nodeId, dest, Buffer.from(text)));
    const got = await to.next(200).catch(() => undefined);
    if (got) {
      assert.deepEqual(got, encodeRelayDeliver(sender.nodeId, Buffer.from(text)));
      while (await to.next(100).catch(() => undefined)); // repeats of the same relay
      return;
    }
    if (Date.now() > deadline) throw new Error(`${text}: nothing delivered within ${ms} ms`);
  }
}

test('a node moving to another instance: the old socket is closed with 4001 and traffic follows the node', async () => {
  const opts = { nats: nats.url(), keys, extra: ['--cluster-name', 'move'] };
  const [a, b] = await Promise.all([joinedInstance('move-a', opts), joinedInstance('move-b', opts)]);
  const peers: WsPeer[] = [];
  try {
    await allSee([a, b], 2);
    const carolA = await WsPeer.connect(a.url, carol);
    const bobB = await WsPeer.connect(b.url, bob);
    const oldAlice = await WsPeer.connect(a.url, alice);
    peers.push(carolA, bobB, oldAlice);
    await relayUntilDelivered(bobB, bob, oldAlice, alice.nodeId, 'to alice on a');

    // alice reconnects, to instance b this time.
    const oldClosed = once(oldAlice.ws, 'close');
    const newAlice = await WsPeer.connect(b.url, alice);
    peers.push(newAlice);
    const [code, reason] = await withTimeout(oldClosed, 5_000, 'the old socket to close');
    assert.equal(code, CloseCode.Replaced);
    assert.equal(String(reason), CloseReason.replaced);
    assert.equal(CloseCode.Replaced, 4001);
    assert.equal(await a.metric('beacon_wss_replaced_total'), 1);

    // Traffic follows: from a peer on a (over the cluster) and from b itself (locally).
    await relayUntilDelivered(carolA, carol, newAlice, alice.nodeId, 'to alice on b, from a');
    await relayUntilDelivered(bobB, bob, newAlice, alice.nodeId, 'to alice on b, from b');
    // The old socket's teardown on a removed nothing: after it, alice is still reachable from a.
    await new Promise((resolve) => setTimeout(resolve, 300));
    carolA.send(encodeRelay(carol.nodeId, alice.nodeId, Buffer.from('after the teardown')));
    assert.deepEqual(await newAlice.next(), encodeRelayDeliver(carol.nodeId, Buffer.from('after the teardown')));
    assert.equal(await a.metric('beacon_dropped_total', { reason: 'unknown_dest' }), 0);
  } finally {
    for (const peer of peers) peer.close();
    await Promise.all([a.stop(), b.stop()]);
  }
});

test('SIGKILL of an instance: its routes are gone within --cluster-dead-after, its daemons reconnect elsewhere and are reachable', async () => {
  const opts = { nats: nats.url(), keys, deadAfter: `${DEAD_AFTER_MS}ms`, extra: ['--cluster-name', 'kill'] };
  const [a, b, c] = await Promise.all([
    joinedInstance('kill-a', opts), joinedInstance('kill-b', opts), joinedInstance('kill-c', opts),
  ]);
  const peers: WsPeer[] = [];
  try {
    await allSee([a, b, c], 3);
    const aliceA = await WsPeer.connect(a.url, alice);
    const bobB = await WsPeer.connect(b.url, bob);
    peers.push(aliceA, bobB);
    await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'before the kill');
    const entriesBefore = (await a.metric('beacon_cluster_directory_entries'))!;

    const killedAt = Date.now();
    b.kill('SIGKILL');
    await b.exited;
    await a.waitForMetric('beacon_cluster_instances', {}, (n) => n === 2, DEAD_AFTER_MS + 4_000);
    const goneAfter = Date.now() - killedAt;
    // Dead-after plus one heartbeat interval of detection, plus scrape polling on a shared machine.
    assert.ok(goneAfter <= DEAD_AFTER_MS + 2_500, `routes to the killed instance went after ${goneAfter} ms`);
    // Its entries are removed by a survivor, for every instance.
    await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === entriesBefore - 1);
    await c.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === entriesBefore - 1);

    // No black hole: a relay to bob is now an unknown destination, counted, not a forward into the void.
    const unknownBefore = (await a.metric('beacon_relay_total', { route: 'unknown' }))!;
    aliceA.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('bob is gone')));
    await a.waitForMetric('beacon_relay_total', { route: 'unknown' }, (n) => n === unknownBefore + 1);

    // bob's daemon reconnects to c and is reachable from a again.
    const bobC = await WsPeer.connect(c.url, bob);
    peers.push(bobC);
    await relayUntilDelivered(aliceA, alice, bobC, bob.nodeId, 'after the reconnect');
  } finally {
    for (const peer of peers) peer.close();
    await Promise.all([a.stop(), c.stop()]);
  }
});
