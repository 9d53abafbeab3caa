/** CompatClient against the real beacon: handshake, relay both ways, refusals, fail-fast sends. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import http from 'node:http';
import { after, before, test } from 'node:test';
import {
  AuthFailedError, CompatClient, ConnectError, NotConnectedError, PacketType, encodeRelay, type Packet,
} from '../lib/client';
import { encodeRelayDeliver } from '../lib/protocol';
import { nextEvent } from './helpers/client-events';
import { openCompat, startTestBeacon, type TestBeacon } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const stranger = makeIdentity(4242); // never registered
let tb: TestBeacon;
const cleanups: Array<() => unknown> = [];

before(async () => { tb = await startTestBeacon([alice, bob]); });
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await tb.close();
});

function client(id: TestIdentity, url = tb.url, extra: Partial<ConstructorParameters<typeof CompatClient>[0]> = {}): CompatClient {
  const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ...extra });
  cleanups.push(() => c.close());
  return c;
}

function nextPacket(c: CompatClient, ms = 3_000): Promise<{ packet: Packet; raw: Buffer }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.off('packet', on); reject(new Error(`no packet within ${ms} ms`)); }, ms);
    const on = (packet: Packet, raw: Buffer) => { clearTimeout(timer); c.off('packet', on); resolve({ packet, raw: Buffer.from(raw) }); };
    c.on('packet', on);
  });
}

test('two clients authenticate and relay both ways', async () => {
  const a = client(alice);
  const b = client(bob);
  const aConnected = nextEvent(a, 'connected');
  await Promise.all([a.connect({ failFast: true, timeoutMs: 3_000 }), b.connect({ failFast: true, timeoutMs: 3_000 })]);
  assert.deepEqual(await aConnected, { attempt: 1, url: tb.url, nodeId: 7777 });
  assert.equal(a.state, 'connected');
  assert.ok(tb.beacon.isConnected(7777) && tb.beacon.isConnected(8888));

  const atBob = nextPacket(b);
  a.relay(8888, 'hello bob');
  const { packet, raw } = await atBob;
  assert.deepEqual(packet.type === PacketType.RelayDeliver && [packet.sender, packet.payload.toString()], [7777, 'hello bob']);
  assert.deepEqual(raw, encodeRelayDeliver(7777, Buffer.from('hello bob')), 'the raw message comes along');

  const atAlice = nextPacket(a);
  b.relay(7777, Buffer.from([0, 1, 2, 255]));
  const back = (await atAlice).packet;
  assert.deepEqual(back.type === PacketType.RelayDeliver && [back.sender, [...back.payload]], [8888, [0, 1, 2, 255]]);

  const seen = await a.discover();
  assert.equal(seen.ip, '127.0.0.1');
  assert.ok(seen.port > 0 && seen.port !== tb.beacon.httpAddress.port, `observed port ${seen.port}`);

  const disconnected = nextEvent(a, 'disconnected');
  await a.close();
  assert.deepEqual(await disconnected, { code: 1000, reason: 'closed by the client' });
  assert.equal(a.state, 'closed');
  await b.close();
});

test('send, relay and discover fail at once with ENOTCONNECTED when not connected', async () => {
  const c = client(alice);
  assert.throws(() => c.send(encodeRelay(7777, 8888, Buffer.from('x'))), (err: NotConnectedError) => err instanceof NotConnectedError && err.code === 'ENOTCONNECTED');
  assert.throws(() => c.relay(8888, 'x'), { code: 'ENOTCONNECTED' });
  await assert.rejects(c.discover(), { code: 'ENOTCONNECTED' });
  c.start();
  assert.equal(c.state, 'connecting');
  assert.throws(() => c.relay(8888, 'x'), { code: 'ENOTCONNECTED' }, 'still connecting');
  await c.close();
  assert.throws(() => c.relay(8888, 'x'), { code: 'ENOTCONNECTED' });
  await assert.rejects(c.connect(), { code: 'ECLIENTCLOSED' });
});

test('a packet over 64 KiB is refused before it reaches the beacon', async () => {
  const c = client(alice);
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  assert.throws(() => c.relay(8888, Buffer.alloc(64 * 1024)), { code: 'ETOOBIG' });
  assert.equal(c.state, 'connected');
  await c.close();
});

test('an unregistered node is told auth failed, with the registered-key hint', async () => {
  const c = client(stranger);
  const err = await c.connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof AuthFailedError, `got ${String(err)}`);
  assert.equal(err.code, 'EAUTHFAILED');
  assert.equal(err.details.closeCode, 1008);
  assert.match(err.message, /the beacon has no key for node 4242, or another one/);
  assert.ok(err.message.includes(`its public key is ${stranger.publicKeyB64}`), err.message);
  assert.ok(err.message.includes(`beacon keys add --keys FILE --node-id 4242 --public-key ${stranger.publicKeyB64}`), err.message);
  assert.equal(c.state, 'closed', 'failFast closes the client');
});

test('auth failures are reported and retried at the cap, not in a loop', async () => {
  const c = client(stranger, tb.url, { initialDelayMs: 10, maxDelayMs: 60_000 });
  const authFailed = nextEvent(c, 'authFailed');
  const reconnecting = nextEvent(c, 'reconnecting');
  c.start();
  assert.equal((await authFailed).code, 'EAUTHFAILED');
  const r = await reconnecting;
  assert.equal(r.cause, 'auth_failed');
  assert.ok(r.delayMs >= 30_000 && r.delayMs <= 60_000, `waits at the cap, got ${r.delayMs}`);
  assert.equal(c.connectAttempts, 1);
  assert.equal(c.state, 'waiting');
  await c.close();
});

test('HTTP 503 at capacity and 429 per-IP are told apart', async () => {
  const full = await startTestBeacon([alice, bob], { maxPeers: 1 });
  cleanups.push(() => full.close());
  const a = client(alice, full.url);
  await a.connect({ failFast: true, timeoutMs: 3_000 });
  const err503 = await client(bob, full.url).connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err503 instanceof ConnectError);
  assert.equal(err503.code, 'EATCAPACITY');
  assert.equal(err503.details.status, 503);
  assert.match(err503.message, /HTTP 503 \(max_peers\)/);

  const perIp = await startTestBeacon([alice, bob], { maxPerIp: 1 });
  cleanups.push(() => perIp.close());
  const { ws } = await openCompat(perIp.url);
  cleanups.push(() => ws.terminate());
  const err429 = await client(bob, perIp.url).connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err429 instanceof ConnectError);
  assert.equal(err429.code, 'ETOOMANYCONNS');
  assert.match(err429.message, /HTTP 429: too many connections from this address/);
});

test('a server that never answers times out within connectTimeoutMs; a closed port is ECONNREFUSED', async () => {
  const silent = net.createServer((s) => { cleanups.push(() => s.destroy()); });
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  cleanups.push(() => new Promise((resolve) => silent.close(resolve)));
  const { port } = silent.address() as net.AddressInfo;
  const started = Date.now();
  const timedOut = await client(alice, `ws://127.0.0.1:${port}/v1/compat`, { connectTimeoutMs: 200 })
    .connect({ failFast: true }).then(() => undefined, (e: unknown) => e);
  assert.ok(timedOut instanceof ConnectError);
  assert.equal(timedOut.code, 'ETIMEDOUT');
  assert.match(timedOut.message, /timed out after 200 ms .*waiting for the WebSocket upgrade/);
  assert.ok(Date.now() - started < 2_000);

  const freePort = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
  });
  const refused = await client(alice, `ws://127.0.0.1:${freePort}/v1/compat`).connect({ failFast: true }).then(() => undefined, (e: unknown) => e);
  assert.ok(refused instanceof ConnectError);
  assert.equal(refused.code, 'ECONNREFUSED');
  assert.match(refused.message, /nothing accepts connections at 127\.0\.0\.1:\d+/);
});

test('a wrong path is a clear 404', async () => {
  const url = tb.url.replace('/v1/compat', '/v2/compat');
  const err = await client(alice, url).connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConnectError);
  assert.equal(err.code, 'EHTTP');
  assert.match(err.message, /HTTP 404 for \/v2\/compat: the beacon's compat endpoint is \/v1\/compat/);
});

test('a 404 for /v1/compat itself says something other than a beacon answered', async (t) => {
  const other = http.createServer((_req, res) => { res.statusCode = 404; res.end('not found'); });
  other.listen(0, '127.0.0.1');
  await once(other, 'listening');
  t.after(() => { other.closeAllConnections(); other.close(); });
  const url = `ws://127.0.0.1:${(other.address() as AddressInfo).port}/v1/compat`;
  const err = await client(alice, url).connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConnectError);
  assert.equal(err.code, 'EHTTP');
  assert.match(err.message, /HTTP 404 for \/v1\/compat: something other than a beacon answered/);
  assert.doesNotMatch(err.message, /compat endpoint is/);
});

test('bad options are refused when the client is made', () => {
  assert.throws(() => new CompatClient({ url: 'http://127.0.0.1:1/v1/compat', nodeId: 1, identity: alice }), { code: 'EBADURL' });
  assert.throws(() => new CompatClient({ url: tb.url, nodeId: 0, identity: alice }), /nodeId must be a node ID/);
  assert.throws(() => new CompatClient({ url: tb.url, nodeId: 1, identity: alice, initialDelayMs: 100, maxDelayMs: 10 }), /must not exceed maxDelayMs/);
  assert.throws(() => new CompatClient({ url: tb.url, nodeId: 1, identity: alice, pingIntervalMs: 0 }), /pingIntervalMs must be a positive number/);
});

test('an upgrade request that cannot even be made is a failed attempt, not a crash', async () => {
  const c = client(alice, tb.url, { headers: { 'bad header name': 'x' } });
  const err = await c.connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.equal((err as ConnectError).code, 'ENETWORK');
  assert.match((err as Error).message, /cannot open a WebSocket/);
  assert.equal(c.state, 'closed');
});
