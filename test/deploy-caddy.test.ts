/**
 * The shipped Caddyfile in front of a real beacon, through a real Caddy:
 * wss:// with the client library, authentication, a relay between two
 * clients, the client's real address reaching the beacon, and nothing but
 * /v1/compat and /health reachable (no /metrics).
 *
 * Needs Debian's caddy (.ci/install-deps); fails, never skips, without it.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { CompatClient, PacketType, decodePacket, encodeDiscover, encodeRelay, type Packet } from '../lib/client';
import { COMPAT_PATH } from '../lib/protocol';
import { adaptShippedCaddyfile, isolatedCaddyEnv, SHIPPED_CADDYFILE, startCaddy, type RunningCaddy } from './helpers/caddy';
import { get, requireTool, run, tempDir } from './helpers/deploy';
import { connectPeer, nextMessage, startTestBeacon, withTimeout, type TestBeacon } from './helpers/harness';
import { makeIdentity } from './helpers/identity';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
/** Bob's source address: a loopback address that is not Caddy's 127.0.0.1. */
const BOB_ADDRESS = '127.0.0.7';

let tb: TestBeacon;
let caddy: RunningCaddy | undefined;
const cleanups: Array<() => unknown> = [];

before(async () => {
  requireTool('caddy');
  // Default trust-proxy (loopback): exactly what a production beacon runs with.
  tb = await startTestBeacon([alice, bob]);
  assert.deepEqual(tb.beacon.config.trustProxy, ['loopback']);
  caddy = await startCaddy(adaptShippedCaddyfile(tb.beacon.httpAddress.port));
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await caddy?.stop();
  await tb?.close();
});

function wssUrl(): string {
  return `${caddy!.base.replace(/^https:/, 'wss:')}${COMPAT_PATH}`;
}

/** Bob, attached through Caddy from 127.0.0.7 with a plain ws client. */
async function connectBob(headers: Record<string, string> = {}): Promise<WebSocket> {
  const ws = await connectPeer(wssUrl(), bob, { ca: caddy!.rootCa, localAddress: BOB_ADDRESS, headers });
  cleanups.push(() => ws.terminate());
  return ws;
}

/** Sends Discover on `ws` and returns the address in the DiscoverReply. */
async function discover(ws: WebSocket, nodeId: number): Promise<{ ip: string; port: number }> {
  const reply = nextMessage(ws);
  ws.send(encodeDiscover(nodeId));
  const packet = decodePacket((await reply).data);
  assert.ok(packet?.type === PacketType.DiscoverReply, `expected DiscoverReply, got ${JSON.stringify(packet)}`);
  return packet.endpoint;
}

test('the shipped Caddyfile adapts as is: the domain from BEACON_DOMAIN (default beacon.example.com), :443, upstream 127.0.0.1:8443', async () => {
  const caddyBin = requireTool('caddy');
  const dir = tempDir('caddy-adapt');
  const adapt = (extra: Record<string, string>) => run(caddyBin,
    ['adapt', '--config', SHIPPED_CADDYFILE, '--adapter', 'caddyfile', '--validate'],
    { env: isolatedCaddyEnv(dir, extra), timeoutMs: 20_000 });
  const shipped = await adapt({});
  assert.equal(shipped.code, 0, `caddy adapt failed:\n${shipped.stderr}`);
  const json = JSON.parse(shipped.stdout) as { apps: { http: { servers: Record<string, { listen: string[] }> } } };
  const servers = Object.values(json.apps.http.servers);
  assert.deepEqual(servers.map((s) => s.listen), [[':443']]);
  assert.match(shipped.stdout, /"host":\["beacon\.example\.com"\]/);
  assert.match(shipped.stdout, /"dial":"127\.0\.0\.1:8443"/);
  assert.match(shipped.stdout, /"path":\["\/v1\/compat","\/health"\]/);

  const custom = await adapt({ BEACON_DOMAIN: 'relay.example.org' });
  assert.equal(custom.code, 0, custom.stderr);
  assert.match(custom.stdout, /"host":\["relay\.example\.org"\]/);
  assert.doesNotMatch(custom.stdout, /beacon\.example\.com/);
});

test('the test adapts the shipped file only in its address, TLS issuer and upstream port', () => {
  const shipped = 'x\n{$BEACON_DOMAIN:beacon.example.com} {\n\treverse_proxy 127.0.0.1:8443\n}\n';
  const adapted = adaptShippedCaddyfile(45678, shipped);
  assert.match(adapted, /^\{\$BEACON_DOMAIN:beacon\.example\.com\} \{\n\tbind 127\.0\.0\.1\n\ttls internal$/m);
  assert.match(adapted, /reverse_proxy 127\.0\.0\.1:45678/);
  assert.doesNotMatch(adapted, /8443/);
  // A Caddyfile whose routes moved elsewhere is refused, not silently tested.
  assert.throws(() => adaptShippedCaddyfile(1, shipped.replace('8443', '9443')), /exactly once, found 0/);
  assert.throws(() => adaptShippedCaddyfile(1, shipped.replace('{$BEACON_DOMAIN:beacon.example.com}', 'beacon.example.com')), /exactly once, found 0/);
});

test('wss:// through Caddy: the client library authenticates with Caddy\'s CA, and a relay reaches a second client both ways', async () => {
  const client = new CompatClient({ url: wssUrl(), nodeId: alice.nodeId, identity: alice, ca: caddy!.rootCa, connectTimeoutMs: 5_000 });
  cleanups.push(() => client.close());
  await client.connect({ failFast: true, timeoutMs: 5_000 });
  const bobWs = await connectBob();
  assert.equal(tb.beacon.peerCount(), 2);

  const toBob = nextMessage(bobWs);
  client.relay(bob.nodeId, 'hello through caddy');
  const delivered = decodePacket((await toBob).data);
  assert.deepEqual(delivered && { ...delivered, payload: delivered.type === PacketType.RelayDeliver ? delivered.payload.toString() : undefined },
    { type: PacketType.RelayDeliver, sender: alice.nodeId, payload: 'hello through caddy' });

  const toAlice = withTimeout(new Promise<Packet>((resolve) => {
    client.on('packet', (packet) => { if (packet.type === PacketType.RelayDeliver) resolve(packet); });
  }), 3_000, 'the relay to Alice');
  bobWs.send(encodeRelay(bob.nodeId, alice.nodeId, Buffer.from('and back')));
  const back = await toAlice;
  assert.ok(back.type === PacketType.RelayDeliver);
  assert.equal(back.sender, bob.nodeId);
  assert.equal(back.payload.toString(), 'and back');
  assert.equal(tb.beacon.metrics().stats.relay.wss, 2);
});

test('the beacon sees the client\'s real address (from X-Forwarded-For by Caddy), not Caddy\'s', async () => {
  const ws = await connectBob();
  const seen = await discover(ws, bob.nodeId);
  assert.equal(seen.ip, BOB_ADDRESS, 'the beacon should see Bob\'s own address, not Caddy\'s 127.0.0.1');
  // Behind a proxy the client's port is unknown: 0, never Caddy's port.
  assert.equal(seen.port, 0);
});

test('a client cannot choose its address: Caddy does not pass on an X-Forwarded-For the client sent', async () => {
  const ws = await connectBob({ 'X-Forwarded-For': '203.0.113.9', Forwarded: 'for=203.0.113.9', 'X-Real-IP': '203.0.113.9' });
  const seen = await discover(ws, bob.nodeId);
  assert.equal(seen.ip, BOB_ADDRESS);
});

test('through Caddy /health answers 200 and /metrics (in any spelling) is refused; the beacon itself does serve /metrics', async () => {
  const { base, rootCa } = caddy!;
  const health = await get(base, '/health', { ca: rootCa });
  assert.equal(health.status, 200, health.body);
  assert.equal((JSON.parse(health.body) as { status: string }).status, 'ok');

  // Positive control: the beacon serves /metrics on its own port.
  const direct = await get(tb.httpBase, '/metrics');
  assert.equal(direct.status, 200);
  assert.match(direct.body, /^beacon_wss_peers /m);

  for (const path of ['/metrics', '/metrics/', '/METRICS', '/%6detrics', '//metrics', '/health/../metrics',
    '/v1/compat/../metrics', '/health/%2e%2e/metrics', '/v1/compat/x', '/', '/metrics?x=1']) {
    const answer = await get(base, path, { ca: rootCa });
    assert.ok(answer.status === 404 || answer.status === 403 || answer.status === 400,
      `GET ${path} through Caddy answered ${answer.status}, expected 404 (or 403/400)`);
    assert.doesNotMatch(answer.body, /beacon_/, `GET ${path} through Caddy leaked metrics`);
  }
});
