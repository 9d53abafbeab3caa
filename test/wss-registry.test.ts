/** The handshake with keys from a real (test) Pilot registry over TCP (§4). */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { CloseCode, authReplyMessage, encodeRelay } from '../lib/protocol';
import { startFakeRegistry, closedPort } from './helpers/fake-registry';
import { keysFileJson, makeIdentity, sign } from './helpers/identity';
import { closed, connectPeer, eventually, nextMessage, openCompat, startTestBeacon, withTimeout } from './helpers/harness';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);

test('a node registered only in the registry authenticates; the second handshake is a cache hit', async (t) => {
  const registry = await startFakeRegistry(new Map([[7777, alice.publicKeyB64]]));
  t.after(() => registry.stop());
  const tb = await startTestBeacon([bob], { registry: { host: '127.0.0.1', port: registry.port } });
  t.after(() => tb.close());
  (await connectPeer(tb.url, alice)).close();
  (await connectPeer(tb.url, alice)).close();
  assert.equal(registry.requestsFor(7777), 1);
  const { stats } = tb.beacon.metrics();
  assert.equal(stats.keyCacheHits, 1);
  assert.equal(stats.registryLookups.found, 1);
  // Bob is in the keys file, which is asked first: the registry never hears of him.
  (await connectPeer(tb.url, bob)).close();
  assert.equal(registry.requestsFor(8888), 0);
});

test('a registry that is down fails the handshake cleanly within the auth timeout', async (t) => {
  const tb = await startTestBeacon([bob], { registry: { host: '127.0.0.1', port: await closedPort() }, authTimeoutMs: 1_000 });
  t.after(() => tb.close());
  const { ws, nonce } = await openCompat(tb.url);
  const started = Date.now();
  ws.send(authReplyMessage({ node_id: 7777, public_key: alice.publicKeyB64, sig: sign(alice, `compat_auth:7777:${nonce}`) }));
  assert.deepEqual(await closed(ws), { code: CloseCode.PolicyViolation, reason: 'auth failed' });
  assert.ok(Date.now() - started < 1_500, 'the failure took longer than the auth timeout');
  assert.equal(tb.beacon.metrics().stats.authFailed.registry_unavailable, 1);
});

test('a registry that never answers stalls neither other handshakes nor relays', async (t) => {
  const registry = await startFakeRegistry(new Map([[7777, alice.publicKeyB64]]));
  registry.neverAnswer = true;
  t.after(() => registry.stop());
  const carol = makeIdentity(9999);
  const tb = await startTestBeacon([bob, carol], { registry: { host: '127.0.0.1', port: registry.port }, authTimeoutMs: 800 });
  t.after(() => tb.close());
  const b = await connectPeer(tb.url, bob);
  const { ws, nonce } = await openCompat(tb.url);
  const aliceClosed = closed(ws);
  ws.send(authReplyMessage({ node_id: 7777, public_key: alice.publicKeyB64, sig: sign(alice, `compat_auth:7777:${nonce}`) }));
  await eventually(() => registry.requestsFor(7777) === 1, 3_000, 'the registry request');
  // While Alice's lookup hangs, Carol authenticates and relays to Bob.
  const c = await connectPeer(tb.url, carol);
  const got = nextMessage(b);
  c.send(encodeRelay(9999, 8888, Buffer.from('not stalled')));
  assert.equal((await got).data.subarray(5).toString(), 'not stalled');
  assert.equal((await aliceClosed).code, CloseCode.PolicyViolation);
  assert.equal(tb.beacon.metrics().stats.authFailed.registry_unavailable, 1);
  b.close(); c.close();
});

test('binary frames sent while the key is being looked up are dropped and never relayed', async (t) => {
  const registry = await startFakeRegistry(new Map([[7777, alice.publicKeyB64]]));
  registry.delayMs = 200;
  t.after(() => registry.stop());
  const tb = await startTestBeacon([bob], { registry: { host: '127.0.0.1', port: registry.port } });
  t.after(() => tb.close());
  const b = await connectPeer(tb.url, bob);
  const { ws, nonce } = await openCompat(tb.url);
  const authOk = nextMessage(ws);
  ws.send(authReplyMessage({ node_id: 7777, public_key: alice.publicKeyB64, sig: sign(alice, `compat_auth:7777:${nonce}`) }));
  ws.send(encodeRelay(7777, 8888, Buffer.from('too early')));
  await eventually(() => tb.beacon.metrics().stats.dropped.unauthenticated === 1, 3_000, 'the early frame to be dropped');
  assert.equal((await authOk).data.toString(), '{"type":"auth_ok"}');
  // After auth_ok a frame goes through; the early one never arrives before it.
  const got = nextMessage(b);
  ws.send(encodeRelay(7777, 8888, Buffer.from('in time')));
  assert.equal((await withTimeout(got, 3_000, 'the relay')).data.subarray(5).toString(), 'in time');
  assert.equal(tb.beacon.metrics().stats.relay.wss, 1);
  ws.close(); b.close();
});

test('a keys file reload that lands while a handshake is verifying decides that handshake', async (t) => {
  // Alice's key comes from a slow registry; before it answers, the keys
  // file is reloaded with another key for her node. The file wins, so the
  // registry key she signed with no longer authenticates her.
  const registry = await startFakeRegistry(new Map([[7777, alice.publicKeyB64]]));
  registry.delayMs = 300;
  t.after(() => registry.stop());
  const tb = await startTestBeacon([bob], { registry: { host: '127.0.0.1', port: registry.port } });
  t.after(() => tb.close());
  const { ws, nonce } = await openCompat(tb.url);
  const aliceClosed = closed(ws);
  ws.send(authReplyMessage({ node_id: 7777, public_key: alice.publicKeyB64, sig: sign(alice, `compat_auth:7777:${nonce}`) }));
  await eventually(() => registry.requestsFor(7777) === 1, 3_000, 'the registry request');
  const reloaded = withTimeout(once(tb.beacon, 'keysReloaded'), 3_000, 'the reload');
  writeFileSync(tb.keysPath, keysFileJson([bob, makeIdentity(7777)]));
  await reloaded;
  assert.deepEqual(await aliceClosed, { code: CloseCode.PolicyViolation, reason: 'auth failed' });
  assert.equal(tb.beacon.isConnected(7777), false);
  assert.equal(tb.beacon.metrics().stats.authFailed.key_revoked, 1);
  assert.equal(tb.beacon.metrics().stats.authOk, 0);
});

test('a stranger answering just before its deadline cannot fail the next daemon\'s registry lookup', async (t) => {
  // The attack: an auth_reply for an unknown node shortly before the
  // stranger's deadline, against a registry slower than that, used to time
  // out the shared registry connection under a real daemon's lookup.
  // The margins leave room for a busy machine: the stranger's reply reaches
  // the beacon MARGIN_MS before its deadline (30 ms once, and a loaded
  // machine delivered it after the deadline: no lookup, nothing to attack);
  // its lookup gives up about MARGIN_MS later, still well before the
  // registry answers it (REGISTRY_DELAY_MS); the daemon's, queued behind it
  // on the same connection, is answered at twice that, well within its own.
  const MARGIN_MS = 600;
  const REGISTRY_DELAY_MS = 900;
  const authTimeoutMs = 3_000;
  const registry = await startFakeRegistry(new Map([[7777, alice.publicKeyB64]]));
  registry.delayMs = REGISTRY_DELAY_MS;
  t.after(() => registry.stop());
  const tb = await startTestBeacon([bob], { registry: { host: '127.0.0.1', port: registry.port }, authTimeoutMs });
  t.after(() => tb.close());
  const stranger = await openCompat(tb.url);
  const openedAt = Date.now();
  const strangerClosed = closed(stranger.ws);
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, openedAt + authTimeoutMs - MARGIN_MS - Date.now())));
  const daemon = await openCompat(tb.url); // its own deadline is a whole auth timeout away
  // Both replies reach the beacon together, the stranger's first; their lookups share the registry connection.
  stranger.ws.send(authReplyMessage({ node_id: 4242, public_key: bob.publicKeyB64, sig: sign(bob, `compat_auth:4242:${stranger.nonce}`) }));
  const answer = nextMessage(daemon.ws, authTimeoutMs);
  daemon.ws.send(authReplyMessage({ node_id: 7777, public_key: alice.publicKeyB64, sig: sign(alice, `compat_auth:7777:${daemon.nonce}`) }));
  assert.equal((await answer).data.toString(), '{"type":"auth_ok"}');
  assert.equal(tb.beacon.isConnected(7777), true);
  assert.equal((await strangerClosed).code, CloseCode.PolicyViolation);
  const { stats } = tb.beacon.metrics();
  // The stranger's reply arrived in time and its lookup gave up at its own deadline; the daemon's never does.
  assert.equal(stats.authFailed.timeout, 0, 'the stranger\'s reply reached the beacon after its deadline: the attack was not tried');
  assert.equal(stats.authFailed.registry_unavailable, 1, 'only the stranger\'s own lookup gives up');
  assert.equal(registry.connections, 1);
  // The stranger's late answer still filled the (negative) cache.
  await eventually(() => tb.beacon.metrics().stats.registryLookups.unknown === 1, 3_000, 'the late answer');
  daemon.ws.close();
});
