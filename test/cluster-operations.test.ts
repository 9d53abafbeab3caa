/**
 * Cluster mode as an operator meets it (issue 23, part 3), with real
 * nats-servers and instances as child processes:
 * - a NATS without JetStream (Debian's own service), or an account without
 *   it, is reported at the shipped log level, naming JetStream and the fix;
 * - a newcomer sees every live instance a round trip after joining (its
 *   first heartbeat is answered), not a heartbeat interval later;
 * - `cluster joined` says whether the directory is still loading, and
 *   `cluster directory loaded` gives the mirror's real size;
 * - a graceful stop says goodbye: the others drop the instance at once and
 *   log it as a graceful leave, not as "instance silent" a dead-after later.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { spawnInstance, writeKeys, type Instance, type LogLine } from './helpers/cluster';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { parseEnvFile } from './helpers/systemd';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1001);
const bob = makeIdentity(2002);
/** Heartbeats every 12 s (a fifth): anything faster than that below is not a heartbeat's doing. */
const LONG_DEAD_AFTER = '60s';
const HEARTBEAT_MS = 12_000;
/** The log level beacon.env ships with: what an operator sees. */
const SHIPPED_LOG_LEVEL = parseEnvFile().find((e) => e.name === 'BEACON_LOG_LEVEL' && !e.commented)?.value ?? 'info';
const LEVEL: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

let keys: string;
const servers: NatsServer[] = [];
const instances: Instance[] = [];
const peers: WsPeer[] = [];
before(() => { keys = writeKeys([alice, bob]); });
after(async () => {
  for (const peer of peers) peer.close();
  for (const instance of instances) instance.kill();
  for (const server of servers) await server.close();
});

async function nats(options: Parameters<typeof NatsServer.start>[0] = {}): Promise<NatsServer> {
  const server = await NatsServer.start(options);
  servers.push(server);
  return server;
}

async function instance(name: string, url: string, extra: string[] = []): Promise<Instance> {
  const started = await spawnInstance(name, { nats: url, keys, deadAfter: LONG_DEAD_AFTER, extra: ['--log-level', SHIPPED_LOG_LEVEL, ...extra] });
  instances.push(started);
  return started;
}

function shown(line: LogLine): boolean {
  return line.level >= LEVEL[SHIPPED_LOG_LEVEL]!;
}

test('the shipped log level is one that shows warnings', () => {
  assert.ok(LEVEL[SHIPPED_LOG_LEVEL]! <= LEVEL.warn!, `beacon.env ships BEACON_LOG_LEVEL=${SHIPPED_LOG_LEVEL}`);
});

test('a NATS server without JetStream (Debian\'s own service): a warning at the shipped level names JetStream and the fix; the instance stays out of the cluster', async () => {
  const server = await nats({ jetstream: false });
  const a = await instance('nojs', server.url(), ['--cluster-name', 'nojs']);
  const warning = await a.waitForLog((l) => /JetStream/.test(l.msg) && shown(l), 'a warning naming JetStream', 15_000);
  assert.equal(warning.level, LEVEL.warn);
  assert.match(warning.msg, /runs without JetStream/);
  assert.match(warning.msg, /-js/);
  assert.match(warning.msg, /deploy\/nats\/nats-server\.conf/);
  assert.match(warning.msg, /beacon_cluster_connected 0/);
  assert.equal(await a.metric('beacon_cluster_connected'), 0);
  assert.equal(a.logs.filter((l) => l.msg === 'cluster joined').length, 0);

  // Said once, not at every retry: at debug level the retries show, the warning does not come back.
  const d = await instance('nojs-debug', server.url(), ['--cluster-name', 'nojs', '--log-level', 'debug']);
  await d.waitForLog((l) => l.msg === 'cluster: directory not ready; retrying' && Number(l.attempt) >= 4, 'four retries', 15_000);
  assert.equal(d.logs.filter((l) => /JetStream/.test(l.msg) && l.level >= LEVEL.warn!).length, 1);
});

test('an account without JetStream on a server with it: a warning at the shipped level says so and names `jetstream: enabled`', async () => {
  const server = await nats({ config: 'accounts { NOJS { users: [ { user: nojs, password: nojs-pass } ] } }' });
  const a = await instance('noacct', `nats://nojs:nojs-pass@127.0.0.1:${server.port}`, ['--cluster-name', 'noacct']);
  const warning = await a.waitForLog((l) => /JetStream/.test(l.msg) && shown(l), 'a warning naming JetStream', 15_000);
  assert.equal(warning.level, LEVEL.warn);
  assert.match(warning.msg, /not enabled for this NATS account/);
  assert.match(warning.msg, /jetstream: enabled/);
  assert.equal(await a.metric('beacon_cluster_connected'), 0);
});

test('a newcomer sees every live instance a round trip after joining, not a heartbeat later; its join line says the directory is loading, the load line gives its size', async () => {
  const server = await nats();
  const url = server.url();
  const a = await instance('seen-a', url, ['--cluster-name', 'seen']);
  await a.waitForLog((l) => l.msg === 'cluster joined', "a: 'cluster joined'");
  const b = await instance('seen-b', url, ['--cluster-name', 'seen']);
  await b.waitForLog((l) => l.msg === 'cluster joined', "b: 'cluster joined'");
  const alicePeer = await WsPeer.connect(a.url, alice);
  peers.push(alicePeer);
  await b.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 1);

  const c = await instance('seen-c', url, ['--cluster-name', 'seen']);
  const joined = await c.waitForLog((l) => l.msg === 'cluster joined', "c: 'cluster joined'");
  const heard = await Promise.all(['seen-a', 'seen-b'].map((id) =>
    c.waitForLog((l) => l.msg === 'cluster: instance live' && l.instance === id, `c hears ${id}`)));
  const joinedAt = Number(joined.time);
  const lastHeardAt = Math.max(...heard.map((l) => Number(l.time)));
  assert.ok(lastHeardAt - joinedAt < 2_000,
    `c heard the others ${lastHeardAt - joinedAt} ms after joining: they answer a newcomer at once, not at their next heartbeat (every ${HEARTBEAT_MS} ms)`);
  assert.equal(await c.metric('beacon_cluster_instances'), 3);
  for (const other of [a, b]) await other.waitForMetric('beacon_cluster_instances', {}, (n) => n === 3, 5_000);

  // 'cluster joined' does not claim a directory it has not loaded yet.
  assert.ok(joined.directory === 'loading' || (joined.directory === 'loaded' && joined.directoryEntries === 1), JSON.stringify(joined));
  const loaded = await c.waitForLog((l) => l.msg === 'cluster directory loaded', "c: 'cluster directory loaded'");
  assert.equal(loaded.entries, 1, 'the mirror holds alice once loaded');
  assert.equal(await c.metric('beacon_cluster_directory_entries'), 1);
});

test('a graceful stop says goodbye: the others drop the instance at once and log a graceful leave, not "instance silent"', async () => {
  const server = await nats();
  const url = server.url();
  const a = await instance('bye-a', url, ['--cluster-name', 'bye']);
  const b = await instance('bye-b', url, ['--cluster-name', 'bye']);
  await Promise.all([a, b].map((i) => i.waitForMetric('beacon_cluster_instances', {}, (n) => n === 2, 2 * HEARTBEAT_MS)));
  const bobPeer = await WsPeer.connect(b.url, bob);
  peers.push(bobPeer);
  await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 1);

  const stoppedAt = Date.now();
  await b.stop();
  assert.deepEqual(await b.exited, { code: 0, signal: null });
  const left = await a.waitForLog((l) => l.msg.startsWith('cluster: instance left') && l.instance === 'bye-b', "a: 'instance left'", 10_000);
  assert.ok(shown(left));
  assert.ok(Number(left.time) - stoppedAt < HEARTBEAT_MS, 'at once: well before a silence could be noticed (dead-after 60 s)');
  assert.equal(await a.metric('beacon_cluster_instances'), 1);
  await a.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === 0, 5_000);
  assert.deepEqual(a.logs.filter((l) => /instance silent|removing a dead instance/.test(l.msg)), [],
    'a graceful leave is not a death: nothing to time out, nothing left to sweep');
});
