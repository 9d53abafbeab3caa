/**
 * Verify-ready keys of the keys file, built on first use and kept for the
 * most recently used nodes.
 *
 * - A key is a FileKey with its own copy of the raw bytes; its KeyObject is
 *   built the first time a signature is checked with it (~8 µs).
 * - At most `capacity` entries; the least recently used goes first (a Map
 *   keeps insertion order, and a hit re-inserts).
 * - An entry is used only while its raw key is still the table's: a reload
 *   that changed the node's key makes it a miss, never a stale answer.
 */
import type { NodeId } from '../protocol';
import type { KeySet } from './key-set';
import { FileKey } from './keys';

export class VerifyKeyCache {
  readonly #entries = new Map<NodeId, FileKey>();

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#entries.size;
  }

  /** The node's key in `keys`, from the cache when it is still the same key. */
  lookup(keys: KeySet, nodeId: NodeId): FileKey | undefined {
    const raw = keys.rawOf(nodeId);
    const cached = this.#entries.get(nodeId);
    if (cached) this.#entries.delete(nodeId);
    if (!raw) return undefined;
    const key = cached?.raw.equals(raw) ? cached : new FileKey(nodeId, Buffer.from(raw));
    this.#entries.set(nodeId, key);
    if (this.#entries.size > this.capacity) this.#entries.delete(this.#entries.keys().next().value as NodeId);
    return key;
  }

  clear(): void {
    this.#entries.clear();
  }
}
