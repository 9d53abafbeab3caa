/**
 * What one stranger, or one key, can make the beacon read and relay over
 * WebSocket (issue 19, items 7 to 10), each attack run against the real
 * beacon with a client that never stops on a close frame:
 * - a socket in its handshake streaming empty pongs is cut off at the
 *   handshake budget;
 * - tiny frames are bounded by --peer-frame-rate as large ones are by
 *   --peer-rate;
 * - reconnecting with one key, again and again, buys no budget: the budget
 *   is the node's, and a closing socket is read only within it;
 * - a replaced or revoked peer's frames are dropped and counted, not
 *   relayed.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { CloseCode, encodeRelay } from '../lib/protocol';
import { HANDSHAKE_MAX_FRAMES } from '../lib/wss/handshake';
import { beaconFor, connectPeer, eventually, withTimeout } from './helpers/harness';
import { HostileWs, OPCODE_BINARY, OPCODE_PONG, repeated } from './helpers/hostile-ws';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(501);
const bob = makeIdentity(502);

test('a socket in its handshake streaming empty pongs is cut off at the handshake budget: 1008, counted, long before the auth timeout', async (t) => {
  const tb = await beaconFor(t, [alice], { authTimeoutMs: 10_000 });
  const attacker = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => attacker.destroy());
  const started = performance.now();
  attacker.flood(repeated(attacker.frame(OPCODE_PONG, Buffer.alloc(0)), 10_000));
  await withTimeout(attacker.closedByBeacon, 5_000, 'the beacon to end the connection');
  assert.equal(attacker.closeCode, CloseCode.PolicyViolation);
  // Cut off at once, and the connection ended within the close grace: not at the auth timeout.
  assert.ok(performance.now() - started < 4_000, 'ended long before the auth timeout');
  const { stats, handshakes } = tb.beacon.metrics();
  assert.equal(stats.authFailed.handshake_budget, 1);
  assert.equal(handshakes, 0);
  // A daemon still gets in.
  (await connectPeer(tb.url, alice)).close();
});

test('a handshake within the budget passes: pings before the answer, and the answer itself', async (t) => {
  const tb = await beaconFor(t, [alice]);
  const client = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => client.destroy());
  for (let i = 0; i < HANDSHAKE_MAX_FRAMES - 1; i++) client.send(OPCODE_PONG, Buffer.alloc(0));
  await client.authenticate(alice);
  assert.equal(tb.beacon.isConnected(alice.nodeId), true);
  assert.equal(tb.beacon.metrics().stats.authFailed.handshake_budget, 0);
});

/** Counts `dest`'s RelayDelivers and their bytes. */
function counting(peer: WsPeer): { frames: number } {
  const counter = { frames: 0 };
  peer.ws.on('message', (_data, isBinary) => { if (isBinary) counter.frames++; });
  return counter;
}

test('--peer-frame-rate bounds a flood of 15-byte relays as --peer-rate bounds large ones: paused, nothing lost', async (t) => {
  const frameRate = 20_000;
  const burst = 256 * 1024;
  const rate = 32 * 1024 * 1024;
  const tb = await beaconFor(t, [alice, bob], { peerRateBytesPerSec: rate, peerBurstBytes: burst, peerFrameRate: frameRate });
  const a = await WsPeer.connect(tb.url, alice);
  const b = await WsPeer.connect(tb.url, bob);
  t.after(() => { a.close(); b.close(); });
  const received = counting(b);
  // 840 KB: a moment at --peer-rate, two seconds at --peer-frame-rate.
  const count = 40_000;
  const frame = encodeRelay(alice.nodeId, bob.nodeId, Buffer.alloc(6)); // 15 bytes
  const started = performance.now();
  for (let i = 0; i < count; i++) a.send(frame);
  await eventually(() => received.frames === count, 15_000, 'every frame to arrive');
  const seconds = (performance.now() - started) / 1000;
  // Each frame costs at least rate / frameRate bytes: the burst holds ~160
  // of them, and the read that ran past the budget at most a read's worth.
  const atMost = burst / (rate / frameRate) + frameRate * seconds + (64 * 1024) / (frame.length + 6);
  t.diagnostic(`${count} frames in ${seconds.toFixed(2)} s (bound ${atMost.toFixed(0)})`);
  assert.ok(count <= atMost, `${count} frames in ${seconds.toFixed(2)} s: more than --peer-frame-rate allows (${atMost.toFixed(0)})`);
  const { stats } = tb.beacon.metrics();
  assert.ok(stats.peerReadPauses >= 1);
  assert.equal(stats.dropped.send_buffer_full, 0);
});

test('reconnecting with one key buys no budget: the node\'s sockets, closing ones too, are read only within one budget, and closing ones relay nothing', async (t) => {
  const rate = 256 * 1024;
  const burst = 512 * 1024;
  const tb = await beaconFor(t, [alice, bob], { peerRateBytesPerSec: rate, peerBurstBytes: burst });
  const b = await WsPeer.connect(tb.url, bob);
  t.after(() => b.close());
  const attackers: HostileWs[] = [];
  t.after(() => { for (const attacker of attackers) attacker.destroy(); });
  const frame = encodeRelay(alice.nodeId, bob.nodeId, Buffer.alloc(1200));
  const started = performance.now();
  // A new connection for alice every 250 ms, every one flooding until the
  // beacon ends it, close frame or not; every other time the previous one
  // is dropped first (leaving), else replaced while it still floods.
  for (let i = 0; i < 8; i++) {
    if (i % 2 === 1) attackers.at(-1)!.destroy();
    const attacker = await HostileWs.open(tb.beacon.httpAddress.port);
    attackers.push(attacker);
    await attacker.authenticate(alice);
    attacker.flood(repeated(attacker.frame(OPCODE_BINARY, frame), 32));
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const seconds = (performance.now() - started) / 1000;
  const { stats } = tb.beacon.metrics();
  // Read from alice's sockets, all of them: at most one burst, the rate over
  // the time, and one read past the budget per socket (a debt the next
  // resumes pay back). A budget per socket would give each its own.
  const frameBytes = frame.length + 8;
  const atMost = (burst + rate * seconds + attackers.length * 64 * 1024) / frameBytes;
  t.diagnostic(`read ${stats.framesIn} frames (bound ${atMost.toFixed(0)}), relayed ${stats.relay.wss}, dropped from closing sockets ${stats.dropped.sender_closing}`);
  assert.ok(stats.framesIn <= atMost, `${stats.framesIn} frames read in ${seconds.toFixed(2)} s for one key (at most ${atMost.toFixed(0)})`);
  assert.ok(stats.relay.wss <= atMost);
  assert.ok(stats.replacedPeers >= 4, 'replaced while flooding, at least every other time');
  assert.ok(stats.dropped.sender_closing > 0, 'the replaced sockets\' frames are dropped and counted');
});

test('a replaced peer\'s frames after its 4001 are dropped and counted, not relayed', async (t) => {
  const tb = await beaconFor(t, [alice, bob]);
  const b = await WsPeer.connect(tb.url, bob);
  t.after(() => b.close());
  const old = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => old.destroy());
  await old.authenticate(alice);
  const replacement = await WsPeer.connect(tb.url, alice);
  t.after(() => replacement.close());
  await eventually(() => old.closeCode === CloseCode.Replaced, 3_000, 'the 4001');
  // Ignoring the close, the old socket goes on relaying.
  for (let i = 0; i < 50; i++) old.send(OPCODE_BINARY, encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('from the old socket')));
  await eventually(() => tb.beacon.metrics().stats.dropped.sender_closing === 50, 3_000, 'the 50 frames to be dropped');
  // The replacement still relays; nothing of the old socket's arrived before it.
  replacement.send(encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('from the new one')));
  assert.equal((await b.next()).subarray(5).toString(), 'from the new one');
});

test('a revoked peer\'s frames after its 1008 are dropped and counted, not relayed', async (t) => {
  const tb = await beaconFor(t, [alice, bob]);
  const b = await WsPeer.connect(tb.url, bob);
  t.after(() => b.close());
  const revoked = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => revoked.destroy());
  await revoked.authenticate(alice);
  writeFileSync(tb.keysPath, keysFileJson([bob]));
  assert.equal(await tb.beacon.reloadKeys(), true);
  await eventually(() => revoked.closeCode === CloseCode.PolicyViolation, 3_000, 'the 1008');
  for (let i = 0; i < 50; i++) revoked.send(OPCODE_BINARY, encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('after revocation')));
  await eventually(() => tb.beacon.metrics().stats.dropped.sender_closing === 50, 3_000, 'the 50 frames to be dropped');
  await b.expectNothing(100);
  assert.equal(tb.beacon.metrics().stats.relay.wss, 0);
});
