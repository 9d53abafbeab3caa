/**
 * Registered public keys and the interface every key source implements.
 *
 * - A RegisteredKey carries the raw 32 bytes (for comparisons on reload) and
 *   a ready KeyObject (so a handshake never parses a key).
 * - Lookups never reject: they say found, unknown, or unavailable (the
 *   registry is down or slow; not cached, the handshake fails cleanly).
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { PUBLIC_KEY_BYTES, type NodeId } from '../protocol';

export type KeySourceName = 'file' | 'registry';

export interface RegisteredKey {
  nodeId: NodeId;
  raw: Buffer;
  key: KeyObject;
  source: KeySourceName;
}

export type KeyLookup =
  | { status: 'found'; key: RegisteredKey }
  | { status: 'unknown' }
  | { status: 'unavailable'; error: string };

export interface KeyDirectory {
  /** Resolves within `timeoutMs`; never rejects. */
  lookup(nodeId: NodeId, timeoutMs: number): Promise<KeyLookup>;
  /**
   * Whether a key found earlier is still the one to trust, given the keys
   * file as it is now (it may have been reloaded since): the file's key for
   * the node, or a registry key for a node the file does not list.
   */
  isCurrent(nodeId: NodeId, key: RegisteredKey): boolean;
  close(): void;
}

/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw key follows. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export function registeredKey(nodeId: NodeId, raw: Buffer, source: KeySourceName): RegisteredKey {
  if (raw.length !== PUBLIC_KEY_BYTES) throw new RangeError(`an Ed25519 public key is ${PUBLIC_KEY_BYTES} bytes, got ${raw.length}`);
  const key = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, raw]), format: 'der', type: 'spki' });
  return { nodeId, raw, key, source };
}
