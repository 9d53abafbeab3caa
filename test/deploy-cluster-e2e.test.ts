/**
 * The cluster deployment end to end, every piece as shipped: a real
 * nats-server on deploy/nats/nats-server.conf, two instances started by
 * beacon@.service's own ExecStart with beacon.env and cluster.env (their
 * password is the NATS file's; both on beacon.env's one address with
 * --reuse-port, each on its own --ops-bind), and a real Caddy on
 * deploy/Caddyfile.cluster in front. Daemons through Caddy spread over
 * both instances and reach each other across them; a UDP daemon on the one
 * UDP port reaches them and is reached; when the instance of one daemon
 * stops, it comes back through Caddy to the other and is reachable again;
 * every cluster metric the dashboard and alerts name is exported by an
 * instance, on its --ops-bind.
 *
 * Only ports, paths and the keys file are moved for the test machine.
 * Needs Debian's nats-server and caddy (.ci/install-deps).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CompatClient, PacketType, type Packet } from '../lib/client';
import { COMPAT_PATH, encodeDiscover, encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { adaptClusterCaddyfile, startCaddy, type RunningCaddy } from './helpers/caddy';
import { nextEvent } from './helpers/client-events';
import { exportedMetricNames, get, REPO_ROOT, sleep, tempDir } from './helpers/deploy';
import { freeConsecutiveTcpPorts, freeTcpPort, freeTcpUdpPort } from './helpers/free-ports';
import { UdpClient } from './helpers/harness';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { NATS_SINGLE_CONF, adaptNatsConfig, readShipped, startNats, type RunningNats } from './helpers/nats-deploy';
import { Child, parseEnvFile, parseUnit, setting, unitCommand } from './helpers/systemd';

/** Daemons through Caddy: all on one of the two instances has odds 2^-19. */
const DAEMONS = 20;
const daemons = Array.from({ length: DAEMONS }, (_, i) => makeIdentity(7000 + i));
const UDP_NODE = 9999;
const template = parseUnit(readFileSync(join(REPO_ROOT, 'deploy', 'beacon@.service'), 'utf8'));
const active = (file: string) => Object.fromEntries(parseEnvFile(readFileSync(file, 'utf8'))
  .filter((e) => !e.commented).map((e) => [e.name, e.value]));

let nats: RunningNats | undefined;
let caddy: RunningCaddy | undefined;
const instances: Child[] = [];
const clients: CompatClient[] = [];
let udp: UdpClient | undefined;
after(async () => {
  udp?.close();
  for (const c of clients) await c.close();
  await caddy?.stop();
  for (const i of instances) await i.stop(5_000);
  await nats?.stop();
});

async function metric(port: number, series: string): Promise<number | undefined> {
  const body = (await get(`http://127.0.0.1:${port}`, '/metrics')).body;
  const line = body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function until(predicate: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

function nextDelivery(c: CompatClient, ms = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.off('packet', on); reject(new Error(`no RelayDeliver for node ${c.nodeId} within ${ms} ms`)); }, ms);
    const on = (p: Packet) => {
      if (p.type !== PacketType.RelayDeliver) return;
      clearTimeout(timer); c.off('packet', on); resolve(`${p.sender}:${p.payload.toString()}`);
    };
    c.on('packet', on);
  });
}

/** Sends from `from` to `to` until it arrives (a route to a node that just attached elsewhere takes a moment). */
async function relayUntil(from: CompatClient, to: CompatClient, text: string): Promise<void> {
  await until(async () => {
    const got = nextDelivery(to, 500);
    from.relay(to.nodeId, text);
    return (await got) === `${from.nodeId}:${text}`;
  }, 10_000, `a relay from ${from.nodeId} to ${to.nodeId}`);
}

test('NATS, two instances of beacon@.service on one address and Caddy, as shipped: daemons spread over both reach each other and a UDP daemon, and one follows when its instance stops', async () => {
  // NATS on the one-machine file.
  const natsPorts = { client: await freeTcpPort(), monitor: await freeTcpPort() };
  nats = await startNats(adaptNatsConfig(readShipped(NATS_SINGLE_CONF), natsPorts, tempDir('e2e-nats')), natsPorts);

  // The instances, as the unit starts them: beacon.env, then cluster.env (its URL moved to the test's port).
  const dir = tempDir('e2e');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson(daemons));
  const clusterEnv = active(join(REPO_ROOT, 'deploy', 'cluster.env'));
  assert.equal(clusterEnv.BEACON_REUSE_PORT, '1', 'cluster.env shares the address');
  const natsUrl = new URL(clusterEnv.BEACON_CLUSTER!);
  natsUrl.port = String(natsPorts.client);
  const [bindPort, udpPort, opsBase] = [await freeTcpPort(), await freeTcpUdpPort(), await freeConsecutiveTcpPorts()];
  const env = {
    PATH: process.env.PATH,
    ...active(join(REPO_ROOT, 'deploy', 'beacon.env')),
    ...clusterEnv,
    BEACON_BIND: `127.0.0.1:${bindPort}`,
    BEACON_UDP: `127.0.0.1:${udpPort}`,
    BEACON_OPS_BIND: `127.0.0.1:${opsBase}`,
    BEACON_KEYS: keys,
    BEACON_CLUSTER: natsUrl.href.replace(/\/$/, ''),
    BEACON_CLUSTER_DEAD_AFTER: '1s',
    BEACON_SHUTDOWN_GRACE: '300ms',
    BEACON_RESTART_DELAY: '100ms',
    BEACON_RESTART_WINDOW: '200ms',
    BEACON_REBALANCE_RATE: '0',
  };
  for (const n of [1, 2]) {
    const child = new Child(unitCommand(setting(template, 'Service', 'ExecStart').replace(/%i/g, String(n))), env, dir);
    instances.push(child);
    const listening = await child.waitForLog('beacon listening', 15_000);
    assert.deepEqual([listening.bind, listening.udp, listening.opsBind],
      [`127.0.0.1:${bindPort}`, `127.0.0.1:${udpPort}`, `127.0.0.1:${opsBase + n - 1}`], `instance ${n}: the shared address, its own --ops-bind`);
  }
  const ops = [opsBase, opsBase + 1];
  for (const port of ops) {
    await until(async () => await metric(port, 'beacon_cluster_instances') === 2 && await metric(port, 'beacon_cluster_connected') === 1,
      15_000, `the instance on ${port} to see both instances through NATS`);
  }
  for (const child of instances) await child.waitForLog('cluster: directory current and every live instance heard; taking UDP claims', 15_000);

  // A copy of beacon@1 started by hand (its ExecStart again) is refused for its ID before it binds anything, naming the default.
  const copy = new Child(unitCommand(setting(template, 'Service', 'ExecStart').replace(/%i/g, '1')), env, dir);
  assert.equal((await copy.exit).code, 2, copy.output);
  const lines = copy.output.trim().split('\n').filter((line) => !line.startsWith('{'));
  assert.deepEqual(lines, [`beacon: --instance-id ${hostname()}:${opsBase}: another live process in cluster "beacon" already uses this ID; `
    + 'if it is a second copy of this instance, stop one of them; otherwise give each its own --ops-bind (the default ID is the host name '
    + 'and the --ops-bind port, the same for one port on hosts of one name) or its own --instance-id']);
  assert.ok(!copy.output.includes('"msg":"beacon listening"'), 'the copy bound nothing');

  // Every cluster metric the dashboard and the alerts name is exported by a real instance.
  const exported = exportedMetricNames((await get(`http://127.0.0.1:${opsBase}`, '/metrics')).body);
  for (const name of ['beacon_cluster_connected', 'beacon_cluster_instances', 'beacon_cluster_directory_entries',
    'beacon_cluster_frames_total', 'beacon_cluster_batches_total', 'beacon_cluster_rebalanced_total', 'beacon_cluster_udp_adopted_total']) {
    assert.ok(exported.has(name), `an instance started with --cluster does not export ${name}`);
  }

  // Caddy's one upstream: the kernel spreads the daemons over both instances.
  caddy = await startCaddy(adaptClusterCaddyfile(bindPort));
  const url = `${caddy.base.replace(/^https:/, 'wss:')}${COMPAT_PATH}`;
  for (const id of daemons) {
    const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ca: caddy.rootCa, initialDelayMs: 50, maxDelayMs: 400 });
    clients.push(c);
    await c.connect({ failFast: true, timeoutMs: 10_000 });
  }
  const peersOn = async (port: number) => (await metric(port, 'beacon_wss_peers'))!;
  const counts = [await peersOn(ops[0]!), await peersOn(ops[1]!)];
  assert.equal(counts[0]! + counts[1]!, DAEMONS);
  assert.ok(counts[0]! > 0 && counts[1]! > 0, `both instances got daemons through Caddy: ${counts.join(' / ')}`);

  // Across instances, both ways.
  const onFirst = clients.find((c) => attached(instances[0]!, c.nodeId))!;
  const onSecond = clients.find((c) => attached(instances[1]!, c.nodeId))!;
  assert.ok(onFirst && onSecond, 'a daemon on each instance');
  await relayUntil(onFirst, onSecond, 'across');
  await relayUntil(onSecond, onFirst, 'and back');

  // A UDP daemon on the one UDP port: reached from a WebSocket daemon on each instance without a NATS hop, and it reaches them.
  udp = await UdpClient.open();
  udp.send(encodeDiscover(UDP_NODE), udpPort);
  await udp.next(5_000);
  await until(async () => await metric(ops[0]!, 'beacon_cluster_directory_entries') === DAEMONS + 1
    && await metric(ops[1]!, 'beacon_cluster_directory_entries') === DAEMONS + 1, 10_000, 'both instances to know every node');
  const forwardedBefore = (await metric(ops[0]!, 'beacon_cluster_frames_total{direction="out"}'))!
    + (await metric(ops[1]!, 'beacon_cluster_frames_total{direction="out"}'))!;
  for (const c of [onFirst, onSecond]) {
    c.relay(UDP_NODE, `to udp from ${c.nodeId}`);
    const { msg, from } = await udp.nextFrom(5_000);
    assert.deepEqual(msg, encodeRelayDeliver(c.nodeId, Buffer.from(`to udp from ${c.nodeId}`)));
    assert.equal(from.port, udpPort, 'from the one UDP port');
  }
  assert.equal((await metric(ops[0]!, 'beacon_cluster_frames_total{direction="out"}'))!
    + (await metric(ops[1]!, 'beacon_cluster_frames_total{direction="out"}'))!, forwardedBefore, 'no NATS hop to reach a UDP node');
  const toSecond = nextDelivery(onSecond);
  udp.send(encodeRelay(UDP_NODE, onSecond.nodeId, Buffer.from('from udp')), udpPort);
  assert.equal(await toSecond, `${UDP_NODE}:from udp`);

  // The first instance stops: its daemons come back through Caddy to the second, and are reached there.
  const back = nextEvent(onFirst, 'connected', 15_000, (e) => e.attempt > 1);
  assert.deepEqual(await instances[0]!.stop(10_000), { code: 0, signal: null });
  await back;
  await relayUntil(onSecond, onFirst, 'found you');
});

/** Did `instance` log a WebSocket peer `nodeId` connecting? */
function attached(instance: Child, nodeId: number): boolean {
  return instance.output.split('\n').some((line) => {
    try {
      const entry = JSON.parse(line) as { msg?: string; nodeId?: number };
      return entry.msg === 'peer connected' && entry.nodeId === nodeId;
    } catch {
      return false;
    }
  });
}
