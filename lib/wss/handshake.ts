/**
 * The compat handshake on one fresh WebSocket (docs/protocol.md §2).
 *
 * - Sends the challenge, accepts exactly one text auth_reply, looks up the
 *   key registered for the claimed node ID and verifies the signature.
 * - Fails with a reason on anything else: binary first message, bad JSON,
 *   wrong type, bad node ID or encoding, unknown node, registry unavailable,
 *   bad signature, or no answer before the deadline.
 * - Messages that arrive while the key is being looked up are dropped and
 *   counted; nothing is buffered before authentication.
 * - A budget (issue 19): the answer is one text frame of about 200 bytes,
 *   so a socket that sends more than HANDSHAKE_MAX_BYTES bytes or
 *   HANDSHAKE_MAX_FRAMES frames (pings and pongs included) before auth_ok
 *   fails with `handshake_budget`, and is no longer read. The budget holds
 *   from the upgrade until auth_ok or the socket's close, so a socket that
 *   failed otherwise is not read without limit while it closes either.
 * - Decides only; closing the socket and attaching the peer are the
 *   caller's.
 */
import type { Socket } from 'node:net';
import type WebSocket from 'ws';
import { newNonce, type SignatureVerifier } from '../auth/challenge';
import type { KeyDirectory, RegisteredKey } from '../auth/keys';
import type { AuthFailureReason, BeaconStats } from '../metrics';
import { authChallengeMessage, parseAuthReply, type NodeId } from '../protocol';

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

export interface HandshakeDeps {
  keys: KeyDirectory;
  verifier: SignatureVerifier;
  stats: BeaconStats;
  authTimeoutMs: number;
}

/**
 * Runs the handshake; `done` is called exactly once, unless the socket
 * closes first (then with reason 'closed').
 */
export function runHandshake(ws: WebSocket, deps: HandshakeDeps, done: (result: HandshakeResult) => void): void {
  const nonce = newNonce();
  const deadline = Date.now() + deps.authTimeoutMs;
  let state: 'awaiting_reply' | 'verifying' | 'finished' = 'awaiting_reply';
  // The budget: bytes as they are read (after ws parsed them), frames as ws reports them.
  // ws keeps the TCP socket private; without it only frames are counted.
  const tcp = (ws as unknown as { _socket?: Socket })._socket;
  let bytes = 0;
  let frames = 0;
  let overBudget = false;

  const finish = (result: HandshakeResult) => {
    if (state === 'finished') return;
    state = 'finished';
    clearTimeout(timer);
    ws.off('message', onMessage);
    ws.off('close', onClose);
    // Authenticated: the peer's own pacing takes over. Failed: the budget holds until the socket closes.
    if (result.ok) {
      tcp?.off('data', onData);
      ws.off('ping', onControlFrame);
      ws.off('pong', onControlFrame);
    }
    done(result);
  };
  const timer = setTimeout(() => finish({ ok: false, reason: 'timeout' }), deps.authTimeoutMs);
  const onClose = () => finish({ ok: false, reason: 'closed' });
  /** Over budget: the socket is not read again (the close grace ends it), and the handshake fails if it still runs. */
  const exceed = () => {
    if (overBudget) return;
    overBudget = true;
    ws.pause();
    finish({ ok: false, reason: 'handshake_budget' });
  };
  const onData = (chunk: Buffer) => {
    bytes += chunk.length;
    if (bytes > HANDSHAKE_MAX_BYTES) exceed();
  };
  const onControlFrame = () => {
    if (++frames > HANDSHAKE_MAX_FRAMES) exceed();
  };

  const onMessage = (data: WebSocket.RawData, isBinary: boolean) => {
    if (++frames > HANDSHAKE_MAX_FRAMES) return exceed();
    if (state === 'verifying') {
      deps.stats.drop('unauthenticated');
      return;
    }
    if (state !== 'awaiting_reply') return;
    if (isBinary) return finish({ ok: false, reason: 'binary_message' });
    const parsed = parseAuthReply(data.toString());
    if (!parsed.ok) return finish({ ok: false, reason: parsed.problem });
    state = 'verifying';
    const nodeId = parsed.reply.node_id;
    // The lookup gives up a little before the handshake does, so a slow
    // registry is reported as such rather than as a client timeout.
    const remaining = deadline - Date.now();
    void deps.keys.lookup(nodeId, Math.max(1, remaining - Math.min(100, remaining / 10))).then(async (lookup) => {
      if (state !== 'verifying') return;
      if (lookup.status === 'unknown') return finish({ ok: false, reason: 'unknown_node' });
      if (lookup.status === 'unavailable') return finish({ ok: false, reason: 'registry_unavailable' });
      const valid = await deps.verifier.verify(lookup.key, nodeId, nonce, parsed.sig, () => state === 'verifying');
      if (!valid) return finish({ ok: false, reason: 'bad_signature' });
      // The keys file may have been reloaded while the signature was checked.
      if (!deps.keys.isCurrent(nodeId, lookup.key)) return finish({ ok: false, reason: 'key_revoked' });
      finish({ ok: true, nodeId, key: lookup.key });
    });
  };

  tcp?.on('data', onData);
  ws.on('ping', onControlFrame);
  ws.on('pong', onControlFrame);
  ws.on('message', onMessage);
  ws.on('close', onClose);
  ws.send(authChallengeMessage(nonce));
}
