/**
 * The keys of the keys file in a compact, immutable table: 36 bytes a key.
 *
 * - Node IDs sorted ascending in one Uint32Array, their raw 32-byte keys in
 *   the same order in one byte array; a lookup is a binary search (20 steps
 *   for a million keys). Two typed arrays instead of a Map of objects, so a
 *   million keys cost ~36 MB instead of ~1.8 GB, and a table built on a
 *   worker thread moves to the event loop without a copy.
 * - Read as a ReadonlyMap<NodeId, RegisteredKey>: `get` makes a FileKey on
 *   demand (its KeyObject on first use); `rawOf` answers without allocating.
 * - Never changed in place: a reload swaps in a new KeySet, and `with` /
 *   `without` return new ones, so a reader always sees one whole version.
 */
import { PUBLIC_KEY_BYTES, type NodeId } from '../protocol';
import { FileKey, type RegisteredKey } from './keys';

export class KeySet implements ReadonlyMap<NodeId, RegisteredKey> {
  static readonly EMPTY = new KeySet(new Uint32Array(0), new Uint8Array(0));

  readonly #ids: Uint32Array;
  readonly #raws: Uint8Array;

  /**
   * `ids` strictly ascending, `raws` 32 bytes per ID in the same order; both
   * are taken over, not copied. Use `sortedKeySet` for entries in any order.
   */
  constructor(ids: Uint32Array, raws: Uint8Array) {
    if (raws.length !== ids.length * PUBLIC_KEY_BYTES) {
      throw new RangeError(`a KeySet of ${ids.length} keys needs ${ids.length * PUBLIC_KEY_BYTES} key bytes, got ${raws.length}`);
    }
    this.#ids = ids;
    this.#raws = raws;
  }

  /** The table's arrays, to hand to another thread (transfer their buffers). */
  get tables(): { ids: Uint32Array; raws: Uint8Array } {
    return { ids: this.#ids, raws: this.#raws };
  }

  get size(): number {
    return this.#ids.length;
  }

  /** The position of `nodeId` in the table, or -1. */
  indexOf(nodeId: NodeId): number {
    const ids = this.#ids;
    let lo = 0;
    let hi = ids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const at = ids[mid]!;
      if (at < nodeId) lo = mid + 1;
      else if (at > nodeId) hi = mid - 1;
      else return mid;
    }
    return -1;
  }

  has(nodeId: NodeId): boolean {
    return this.indexOf(nodeId) >= 0;
  }

  /** The node's raw key as a view into the table (copy it to keep it), or undefined. */
  rawOf(nodeId: NodeId): Buffer | undefined {
    const i = this.indexOf(nodeId);
    return i < 0 ? undefined : this.#rawAt(i);
  }

  /** A FileKey with its own copy of the raw key. */
  get(nodeId: NodeId): RegisteredKey | undefined {
    const i = this.indexOf(nodeId);
    return i < 0 ? undefined : this.#fileKeyAt(i);
  }

  /** A new set with `nodeId` added, or its key replaced. */
  with(nodeId: NodeId, raw: Uint8Array): KeySet {
    if (raw.length !== PUBLIC_KEY_BYTES) throw new RangeError(`an Ed25519 public key is ${PUBLIC_KEY_BYTES} bytes, got ${raw.length}`);
    const at = this.indexOf(nodeId);
    if (at >= 0) {
      const raws = this.#raws.slice();
      raws.set(raw, at * PUBLIC_KEY_BYTES);
      return new KeySet(this.#ids.slice(), raws);
    }
    const insert = this.#insertionPoint(nodeId);
    const ids = new Uint32Array(this.size + 1);
    ids.set(this.#ids.subarray(0, insert));
    ids[insert] = nodeId;
    ids.set(this.#ids.subarray(insert), insert + 1);
    const raws = new Uint8Array(ids.length * PUBLIC_KEY_BYTES);
    const split = insert * PUBLIC_KEY_BYTES;
    raws.set(this.#raws.subarray(0, split));
    raws.set(raw, split);
    raws.set(this.#raws.subarray(split), split + PUBLIC_KEY_BYTES);
    return new KeySet(ids, raws);
  }

  /** A new set without `nodeId` (this one when it is not there). */
  without(nodeId: NodeId): KeySet {
    const at = this.indexOf(nodeId);
    if (at < 0) return this;
    const ids = new Uint32Array(this.size - 1);
    ids.set(this.#ids.subarray(0, at));
    ids.set(this.#ids.subarray(at + 1), at);
    const raws = new Uint8Array(ids.length * PUBLIC_KEY_BYTES);
    const split = at * PUBLIC_KEY_BYTES;
    raws.set(this.#raws.subarray(0, split));
    raws.set(this.#raws.subarray(split + PUBLIC_KEY_BYTES), split);
    return new KeySet(ids, raws);
  }

  /** Node IDs and raw keys (views into the table) in ascending node ID order, without making FileKeys. */
  *rawEntries(): IterableIterator<[NodeId, Buffer]> {
    for (let i = 0; i < this.#ids.length; i++) yield [this.#ids[i]!, this.#rawAt(i)];
  }

  *keys(): MapIterator<NodeId> {
    for (let i = 0; i < this.#ids.length; i++) yield this.#ids[i]!;
  }

  *values(): MapIterator<RegisteredKey> {
    for (let i = 0; i < this.#ids.length; i++) yield this.#fileKeyAt(i);
  }

  *entries(): MapIterator<[NodeId, RegisteredKey]> {
    for (let i = 0; i < this.#ids.length; i++) yield [this.#ids[i]!, this.#fileKeyAt(i)];
  }

  [Symbol.iterator](): MapIterator<[NodeId, RegisteredKey]> {
    return this.entries();
  }

  forEach(callback: (value: RegisteredKey, key: NodeId, map: ReadonlyMap<NodeId, RegisteredKey>) => void, thisArg?: unknown): void {
    for (const [nodeId, key] of this.entries()) callback.call(thisArg, key, nodeId, this);
  }

  #rawAt(i: number): Buffer {
    return Buffer.from(this.#raws.buffer, this.#raws.byteOffset + i * PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES);
  }

  #fileKeyAt(i: number): FileKey {
    return new FileKey(this.#ids[i]!, Buffer.from(this.#rawAt(i)));
  }

  /** Where `nodeId` (not in the table) would go. */
  #insertionPoint(nodeId: NodeId): number {
    let lo = 0;
    let hi = this.#ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#ids[mid]! < nodeId) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/**
 * A KeySet from the first `count` entries of `ids` and `raws` in any order;
 * for a node ID given more than once, the last entry wins (as in JSON.parse).
 * Already-ascending input, what `beacon keys add` writes, is not re-sorted.
 */
export function sortedKeySet(ids: Uint32Array, raws: Uint8Array, count: number): KeySet {
  let ascending = true;
  for (let i = 1; i < count && ascending; i++) ascending = ids[i - 1]! < ids[i]!;
  if (ascending) {
    return new KeySet(ids.slice(0, count), raws.slice(0, count * PUBLIC_KEY_BYTES));
  }
  const order = sortOrder(ids, count);
  // Stable order: of equal IDs, the last in `order` is the last written.
  let unique = 0;
  for (let i = 0; i < count; i++) {
    if (i + 1 === count || ids[order[i]!] !== ids[order[i + 1]!]) order[unique++] = order[i]!;
  }
  const outIds = new Uint32Array(unique);
  const outRaws = new Uint8Array(unique * PUBLIC_KEY_BYTES);
  for (let i = 0; i < unique; i++) {
    const from = order[i]!;
    outIds[i] = ids[from]!;
    outRaws.set(raws.subarray(from * PUBLIC_KEY_BYTES, (from + 1) * PUBLIC_KEY_BYTES), i * PUBLIC_KEY_BYTES);
  }
  return new KeySet(outIds, outRaws);
}

/**
 * The positions of `ids[0..count)` in ascending order of ID, stable: an LSD
 * radix sort on two 16-bit digits, linear in `count` (a comparison sort of a
 * million entries takes ~10x longer).
 */
function sortOrder(ids: Uint32Array, count: number): Uint32Array {
  let order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  let next = new Uint32Array(count);
  const buckets = new Uint32Array(1 << 16);
  for (const shift of [0, 16]) {
    buckets.fill(0);
    for (let i = 0; i < count; i++) buckets[(ids[i]! >>> shift) & 0xffff]!++;
    let sum = 0;
    for (let b = 0; b < buckets.length; b++) {
      const n = buckets[b]!;
      buckets[b] = sum;
      sum += n;
    }
    for (let i = 0; i < count; i++) {
      const at = order[i]!;
      next[buckets[(ids[at]! >>> shift) & 0xffff]!++] = at;
    }
    [order, next] = [next, order];
  }
  return order;
}
