/**
 * The beacon's half of the compat handshake (PROTOCOL.md §2).
 *
 * - A challenge is 32 random bytes sent as 64 lowercase hex chars.
 * - Verification uses Node's native Ed25519 (about 100× faster than pure JS,
 *   and a verify runs on the event loop that moves every relay).
 * - The key is always the one registered for the node ID, never the one the
 *   daemon sent.
 */
import { randomBytes, verify } from 'node:crypto';
import { NONCE_BYTES, authSignedMessage, type NodeId } from '../protocol';
import type { RegisteredKey } from './keys';

export function newNonce(): string {
  return randomBytes(NONCE_BYTES).toString('hex');
}

export function verifyAuthSignature(key: RegisteredKey, nodeId: NodeId, nonce: string, sig: Buffer): boolean {
  if (key.nodeId !== nodeId) return false;
  return verify(null, authSignedMessage(nodeId, nonce), key.key, sig);
}
