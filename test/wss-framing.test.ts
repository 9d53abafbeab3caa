/**
 * What the beacon does with ws's WebSocket (issue 22), against the real
 * beacon with a raw client:
 * - pings are answered by the beacon (ws's own answering is off) with their
 *   payload, also between the fragments of a message; a message of exactly
 *   64 KiB arriving in pieces is relayed whole;
 * - what a client gets wrong closes with the code ws closes with: 1002
 *   (reserved bits, an unmasked frame, unknown opcodes, oversized or
 *   fragmented control frames, a continuation with nothing to continue, a
 *   close code no one may send), 1007 (text or close reason that is not
 *   UTF-8), 1009 (a message over 64 KiB, from its header alone:
 *   `maxPayload`), the beacon ends the connection, and oversized messages
 *   are counted;
 * - the close handshake: a client's close is answered with its own code,
 *   and the code is what the beacon reports;
 * - pongs are bounded by the send buffer like relayed frames: a client
 *   that pings and never reads cannot grow the beacon's memory;
 * - the beacon's handlers are no listeners on the peer's WebSocket
 *   (PeerWebSocket), but a listener anyone adds there still hears every
 *   event.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import type WebSocket from 'ws';
import { CloseCode, MAX_MESSAGE_BYTES, encodeRelay } from '../lib/protocol';
import { beaconFor, eventually, withTimeout } from './helpers/harness';
import { HostileWs, OPCODE_BINARY, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, repeated } from './helpers/hostile-ws';
import { makeIdentity } from './helpers/identity';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(601);
const bob = makeIdentity(602);
const MASK = Buffer.from([0x11, 0x22, 0x33, 0x44]);

interface RawFrame {
  opcode: number;
  payload?: Buffer;
  fin?: boolean;
  /** Bits 4-6 of the first byte (RSV1-3). */
  rsv?: number;
  masked?: boolean;
  /** Claim this payload length in the header (the payload sent is still `payload`). */
  claimedLength?: number;
}

/** A client frame with whatever header the test wants. */
function rawFrame({ opcode, payload = Buffer.alloc(0), fin = true, rsv = 0, masked = true, claimedLength }: RawFrame): Buffer {
  const length = claimedLength ?? payload.length;
  const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const header = Buffer.alloc(2 + extended + (masked ? 4 : 0));
  header[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
  header[1] = (masked ? 0x80 : 0) | (extended === 0 ? length : extended === 2 ? 126 : 127);
  if (extended === 2) header.writeUInt16BE(length, 2);
  if (extended === 8) header.writeBigUInt64BE(BigInt(length), 2);
  if (!masked) return Buffer.concat([header, payload]);
  MASK.copy(header, 2 + extended);
  const body = Buffer.from(payload.map((byte, i) => byte ^ MASK[i & 3]!));
  return Buffer.concat([header, body]);
}

/** Writes `bytes` a few bytes at a time, each piece its own write on its own turn: reads split everywhere. */
async function trickle(client: HostileWs, bytes: Buffer, piece = 3): Promise<void> {
  client.socket.setNoDelay(true);
  for (let at = 0; at < bytes.length; at += piece) {
    client.socket.write(bytes.subarray(at, at + piece));
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test('frames split across reads, a fragmented message with a ping between its fragments, and 64 KiB in pieces arrive whole; pings get their pong', async (t) => {
  const tb = await beaconFor(t, [alice, bob]);
  const b = await WsPeer.connect(tb.url, bob);
  t.after(() => b.close());
  const a = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => a.destroy());
  await a.authenticate(alice);

  const first = encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('one frame, three bytes a read'));
  await trickle(a, rawFrame({ opcode: OPCODE_BINARY, payload: first }));
  assert.deepEqual((await b.next()).subarray(5), Buffer.from('one frame, three bytes a read'));

  const fragmented = encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('in two fragments'));
  await trickle(a, Buffer.concat([
    rawFrame({ opcode: OPCODE_BINARY, payload: fragmented.subarray(0, 11), fin: false }),
    rawFrame({ opcode: OPCODE_PING, payload: Buffer.from('between') }),
    rawFrame({ opcode: 0x0, payload: fragmented.subarray(11) }),
  ]), 5);
  assert.deepEqual((await b.next()).subarray(5), Buffer.from('in two fragments'));
  await eventually(() => a.pongs.length === 1, 3_000, 'the pong');
  assert.deepEqual(a.pongs[0], Buffer.from('between'));

  const big = encodeRelay(alice.nodeId, bob.nodeId, Buffer.alloc(MAX_MESSAGE_BYTES - 9, 0x5a));
  const bigFrame = rawFrame({ opcode: OPCODE_BINARY, payload: big });
  for (let at = 0; at < bigFrame.length; at += 9_000) {
    a.socket.write(bigFrame.subarray(at, at + 9_000));
    await new Promise((resolve) => setImmediate(resolve));
  }
  const got = await b.next();
  assert.equal(got.length, big.length - 4, 'a RelayDeliver of the whole payload'); // the 9-byte Relay header became a 5-byte one
  assert.ok(got.subarray(5).every((byte) => byte === 0x5a));
  assert.equal(tb.beacon.isConnected(alice.nodeId), true);
});

const violations: { what: string; bytes: () => Buffer; code: number }[] = [
  { what: 'RSV1 set (no extension agreed)', bytes: () => rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.from([5]), rsv: 0b100 }), code: 1002 },
  { what: 'RSV3 set', bytes: () => rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.from([5]), rsv: 0b001 }), code: 1002 },
  { what: 'an unmasked frame', bytes: () => rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.from([5]), masked: false }), code: 1002 },
  { what: 'opcode 3', bytes: () => rawFrame({ opcode: 0x3, payload: Buffer.from([5]) }), code: 1002 },
  { what: 'opcode 11', bytes: () => rawFrame({ opcode: 0xb }), code: 1002 },
  { what: 'a ping of 126 bytes', bytes: () => rawFrame({ opcode: OPCODE_PING, payload: Buffer.alloc(126) }), code: 1002 },
  { what: 'a fragmented ping', bytes: () => rawFrame({ opcode: OPCODE_PING, fin: false }), code: 1002 },
  { what: 'a continuation with nothing to continue', bytes: () => rawFrame({ opcode: 0x0, payload: Buffer.from([5]) }), code: 1002 },
  { what: 'a new message inside a fragmented one', bytes: () => Buffer.concat([
    rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.from([5]), fin: false }), rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.from([6]) }),
  ]), code: 1002 },
  { what: 'close code 1005 (never sent on the wire)', bytes: () => rawFrame({ opcode: 0x8, payload: Buffer.from([0x03, 0xed]) }), code: 1002 },
  { what: 'a close of one byte', bytes: () => rawFrame({ opcode: 0x8, payload: Buffer.from([0x03]) }), code: 1002 },
  { what: 'text that is not UTF-8', bytes: () => rawFrame({ opcode: OPCODE_TEXT, payload: Buffer.from([0xc3, 0x28]) }), code: 1007 },
  { what: 'a close reason that is not UTF-8', bytes: () => rawFrame({ opcode: 0x8, payload: Buffer.from([0x03, 0xe8, 0xff]) }), code: 1007 },
  // Only the header: the beacon must decide before the payload is there.
  { what: 'a message over 64 KiB, from its header', bytes: () => rawFrame({ opcode: OPCODE_BINARY, claimedLength: MAX_MESSAGE_BYTES + 1 }), code: 1009 },
  { what: 'a 64-bit length over 2^32', bytes: () => rawFrame({ opcode: OPCODE_BINARY, claimedLength: 2 ** 40 }), code: 1009 },
  { what: 'fragments adding up to over 64 KiB', bytes: () => Buffer.concat([
    rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.alloc(40_000), fin: false }), rawFrame({ opcode: 0x0, claimedLength: 30_000 }),
  ]), code: 1009 },
];

test('what a client gets wrong closes with the code ws closes with (1002, 1007, 1009), and the beacon ends the connection', async (t) => {
  const tb = await beaconFor(t, [alice]);
  for (const { what, bytes, code } of violations) {
    const client = await HostileWs.open(tb.beacon.httpAddress.port);
    t.after(() => client.destroy());
    await client.authenticate(alice);
    client.socket.write(bytes());
    await withTimeout(client.closedByBeacon, 4_000, `the beacon to end the connection after ${what}`);
    assert.equal(client.closeCode, code, what);
  }
  await eventually(() => tb.beacon.peerCount() === 0, 3_000, 'every peer to be gone');
  // Oversized messages are counted as such.
  assert.equal(tb.beacon.metrics().stats.dropped.oversized, 3);
});

test('a client\'s close is answered with its code and reason, an empty close with an empty one; the beacon reports the code', async (t) => {
  const tb = await beaconFor(t, [alice]);
  for (const [payload, expected] of [[Buffer.from([0x0f, 0xa0, ...Buffer.from('bye')]), 4000], [Buffer.alloc(0), 1005]] as const) {
    const client = await HostileWs.open(tb.beacon.httpAddress.port);
    t.after(() => client.destroy());
    await client.authenticate(alice);
    const reported = withTimeout(once(tb.beacon, 'peerClosed'), 3_000, 'the peer\'s teardown');
    client.socket.write(rawFrame({ opcode: 0x8, payload }));
    await withTimeout(client.closedByBeacon, 3_000, 'the beacon to end the connection');
    assert.equal(client.closeCode, expected);
    assert.equal((await reported)[0].code, expected);
  }
  // The handshake's own close codes are unchanged: a bad answer still gets 1008.
  const stranger = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => stranger.destroy());
  stranger.send(OPCODE_TEXT, Buffer.from('{"type":"auth_reply"}'));
  await withTimeout(stranger.closedByBeacon, 4_000, 'the refusal');
  assert.equal(stranger.closeCode, CloseCode.PolicyViolation);
});

test('pongs to a client that pings and never reads stop at the send buffer: dropped and counted, not queued without end', async (t) => {
  // Budgets wide open: only the send buffer bounds what the beacon queues for this client.
  const tb = await beaconFor(t, [alice], { peerRateBytesPerSec: 1024 ** 3, peerBurstBytes: 1024 ** 3, peerFrameRate: 10_000_000, sendBufferBytes: 64 * 1024 });
  const client = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => client.destroy());
  await client.authenticate(alice);
  client.socket.pause(); // never reads again: the kernel's buffers fill, then the beacon's
  client.flood(repeated(rawFrame({ opcode: OPCODE_PING, payload: Buffer.alloc(125, 1) }), 500));
  await eventually(() => tb.beacon.metrics().stats.dropped.send_buffer_full > 0, 20_000, 'pongs past the send buffer to be dropped');
  assert.equal(tb.beacon.isConnected(alice.nodeId), true);
});

test('a peer\'s WebSocket keeps no listener store, and a listener added on it still hears its message, ping, pong, error and close, beside the beacon\'s own handling', async (t) => {
  // The beacon's handlers are no listeners (PeerWebSocket's emit calls them,
  // issue 22); a listener anyone else adds must still be called, after them.
  const tb = await beaconFor(t, [alice, bob]);
  const a = await HostileWs.open(tb.beacon.httpAddress.port);
  t.after(() => a.destroy());
  await a.authenticate(alice);
  const b = await WsPeer.connect(tb.url, bob);
  t.after(() => b.close());
  // The beacon's side of alice's connection (a private field: nothing in the beacon adds such listeners today).
  const compat = (tb.beacon as unknown as { compat: { peers: { get(id: number): { ws: WebSocket } | undefined } } }).compat;
  const serverWs = compat.peers.get(alice.nodeId)!.ws;
  // No listener store is kept for a WebSocket no one listens on (bytes per idle peer); the first listener makes it.
  assert.equal((serverWs as unknown as { _events: unknown })._events, undefined, 'no listener store before any listener');
  const heard: string[] = [];
  for (const event of ['message', 'ping', 'pong', 'error', 'close']) serverWs.on(event, () => heard.push(event));

  a.send(OPCODE_BINARY, encodeRelay(alice.nodeId, bob.nodeId, Buffer.from('hi')));
  assert.equal((await b.next()).subarray(5).toString(), 'hi', 'relayed to bob');
  a.send(OPCODE_PING, Buffer.from('p'));
  await eventually(() => a.pongs.length === 1, 3_000, 'the beacon\'s pong');
  a.send(OPCODE_PONG, Buffer.from('q'));
  await eventually(() => heard.length === 3, 3_000, 'the listener to hear the message, the ping and the pong');
  // A protocol error: the beacon's handling closes with 1002 and ends the connection; the listener hears the error and the close.
  const reported = withTimeout(once(tb.beacon, 'peerClosed'), 3_000, 'the peer\'s teardown');
  a.socket.write(rawFrame({ opcode: OPCODE_BINARY, payload: Buffer.from([5]), rsv: 0b100 }));
  await withTimeout(a.closedByBeacon, 4_000, 'the beacon to end the connection');
  assert.equal(a.closeCode, 1002);
  assert.equal((await reported)[0].nodeId, alice.nodeId);
  assert.deepEqual(heard, ['message', 'ping', 'pong', 'error', 'close']);
});
