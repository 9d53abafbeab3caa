/**
 * How many copies of the directory the instances ask for when they create
 * the bucket: three when their NATS server is part of a NATS cluster (the
 * shipped three-machine file, three real servers), fewer when fewer servers
 * are up, one on a lone server; a bucket that exists is used as it is, so
 * its replicas are never lowered (deploy/nats-directory-bucket changes them).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { jetstream } from '@nats-io/jetstream';
import { allSee, joinedInstance, relayUntilDelivered, spawnInstance, writeKeys } from './helpers/cluster';
import { makeIdentity } from './helpers/identity';
import {
  NATS_THREE_CONF, directoryStream, metaLeaderElected, readShipped, shippedPassword, startNatsWith, startThreeNats,
  type RunningNats, type StreamDetail,
} from './helpers/nats-deploy';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1301);
const bob = makeIdentity(2402);
let keys: string;

const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

before(() => {
  keys = writeKeys([alice, bob]);
});

/**
 * Asks `servers` for a bucket's stream until one that holds a copy reports
 * it with `ok` (15 s at most). A server reports only the streams it holds.
 */
async function streamOn(servers: RunningNats[], bucket: string, ok: (s: StreamDetail) => boolean, account = 'BEACON'): Promise<StreamDetail> {
  const deadline = Date.now() + 15_000;
  let seen: (StreamDetail | undefined)[] = [];
  for (;;) {
    seen = await Promise.all(servers.map((server) => directoryStream(server, account, bucket).catch(() => undefined)));
    const found = seen.find((s) => s && ok(s));
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`the stream of ${bucket}: ${JSON.stringify(seen)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test('a lone NATS server: the bucket is created with one copy', async () => {
  const nats = await startNatsWith('');
  cleanup.push(() => nats.stop());
  const a = await joinedInstance('lone-a', { nats: `nats://127.0.0.1:${nats.ports.client}`, keys });
  cleanup.push(() => a.stop());
  const stream = await streamOn([nats], 'beacon-directory', () => true, '$G');
  assert.equal(stream.config.num_replicas, 1);
});

test('three NATS servers: the instances create the bucket with three copies and relay across servers; an existing one-copy bucket is kept as it is; with a server down, two copies', async () => {
  const { all, started } = await startThreeNats();
  cleanup.push(async () => { for (const server of started) await server.stop(); });
  await metaLeaderElected(started[0]!, 3);
  const password = shippedPassword(readShipped(NATS_THREE_CONF), 'beacon');
  const urlOf = (i: number) => `nats://beacon:${password}@127.0.0.1:${all[i]!.client}`;

  // Two instances, each on its own server.
  const a = await joinedInstance('r3-a', { nats: urlOf(0), keys });
  cleanup.push(() => a.stop());
  const b = await joinedInstance('r3-b', { nats: urlOf(1), keys });
  cleanup.push(() => b.stop());
  const three = await streamOn(started, 'beacon-directory', (s) => s.config.num_replicas === 3);
  assert.equal(three.config.num_replicas, 3);
  await allSee([a, b], 2);
  const aliceA = await WsPeer.connect(a.url, alice);
  cleanup.push(() => aliceA.close());
  const bobB = await WsPeer.connect(b.url, bob);
  cleanup.push(() => bobB.close());
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'across two NATS servers');

  // A bucket made earlier with one copy (say, before the NATS cluster grew) is used as it is.
  const nc = await connect({ servers: `127.0.0.1:${all[2]!.client}`, user: 'beacon', pass: password });
  cleanup.push(() => nc.close());
  await new Kvm(jetstream(nc)).create('kept-directory', { history: 1, replicas: 1 });
  const c = await joinedInstance('kept-c', { nats: urlOf(2), keys, extra: ['--cluster-name', 'kept'] });
  cleanup.push(() => c.stop());
  const one = await streamOn(started, 'kept-directory', () => true);
  assert.equal(one.config.num_replicas, 1, 'the instance changed an existing bucket');

  // With one of the three servers down, JetStream has room for two copies only: the instance asks for fewer.
  await started[2]!.stop();
  const d = await spawnInstance('two-d', { nats: urlOf(0), keys, extra: ['--cluster-name', 'two'] });
  cleanup.push(() => d.stop());
  await d.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'", 45_000);
  const two = await streamOn(started.slice(0, 2), 'two-directory', (s) => s.config.num_replicas === 2);
  assert.equal(two.config.num_replicas, 2);
  assert.ok(d.logs.some((l) => /cannot keep this many copies/.test(l.msg) && l.replicas === 3), 'the instance said why it asked for fewer');
});
