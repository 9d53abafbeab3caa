/**
 * The beacon's half of the compat handshake (PROTOCOL.md §2).
 *
 * - A challenge is 32 random bytes sent as 64 lowercase hex chars.
 * - Verification uses Node's native Ed25519 (about 100× faster than pure JS)
 *   on libuv's thread pool: a verify on the event loop would stall every
 *   relay for its ~0.12 ms, and a handshake storm would stall them for
 *   as long as it lasts.
 * - The key is always the one registered for the node ID, never the one the
 *   daemon sent.
 */
import { randomBytes, verify } from 'node:crypto';
import { NONCE_BYTES, authSignedMessage, type NodeId } from '../protocol';
import type { RegisteredKey } from './keys';

export function newNonce(): string {
  return randomBytes(NONCE_BYTES).toString('hex');
}

/** Resolves true only for a valid signature by `key` over this node ID and nonce; never rejects. */
export function verifyAuthSignature(key: RegisteredKey, nodeId: NodeId, nonce: string, sig: Buffer): Promise<boolean> {
  if (key.nodeId !== nodeId) return Promise.resolve(false);
  return new Promise((resolve) => {
    try {
      verify(null, authSignedMessage(nodeId, nonce), key.key, sig, (err, valid) => resolve(!err && valid));
    } catch {
      resolve(false);
    }
  });
}
