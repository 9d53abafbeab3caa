/**
 * deploy/nats/nats-server.conf (one machine) and nats-server-3.conf (three),
 * as shipped, with Debian's real nats-server: `nats-server -t` accepts them;
 * the one-machine file runs with JetStream, on loopback, and lets in only
 * the beacon user with its password (the one cluster.env uses); three
 * servers on the three-machine file form one JetStream cluster, keep the
 * directory bucket with three replicas, and keep it when the server
 * leading it stops.
 *
 * Needs Debian's nats-server (.ci/install-deps); fails, never skips, without it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { freeTcpPort, requireTool, run, sleep, tempDir, REPO_ROOT } from './helpers/deploy';
import {
  NATS_SINGLE_CONF, NATS_THREE_CONF, NatsProbe, adaptNatsConfig, readShipped, shippedPassword, startNats,
  type NatsPorts, type RunningNats,
} from './helpers/nats-deploy';
import { parseEnvFile } from './helpers/systemd';
import { writeFileSync } from 'node:fs';

const servers: RunningNats[] = [];
const probes: NatsProbe[] = [];
after(async () => {
  for (const p of probes) p.close();
  for (const s of servers) await s.stop();
});

async function ports(cluster = false): Promise<NatsPorts> {
  return { client: await freeTcpPort(), monitor: await freeTcpPort(), ...(cluster ? { cluster: await freeTcpPort() } : {}) };
}

/** Asks `attempt` every 250 ms until it gives a value (failures count as no value yet); 45 s at most. */
async function eventually<T>(attempt: () => Promise<T | undefined>, what: string): Promise<T> {
  const deadline = Date.now() + 45_000;
  let last = 'no answer yet';
  for (;;) {
    try {
      const value = await attempt();
      if (value !== undefined) return value;
      last = 'not yet';
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`no ${what} within 45 s (last: ${last})`);
    await sleep(250);
  }
}

async function login(port: number, user?: string, pass?: string) {
  const result = await NatsProbe.login(port, user, pass);
  probes.push(result.probe);
  return result;
}

/** The directory bucket's stream, as the beacon's KV client makes it, with three replicas. */
const DIRECTORY_STREAM = {
  name: 'KV_beacon-directory',
  subjects: ['$KV.beacon-directory.>'],
  retention: 'limits',
  max_msgs_per_subject: 1,
  storage: 'file',
  num_replicas: 3,
  discard: 'new',
  allow_rollup_hdrs: true,
  allow_direct: true,
};

test('nats-server -t accepts both shipped configurations, and rejects a broken copy', async () => {
  const bin = requireTool('nats-server');
  for (const file of [NATS_SINGLE_CONF, NATS_THREE_CONF]) {
    const checked = await run(bin, ['-t', '-c', file], { timeoutMs: 20_000 });
    assert.equal(checked.code, 0, `nats-server -t ${file}:\n${checked.stdout}${checked.stderr}`);
    assert.match(checked.stdout + checked.stderr, /is valid/);
  }
  const broken = join(tempDir('nats-broken'), 'nats-server.conf');
  writeFileSync(broken, readShipped(NATS_SINGLE_CONF).replace('jetstream {', 'jetstrem {'));
  const bad = await run(bin, ['-t', '-c', broken], { timeoutMs: 20_000 });
  assert.notEqual(bad.code, 0, 'nats-server -t accepted an unknown field');
  assert.match(bad.stdout + bad.stderr, /unknown field "jetstrem"/);
});

test('cluster.env logs in as the user and password of the shipped NATS files, at their client port', () => {
  const env = Object.fromEntries(parseEnvFile(readShipped(join(REPO_ROOT, 'deploy', 'cluster.env')))
    .filter((e) => !e.commented).map((e) => [e.name, e.value]));
  const url = new URL(env.BEACON_CLUSTER!);
  assert.equal(url.protocol, 'nats:');
  assert.equal(url.port, '4222');
  assert.equal(url.username, 'beacon');
  for (const file of [NATS_SINGLE_CONF, NATS_THREE_CONF]) {
    assert.equal(decodeURIComponent(url.password), shippedPassword(readShipped(file), 'beacon'), `${file} and cluster.env disagree on the password`);
  }
  assert.equal(env.BEACON_CLUSTER_NAME, 'beacon', 'the three-machine test creates the bucket of the cluster name "beacon"');
});

test('one machine: JetStream on, loopback only, and only the beacon user with its password gets in', async () => {
  const shipped = readShipped(NATS_SINGLE_CONF);
  const p = await ports();
  const nats = await startNats(adaptNatsConfig(shipped, p, tempDir('nats-store')), p);
  servers.push(nats);

  const varz = await nats.monitor('/varz');
  assert.equal(varz.host, '127.0.0.1');
  assert.equal(varz.auth_required, true);
  assert.equal(varz.server_name, 'beacon-nats-1');
  assert.ok(varz.jetstream && typeof varz.jetstream === 'object', `JetStream is off: ${JSON.stringify(varz.jetstream)}`);

  const anonymous = await login(p.client);
  assert.equal(anonymous.info.auth_required, true);
  assert.match(anonymous.answer, /^-ERR 'Authorization Violation'/);
  const wrong = await login(p.client, 'beacon', 'not-the-password');
  assert.match(wrong.answer, /^-ERR 'Authorization Violation'/);

  const beacon = await login(p.client, 'beacon', shippedPassword(shipped, 'beacon'));
  assert.equal(beacon.answer, 'PONG');
  const account = await beacon.probe.request('$JS.API.INFO', '');
  assert.equal(account.error, undefined, `JetStream is not enabled for the beacon's account: ${JSON.stringify(account)}`);
  assert.equal(account.type, 'io.nats.jetstream.api.v1.account_info_response');
  // One server: a bucket of one replica is created; three cannot be placed.
  const r1 = await beacon.probe.request('$JS.API.STREAM.CREATE.KV_beacon-directory', { ...DIRECTORY_STREAM, num_replicas: 1 });
  assert.equal(r1.error, undefined, JSON.stringify(r1));
});

test('three machines: three servers form one JetStream cluster, keep the directory with three replicas, and keep it when its leader stops', async () => {
  const shipped = readShipped(NATS_THREE_CONF);
  const all = [await ports(true), await ports(true), await ports(true)];
  const routePorts = all.map((p) => p.cluster!);
  const started = await Promise.all(all.map((p, i) => startNats(
    adaptNatsConfig(shipped, p, tempDir(`nats-store-${i + 1}`), { serverName: `beacon-nats-${i + 1}`, routePorts }), p, '/varz')));
  servers.push(...started);

  // The JetStream meta group of three elects a leader.
  const deadline = Date.now() + 45_000;
  let meta: Record<string, unknown> | undefined;
  while (Date.now() < deadline) {
    meta = (await started[0]!.monitor('/jsz').catch(() => ({}) as Record<string, unknown>)).meta_cluster as Record<string, unknown> | undefined;
    if (meta?.leader && meta.cluster_size === 3) break;
    await sleep(200);
  }
  assert.ok(meta?.leader && meta.cluster_size === 3, `no JetStream leader among three: ${JSON.stringify(meta)}`);

  const password = shippedPassword(shipped, 'beacon');
  const beacon = await login(all[0]!.client, 'beacon', password);
  assert.equal(beacon.answer, 'PONG');
  const created = await beacon.probe.request('$JS.API.STREAM.CREATE.KV_beacon-directory', DIRECTORY_STREAM, 10_000);
  assert.equal(created.error, undefined, JSON.stringify(created));
  assert.equal((created.config as { num_replicas: number }).num_replicas, 3);

  // The bucket's own group elects a leader (seconds on a loaded machine); then a write is acknowledged.
  const led = await eventually(async () => {
    const info = await beacon.probe.request('$JS.API.STREAM.INFO.KV_beacon-directory', '', 2_000);
    const cluster = info.cluster as { leader?: string; replicas?: { name: string }[] } | undefined;
    return cluster?.leader ? cluster : undefined;
  }, 'a leader for the bucket');
  assert.equal(led.replicas?.length, 2, `three replicas: a leader and two followers: ${JSON.stringify(led)}`);
  const ack = await eventually(async () => {
    const answer = await beacon.probe.request('$KV.beacon-directory.7777', 'w beacon-host-1', 2_000);
    return answer.stream ? answer : undefined;
  }, 'the write to be acknowledged');
  assert.equal(ack.stream, 'KV_beacon-directory', JSON.stringify(ack));

  // Stop the server that leads the bucket: a survivor takes over, with the entry.
  const leaderIndex = Number(/beacon-nats-(\d)/.exec(led.leader!)?.[1]) - 1;
  assert.ok(leaderIndex >= 0 && leaderIndex < 3, led.leader);
  await started[leaderIndex]!.stop();
  const survivor = all[(leaderIndex + 1) % 3]!;
  const other = await login(survivor.client, 'beacon', password);
  assert.equal(other.answer, 'PONG');
  const after = await eventually(async () => {
    const info = await other.probe.request('$JS.API.STREAM.INFO.KV_beacon-directory', '', 2_000);
    const leader = (info.cluster as { leader?: string } | undefined)?.leader;
    return leader && leader !== led.leader ? info : undefined;
  }, 'a new leader for the bucket');
  assert.equal((after.state as { messages: number }).messages, 1, 'the entry survived the loss of a server');
});
