/**
 * Cluster mode and the address query (issue 20): a Discover for node 0, over
 * UDP or WebSocket, at either of two instances joined through a real
 * nats-server, is answered, and nothing is written or announced for it: a
 * NATS client listening to every subject sees no directory write, no
 * attach notice and no UDP claim naming node 0, and no instance has an
 * entry for it.
 * Discovers for real nodes sent after the queries are the control: once
 * their writes are seen, a write for 0 would have been too (NATS keeps one
 * publisher's messages in order).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { decodeClaims } from '../lib/cluster/udp-claims';
import { encodeDiscover, encodeDiscoverReply } from '../lib/protocol';
import { allSee, joinedInstance, writeKeys, type Instance } from './helpers/cluster';
import { UdpClient, eventually } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1001); // WebSocket, instance a

let nats: NatsServer;
let a: Instance;
let b: Instance;
let listener: NatsConnection;
/** Every NATS message since the start: subject, payload as text, and the node IDs of a UDP claims message. */
const seen: { subject: string; text: string; claimed: number[] }[] = [];

/** A directory write for `nodeId` (`$KV.<bucket>.<id>`), an attach notice (`<id> <placement>`) or a UDP claim (udp-claims.ts). */
function names(nodeId: number): (m: { subject: string; text: string; claimed: number[] }) => boolean {
  return (m) => (m.subject.startsWith('$KV.') && m.subject.endsWith(`.${nodeId}`)) || m.text.startsWith(`${nodeId} `)
    || m.claimed.includes(nodeId);
}

before(async () => {
  nats = await NatsServer.start();
  listener = await connect({ servers: `127.0.0.1:${nats.port}` });
  listener.subscribe('>', {
    callback: (_err, msg) => {
      const claimed = msg.subject.startsWith('beacon.udp.') ? (decodeClaims(msg.data) ?? []).map((r) => r.nodeId) : [];
      seen.push({ subject: msg.subject, text: msg.string(), claimed });
    },
  });
  await listener.flush();
  const keys = writeKeys([alice]);
  [a, b] = await Promise.all([joinedInstance('a', { nats: nats.url(), keys }), joinedInstance('b', { nats: nats.url(), keys })]);
  await allSee([a, b], 2);
});

after(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await listener?.close();
  await nats?.close();
});

test('address queries at either instance are answered and put nothing in the cluster directory', async () => {
  const peer = await WsPeer.connect(a.url, alice);
  const clients: UdpClient[] = [];
  try {
    await Promise.all([a, b].map((i) => i.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 1)));

    // The queries: over UDP at both instances, over WebSocket at a.
    for (const instance of [a, b]) {
      const client = await UdpClient.open();
      clients.push(client);
      client.send(encodeDiscover(0), instance.udpPort);
      assert.deepEqual(await client.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: client.port }));
      assert.equal(await instance.metric('beacon_address_queries_total', { transport: 'udp' }), 1);
    }
    peer.send(encodeDiscover(0));
    assert.deepEqual(await peer.next(), encodeDiscoverReply({ ip: '127.0.0.1', port: peer.localPort }));
    assert.equal(await a.metric('beacon_address_queries_total', { transport: 'wss' }), 1);

    // The control: a real node Discovered at each instance, after the queries.
    for (const [instance, nodeId] of [[a, 5555], [b, 6666]] as const) {
      const client = await UdpClient.open();
      clients.push(client);
      client.send(encodeDiscover(nodeId), instance.udpPort);
      await client.next();
    }
    // Their writes seen on NATS (the control), and nothing ever for node 0.
    await eventually(() => seen.some(names(5555)) && seen.some(names(6666)), 5_000, 'the control nodes\' writes on NATS');
    assert.ok(seen.some(names(alice.nodeId)), 'alice\'s attachment was seen too');
    assert.deepEqual(seen.filter(names(0)), [], 'nothing written or announced for node 0');
    // alice, 5555 and 6666 everywhere, and nothing for node 0.
    for (const instance of [a, b]) {
      await instance.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n >= 3);
      assert.equal(await instance.metric('beacon_cluster_directory_entries'), 3, `${instance.name}: no entry for node 0`);
      assert.equal(await instance.metric('beacon_udp_endpoints'), 1, `${instance.name}: its own UDP node only`);
      assert.equal(await instance.metric('beacon_dropped_total', { reason: 'malformed' }), 0);
    }
  } finally {
    peer.close();
    for (const client of clients) client.close();
  }
});
