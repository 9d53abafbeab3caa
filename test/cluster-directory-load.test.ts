/**
 * Cluster mode, loading the directory (lib/cluster/snapshot.ts): a newcomer
 * loads it from a live instance's snapshot and then follows changes; the
 * first instance, with nobody to ask, watches every key; a garbage
 * snapshot is counted and the newcomer falls back to the watch; after a
 * nats-server restart an instance resumes its watch instead of loading
 * everything again. Real nats-server, instances as child processes.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { type Instance, joinedInstance, writeKeys } from './helpers/cluster';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1001);
const bob = makeIdentity(2002);
let keys: string;

const cleanup: Array<() => Promise<unknown> | unknown> = [];
before(() => {
  keys = writeKeys([alice, bob]);
});
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

/** A test client that heartbeats for a ghost instance, so the entries written for it are not swept as dead. */
async function ghostOf(nats: NatsServer, cluster: string): Promise<{ nc: NatsConnection; kv: () => Promise<KV> }> {
  const nc = await connect({ servers: `127.0.0.1:${nats.port}` });
  const beat = setInterval(() => nc.publish(`${cluster}.hb.ghost`, 'ghost 0a0b'), 100);
  cleanup.push(async () => { clearInterval(beat); await nc.close(); });
  return { nc, kv: () => new Kvm(nc).open(`${cluster}-directory`) };
}

/** Writes `count` directory entries for the ghost, from node `first` on, as fast as NATS takes them. */
async function writeGhostEntries(nc: NatsConnection, cluster: string, first: number, count: number): Promise<void> {
  for (let i = 0; i < count; i++) nc.publish(`$KV.${cluster}-directory.${first + i}`, 'w ghost');
  await nc.flush();
}

function loadedLine(instance: Instance) {
  return instance.waitForLog((l) => l.msg === 'cluster directory loaded', "'cluster directory loaded'", 20_000);
}

test('a newcomer loads the directory from a live instance\'s snapshot, then follows every change after it', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const opts = { nats: nats.url(), keys, extra: ['--cluster-name', 'snap'] };
  const { nc } = await ghostOf(nats, 'snap');
  const a = await joinedInstance('snap-a', opts);
  cleanup.push(() => a.stop());
  assert.equal((await loadedLine(a)).via, 'watch', 'the first instance has nobody to ask');
  await writeGhostEntries(nc, 'snap', 10_000, 3_000);
  const aliceA = await WsPeer.connect(a.url, alice);
  cleanup.push(() => aliceA.close());
  await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 3_001);

  const b = await joinedInstance('snap-b', opts);
  cleanup.push(() => b.stop());
  const loaded = await loadedLine(b);
  assert.equal(loaded.via, 'snapshot');
  assert.equal(loaded.entries, 3_001);
  await a.waitForLog((l) => l.msg === 'cluster: served the directory to a newcomer' && l.to === 'snap-b', 'the serving line');

  // Changes after the snapshot come through the watch resumed from its revision.
  const kv = await new Kvm(nc).open('snap-directory');
  for (let i = 0; i < 200; i++) await kv.delete(String(10_000 + i));
  await writeGhostEntries(nc, 'snap', 20_000, 100);
  await b.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 3_001 - 200 + 100);
  const bobB = await WsPeer.connect(b.url, bob);
  cleanup.push(() => bobB.close());
  await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 3_001 - 200 + 100 + 1);
  bobB.send(encodeRelay(bob.nodeId, alice.nodeId, Buffer.from('through the snapshot')));
  assert.deepEqual(await aliceA.next(), encodeRelayDeliver(bob.nodeId, Buffer.from('through the snapshot')));
  assert.equal(await b.metric('beacon_relay_total', { route: 'cluster' }), 1);
});

test('a garbage snapshot is counted cluster_malformed and the newcomer watches every key instead', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const { nc } = await ghostOf(nats, 'junk');
  // A foreign responder in the snapshot queue, and no instance to answer instead.
  let asked = 0;
  nc.subscribe('junk.snap', { queue: 'snapshot', callback: (_err, msg) => { asked++; msg.respond(Buffer.from('BDS1 but nothing after it')); } });
  const kvm = new Kvm(nc);
  await kvm.create('junk-directory', { history: 1 });
  await writeGhostEntries(nc, 'junk', 500, 400);
  const c = await joinedInstance('junk-c', { nats: nats.url(), keys, extra: ['--cluster-name', 'junk'] });
  cleanup.push(() => c.stop());
  const loaded = await loadedLine(c);
  assert.equal(loaded.via, 'watch');
  assert.equal(loaded.entries, 400);
  assert.ok(asked >= 2, `asked ${asked} times`);
  assert.ok((await c.metric('beacon_dropped_total', { reason: 'cluster_malformed' }) ?? 0) >= asked);
});

test('after a nats-server restart an instance resumes its watch where it stopped, without loading the directory again', async () => {
  const nats = await NatsServer.start();
  cleanup.push(() => nats.close());
  const opts = { nats: nats.url(), keys, extra: ['--cluster-name', 'resume'] };
  let ghost = await ghostOf(nats, 'resume');
  const a = await joinedInstance('resume-a', opts);
  cleanup.push(() => a.stop());
  await writeGhostEntries(ghost.nc, 'resume', 1_000, 300);
  await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 300);

  await nats.stop();
  await a.waitForMetric('beacon_cluster_connected', {}, (n) => n === 0);
  await nats.start();
  await a.waitForLog((l) => l.msg === 'cluster rejoined', "'cluster rejoined'", 20_000);
  ghost = await ghostOf(nats, 'resume');
  const kv = await ghost.kv();
  for (let i = 0; i < 50; i++) await kv.delete(String(1_000 + i));
  await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 250);
  assert.equal(a.logs.filter((l) => l.msg === 'cluster directory loaded').length, 1, 'loaded once, at start');
});
