/**
 * Property tests of the codecs (PROTOCOL.md §1, §2) and of the Sync table:
 * arbitrary bytes never throw, every packet round-trips, a Relay rewritten
 * in place keeps its payload and touches nothing around it, and a Sync
 * table always says which beacon peer announces a node.
 * Fixed seed and bounded runs here; `npm run fuzz` for a longer run.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import {
  MAX_SYNC_NODES, PacketType, canonicalIp, decodeBase64Exact, decodePacket, encodeDiscover, encodeDiscoverReply,
  encodePunchCommand, encodePunchRequest, encodeRelay, encodeRelayDeliver, encodeSync, isRelay, parseAuthReply,
  parseBeaconControl, relayDest, relaySender, relayToDeliverInPlace, type Endpoint, type Packet,
} from '../lib/protocol';
import { BeaconPeers } from '../lib/relay/beacon-peers';
import type { UdpEndpoint } from '../lib/udp/endpoints';
import { fuzzParams } from './fuzz/settings';

const nodeId = fc.integer({ min: 1, max: 0xffffffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const payload = fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a));

/** Any IPv4 or IPv6 address, in the canonical text the decoder gives. */
const ip = fc.oneof(fc.uint8Array({ minLength: 4, maxLength: 4 }), fc.uint8Array({ minLength: 16, maxLength: 16 }))
  .map((bytes) => canonicalIp(ipaddr.fromByteArray([...bytes]).toString()));
const endpoint: fc.Arbitrary<Endpoint> = fc.tuple(ip, fc.integer({ min: 0, max: 0xffff })).map(([i, port]) => ({ ip: i, port }));

const packet: fc.Arbitrary<Packet> = fc.oneof(
  nodeId.map((id): Packet => ({ type: PacketType.Discover, nodeId: id })),
  endpoint.map((e): Packet => ({ type: PacketType.DiscoverReply, endpoint: e })),
  fc.tuple(nodeId, nodeId).map(([requester, target]): Packet => ({ type: PacketType.PunchRequest, requester, target })),
  endpoint.map((e): Packet => ({ type: PacketType.PunchCommand, endpoint: e })),
  fc.tuple(nodeId, nodeId, payload).map(([sender, dest, p]): Packet => ({ type: PacketType.Relay, sender, dest, payload: p })),
  fc.tuple(nodeId, payload).map(([sender, p]): Packet => ({ type: PacketType.RelayDeliver, sender, payload: p })),
  fc.tuple(u32, fc.array(nodeId, { maxLength: 50 })).map(([beaconId, nodeIds]): Packet => ({ type: PacketType.Sync, beaconId, nodeIds })),
);

function encode(p: Packet): Buffer {
  switch (p.type) {
    case PacketType.Discover: return encodeDiscover(p.nodeId);
    case PacketType.DiscoverReply: return encodeDiscoverReply(p.endpoint);
    case PacketType.PunchRequest: return encodePunchRequest(p.requester, p.target);
    case PacketType.PunchCommand: return encodePunchCommand(p.endpoint);
    case PacketType.Relay: return encodeRelay(p.sender, p.dest, p.payload);
    case PacketType.RelayDeliver: return encodeRelayDeliver(p.sender, p.payload);
    case PacketType.Sync: return encodeSync(p.beaconId, p.nodeIds);
  }
}

/** Bytes that look like packets often enough to reach every branch: a known type byte, then anything. */
const wireBytes = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.tuple(fc.integer({ min: 0, max: 8 }), fc.uint8Array({ maxLength: 64 })).map(([t, rest]) => Uint8Array.from([t, ...rest])),
  // An endpoint packet with a plausible ip_len, or a Sync with a small count.
  fc.tuple(fc.constantFrom(2, 4), fc.constantFrom(4, 16, 0, 5, 255), fc.uint8Array({ maxLength: 20 }))
    .map(([t, len, rest]) => Uint8Array.from([t, len, ...rest])),
  fc.tuple(u32, fc.integer({ min: 0, max: 6 }), fc.uint8Array({ maxLength: 30 })).map(([beacon, count, rest]) => {
    const head = Buffer.alloc(7);
    head[0] = PacketType.Sync;
    head.writeUInt32BE(beacon, 1);
    head.writeUInt16BE(count, 5);
    return Uint8Array.from([...head, ...rest]);
  }),
).map((a) => Buffer.from(a));

describe('packet codec', () => {
  test('arbitrary bytes never throw; what decodes re-encodes to a packet that decodes the same', () => {
    fc.assert(fc.property(wireBytes, (bytes) => {
      const decoded = decodePacket(bytes);
      if (decoded === undefined) return;
      assert.equal(decoded.type, bytes[0]);
      assert.deepEqual(decodePacket(encode(decoded)), decoded);
    }), fuzzParams(2000));
  });

  test('every packet round-trips, byte for byte', () => {
    fc.assert(fc.property(packet, (p) => {
      const bytes = encode(p);
      assert.deepEqual(decodePacket(bytes), p);
      assert.deepEqual(encode(decodePacket(bytes)!), bytes);
    }), fuzzParams(1000));
  });

  test('trailing bytes after a fixed-size packet are ignored', () => {
    const fixed = packet.filter((p) => p.type !== PacketType.Relay && p.type !== PacketType.RelayDeliver);
    fc.assert(fc.property(fixed, fc.uint8Array({ minLength: 1, maxLength: 16 }), (p, extra) => {
      assert.deepEqual(decodePacket(Buffer.concat([encode(p), extra])), p);
    }), fuzzParams(500));
  });

  test('every prefix of a packet shorter than its header decodes to nothing', () => {
    fc.assert(fc.property(packet, fc.nat(), (p, cut) => {
      const bytes = encode(p);
      const header = p.type === PacketType.Relay ? 9 : p.type === PacketType.RelayDeliver ? 5 : bytes.length;
      const prefix = bytes.subarray(0, cut % header);
      assert.equal(decodePacket(prefix), undefined);
    }), fuzzParams(1000));
  });

  test('the allocation-free Relay readers agree with the decoder', () => {
    fc.assert(fc.property(fc.oneof(wireBytes, packet.map(encode)), (bytes) => {
      const decoded = decodePacket(bytes);
      assert.equal(isRelay(bytes), decoded?.type === PacketType.Relay);
      if (decoded?.type === PacketType.Relay) {
        assert.equal(relaySender(bytes), decoded.sender);
        assert.equal(relayDest(bytes), decoded.dest);
      }
    }), fuzzParams(1000));
  });

  test('a Relay rewritten in place is the RelayDeliver, a view of the same memory, and nothing around it changes', () => {
    fc.assert(fc.property(nodeId, nodeId, payload, fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ maxLength: 16 }),
      (sender, dest, p, before, after) => {
        // A packet in the middle of a larger buffer, as socket reads hand them over.
        const whole = Buffer.concat([before, encodeRelay(sender, dest, p), after]);
        const copy = Buffer.from(whole);
        const relay = whole.subarray(before.length, whole.length - after.length);
        const deliver = relayToDeliverInPlace(relay);
        assert.deepEqual(deliver, encodeRelayDeliver(sender, p));
        assert.equal(deliver.buffer, whole.buffer);
        assert.equal(deliver.byteOffset, relay.byteOffset + 4);
        assert.deepEqual(whole.subarray(0, before.length + 4), copy.subarray(0, before.length + 4));
        assert.deepEqual(whole.subarray(whole.length - after.length - p.length), copy.subarray(copy.length - after.length - p.length));
      }), fuzzParams(1000));
  });
});

describe('Sync packets', () => {
  test('zero node IDs in a Sync are skipped, the rest kept in order', () => {
    fc.assert(fc.property(u32, fc.array(u32, { maxLength: 100 }), (beaconId, ids) => {
      assert.deepEqual(decodePacket(encodeSync(beaconId, ids)), { type: PacketType.Sync, beaconId, nodeIds: ids.filter((id) => id !== 0) });
    }), fuzzParams(500));
  });

  test('a Sync whose count claims more IDs than it carries decodes to nothing', () => {
    fc.assert(fc.property(u32, fc.array(nodeId, { minLength: 1, maxLength: 100 }), fc.nat(), (beaconId, ids, missing) => {
      const bytes = encodeSync(beaconId, ids);
      assert.equal(decodePacket(bytes.subarray(0, bytes.length - 1 - (missing % (ids.length * 4)))), undefined);
    }), fuzzParams(500));
  });

  test('more IDs than a u16 count is a RangeError, never a wrapped count', () => {
    fc.assert(fc.property(fc.integer({ min: MAX_SYNC_NODES + 1, max: MAX_SYNC_NODES + 3 }), (n) => {
      assert.throws(() => encodeSync(1, Array.from({ length: n }, () => 1)), RangeError);
    }), fuzzParams(3));
  });

  test('the route of every node is a beacon peer whose latest Sync lists it, and only those nodes have one', () => {
    const peers: UdpEndpoint[] = [0, 1, 2].map((i) => ({ address: '127.0.0.1', port: 9000 + i, ip: '127.0.0.1' }));
    const smallId = fc.integer({ min: 1, max: 12 });
    const step = fc.record({
      peer: fc.integer({ min: 0, max: 2 }), ids: fc.array(smallId, { maxLength: 8 }), local: fc.array(smallId, { maxLength: 3 }),
      // Time passes; now and then the routes of peers silent for 10 ticks expire.
      dt: fc.integer({ min: 0, max: 6 }), expire: fc.boolean(),
    });
    fc.assert(fc.property(fc.array(step, { maxLength: 20 }), (steps) => {
      const table = new BeaconPeers(peers);
      const latest = new Map<UdpEndpoint, Set<number>>();
      const syncedAt = new Map<UdpEndpoint, number>();
      let now = 0;
      for (const { peer, ids, local, dt, expire } of steps) {
        now += dt;
        if (expire) {
          table.expire(10, now);
          for (const [p, at] of syncedAt) if (now - at >= 10) { latest.delete(p); syncedAt.delete(p); }
        } else {
          const locals = new Set(local);
          table.acceptSync(peers[peer]!, ids, (id) => locals.has(id), now);
          latest.set(peers[peer]!, new Set(ids.filter((id) => !locals.has(id))));
          syncedAt.set(peers[peer]!, now);
        }
        const announced = new Set([...latest.values()].flatMap((set) => [...set]));
        for (let id = 1; id <= 12; id++) {
          const route = table.routeOf(id);
          if (announced.has(id)) {
            assert.ok(route, `node ${id} is announced by a beacon peer but has no route`);
            assert.ok(latest.get(route)?.has(id), `node ${id} routes to a beacon peer that no longer announces it`);
          } else {
            assert.equal(route, undefined, `node ${id} is announced by no beacon peer but has a route`);
          }
        }
        assert.equal(table.routeCount, announced.size);
      }
    }), fuzzParams(1000));
  });
});

test('found by fuzzing: a node two beacon peers announce keeps its route when one of them stops announcing it', () => {
  const [a, b] = [9000, 9001].map((port): UdpEndpoint => ({ address: '127.0.0.1', port, ip: '127.0.0.1' })) as [UdpEndpoint, UdpEndpoint];
  const table = new BeaconPeers([a, b]);
  table.acceptSync(a, [6], () => false);
  table.acceptSync(b, [6], () => false);
  assert.equal(table.routeOf(6), b);
  table.acceptSync(b, [], () => false);
  assert.equal(table.routeOf(6), a);
  table.acceptSync(a, [], () => false);
  assert.equal(table.routeOf(6), undefined);
});

describe('compat control messages', () => {
  const text = fc.oneof(fc.string(), fc.json(), fc.string({ unit: 'binary' }));
  test('parseAuthReply and parseBeaconControl never throw on any text', () => {
    fc.assert(fc.property(text, (t) => {
      const reply = parseAuthReply(t);
      assert.equal(typeof reply.ok, 'boolean');
      parseBeaconControl(t);
    }), fuzzParams(2000));
  });

  test('an auth_reply with any object around it is accepted exactly when its node ID and signature are well formed', () => {
    const sigBytes = fc.uint8Array({ minLength: 0, maxLength: 80 });
    const claimedId = fc.oneof(nodeId, fc.constantFrom<unknown>(0, -1, 0x100000000, 1.5, '7', null, true));
    fc.assert(fc.property(claimedId, sigBytes, fc.dictionary(fc.string(), fc.jsonValue(), { maxKeys: 3 }), (id, sig, extra) => {
      const message = JSON.stringify({ ...extra, type: 'auth_reply', node_id: id, public_key: 'x', sig: Buffer.from(sig).toString('base64') });
      const parsed = parseAuthReply(message);
      const wellFormed = typeof id === 'number' && Number.isInteger(id) && id >= 1 && id <= 0xffffffff && sig.length === 64;
      assert.equal(parsed.ok, wellFormed);
      if (parsed.ok) {
        assert.equal(parsed.reply.node_id, id);
        assert.deepEqual(parsed.sig, Buffer.from(sig));
      }
    }), fuzzParams(1000));
  });

  test('exact base64 decoding: bytes of the asked length come back, anything else is refused', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), fc.integer({ min: 0, max: 80 }), (bytes, want) => {
      const decoded = decodeBase64Exact(Buffer.from(bytes).toString('base64'), want);
      if (bytes.length === want) assert.deepEqual(decoded, Buffer.from(bytes));
      else assert.equal(decoded, undefined);
      // Other alphabets and unpadded text are not the standard encoding.
      const url = Buffer.from(bytes).toString('base64url');
      if (/[-_]/.test(url) || (bytes.length % 3 !== 0)) assert.equal(decodeBase64Exact(url, bytes.length), undefined);
    }), fuzzParams(1000));
  });
});
