/**
 * deploy/Caddyfile.cluster in front of real instances, through a real Caddy
 * and a real nats-server: it adapts as shipped (one upstream, the address
 * every instance shares, retries, no active health checks); daemons
 * connecting through it are spread over two instances sharing that address
 * (--reuse-port: the kernel spreads Caddy's upstream connections); when one
 * instance stops, its daemons come back through Caddy to the other and new
 * ones go there too; /metrics stays closed.
 *
 * Needs Debian's caddy and nats-server (.ci/install-deps); fails, never
 * skips, without them.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CompatClient } from '../lib/client';
import { COMPAT_PATH } from '../lib/protocol';
import {
  SHIPPED_CLUSTER_CADDYFILE, adaptClusterCaddyfile, isolatedCaddyEnv, startCaddy, type RunningCaddy,
} from './helpers/caddy';
import { nextEvent, until } from './helpers/client-events';
import { allSee, sharedInstance, writeKeys, type Instance, type SharedAddress } from './helpers/cluster';
import { REPO_ROOT, get, requireTool, run, tempDir } from './helpers/deploy';
import { withTimeout } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { parseEnvFile } from './helpers/systemd';

/** Daemons through Caddy: all on one of two instances has odds 2^-19. */
const DAEMONS = 20;
const ids = Array.from({ length: DAEMONS + 1 }, (_, i) => makeIdentity(1001 + i));
const keys = writeKeys(ids);
const address: SharedAddress = { bindPort: 0, udpPort: 0 };
let nats: NatsServer;
let first: Instance;
let second: Instance;
let caddy: RunningCaddy | undefined;
const clients: CompatClient[] = [];

before(async () => {
  requireTool('caddy');
  nats = await NatsServer.start();
  // A stopping instance asks its daemons back within a few hundred ms, not 3 s; rebalancing stays out of the way.
  const extra = ['--restart-delay', '100ms', '--restart-window', '200ms', '--rebalance-rate', '0'];
  first = await sharedInstance('first', address, { nats: nats.url(), keys, extra });
  second = await sharedInstance('second', address, { nats: nats.url(), keys, extra });
  await allSee([first, second], 2);
  caddy = await startCaddy(adaptClusterCaddyfile(address.bindPort));
});

after(async () => {
  for (const c of clients) await c.close();
  await caddy?.stop();
  await first?.stop();
  await second?.stop();
  await nats?.close();
});

function client(id: TestIdentity): CompatClient {
  const url = `${caddy!.base.replace(/^https:/, 'wss:')}${COMPAT_PATH}`;
  const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ca: caddy!.rootCa, initialDelayMs: 50, maxDelayMs: 400, connectTimeoutMs: 5_000 });
  clients.push(c);
  return c;
}

async function peers(instance: Instance): Promise<number> {
  return (await instance.metric('beacon_wss_peers')) ?? -1;
}

test('the shipped cluster Caddyfile adapts as is: one upstream, the --bind of beacon.env every instance shares, retries, no active health checks', async () => {
  const dir = tempDir('caddy-cluster-adapt');
  const adapted = await run(requireTool('caddy'), ['adapt', '--config', SHIPPED_CLUSTER_CADDYFILE, '--adapter', 'caddyfile', '--validate'],
    { env: isolatedCaddyEnv(dir), timeoutMs: 20_000 });
  assert.equal(adapted.code, 0, `caddy adapt failed:\n${adapted.stderr}`);
  const text = JSON.stringify(JSON.parse(adapted.stdout) as unknown);
  const proxy = /"handler":"reverse_proxy".*?"upstreams":(\[[^\]]*\])/.exec(text);
  assert.ok(proxy, text);
  const dials = (JSON.parse(proxy[1]!) as { dial: string }[]).map((u) => u.dial);
  const env = Object.fromEntries(parseEnvFile().filter((e) => !e.commented).map((e) => [e.name, e.value]));
  assert.deepEqual(dials, [env.BEACON_BIND], 'the one address of beacon.env');
  assert.match(text, /"try_duration":5000000000/);
  assert.doesNotMatch(text, /"health_checks"/, 'with one upstream, a check meeting a draining instance would take them all out');
  assert.match(text, /"path":\["\/v1\/compat","\/health"\]/);
  assert.match(text, /"host":\["beacon\.example\.com"\]/);
});

test('daemons through Caddy are spread over the instances sharing the address; when one stops, its daemons and new ones land on the other', async () => {
  const daemons = ids.slice(0, DAEMONS).map(client);
  for (const c of daemons) await c.connect({ failFast: true, timeoutMs: 10_000 });
  const [onFirst, onSecond] = [await peers(first), await peers(second)];
  assert.equal(onFirst + onSecond, DAEMONS);
  assert.ok(onFirst > 0 && onSecond > 0, `the kernel spread Caddy's connections: ${onFirst} / ${onSecond}`);

  const back = daemons.filter((c) => first.logs.some((l) => l.msg === 'peer connected' && l.nodeId === c.nodeId))
    .map((c) => nextEvent(c, 'connected', 15_000, (e) => e.attempt > 1));
  assert.equal(back.length, onFirst);
  first.kill('SIGTERM');
  assert.deepEqual(await withTimeout(first.exited, 15_000, 'the first instance to exit'), { code: 0, signal: null });
  await Promise.all(back);
  await until(() => daemons.every((c) => c.state === 'connected'), 10_000, 'every daemon connected');
  assert.equal(await peers(second), DAEMONS, 'all on the remaining instance');

  const late = client(ids[DAEMONS]!);
  await late.connect({ failFast: true, timeoutMs: 10_000 });
  assert.equal(await peers(second), DAEMONS + 1, 'a new daemon goes to the instance that is up');
});

test('the cluster guide\'s local TLS recipe (1.5): its sed turns the shipped file into a localhost site with tls internal, and keeps Caddy\'s admin endpoint and ports', async () => {
  const guide = readFileSync(join(REPO_ROOT, 'docs', 'cluster-deploy.md'), 'utf8');
  const recipe = guide.slice(guide.indexOf('**Trying it on a machine without a public name.**'), guide.indexOf('### 1.6'));
  const command = /^sed -i '([^']+)' \/etc\/caddy\/Caddyfile$/m.exec(recipe);
  assert.ok(command, 'the recipe edits /etc/caddy/Caddyfile with one sed expression');
  assert.match(recipe, /^systemctl reload caddy$/m, 'through the system Caddy\'s reload');
  assert.doesNotMatch(recipe.replace(/do not add `admin off`/, ''), /admin off|https_port|http_port/, 'nothing that breaks the reload or moves Caddy\'s ports');
  const dir = tempDir('caddy-tls-recipe');
  const file = join(dir, 'Caddyfile');
  copyFileSync(SHIPPED_CLUSTER_CADDYFILE, file);
  const edited = await run('sed', ['-i', command[1]!, file], { timeoutMs: 10_000 });
  assert.equal(edited.code, 0, edited.stderr);
  const text = readFileSync(file, 'utf8');
  assert.match(text, /^localhost \{\n\ttls internal\n/m);
  const adapted = await run(requireTool('caddy'), ['adapt', '--config', file, '--adapter', 'caddyfile', '--validate'], { env: isolatedCaddyEnv(dir), timeoutMs: 20_000 });
  assert.equal(adapted.code, 0, `caddy adapt failed:\n${adapted.stderr}`);
  const json = JSON.stringify(JSON.parse(adapted.stdout) as unknown);
  assert.match(json, /"host":\["localhost"\]/);
  assert.match(json, /"issuers":\[\{"module":"internal"\}\]/);
  assert.doesNotMatch(json, /"admin":\{"disabled":true/);
  assert.match(json, /"listen":\[":443"\]/);
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
