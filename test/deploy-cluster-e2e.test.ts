/**
 * The cluster deployment end to end, every piece as shipped: a real
 * nats-server on deploy/nats/nats-server.conf, two instances started by
 * beacon@.service's own ExecStart with beacon.env and cluster.env (their
 * password is the NATS file's), and a real Caddy on deploy/Caddyfile.cluster
 * in front. Two daemons through Caddy land on different instances and reach
 * each other across them; when the instance of one stops, it comes back
 * through Caddy to the other and is reachable again; every cluster metric
 * the dashboard and alerts name is exported by an instance.
 *
 * Only ports, paths and the keys file are moved for the test machine.
 * Needs Debian's nats-server and caddy (.ci/install-deps).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CompatClient, PacketType, type Packet } from '../lib/client';
import { COMPAT_PATH } from '../lib/protocol';
import { adaptClusterCaddyfile, startCaddy, type RunningCaddy } from './helpers/caddy';
import { nextEvent } from './helpers/client-events';
import { exportedMetricNames, freeTcpPort, get, REPO_ROOT, sleep, tempDir } from './helpers/deploy';
import { keysFileJson, makeIdentity, type TestIdentity } from './helpers/identity';
import { NATS_SINGLE_CONF, adaptNatsConfig, readShipped, startNats, type RunningNats } from './helpers/nats-deploy';
import { Child, parseEnvFile, parseUnit, setting, unitCommand } from './helpers/systemd';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const template = parseUnit(readFileSync(join(REPO_ROOT, 'deploy', 'beacon@.service'), 'utf8'));
const active = (file: string) => Object.fromEntries(parseEnvFile(readFileSync(file, 'utf8'))
  .filter((e) => !e.commented).map((e) => [e.name, e.value]));

let nats: RunningNats | undefined;
let caddy: RunningCaddy | undefined;
const instances: Child[] = [];
const clients: CompatClient[] = [];
after(async () => {
  for (const c of clients) await c.close();
  await caddy?.stop();
  for (const i of instances) await i.stop(5_000);
  await nats?.stop();
});

/** A port P with P + 1 free too (instances 1 and 2). */
async function twoFreePorts(): Promise<number> {
  const canListen = (port: number) => new Promise<boolean>((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
  for (let tries = 0; tries < 20; tries++) {
    const port = await freeTcpPort();
    if (port < 65535 && await canListen(port + 1)) return port;
  }
  throw new Error('no two consecutive free ports on 127.0.0.1 in 20 tries');
}

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

test('NATS, two instances of beacon@.service and Caddy, as shipped: daemons on different instances reach each other, and one follows when its instance stops', async () => {
  // NATS on the one-machine file.
  const natsPorts = { client: await freeTcpPort(), monitor: await freeTcpPort() };
  nats = await startNats(adaptNatsConfig(readShipped(NATS_SINGLE_CONF), natsPorts, tempDir('e2e-nats')), natsPorts);

  // The instances, as the unit starts them: beacon.env, then cluster.env (its URL moved to the test's port).
  const dir = tempDir('e2e');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson([alice, bob]));
  const clusterEnv = active(join(REPO_ROOT, 'deploy', 'cluster.env'));
  const natsUrl = new URL(clusterEnv.BEACON_CLUSTER!);
  natsUrl.port = String(natsPorts.client);
  const base = await twoFreePorts();
  const env = {
    PATH: process.env.PATH,
    ...active(join(REPO_ROOT, 'deploy', 'beacon.env')),
    ...clusterEnv,
    BEACON_BIND: `127.0.0.1:${base}`,
    BEACON_UDP: '127.0.0.1:0',
    BEACON_KEYS: keys,
    BEACON_CLUSTER: natsUrl.href.replace(/\/$/, ''),
    BEACON_SHUTDOWN_GRACE: '300ms',
    BEACON_RESTART_DELAY: '100ms',
    BEACON_RESTART_WINDOW: '200ms',
  };
  for (const n of [1, 2]) {
    const child = new Child(unitCommand(setting(template, 'Service', 'ExecStart').replace(/%i/g, String(n))), env, dir);
    instances.push(child);
    await child.waitForLog('beacon listening', 15_000);
  }
  const ports = [base, base + 1];
  for (const port of ports) {
    await until(async () => await metric(port, 'beacon_cluster_instances') === 2 && await metric(port, 'beacon_cluster_connected') === 1,
      15_000, `the instance on ${port} to see both instances through NATS`);
  }

  // Every cluster metric the dashboard and the alerts name is exported by a real instance.
  const exported = exportedMetricNames((await get(`http://127.0.0.1:${base}`, '/metrics')).body);
  for (const name of ['beacon_cluster_connected', 'beacon_cluster_instances', 'beacon_cluster_directory_entries',
    'beacon_cluster_frames_total', 'beacon_cluster_batches_total']) {
    assert.ok(exported.has(name), `an instance started with --cluster does not export ${name}`);
  }

  // Caddy spreads the two daemons, one per instance.
  caddy = await startCaddy(adaptClusterCaddyfile(ports));
  const url = `${caddy.base.replace(/^https:/, 'wss:')}${COMPAT_PATH}`;
  const connect = async (id: TestIdentity) => {
    const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ca: caddy!.rootCa, initialDelayMs: 50, maxDelayMs: 400 });
    clients.push(c);
    await c.connect({ failFast: true, timeoutMs: 10_000 });
    return c;
  };
  const a = await connect(alice);
  const b = await connect(bob);
  const peersOn = async (port: number) => metric(port, 'beacon_wss_peers');
  assert.deepEqual([await peersOn(ports[0]!), await peersOn(ports[1]!)], [1, 1], 'least_conn puts one daemon on each instance');

  // Across instances, both ways (the directory may take a moment to reach the other instance).
  await until(async () => {
    const got = nextDelivery(b, 500);
    a.relay(bob.nodeId, 'across');
    return (await got) === '7777:across';
  }, 10_000, 'a relay from alice to bob across instances');
  const toAlice = nextDelivery(a);
  b.relay(alice.nodeId, 'and back');
  assert.equal(await toAlice, '8888:and back');
  const crossed = (await metric(ports[0]!, 'beacon_relay_total{route="cluster"}'))! + (await metric(ports[1]!, 'beacon_relay_total{route="cluster"}'))!;
  assert.ok(crossed >= 2, `relays by route "cluster": ${crossed}`);

  // Alice's instance stops: she comes back through Caddy to the other, and Bob reaches her there.
  const aliceAt = instances.findIndex((i) => attached(i, alice.nodeId));
  assert.ok(aliceAt >= 0, 'no instance logged Alice\'s connection');
  const back = nextEvent(a, 'connected', 15_000, (e) => e.attempt > 1);
  assert.deepEqual(await instances[aliceAt]!.stop(10_000), { code: 0, signal: null });
  await back;
  await until(async () => {
    const got = nextDelivery(a, 500);
    b.relay(alice.nodeId, 'found you');
    return (await got) === '8888:found you';
  }, 10_000, 'a relay from bob to alice on her new instance');
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
