/**
 * The compat handshake on one fresh connection (docs/protocol.md §2): the
 * state a Peer holds while it lasts, and what each step does.
 *
 * - Accept (a step of HandshakeWork, compat-server.ts): ws answers the
 *   upgrade (101) and the challenge is sent; the auth deadline starts.
 * - Exactly one text auth_reply is accepted; the key registered for the
 *   claimed node ID is looked up, then the signature checked (a step of
 *   HandshakeWork, on the event loop); after the check the key is looked
 *   up again, so a keys reload that landed meanwhile decides (`key_revoked`).
 * - Fails with a reason on anything else: binary first message, bad JSON,
 *   wrong type, bad node ID or encoding, unknown node, registry unavailable,
 *   bad signature, no answer before the deadline, or the socket closing.
 * - Messages that arrive while the key is being looked up or checked are
 *   dropped and counted; nothing is buffered before authentication.
 * - A budget (issue 19): the answer is one text frame of about 200 bytes,
 *   so a socket that sends more than HANDSHAKE_MAX_BYTES bytes or
 *   HANDSHAKE_MAX_FRAMES frames (pings and pongs included) before auth_ok
 *   fails with `handshake_budget`, and is no longer read. The budget holds
 *   from the upgrade until auth_ok or the socket's close, so a socket that
 *   failed otherwise is not read without limit while it closes either.
 * - Decides only; closing the socket and attaching the peer are the
 *   host's (compat-server.ts), told through `handshakeEnded`.
 * - The state is its own small object, dropped at auth_ok: an attached
 *   peer keeps nothing of it (memory per peer).
 */
import type { IncomingMessage } from 'node:http';
import type { RawData } from 'ws';
import { newNonce, verifyAuthSignatureNow } from '../auth/challenge';
import type { KeyLookup, RegisteredKey } from '../auth/keys';
import type { AuthFailureReason } from '../metrics';
import { authChallengeMessage, parseAuthReply, type NodeId } from '../protocol';
import { NO_DEADLINE } from '../deadline-queue';
import type { Peer, PeerHost } from './peer';

/**
 * What a socket may send before auth_ok: the auth_reply (about 200 bytes),
 * a close, and a few pings and pongs, with room to spare; a stream of
 * anything is not a handshake.
 */
export const HANDSHAKE_MAX_BYTES = 4096;
export const HANDSHAKE_MAX_FRAMES = 16;

export type HandshakeResult =
  | { ok: true; nodeId: NodeId; key: RegisteredKey }
  | { ok: false; reason: AuthFailureReason };

/** `accepting`: ws has not answered the upgrade yet; `challenge`: waiting for the reply; `verifying`: key lookup and signature check. */
export type HandshakeState = 'accepting' | 'challenge' | 'verifying' | 'finished';

export class Handshake {
  state: HandshakeState = 'accepting';
  nonce = '';
  /** When the challenge went out (performance.now()). */
  startedAt = 0;
  /** The auth deadline's ticket in the host's queue. */
  deadline = NO_DEADLINE;
  bytes = 0;
  frames = 0;
  overBudget = false;
  /** The claim being checked: node ID, signature, and the key found for it. */
  nodeId: NodeId = 0;
  sig: Buffer | undefined;
  key: RegisteredKey | undefined;

  /** The upgrade request and the bytes that came with it, until ws has taken them (the accept step). */
  constructor(public request: IncomingMessage | undefined, public head: Buffer | undefined) {}
}

/** The accept step's second half, once ws has answered the upgrade: the challenge, and the auth deadline. */
export function sendChallenge(peer: Peer, hs: Handshake, host: PeerHost): void {
  hs.nonce = newNonce();
  peer.ws!.send(authChallengeMessage(hs.nonce));
  hs.state = 'challenge';
  hs.startedAt = performance.now();
  hs.deadline = host.authDeadlines.add(peer);
}

/** A message before auth_ok. */
export function handshakeMessage(peer: Peer, hs: Handshake, host: PeerHost, data: RawData, isBinary: boolean): void {
  if (hs.state === 'verifying') return host.stats.drop('unauthenticated');
  if (hs.state !== 'challenge' || hs.overBudget) return;
  if (isBinary) return finish(peer, hs, host, { ok: false, reason: 'binary_message' });
  const parsed = parseAuthReply((data as Buffer).toString('utf8'));
  if (!parsed.ok) return finish(peer, hs, host, { ok: false, reason: parsed.problem });
  hs.state = 'verifying';
  hs.nodeId = parsed.reply.node_id;
  hs.sig = parsed.sig;
  // The lookup gives up a little before the handshake does, so a slow
  // registry is reported as such rather than as a client timeout.
  const remaining = host.authTimeoutMs - (performance.now() - hs.startedAt);
  void host.keys.lookup(hs.nodeId, Math.max(1, remaining - Math.min(100, remaining / 10))).then((lookup) => keyFound(peer, hs, host, lookup));
}

function keyFound(peer: Peer, hs: Handshake, host: PeerHost, lookup: KeyLookup): void {
  if (hs.state !== 'verifying') return;
  if (lookup.status === 'unknown') return finish(peer, hs, host, { ok: false, reason: 'unknown_node' });
  if (lookup.status === 'unavailable') return finish(peer, hs, host, { ok: false, reason: 'registry_unavailable' });
  hs.key = lookup.key;
  host.work.add(peer);
}

/** The verify step. */
export function checkSignature(peer: Peer, hs: Handshake, host: PeerHost): void {
  const key = hs.key!;
  const nodeId = hs.nodeId;
  if (!verifyAuthSignatureNow(key, nodeId, hs.nonce, hs.sig!)) return finish(peer, hs, host, { ok: false, reason: 'bad_signature' });
  // The keys file may have been reloaded since the lookup.
  if (!host.keys.isCurrent(nodeId, key.raw, key.source)) return finish(peer, hs, host, { ok: false, reason: 'key_revoked' });
  finish(peer, hs, host, { ok: true, nodeId, key });
}

/** Counts a read against the budget (after ws has parsed it); once over, the socket is not read again. */
export function chargeHandshakeRead(peer: Peer, hs: Handshake, host: PeerHost, bytes: number): void {
  if (hs.overBudget) return;
  hs.bytes += bytes;
  if (hs.bytes > HANDSHAKE_MAX_BYTES) exceed(peer, hs, host);
}

/** Counts a frame (a message, a ping or a pong) against the budget; false once it is spent. */
export function chargeHandshakeFrame(peer: Peer, hs: Handshake, host: PeerHost): boolean {
  if (++hs.frames > HANDSHAKE_MAX_FRAMES) exceed(peer, hs, host);
  return !hs.overBudget;
}

/** Over budget: the socket is not read again (the close grace ends it), and the handshake fails if it still runs. */
function exceed(peer: Peer, hs: Handshake, host: PeerHost): void {
  if (hs.overBudget) return;
  hs.overBudget = true;
  peer.ws?.pause();
  finish(peer, hs, host, { ok: false, reason: 'handshake_budget' });
}

/** Ends the handshake once: the deadline goes, and the host is told. */
export function finish(peer: Peer, hs: Handshake, host: PeerHost, result: HandshakeResult): void {
  if (hs.state === 'finished') return;
  hs.state = 'finished';
  hs.request = undefined;
  hs.head = undefined;
  host.authDeadlines.cancel(hs.deadline);
  hs.deadline = NO_DEADLINE;
  hs.sig = undefined;
  hs.key = undefined;
  host.handshakeEnded(peer, result);
}
