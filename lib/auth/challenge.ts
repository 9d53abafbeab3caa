/**
 * The beacon's half of the compat handshake (docs/protocol.md §2).
 *
 * - A challenge is 32 random bytes sent as 64 lowercase hex chars.
 * - Verification uses Node's native Ed25519 (about 100× faster than pure
 *   JS). The beacon checks on its event loop (`verifyAuthSignatureNow`),
 *   a bounded number per turn (lib/wss/handshake-work.ts): on the pool one
 *   at a time, each check waited for a turn of the loop to be collected,
 *   which held a storm to about one check per turn (issue 22).
 * - The key is always the one registered for the node ID, never the one the
 *   daemon sent.
 */
import { randomFillSync, verify } from 'node:crypto';
import { NONCE_BYTES, authSignedMessage, type NodeId } from '../protocol';
import type { RegisteredKey } from './keys';

/** Random bytes drawn from the CSPRNG at once, for this many challenges: one call instead of one per handshake. */
const NONCES_PER_DRAW = 128;
const nonceBytes = Buffer.alloc(NONCE_BYTES * NONCES_PER_DRAW);
let noncesLeft = 0;

/** A fresh challenge: 32 bytes no one has seen (each bytes are used once), as 64 hex chars. */
export function newNonce(): string {
  if (noncesLeft === 0) {
    randomFillSync(nonceBytes);
    noncesLeft = NONCES_PER_DRAW;
  }
  const at = --noncesLeft * NONCE_BYTES;
  return nonceBytes.toString('hex', at, at + NONCE_BYTES);
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

/** The same check, done now on the calling thread (~0.1-0.2 ms); false for anything but a valid signature, never throws. */
export function verifyAuthSignatureNow(key: RegisteredKey, nodeId: NodeId, nonce: string, sig: Buffer): boolean {
  if (key.nodeId !== nodeId) return false;
  try {
    return verify(null, authSignedMessage(nodeId, nonce), key.key, sig);
  } catch {
    return false;
  }
}
