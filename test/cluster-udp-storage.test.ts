/**
 * Cluster mode: UDP claims grow no durable storage in NATS, and each source
 * address's new claims are budgeted (issue 19, item 4). Before, each new
 * UDP endpoint was a KV put and its expiry a delete whose marker the
 * bucket kept for ever: 24k made-up IDs from 4 sources left 24k messages
 * (3.3 MB) in the bucket. Now a claim is a core NATS message to the other
 * instances (lib/cluster/udp-claims.ts): the bucket's stream, read from
 * JetStream's own stream info, holds what it held before; each source's
 * claims are bounded (CLAIMS_PER_SOURCE_PER_SEC, a second's worth at once)
 * and the rest refused as `cluster_claim_rate`; and once the endpoints
 * expire, the other instance holds none of them. Real nats-server,
 * instances as child processes.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { CLAIMS_PER_SOURCE_PER_SEC } from '../lib/cluster/nats-cluster';
import { encodeDiscover } from '../lib/protocol';
import { allSee, joinedInstance, writeKeys, type Instance } from './helpers/cluster';
import { UdpClient } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1001); // WebSocket, instance a: the bucket holds her entry
const SOURCES = ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4'];
const IDS = 24_000;
const STREAM = 'KV_beacon-directory';

let nats: NatsServer;
let nc: NatsConnection;
let a: Instance;
let b: Instance;

before(async () => {
  nats = await NatsServer.start();
  nc = await connect({ servers: `127.0.0.1:${nats.port}` });
  const keys = writeKeys([alice]);
  // Short endpoint TTL: the claims expire within the test. Per-IP endpoint share above the IDs each source sends.
  const extra = ['--udp-endpoint-ttl', '2s', '--max-udp-endpoints-per-ip', String(IDS)];
  [a, b] = await Promise.all([
    joinedInstance('a', { nats: nats.url(), keys, extra }),
    joinedInstance('b', { nats: nats.url(), keys, extra }),
  ]);
  await allSee([a, b], 2);
});

after(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await nc?.close();
  await nats?.close();
});

async function streamState(): Promise<{ messages: number; bytes: number }> {
  const { state } = await (await jetstreamManager(nc)).streams.info(STREAM);
  return { messages: state.messages, bytes: state.bytes };
}

test('24k made-up IDs from 4 sources: the directory bucket does not grow, each source\'s claims are bounded and counted, and they all go', async () => {
  const peer = await WsPeer.connect(a.url, alice);
  const sources = await Promise.all(SOURCES.map(async (address) => {
    const client = new UdpClient();
    await new Promise<void>((resolve) => client.socket.bind(0, address, resolve));
    return client;
  }));
  try {
    await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 1);
    const before = await streamState();
    assert.equal(before.messages, 1, 'the bucket holds alice\'s entry');
    const claimsBefore = (await a.metric('beacon_cluster_udp_claims_total', { direction: 'out' }))!;

    // About 10,000 Discovers a second (bursts of 200 every 20 ms), then until a has read them all.
    const started = performance.now();
    for (let i = 0; i < IDS; i++) {
      sources[i % sources.length]!.send(encodeDiscover(100_000 + i), a.udpPort);
      if (i % 200 === 199) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    let received = -1;
    for (let now = 0; now !== received; await new Promise((resolve) => setTimeout(resolve, 300))) {
      received = now;
      now = (await a.metric('beacon_udp_packets_total', { type: 'discover' }))!;
    }
    const seconds = (performance.now() - started) / 1000;
    assert.ok(received >= IDS / 2, `a read ${received} of ${IDS} Discovers`);

    // Bounded per source: a second's worth at once, then the rate; the rest refused and counted.
    const announced = (await a.metric('beacon_cluster_udp_claims_total', { direction: 'out' }))! - claimsBefore;
    const bound = SOURCES.length * CLAIMS_PER_SOURCE_PER_SEC * (1 + seconds);
    assert.ok(announced > 0 && announced <= bound, `a announced ${announced} claims in ${seconds.toFixed(1)} s (bound ${bound})`);
    const refused = (await a.metric('beacon_dropped_total', { reason: 'cluster_claim_rate' }))!;
    assert.equal(refused, received - announced, 'every Discover not announced was refused as cluster_claim_rate');
    // b heard them (in memory; they may have expired already): NATS's storage holds none.
    await b.waitForMetric('beacon_cluster_udp_claims_total', { direction: 'in' }, (n) => n >= announced);
    assert.deepEqual(await streamState(), before, 'the bucket is as it was');

    // The endpoints expire (2 s) and are withdrawn (within 5 s): b holds alice's entry only, and the bucket is unchanged.
    await b.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 1, 20_000);
    assert.equal(await a.metric('beacon_udp_endpoints'), 0);
    assert.deepEqual(await streamState(), before, 'the bucket is as it was');
  } finally {
    peer.close();
    for (const source of sources) source.close();
  }
});
