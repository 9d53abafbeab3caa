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
 * - Decides only; closing the socket and attaching the peer are the
 *   caller's.
 */
import type WebSocket from 'ws';
import { newNonce, type SignatureVerifier } from '../auth/challenge';
import type { KeyDirectory, RegisteredKey } from '../auth/keys';
import type { AuthFailureReason, BeaconStats } from '../metrics';
import { authChallengeMessage, parseAuthReply, type NodeId } from '../protocol';

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

  const finish = (result: HandshakeResult) => {
    if (state === 'finished') return;
    state = 'finished';
    clearTimeout(timer);
    ws.off('message', onMessage);
    ws.off('close', onClose);
    done(result);
  };
  const timer = setTimeout(() => finish({ ok: false, reason: 'timeout' }), deps.authTimeoutMs);
  const onClose = () => finish({ ok: false, reason: 'closed' });

  const onMessage = (data: WebSocket.RawData, isBinary: boolean) => {
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

  ws.on('message', onMessage);
  ws.on('close', onClose);
  ws.send(authChallengeMessage(nonce));
}
