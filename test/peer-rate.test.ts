/**
 * One heavy sender (issue 12): a peer over --peer-rate/--peer-burst is
 * paused, not dropped or disconnected; it resumes; other peers keep moving;
 * a peer that reads more than its share of a turn yields. Real beacon, real
 * WebSocket clients on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type WebSocket from 'ws';
import { encodeRelay } from '../lib/protocol';
import { beaconFor, closed, connectPeer, eventually, nextMessage, withTimeout } from './helpers/harness';
import { makeIdentity } from './helpers/identity';

const alice = makeIdentity(101);
const bob = makeIdentity(102);
const carol = makeIdentity(103);
const dave = makeIdentity(104);
const ALL = [alice, bob, carol, dave];

const PAYLOAD = 1200;

/** Relay `count` frames alice -> bob, each carrying its sequence number. */
function sendFlood(from: WebSocket, fromId: number, toId: number, count: number): number {
  let bytes = 0;
  for (let seq = 0; seq < count; seq++) {
    const payload = Buffer.alloc(PAYLOAD);
    payload.writeUInt32BE(seq, 0);
    const frame = encodeRelay(fromId, toId, payload);
    from.send(frame);
    bytes += frame.length + 8; // a masked client frame of this size has an 8-byte header
  }
  return bytes;
}

/** Resolves once `ws` received `count` relays, checking they arrive complete and in order. */
function receiveInOrder(ws: WebSocket, count: number, ms: number): Promise<void> {
  let next = 0;
  return withTimeout(new Promise<void>((resolve, reject) => {
    ws.on('message', (data: Buffer) => {
      const seq = data.readUInt32BE(5); // RelayDeliver: type, sender, then the payload
      if (seq !== next || data.length !== 5 + PAYLOAD) reject(new Error(`frame ${seq} (${data.length} B) arrived when ${next} was due`));
      if (++next === count) resolve();
    });
  }), ms, `${count} relays in order`);
}

test('a peer over --peer-rate is paused, loses nothing, is held to its budget and resumes', async (t) => {
  const rate = 1024 * 1024;
  const burst = 128 * 1024;
  const tb = await beaconFor(t, ALL, { peerRateBytesPerSec: rate, peerBurstBytes: burst });
  const [a, b, c, d] = await Promise.all(ALL.map((id) => connectPeer(tb.url, id)));
  t.after(() => { for (const ws of [a, b, c, d]) ws.close(); });

  const count = 1_200; // ~1.4 MB: about 1.3 s at 1 MiB/s after the burst
  const delivered = receiveInOrder(b!, count, 20_000);
  const started = performance.now();
  const bytes = sendFlood(a!, alice.nodeId, bob.nodeId, count);

  // While alice waits, another pair still gets through.
  await eventually(() => tb.beacon.metrics().peersPaused === 1, 5_000, 'alice to be paused');
  c!.send(encodeRelay(carol.nodeId, dave.nodeId, Buffer.from('steady')));
  const steady = await nextMessage(d!);
  assert.equal(steady.data.subarray(5).toString(), 'steady');
  assert.equal(tb.beacon.metrics().peersPaused, 1, 'carol went through while alice was still paused');

  await delivered;
  const seconds = (performance.now() - started) / 1000;
  // Held to the budget: the beacon can have read at most the burst, the rate
  // over the time, and one read beyond them (the debt that triggers a pause).
  const readAtMost = burst + rate * seconds + 2 * 64 * 1024;
  assert.ok(bytes <= readAtMost, `${bytes} B relayed in ${seconds.toFixed(2)} s: more than the budget allows (${readAtMost.toFixed(0)})`);

  const { stats } = tb.beacon.metrics();
  assert.ok(stats.peerReadPauses >= 1, 'pauses are counted');
  assert.ok(stats.peerReadPausedMs > 0, 'paused time is counted');
  assert.equal(stats.dropped.send_buffer_full, 0);
  assert.equal(tb.beacon.isConnected(alice.nodeId), true, 'alice is still attached');

  // Resumed: once the bucket refills, alice is read as before.
  await eventually(() => tb.beacon.metrics().peersPaused === 0, 5_000, 'the pause to end');
  a!.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.alloc(PAYLOAD)));
  assert.equal((await nextMessage(b!)).data.length, 5 + PAYLOAD);
  // That frame may have spent the little the bucket had refilled and paused
  // alice again; she sends nothing more, so the gauge must come back to 0.
  await eventually(() => tb.beacon.metrics().peersPaused === 0, 5_000, 'the last pause to end');

  const text = await (await fetch(`${tb.httpBase}/metrics`)).text();
  assert.match(text, /^beacon_wss_read_pauses_total [1-9]/m);
  assert.match(text, /^beacon_wss_read_paused_seconds_total 0\.\d*[1-9]|^beacon_wss_read_paused_seconds_total [1-9]/m);
  assert.match(text, /^beacon_wss_peers_paused 0$/m);
});

test('a peer that reads more than its share of a turn yields to the others, and loses nothing', async (t) => {
  const tb = await beaconFor(t, ALL);
  const [a, b] = await Promise.all([alice, bob].map((id) => connectPeer(tb.url, id)));
  t.after(() => { a!.close(); b!.close(); });
  // 4 MB in one go: far more than one turn's share (64 KiB), within the default burst.
  const count = 3_000;
  const delivered = receiveInOrder(b!, count, 20_000);
  sendFlood(a!, alice.nodeId, bob.nodeId, count);
  await delivered;
  const { stats } = tb.beacon.metrics();
  assert.ok(stats.peerReadYields >= 1, `yields counted: ${stats.peerReadYields}`);
  assert.equal(stats.peerReadPauses, 0, 'within the default budget: never paused');
});

test('a paused peer being closed stays paced: it gets its 1001 at once, is read only within its budget, and the grace ends it', async (t) => {
  const rate = 64 * 1024;
  const graceMs = 1_000;
  const tb = await beaconFor(t, ALL, { peerRateBytesPerSec: rate, peerBurstBytes: 64 * 1024, shutdownGraceMs: graceMs });
  const [a, b] = await Promise.all([alice, bob].map((id) => connectPeer(tb.url, id)));
  t.after(() => { a!.terminate(); b!.terminate(); });
  sendFlood(a!, alice.nodeId, bob.nodeId, 2_000); // 2.4 MB: ~37 s at 64 KiB/s
  await eventually(() => tb.beacon.metrics().peersPaused === 1, 5_000, 'alice to be paused');
  const relayedBefore = tb.beacon.metrics().stats.relay.wss;
  const started = performance.now();
  const aliceClosed = closed(a!, 5_000);
  await tb.close();
  // The close frame is written at once, so alice learns why; her reply
  // waits behind the flood she sent, which is read no faster than before.
  assert.equal((await aliceClosed).code, 1001);
  assert.ok(performance.now() - started < graceMs + 1_000, 'the shutdown waited no longer than its grace');
  const { stats } = tb.beacon.metrics();
  assert.equal(stats.relay.wss, relayedBefore, 'nothing she sent after the close began was relayed');
  // Read while closing: at most the budget over the grace, a burst and two reads.
  const readAtMost = (rate * (graceMs / 1000) + 64 * 1024 + 2 * 64 * 1024) / (PAYLOAD + 9 + 8);
  t.diagnostic(`${stats.dropped.sender_closing} frames read while closing (bound ${readAtMost.toFixed(0)})`);
  assert.ok(stats.dropped.sender_closing <= readAtMost, `${stats.dropped.sender_closing} frames read from a closing peer (at most ${readAtMost.toFixed(0)})`);
  // The pause ends with the socket.
  await eventually(() => tb.beacon.metrics().peersPaused === 0, 3_000, 'the pause to end');
});

test('a peer paused for longer than --idle-timeout is busy, not idle', async (t) => {
  const tb = await beaconFor(t, ALL, { peerRateBytesPerSec: 100 * 1024, peerBurstBytes: 64 * 1024, idleTimeoutMs: 300 });
  const [a, b] = await Promise.all([alice, bob].map((id) => connectPeer(tb.url, id)));
  t.after(() => { a!.close(); b!.close(); });
  // Each pause lasts about a second at 100 KiB/s: longer than the idle timeout.
  const count = 250;
  const delivered = receiveInOrder(b!, count, 15_000);
  sendFlood(a!, alice.nodeId, bob.nodeId, count);
  await delivered;
  const { stats } = tb.beacon.metrics();
  assert.ok(stats.peerReadPauses >= 1);
  assert.ok(stats.peerReadPausedMs >= 300, `paused ${stats.peerReadPausedMs.toFixed(0)} ms in all`);
  assert.equal(stats.idleDisconnects, 0);
  assert.equal(tb.beacon.isConnected(alice.nodeId), true);
});
