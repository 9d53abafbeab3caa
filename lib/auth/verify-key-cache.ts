/**
 * Verify-ready keys of the keys file, built on first use and kept for the
 * nodes that come back (issue 22: sized to the daemons that actually
 * reconnect, bounded, cheap to fill).
 *
 * - A key is a FileKey with its own copy of the raw bytes; its KeyObject is
 *   built the first time a signature is checked with it (~8-12 µs) and
 *   costs ~1.6 KB of memory while it is kept. Attached peers keep only the
 *   raw key, so what is cached here is all the beacon holds of them.
 * - Two least-recently-used tables. Every key looked up enters `recent`
 *   (`capacity` entries): a node's key stays at hand through its handshake
 *   and a quick retry. A node whose key had already left `recent` and is
 *   looked up again is one that reconnects: its key goes to `returning`
 *   (`returningCapacity` entries), where a fleet that keeps coming back
 *   stays cached however many daemons connect once in between. Which nodes
 *   left `recent` is remembered by node ID alone (`left`, at most
 *   LEFT_MEMORY_FACTOR x `returningCapacity` IDs, a few bytes each).
 * - So memory grows with the daemons that reconnect, not with the daemons
 *   attached: a beacon whose peers connect once and stay holds `capacity`
 *   keys; the most it holds is (capacity + returningCapacity) keys.
 * - An entry is used only while its raw key is still the table's: a reload
 *   that changed the node's key makes it a miss, never a stale answer.
 */
import type { NodeId } from '../protocol';
import type { KeySet } from './key-set';
import { FileKey } from './keys';

/** Node IDs that left `recent` are remembered for this many times the `returning` table's size. */
const LEFT_MEMORY_FACTOR = 4;

export class VerifyKeyCache {
  readonly #recent = new Map<NodeId, FileKey>();
  readonly #returning = new Map<NodeId, FileKey>();
  readonly #left = new Set<NodeId>();
  readonly #leftCapacity: number;

  constructor(readonly capacity: number, readonly returningCapacity = 0) {
    this.#leftCapacity = returningCapacity * LEFT_MEMORY_FACTOR;
  }

  /** Keys held, in both tables. */
  get size(): number {
    return this.#recent.size + this.#returning.size;
  }

  /** Keys held for nodes that reconnect. */
  get returningSize(): number {
    return this.#returning.size;
  }

  /** The node's key in `keys`, from the cache when it is still the same key. */
  lookup(keys: KeySet, nodeId: NodeId): FileKey | undefined {
    const raw = keys.rawOf(nodeId);
    const table = this.#returning.has(nodeId) ? this.#returning : this.#recent;
    const cached = table.get(nodeId);
    if (cached !== undefined) table.delete(nodeId);
    if (!raw) return undefined;
    if (cached !== undefined && cached.raw.equals(raw)) {
      table.set(nodeId, cached); // most recently used last
      return cached;
    }
    const key = new FileKey(nodeId, Buffer.from(raw));
    if (table === this.#returning || this.#left.delete(nodeId)) {
      put(this.#returning, nodeId, key, this.returningCapacity);
    } else {
      const evicted = put(this.#recent, nodeId, key, this.capacity);
      if (evicted !== undefined && this.#leftCapacity > 0) this.remember(evicted);
    }
    return key;
  }

  clear(): void {
    this.#recent.clear();
    this.#returning.clear();
    this.#left.clear();
  }

  /** `nodeId`'s key left `recent`: if it is looked up again, it is a node that reconnects. */
  private remember(nodeId: NodeId): void {
    this.#left.add(nodeId);
    if (this.#left.size > this.#leftCapacity) this.#left.delete(this.#left.values().next().value as NodeId);
  }
}

/** Inserts as most recently used; returns the node whose entry went to make room, if any. */
function put(table: Map<NodeId, FileKey>, nodeId: NodeId, key: FileKey, capacity: number): NodeId | undefined {
  if (capacity <= 0) return undefined;
  table.set(nodeId, key);
  if (table.size <= capacity) return undefined;
  const oldest = table.keys().next().value as NodeId;
  table.delete(oldest);
  return oldest;
}
