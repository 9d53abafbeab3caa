/** Peers over time: replacement, idle, slow readers, key revocation, shutdown (§2, §3). */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { CloseCode, decodePacket, encodeRelay, PacketType } from '../lib/protocol';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { closed, connectPeer, nextMessage, openCompat, startTestBeacon, withTimeout } from './helpers/harness';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const carol = makeIdentity(9999);

test('last writer wins, and the replaced socket\'s teardown keeps its successor', async (t) => {
  const tb = await startTestBeacon([alice, bob]);
  t.after(() => tb.close());
  const first = await connectPeer(tb.url, alice);
  const firstClosed = closed(first);
  const oldTornDown = withTimeout(once(tb.beacon, 'peerClosed'), 3_000, 'the old socket\'s teardown');
  const second = await connectPeer(tb.url, alice);
  assert.deepEqual(await firstClosed, { code: CloseCode.Replaced, reason: 'replaced by a newer connection' });
  const [event] = (await oldTornDown) as [{ nodeId: number; replaced: boolean }];
  assert.deepEqual({ nodeId: event.nodeId, replaced: event.replaced }, { nodeId: 7777, replaced: true });
  // The old socket is gone and its teardown ran: the new one must still be attached.
  assert.equal(tb.beacon.isConnected(7777), true);
  assert.equal(tb.beacon.peerCount(), 1);
  const b = await connectPeer(tb.url, bob);
  const got = nextMessage(second);
  b.send(encodeRelay(8888, 7777, Buffer.from('to the new socket')));
  const packet = decodePacket((await got).data);
  assert.equal(packet?.type === PacketType.RelayDeliver && packet.payload.toString(), 'to the new socket');
  assert.equal(tb.beacon.metrics().stats.replacedPeers, 1);
  second.close(); b.close();
});

test('a peer that answers no ping is disconnected after the idle timeout and counted', async (t) => {
  const tb = await startTestBeacon([alice, bob], { idleTimeoutMs: 300 });
  t.after(() => tb.close());
  const silent = await connectPeer(tb.url, alice, { autoPong: false });
  const lively = await connectPeer(tb.url, bob); // answers pings automatically
  let pings = 0;
  silent.on('ping', () => { pings++; });
  const started = Date.now();
  assert.deepEqual(await closed(silent, 3_000), { code: CloseCode.GoingAway, reason: 'idle timeout' });
  assert.ok(Date.now() - started >= 250, 'disconnected before the idle timeout');
  assert.ok(pings >= 1, 'the beacon pinged the idle peer before giving up');
  assert.equal(tb.beacon.metrics().stats.idleDisconnects, 1);
  // Answering pings is activity: the other peer outlived the timeout.
  assert.equal(tb.beacon.isConnected(8888), true);
  lively.close();
});

test('a slow reader\'s frames are dropped and counted; other peers are not stalled', async (t) => {
  const sendBufferBytes = 64 * 1024;
  const tb = await startTestBeacon([alice, bob, carol], { sendBufferBytes });
  t.after(() => tb.close());
  const sender = await connectPeer(tb.url, alice);
  const slow = await connectPeer(tb.url, bob);
  const fast = await connectPeer(tb.url, carol);
  // Bob stops reading: the kernel buffers fill, then the beacon's.
  (slow as unknown as { _socket: Socket })._socket.pause();
  // 16 MB to the slow reader (more than the loopback socket buffers hold),
  // in rounds that wait for the fast reader, so only Bob is slow.
  const rounds = 40;
  const perRound = 50;
  const payload = Buffer.alloc(8_000, 1);
  let received = 0;
  let roundDone: (() => void) | undefined;
  fast.on('message', () => { if (++received % perRound === 0) roundDone?.(); });
  for (let round = 0; round < rounds; round++) {
    const arrived = new Promise<void>((resolve) => { roundDone = resolve; });
    for (let i = 0; i < perRound; i++) {
      sender.send(encodeRelay(7777, 8888, payload));
      sender.send(encodeRelay(7777, 9999, payload));
    }
    await withTimeout(arrived, 5_000, `round ${round} at the fast reader`);
  }
  const frames = rounds * perRound;
  assert.equal(received, frames);
  const { stats } = tb.beacon.metrics();
  assert.ok(stats.dropped.send_buffer_full > 0, 'frames to the slow reader were dropped');
  assert.equal(stats.relay.wss, frames * 2);
  assert.equal(stats.framesOut + stats.dropped.send_buffer_full, frames * 2);
  sender.close(); slow.terminate(); fast.close();
});

test('a keys file change disconnects peers whose key was removed or changed, and only them', async (t) => {
  const tb = await startTestBeacon([alice, bob, carol]);
  t.after(() => tb.close());
  const a = await connectPeer(tb.url, alice);
  const b = await connectPeer(tb.url, bob);
  const c = await connectPeer(tb.url, carol);
  const bobClosed = closed(b);
  const carolClosed = closed(c);
  const reloaded = withTimeout(once(tb.beacon, 'keysReloaded'), 3_000, 'the reload');
  // Bob removed, Carol's key replaced, Alice unchanged.
  writeFileSync(tb.keysPath, keysFileJson([alice, makeIdentity(9999)]));
  const [revoked] = (await reloaded) as [number];
  assert.equal(revoked, 2);
  assert.deepEqual(await bobClosed, { code: CloseCode.PolicyViolation, reason: 'key revoked' });
  assert.deepEqual(await carolClosed, { code: CloseCode.PolicyViolation, reason: 'key revoked' });
  assert.equal(tb.beacon.isConnected(7777), true);
  assert.equal(tb.beacon.metrics().stats.revokedPeers, 2);
  a.close();
});

test('an invalid keys file on reload keeps the old keys and every peer', async (t) => {
  const tb = await startTestBeacon([alice]);
  t.after(() => tb.close());
  const a = await connectPeer(tb.url, alice);
  const failed = withTimeout(once(tb.beacon, 'keysReloadFailed'), 3_000, 'the failed reload');
  writeFileSync(tb.keysPath, '{"7777": "not a key"}');
  await failed;
  assert.equal(tb.beacon.isConnected(7777), true);
  assert.equal(tb.beacon.metrics().stats.keysReloadsFailed, 1);
  (await connectPeer(tb.url, alice)).close(); // the old key still authenticates
  a.close();
});

test('graceful shutdown: a restarting notice, then 1001; /health turns 503 and upgrades are refused', async (t) => {
  const tb = await startTestBeacon([alice, bob], { shutdownGraceMs: 2_000, restartDelayMs: 1_500, restartWindowMs: 4_000 });
  const a = await connectPeer(tb.url, alice);
  const notice = nextMessage(a);
  const b = await connectPeer(tb.url, bob);
  assert.equal((await fetch(`${tb.httpBase}/health`)).status, 200);
  // Bob stops reading, so he cannot acknowledge the close: the beacon waits for him.
  const bobSocket = (b as unknown as { _socket: Socket })._socket;
  bobSocket.pause();
  const aliceClosed = closed(a);
  const closing = tb.beacon.close();
  t.after(() => closing);
  const { data, isBinary } = await notice;
  assert.equal(isBinary, false);
  assert.deepEqual(JSON.parse(data.toString()), { type: 'restarting', reconnect_in_ms: 1_500, try_for_ms: 4_000 });
  assert.deepEqual(await aliceClosed, { code: CloseCode.GoingAway, reason: 'shutting down' });
  const health = await fetch(`${tb.httpBase}/health`);
  assert.equal(health.status, 503);
  const refused = await openCompat(tb.url).then(() => 'accepted', (err: Error) => err.message);
  assert.match(refused, /503/);
  assert.equal(tb.beacon.metrics().stats.refused.shutting_down, 1);
  const bobClosed = closed(b);
  bobSocket.resume();
  assert.equal((await bobClosed).code, CloseCode.GoingAway);
  await withTimeout(closing, 3_000, 'close() to finish');
});
