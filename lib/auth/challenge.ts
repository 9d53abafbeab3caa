/**
 * The beacon's half of the compat handshake (docs/protocol.md §2).
 *
 * - A challenge is 32 random bytes sent as 64 lowercase hex chars.
 * - Verification uses Node's native Ed25519 (about 100× faster than pure
 *   JS) on libuv's thread pool, so the ~0.12 ms of a verify is not spent
 *   on the event loop that moves every relay.
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

interface PendingVerify {
  key: RegisteredKey;
  nodeId: NodeId;
  nonce: string;
  sig: Buffer;
  stillWanted: () => boolean;
  resolve: (valid: boolean) => void;
}

/**
 * Runs signature checks one at a time on the thread pool, in arrival order.
 *
 * One at a time because a handshake storm would otherwise keep every pool
 * thread busy: on a one-core machine they would take four fifths of the
 * core from the event loop. With one, the loop keeps at least half, and on
 * more cores one thread still checks ~8,000 signatures/s, several times what
 * the upgrade path admits. A check whose handshake has ended (the socket
 * closed, the deadline passed) is skipped when its turn comes, so the queue
 * holds at most one live check per handshake, within the handshake cap.
 */
export class SignatureVerifier {
  private readonly waiting: PendingVerify[] = [];
  private running = false;

  /** Resolves false without checking if `stillWanted` says no when the check's turn comes. */
  verify(key: RegisteredKey, nodeId: NodeId, nonce: string, sig: Buffer, stillWanted: () => boolean = () => true): Promise<boolean> {
    return new Promise((resolve) => {
      this.waiting.push({ key, nodeId, nonce, sig, stillWanted, resolve });
      if (!this.running) this.next();
    });
  }

  /** Checks waiting to start. */
  get queued(): number {
    return this.waiting.length;
  }

  private next(): void {
    let job = this.waiting.shift();
    while (job && !job.stillWanted()) {
      job.resolve(false);
      job = this.waiting.shift();
    }
    if (!job) {
      this.running = false;
      return;
    }
    this.running = true;
    void verifyAuthSignature(job.key, job.nodeId, job.nonce, job.sig).then((valid) => {
      job.resolve(valid);
      this.next();
    });
  }
}
