/**
 * Beacon packets (docs/protocol.md §1): bytes <-> typed packets, no I/O.
 *
 * - The same packets travel over UDP (one per datagram) and over the compat
 *   WebSocket (one per binary message).
 * - All integers are big-endian; a node ID is a u32 and 0 is never a node.
 * - Packets too short for their type, unknown types and zero node IDs decode
 *   to `undefined`: the caller drops and counts them, it never throws. Two
 *   exceptions: a Discover for node 0 is an *address query* (a Go daemon
 *   that has not registered yet asking "what is my address?") and decodes;
 *   a zero entry in a Sync's list is skipped.
 * - The Relay hot path has allocation-free readers (`relaySender`,
 *   `relayDest`) and rewrites a Relay into a RelayDeliver in place.
 */
import { isIPv4 } from 'node:net';
import ipaddr from 'ipaddr.js';

export const PacketType = {
  /** node_id u32 — daemon → beacon */
  Discover: 0x01,
  /** ip_len u8 (4|16), ip, port u16 — beacon → daemon */
  DiscoverReply: 0x02,
  /** requester u32, target u32 — daemon → beacon */
  PunchRequest: 0x03,
  /** ip_len u8 (4|16), ip, port u16 — beacon → daemon */
  PunchCommand: 0x04,
  /** sender u32, dest u32, payload… — daemon → beacon, beacon → beacon peer */
  Relay: 0x05,
  /** sender u32, payload… — beacon → daemon */
  RelayDeliver: 0x06,
  /** beacon_id u32, count u16, node_id u32 × count — beacon ↔ beacon */
  Sync: 0x07,
} as const;
export type PacketType = (typeof PacketType)[keyof typeof PacketType];

export type NodeId = number;
export const MAX_NODE_ID = 0xffffffff;
/**
 * The node ID of an address query: a Discover for node 0, which a Go daemon
 * sends from its tunnel port before it has registered, to learn the address
 * its NAT gives that port. Answered like any Discover; nothing is recorded.
 */
export const ADDRESS_QUERY_NODE_ID = 0;

/** Size of the Relay header: type, sender, dest. */
export const RELAY_HEADER_BYTES = 9;
/** Size of the RelayDeliver header: type, sender. */
export const RELAY_DELIVER_HEADER_BYTES = 5;
/** Largest count a Sync can carry (u16). */
export const MAX_SYNC_NODES = 0xffff;

/** An IP address and port as carried by DiscoverReply and PunchCommand. */
export interface Endpoint {
  /** Textual address; IPv4-mapped IPv6 addresses are given as IPv4. */
  ip: string;
  port: number;
}

export type Packet =
  /** `nodeId` is ADDRESS_QUERY_NODE_ID (0) for an address query, else a node ID. */
  | { type: typeof PacketType.Discover; nodeId: NodeId }
  | { type: typeof PacketType.DiscoverReply; endpoint: Endpoint }
  | { type: typeof PacketType.PunchRequest; requester: NodeId; target: NodeId }
  | { type: typeof PacketType.PunchCommand; endpoint: Endpoint }
  | { type: typeof PacketType.Relay; sender: NodeId; dest: NodeId; payload: Buffer }
  | { type: typeof PacketType.RelayDeliver; sender: NodeId; payload: Buffer }
  | { type: typeof PacketType.Sync; beaconId: number; nodeIds: NodeId[] };

export function isValidNodeId(n: unknown): n is NodeId {
  return typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= MAX_NODE_ID;
}

/**
 * Decodes one packet. Payloads are views into `buf`, not copies.
 * Returns undefined for anything §1 says to ignore.
 */
export function decodePacket(buf: Buffer): Packet | undefined {
  if (buf.length === 0) return undefined;
  switch (buf[0]) {
    case PacketType.Discover: {
      if (buf.length < 5) return undefined;
      // Node 0 included: an address query (ADDRESS_QUERY_NODE_ID).
      return { type: PacketType.Discover, nodeId: buf.readUInt32BE(1) };
    }
    case PacketType.DiscoverReply:
    case PacketType.PunchCommand: {
      const endpoint = decodeEndpoint(buf, 1);
      if (!endpoint) return undefined;
      return buf[0] === PacketType.DiscoverReply
        ? { type: PacketType.DiscoverReply, endpoint }
        : { type: PacketType.PunchCommand, endpoint };
    }
    case PacketType.PunchRequest: {
      if (buf.length < 9) return undefined;
      const requester = buf.readUInt32BE(1);
      const target = buf.readUInt32BE(5);
      if (requester === 0 || target === 0) return undefined;
      return { type: PacketType.PunchRequest, requester, target };
    }
    case PacketType.Relay: {
      if (!isRelay(buf)) return undefined;
      return {
        type: PacketType.Relay,
        sender: relaySender(buf),
        dest: relayDest(buf),
        payload: buf.subarray(RELAY_HEADER_BYTES),
      };
    }
    case PacketType.RelayDeliver: {
      if (buf.length < RELAY_DELIVER_HEADER_BYTES) return undefined;
      const sender = buf.readUInt32BE(1);
      if (sender === 0) return undefined;
      return { type: PacketType.RelayDeliver, sender, payload: buf.subarray(RELAY_DELIVER_HEADER_BYTES) };
    }
    case PacketType.Sync: {
      if (buf.length < 7) return undefined;
      const beaconId = buf.readUInt32BE(1);
      const count = buf.readUInt16BE(5);
      if (buf.length < 7 + count * 4) return undefined;
      const nodeIds: NodeId[] = [];
      for (let i = 0; i < count; i++) {
        const id = buf.readUInt32BE(7 + i * 4);
        if (id !== 0) nodeIds.push(id);
      }
      return { type: PacketType.Sync, beaconId, nodeIds };
    }
    default:
      return undefined;
  }
}

// ---- Relay hot path: no allocation ----------------------------------------

/** True when `buf` is a Relay with a full header and non-zero node IDs. */
export function isRelay(buf: Buffer): boolean {
  return (
    buf.length >= RELAY_HEADER_BYTES &&
    buf[0] === PacketType.Relay &&
    buf.readUInt32BE(1) !== 0 &&
    buf.readUInt32BE(5) !== 0
  );
}

/** Sender of a Relay already checked with `isRelay`. */
export function relaySender(buf: Buffer): NodeId {
  return buf.readUInt32BE(1);
}

/** Destination of a Relay already checked with `isRelay`. */
export function relayDest(buf: Buffer): NodeId {
  return buf.readUInt32BE(5);
}

/**
 * Turns a Relay into the RelayDeliver for its destination without copying:
 * the 4 bytes before the payload become `type, sender`, and the result is a
 * view that starts at offset 4. The Relay in `buf` is destroyed.
 */
export function relayToDeliverInPlace(buf: Buffer): Buffer {
  const sender = buf.readUInt32BE(1);
  buf[4] = PacketType.RelayDeliver;
  buf.writeUInt32BE(sender, 5);
  return buf.subarray(4);
}

// ---- Encoders ---------------------------------------------------------------

export function encodeDiscover(nodeId: NodeId): Buffer {
  const buf = Buffer.allocUnsafe(5);
  buf[0] = PacketType.Discover;
  buf.writeUInt32BE(nodeId, 1);
  return buf;
}

export function encodeDiscoverReply(endpoint: Endpoint): Buffer {
  return encodeEndpointPacket(PacketType.DiscoverReply, endpoint);
}

export function encodePunchRequest(requester: NodeId, target: NodeId): Buffer {
  const buf = Buffer.allocUnsafe(9);
  buf[0] = PacketType.PunchRequest;
  buf.writeUInt32BE(requester, 1);
  buf.writeUInt32BE(target, 5);
  return buf;
}

export function encodePunchCommand(endpoint: Endpoint): Buffer {
  return encodeEndpointPacket(PacketType.PunchCommand, endpoint);
}

export function encodeRelay(sender: NodeId, dest: NodeId, payload: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(RELAY_HEADER_BYTES + payload.length);
  buf[0] = PacketType.Relay;
  buf.writeUInt32BE(sender, 1);
  buf.writeUInt32BE(dest, 5);
  buf.set(payload, RELAY_HEADER_BYTES);
  return buf;
}

export function encodeRelayDeliver(sender: NodeId, payload: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(RELAY_DELIVER_HEADER_BYTES + payload.length);
  buf[0] = PacketType.RelayDeliver;
  buf.writeUInt32BE(sender, 1);
  buf.set(payload, RELAY_DELIVER_HEADER_BYTES);
  return buf;
}

export function encodeSync(beaconId: number, nodeIds: readonly NodeId[]): Buffer {
  if (nodeIds.length > MAX_SYNC_NODES) {
    throw new RangeError(`a Sync carries at most ${MAX_SYNC_NODES} node IDs, got ${nodeIds.length}`);
  }
  const buf = Buffer.allocUnsafe(7 + nodeIds.length * 4);
  buf[0] = PacketType.Sync;
  buf.writeUInt32BE(beaconId, 1);
  buf.writeUInt16BE(nodeIds.length, 5);
  nodeIds.forEach((id, i) => buf.writeUInt32BE(id, 7 + i * 4));
  return buf;
}

// ---- Endpoints --------------------------------------------------------------

/** ip_len u8, ip (4 or 16 bytes), port u16, read at `offset`. */
function decodeEndpoint(buf: Buffer, offset: number): Endpoint | undefined {
  if (buf.length < offset + 1) return undefined;
  const ipLen = buf[offset];
  if (ipLen !== 4 && ipLen !== 16) return undefined;
  const end = offset + 1 + ipLen;
  if (buf.length < end + 2) return undefined;
  const bytes = Array.from(buf.subarray(offset + 1, end));
  return { ip: canonicalIp(ipaddr.fromByteArray(bytes).toString()), port: buf.readUInt16BE(end) };
}

function encodeEndpointPacket(type: PacketType, endpoint: Endpoint): Buffer {
  const ip = ipaddr.parse(canonicalIp(endpoint.ip)).toByteArray();
  const buf = Buffer.allocUnsafe(2 + ip.length + 2);
  buf[0] = type;
  buf[1] = ip.length;
  buf.set(ip, 2);
  buf.writeUInt16BE(endpoint.port, 2 + ip.length);
  return buf;
}

const MAPPED_PREFIX = '::ffff:';

/**
 * The form an address is carried and compared in: IPv4-mapped IPv6
 * (`::ffff:1.2.3.4`, what a dual-stack socket reports) becomes plain IPv4,
 * as Go's `To4()` does; zone suffixes are dropped.
 */
export function canonicalIp(ip: string): string {
  // What sockets report, already canonical (isIPv4 takes no leading zeros): no parse, once per connection at least.
  if (isIPv4(ip)) return ip;
  if (ip.startsWith(MAPPED_PREFIX) && isIPv4(ip.slice(MAPPED_PREFIX.length))) return ip.slice(MAPPED_PREFIX.length);
  const bare = ip.replace(/%.*$/, '');
  if (!ipaddr.isValid(bare)) return bare;
  const parsed = ipaddr.parse(bare);
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) {
    return (parsed as ipaddr.IPv6).toIPv4Address().toString();
  }
  return parsed.toString();
}
