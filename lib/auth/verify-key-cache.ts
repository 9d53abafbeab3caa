/**
 * Verify-ready keys of the keys file, kept for the nodes that come back
 * (issue 22: sized to the daemons that actually reconnect, bounded, cheap
 * to fill).
 *
 * - A key is a FileKey with its own copy of the raw bytes; its KeyObject is
 *   built the first time a signature is checked with it (~8-12 µs) and
 *   costs ~1.6 KB of native memory while it lives. Attached peers keep only
 *   the raw key, so what is cached here is all the beacon holds of them.
 * - A node seen for the first time gets a key for its one check and the
 *   beacon keeps only its node ID (`seenOnce`, at most
 *   SEEN_ONCE_FACTOR x `capacity` IDs, a few bytes each). That key dies
 *   young: V8 collects it, and OpenSSL's copy with it, in the next
 *   scavenge. A key kept for seconds reaches V8's old generation instead,
 *   whose native memory waits for a full collection: a cache of recent
 *   keys held ~1.6 KB per connecting daemon in RSS until one ran (scenario
 *   13 measured 0.4-0.8 KB per idle peer less without it).
 * - A node looked up again while its ID is remembered is one that
 *   reconnects: its key is kept in `returning` (`capacity` entries, least
 *   recently used out first), where a fleet that keeps coming back stays
 *   cached however many daemons connect once in between.
 * - So memory grows with the daemons that reconnect, not with the daemons
 *   attached: a beacon whose peers connect once and stay holds no keys;
 *   the most it holds is `capacity` keys.
 * - An entry is used only while its raw key is still the table's: a reload
 *   that changed the node's key makes it a miss, never a stale answer.
 */
import type { NodeId } from '../protocol';
import type { KeySet } from './key-set';
import { FileKey } from './keys';

/** Node IDs seen once are remembered for this many times the `returning` table's size. */
const SEEN_ONCE_FACTOR = 4;

export class VerifyKeyCache {
  readonly #returning = new Map<NodeId, FileKey>();
  readonly #seenOnce = new Set<NodeId>();
  readonly #seenOnceCapacity: number;

  /** `capacity`: keys kept for nodes that reconnect (0: none kept, none remembered). */
  constructor(readonly capacity: number) {
    this.#seenOnceCapacity = capacity * SEEN_ONCE_FACTOR;
  }

  /** Keys held (all for nodes that reconnected). */
  get size(): number {
    return this.#returning.size;
  }

  /** The node's key in `keys`, from the cache when it is still the same key. */
  lookup(keys: KeySet, nodeId: NodeId): FileKey | undefined {
    const raw = keys.rawOf(nodeId);
    const cached = this.#returning.get(nodeId);
    if (cached !== undefined) this.#returning.delete(nodeId);
    if (!raw) return undefined;
    if (cached !== undefined && cached.raw.equals(raw)) {
      this.#returning.set(nodeId, cached); // most recently used last
      return cached;
    }
    const key = new FileKey(nodeId, Buffer.from(raw));
    if (cached !== undefined || this.#seenOnce.delete(nodeId)) this.keep(nodeId, key);
    else this.rememberSeen(nodeId);
    return key;
  }

  clear(): void {
    this.#returning.clear();
    this.#seenOnce.clear();
  }

  /** Keeps a returning node's key as the most recently used; the least recently used goes. */
  private keep(nodeId: NodeId, key: FileKey): void {
    if (this.capacity <= 0) return;
    this.#returning.set(nodeId, key);
    if (this.#returning.size > this.capacity) this.#returning.delete(this.#returning.keys().next().value as NodeId);
  }

  /** `nodeId` was looked up for the first time (as far as the bounded memory of IDs goes). */
  private rememberSeen(nodeId: NodeId): void {
    if (this.#seenOnceCapacity <= 0) return;
    this.#seenOnce.add(nodeId);
    if (this.#seenOnce.size > this.#seenOnceCapacity) this.#seenOnce.delete(this.#seenOnce.values().next().value as NodeId);
  }
}
