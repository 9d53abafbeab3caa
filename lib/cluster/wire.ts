/**
 * What instances of a cluster say to each other through NATS: names and
 * bytes, no I/O.
 *
 * - Subjects and the bucket are prefixed with the cluster name, so several
 *   clusters share one NATS: `<name>.fwd.<instance>` carries relays for one
 *   instance, `<name>.hb.<instance>` its heartbeats (`<name>.bye.<instance>`
 *   its goodbye when it stops gracefully), `<name>.who.<instance>`
 *   answers "is this ID taken?", `<name>.att.<instance>` announces a node
 *   that just attached there (attach-notices.ts), `<name>.udp.<instance>`
 *   carries its UDP claims (udp-claims.ts), `<name>.snap` serves the directory to a
 *   newcomer (snapshot.ts); the directory is the KV bucket
 *   `<name>-directory`, one key per node (its decimal ID).
 * - A directory value is `w <instance>` (attached over WebSocket), one
 *   short ASCII line; `u <instance>` (a UDP endpoint) is written only by
 *   instances of an older version and still read.
 * - A forwarded batch is a run of `length u32 | Relay packet`, every
 *   length in bounds and every packet a well-formed Relay; anything else on
 *   these subjects decodes to undefined and is counted by the caller. Its
 *   reply subject is the sending instance's own forward subject, so the
 *   receiver knows which instance read the relays (`forwardedBy`).
 */
import { MAX_NODE_ID, RELAY_HEADER_BYTES, isRelay, type NodeId } from '../protocol/packets';

export type AttachKind = 'wss' | 'udp';

const KIND_CODE: Record<AttachKind, string> = { wss: 'w', udp: 'u' };
const INSTANCE_ID = /^[A-Za-z0-9_.:-]{1,64}$/;

export interface Subjects {
  forward(instanceId: string): string;
  /** The instance whose forward subject `subject` is (a batch's reply subject names its sender); undefined for anything else. */
  forwardedBy(subject: string): string | undefined;
  heartbeat(instanceId: string): string;
  heartbeats: string;
  /** Where an instance says it leaves (a graceful stop), and all of them; the message is a heartbeat's. */
  goodbye(instanceId: string): string;
  goodbyes: string;
  who(instanceId: string): string;
  /** Where an instance announces a node that just attached to it (attach-notices.ts), and all of them. */
  attach(instanceId: string): string;
  attaches: string;
  /** Where an instance announces and withdraws its UDP claims (udp-claims.ts), and all of them. */
  claims(instanceId: string): string;
  allClaims: string;
  /** The instance whose claims subject `subject` is; undefined for anything else. */
  claimedBy(subject: string): string | undefined;
  /** Where a newcomer asks a live instance for the directory (queue group: one answers). */
  snapshot: string;
  bucket: string;
}

/** A subject token may not hold '.'; instance IDs are host names, so it is escaped (IDs hold no '%'). */
function token(instanceId: string): string {
  return instanceId.replace(/\./g, '%2E');
}

/** The instance ID a subject `<prefix><token>` names; undefined for anything else. */
function instanceAfter(prefix: string, subject: string): string | undefined {
  if (!subject.startsWith(prefix)) return undefined;
  const id = subject.slice(prefix.length).replace(/%2E/g, '.');
  return INSTANCE_ID.test(id) ? id : undefined;
}

export function subjectsFor(clusterName: string): Subjects {
  const forwardPrefix = `${clusterName}.fwd.`;
  const claimsPrefix = `${clusterName}.udp.`;
  return {
    forward: (id) => `${forwardPrefix}${token(id)}`,
    forwardedBy: (subject) => instanceAfter(forwardPrefix, subject),
    claims: (id) => `${claimsPrefix}${token(id)}`,
    allClaims: `${claimsPrefix}*`,
    claimedBy: (subject) => instanceAfter(claimsPrefix, subject),
    heartbeat: (id) => `${clusterName}.hb.${token(id)}`,
    heartbeats: `${clusterName}.hb.*`,
    goodbye: (id) => `${clusterName}.bye.${token(id)}`,
    goodbyes: `${clusterName}.bye.*`,
    who: (id) => `${clusterName}.who.${token(id)}`,
    attach: (id) => `${clusterName}.att.${token(id)}`,
    attaches: `${clusterName}.att.*`,
    snapshot: `${clusterName}.snap`,
    bucket: `${clusterName}-directory`,
  };
}

/** `host:port` of a --cluster URL for the NATS client; an IPv6 host keeps the brackets the URL already gives it. */
export function natsAddress(url: URL): string {
  return `${url.hostname}:${url.port || '4222'}`;
}

export function encodePlacement(kind: AttachKind, instanceId: string): string {
  return `${KIND_CODE[kind]} ${instanceId}`;
}

export function decodePlacement(value: string): { kind: AttachKind; instanceId: string } | undefined {
  const kind = value.startsWith('w ') ? 'wss' : value.startsWith('u ') ? 'udp' : undefined;
  const instanceId = value.slice(2);
  return kind && INSTANCE_ID.test(instanceId) ? { kind, instanceId } : undefined;
}

/** The node ID a directory key names, or undefined for a foreign key. */
export function decodeNodeKey(key: string): NodeId | undefined {
  if (!/^[1-9]\d{0,9}$/.test(key)) return undefined;
  const id = Number(key);
  return id <= MAX_NODE_ID ? id : undefined;
}

/** A heartbeat: `<instance> <incarnation>`; the incarnation tells a restarted (or duplicate) process apart. */
export function encodeHeartbeat(instanceId: string, incarnation: string): string {
  return `${instanceId} ${incarnation}`;
}

export function decodeHeartbeat(text: string): { instanceId: string; incarnation: string } | undefined {
  const [instanceId, incarnation, extra] = text.split(' ');
  if (extra !== undefined || !instanceId || !INSTANCE_ID.test(instanceId) || !incarnation || !/^[0-9a-f]{1,32}$/.test(incarnation)) return undefined;
  return { instanceId, incarnation };
}

/** Bytes of one frame's length prefix in a batch. */
export const FRAME_PREFIX_BYTES = 4;

/** Writes one frame of a batch (`length u32 | relay`) into `out` at `at`; returns where the next one goes. */
export function writeBatchFrame(out: Buffer, at: number, relay: Uint8Array): number {
  out.writeUInt32BE(relay.length, at);
  out.set(relay, at + FRAME_PREFIX_BYTES);
  return at + FRAME_PREFIX_BYTES + relay.length;
}

/** Concatenates relays into one batch (tests, tools); `bytes` is their total length, prefixes excluded. */
export function encodeBatch(relays: readonly Buffer[], bytes: number): Buffer {
  const out = Buffer.allocUnsafe(bytes + FRAME_PREFIX_BYTES * relays.length);
  let at = 0;
  for (const relay of relays) at = writeBatchFrame(out, at, relay);
  return out;
}

/**
 * The relays of a batch, as slices of `batch` (no copy); undefined when
 * the batch is not one of ours (bad length, not a Relay): the whole message
 * is dropped, since nothing after a bad length can be trusted.
 */
export function decodeBatch(batch: Uint8Array): Buffer[] | undefined {
  const buf = Buffer.isBuffer(batch) ? batch : Buffer.from(batch.buffer, batch.byteOffset, batch.byteLength);
  if (buf.length === 0) return undefined;
  const relays: Buffer[] = [];
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < FRAME_PREFIX_BYTES) return undefined;
    const length = buf.readUInt32BE(at);
    at += FRAME_PREFIX_BYTES;
    if (length < RELAY_HEADER_BYTES || length > buf.length - at) return undefined;
    const relay = buf.subarray(at, at + length);
    if (!isRelay(relay)) return undefined;
    relays.push(relay);
    at += length;
  }
  return relays;
}
