/** Bounds on what a stranger can hold: capacity, handshakes, per-IP sockets, message size (§2, §3). */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { test } from 'node:test';
import WebSocket from 'ws';
import { COMPAT_SUBPROTOCOL, CloseCode, MAX_MESSAGE_BYTES, encodeRelay } from '../lib/protocol';
import { makeIdentity } from './helpers/identity';
import { closed, connectPeer, eventually, nextMessage, openCompat, startTestBeacon, withTimeout } from './helpers/harness';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);

/** Resolves with the HTTP status of a refused upgrade; rejects if it is accepted. */
async function refusedStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
  const ws = new WebSocket(url, [COMPAT_SUBPROTOCOL], { headers });
  ws.on('error', () => {});
  const [, res] = (await withTimeout(once(ws, 'unexpected-response'), 3_000, 'the refusal')) as [unknown, IncomingMessage];
  res.resume();
  return res.statusCode ?? 0;
}

test('--max-peers: an upgrade beyond the limit gets HTTP 503 before any WebSocket work', async (t) => {
  const tb = await startTestBeacon([alice, bob], { maxPeers: 1 });
  t.after(() => tb.close());
  const a = await connectPeer(tb.url, alice);
  assert.equal(await refusedStatus(tb.url), 503);
  const { stats } = tb.beacon.metrics();
  assert.equal(stats.refused.max_peers, 1);
  assert.equal(stats.upgradesFailed, 1);
  // Room again once the peer leaves.
  a.close();
  await eventually(() => tb.beacon.peerCount() === 0);
  (await connectPeer(tb.url, bob)).close();
});

test('--max-handshakes: sockets still in the handshake are capped', async (t) => {
  const tb = await startTestBeacon([alice], { maxHandshakes: 2 });
  t.after(() => tb.close());
  const first = await openCompat(tb.url);
  const second = await openCompat(tb.url);
  assert.equal(await refusedStatus(tb.url), 503);
  assert.equal(tb.beacon.metrics().stats.refused.max_handshakes, 1);
  assert.equal(tb.beacon.metrics().handshakes, 2);
  // A finished handshake frees its slot.
  first.ws.close();
  await eventually(() => tb.beacon.metrics().handshakes === 1);
  const third = await connectPeer(tb.url, alice);
  third.close(); second.ws.close();
});

test('--max-per-ip: concurrent sockets from one address are capped with HTTP 429', async (t) => {
  const tb = await startTestBeacon([alice], { maxPerIp: 2 });
  t.after(() => tb.close());
  const a = await openCompat(tb.url);
  const b = await openCompat(tb.url);
  assert.equal(await refusedStatus(tb.url), 429);
  assert.equal(tb.beacon.metrics().stats.refused.max_per_ip, 1);
  // Behind a trusted proxy (loopback by default) the forwarded address counts.
  const proxied = await openCompat(tb.url, { headers: { 'x-forwarded-for': '198.51.100.7' } });
  proxied.ws.close(); a.ws.close(); b.ws.close();
});

test('an authenticated peer gives back its handshake slot at once and its per-IP slot when it closes', async (t) => {
  const tb = await startTestBeacon([alice, bob], { maxHandshakes: 1, maxPerIp: 2 });
  t.after(() => tb.close());
  const a = await connectPeer(tb.url, alice);
  assert.equal(tb.beacon.metrics().handshakes, 0);
  const b = await connectPeer(tb.url, bob); // the one handshake slot was free again
  assert.equal(await refusedStatus(tb.url), 429); // both per-IP slots are held
  a.close();
  await eventually(() => !tb.beacon.isConnected(7777));
  const again = await connectPeer(tb.url, alice); // Alice's slot came back when her socket closed
  assert.equal(tb.beacon.metrics().stats.refused.max_per_ip, 1);
  assert.equal(tb.beacon.metrics().stats.refused.max_handshakes, 0);
  again.close(); b.close();
});

test('X-Forwarded-For from an untrusted address is ignored by the per-IP cap', async (t) => {
  const tb = await startTestBeacon([alice], { maxPerIp: 1, trustProxy: [] });
  t.after(() => tb.close());
  const a = await openCompat(tb.url, { headers: { 'x-forwarded-for': '198.51.100.7' } });
  assert.equal(await refusedStatus(tb.url, { 'x-forwarded-for': '198.51.100.8' }), 429);
  a.ws.close();
});

test('a message over 64 KiB before auth is refused at the handshake budget (4 KiB), with 1008, and counted', async (t) => {
  const tb = await startTestBeacon([alice]);
  t.after(() => tb.close());
  const { ws } = await openCompat(tb.url);
  const done = closed(ws);
  ws.send('x'.repeat(MAX_MESSAGE_BYTES + 1));
  assert.equal((await done).code, CloseCode.PolicyViolation);
  await eventually(() => tb.beacon.metrics().stats.authFailed.handshake_budget === 1);
});

test('after auth, 64 KiB exactly is accepted and one byte more disconnects with 1009', async (t) => {
  const tb = await startTestBeacon([alice, bob]);
  t.after(() => tb.close());
  const a = await connectPeer(tb.url, alice);
  const b = await connectPeer(tb.url, bob);
  const payload = Buffer.alloc(MAX_MESSAGE_BYTES - 9, 0x42);
  const got = nextMessage(b);
  a.send(encodeRelay(7777, 8888, payload));
  assert.equal((await got).data.length, 5 + payload.length);
  const done = closed(a);
  a.send(encodeRelay(7777, 8888, Buffer.concat([payload, Buffer.from([1])])));
  assert.equal((await done).code, CloseCode.MessageTooBig);
  await eventually(() => tb.beacon.metrics().stats.dropped.oversized === 1 && !tb.beacon.isConnected(7777));
  assert.equal(tb.beacon.isConnected(8888), true);
  b.close();
});
