/**
 * deploy/Caddyfile.cluster in front of real beacons, through a real Caddy:
 * it adapts as shipped (the four instances of beacon@1..4, least_conn,
 * health checks on /health); daemons connecting through it are spread over
 * the instances; when one instance stops, its daemons come back through
 * Caddy to the others and new ones go there too; /metrics stays closed.
 *
 * The beacons here are independent processes (no NATS): what is under test
 * is Caddy's spreading and failover, not the cluster behind it.
 *
 * Needs Debian's caddy (.ci/install-deps); fails, never skips, without it.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { CompatClient } from '../lib/client';
import type { BeaconConfig } from '../lib/config';
import { COMPAT_PATH } from '../lib/protocol';
import {
  SHIPPED_CLUSTER_CADDYFILE, adaptClusterCaddyfile, isolatedCaddyEnv, startCaddy, type RunningCaddy,
} from './helpers/caddy';
import { nextEvent } from './helpers/client-events';
import { get, requireTool, run, tempDir } from './helpers/deploy';
import { eventually, startTestBeacon, type TestBeacon } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { parseEnvFile } from './helpers/systemd';

const ids = [1001, 1002, 1003, 1004, 1005].map((n) => makeIdentity(n));
/** A stopping beacon asks its daemons back within a few hundred ms, not 3 s. */
const QUICK_RESTART = { restartDelayMs: 100, restartWindowMs: 200 } as Partial<BeaconConfig>;

let first: TestBeacon;
let second: TestBeacon;
let caddy: RunningCaddy | undefined;
const clients: CompatClient[] = [];

before(async () => {
  requireTool('caddy');
  first = await startTestBeacon(ids, QUICK_RESTART);
  second = await startTestBeacon(ids, QUICK_RESTART);
  caddy = await startCaddy(adaptClusterCaddyfile([first.beacon.httpAddress.port, second.beacon.httpAddress.port]));
});

after(async () => {
  for (const c of clients) await c.close();
  await caddy?.stop();
  await first?.close();
  await second?.close();
});

function client(id: TestIdentity): CompatClient {
  const url = `${caddy!.base.replace(/^https:/, 'wss:')}${COMPAT_PATH}`;
  const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ca: caddy!.rootCa, initialDelayMs: 50, maxDelayMs: 400, connectTimeoutMs: 5_000 });
  clients.push(c);
  return c;
}

test('the shipped cluster Caddyfile adapts as is: beacon@1..4 on the ports beacon-instance gives them, least_conn, /health checks, retries', async () => {
  const dir = tempDir('caddy-cluster-adapt');
  const adapted = await run(requireTool('caddy'), ['adapt', '--config', SHIPPED_CLUSTER_CADDYFILE, '--adapter', 'caddyfile', '--validate'],
    { env: isolatedCaddyEnv(dir), timeoutMs: 20_000 });
  assert.equal(adapted.code, 0, `caddy adapt failed:\n${adapted.stderr}`);
  const json = JSON.parse(adapted.stdout) as unknown;
  const text = JSON.stringify(json);
  const proxy = /"handler":"reverse_proxy".*?"upstreams":(\[[^\]]*\])/.exec(text);
  assert.ok(proxy, text);
  const dials = (JSON.parse(proxy[1]!) as { dial: string }[]).map((u) => u.dial);

  // beacon@N listens on BEACON_BIND's port + N - 1 (deploy/beacon-instance).
  const env = Object.fromEntries(parseEnvFile().filter((e) => !e.commented).map((e) => [e.name, e.value]));
  const [host, base] = env.BEACON_BIND!.split(':');
  assert.deepEqual(dials, [1, 2, 3, 4].map((n) => `${host}:${Number(base) + n - 1}`));
  assert.match(text, /"selection_policy":\{"policy":"least_conn"\}/);
  assert.match(text, /"active":\{[^}]*"uri":"\/health"/);
  assert.match(text, /"try_duration":5000000000/);
  assert.match(text, /"path":\["\/v1\/compat","\/health"\]/);
  assert.match(text, /"host":\["beacon\.example\.com"\]/);
});

test('daemons through Caddy are spread over the instances; when one stops, its daemons and new ones land on the other', async () => {
  const four = ids.slice(0, 4).map(client);
  for (const c of four) await c.connect({ failFast: true, timeoutMs: 10_000 });
  assert.equal(first.beacon.peerCount() + second.beacon.peerCount(), 4);
  assert.deepEqual([first.beacon.peerCount(), second.beacon.peerCount()], [2, 2], 'least_conn puts two on each');

  const onFirst = four.filter((c) => first.beacon.isConnected(c.nodeId));
  const back = onFirst.map((c) => nextEvent(c, 'connected', 15_000, (e) => e.attempt > 1));
  await first.close();
  await Promise.all(back);
  await eventually(() => second.beacon.peerCount() === 4, 5_000, 'all four daemons on the remaining instance');

  const late = client(ids[4]!);
  await late.connect({ failFast: true, timeoutMs: 10_000 });
  assert.ok(second.beacon.isConnected(late.nodeId), 'a new daemon goes to the instance that is up');
});

test('through the cluster Caddyfile /health answers and /metrics is refused', async () => {
  const health = await get(caddy!.base, '/health', { ca: caddy!.rootCa });
  assert.equal(health.status, 200, health.body);
  for (const path of ['/metrics', '/METRICS', '/health/../metrics', '/v1/compat/x', '/']) {
    const answer = await get(caddy!.base, path, { ca: caddy!.rootCa });
    assert.ok([400, 403, 404].includes(answer.status), `GET ${path} answered ${answer.status}`);
    assert.doesNotMatch(answer.body, /beacon_/);
  }
});
