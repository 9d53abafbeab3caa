/**
 * A Map keyed by node ID (any u32) for tables whose keys a stranger
 * chooses: the UDP endpoint table, attach notices.
 *
 * - Why not a Map: V8 hashes small integers without a seed, and its hash
 *   can be inverted, so chosen IDs can all share one bucket and make every
 *   lookup near them walk the lot (issue 19: 4 % of a core became 66 %).
 *   Here a slot is the low bits of keyedHash(id), secret per process.
 * - Open addressing with linear probing over a Uint32Array of keys (no
 *   pointer chased until the key matches); a deleted slot is a tombstone
 *   until the next rebuild. Used slots (entries and tombstones) stay at
 *   most MAX_LOAD of the capacity; a rebuild leaves the table at most half
 *   full, growing, or shrinking once entries fall to an eighth, so an
 *   attack's memory is given back when its entries go.
 * - Iterates in insertion order, like a Map (a list through the entries),
 *   so the oldest entry is found at once. Deleting during iteration is
 *   safe; what is set during iteration may or may not be visited.
 * - Not for hot tables keyed by what the beacon proved (peers attached
 *   over WebSocket): a Map is as good there.
 */
import { keyedHash } from './keyed-hash';

interface Link<V> {
  readonly key: number;
  value: V;
  prev: Link<V> | undefined;
  next: Link<V> | undefined;
  /** Deleted: an iteration standing on it goes on through `next`. */
  removed: boolean;
}

/** Marks a deleted slot, so probe runs through it stay whole. */
const TOMBSTONE: Link<unknown> = { key: 0, value: undefined, prev: undefined, next: undefined, removed: true };

const MIN_CAPACITY = 16;
/** Entries and tombstones past this share of the slots rebuild the table. */
const MAX_LOAD = 0.7;
/** Entries down to this share of the slots shrink the table (at a delete). */
const MIN_LOAD = 1 / 8;

export class NodeMap<V> implements Iterable<[number, V]> {
  private slotKeys = new Uint32Array(MIN_CAPACITY);
  private links: Array<Link<V> | undefined> = new Array<Link<V> | undefined>(MIN_CAPACITY).fill(undefined);
  /** Slot of a key: the low bits of its hash. */
  private mask = MIN_CAPACITY - 1;
  private count = 0;
  private tombstones = 0;
  private head: Link<V> | undefined;
  private tail: Link<V> | undefined;

  get size(): number {
    return this.count;
  }

  get(key: number): V | undefined {
    const slot = this.find(key);
    return slot < 0 ? undefined : this.links[slot]!.value;
  }

  has(key: number): boolean {
    return this.find(key) >= 0;
  }

  /** Sets the value; a new key goes to the end of the order, a known one keeps its place (as a Map does). */
  set(key: number, value: V): this {
    const slot = this.find(key);
    if (slot >= 0) {
      this.links[slot]!.value = value;
      return this;
    }
    if (this.count + 1 + this.tombstones > this.slotKeys.length * MAX_LOAD) this.rebuild(this.count + 1);
    const link: Link<V> = { key, value, prev: this.tail, next: undefined, removed: false };
    if (this.tail) this.tail.next = link;
    else this.head = link;
    this.tail = link;
    this.place(link);
    this.count++;
    return this;
  }

  delete(key: number): boolean {
    const slot = this.find(key);
    if (slot < 0) return false;
    const link = this.links[slot]!;
    this.links[slot] = TOMBSTONE as Link<V>;
    this.count--;
    this.tombstones++;
    link.removed = true;
    // Unlinked, but `next` is kept for an iteration standing on it.
    if (link.prev) link.prev.next = link.next;
    else this.head = link.next;
    if (link.next) link.next.prev = link.prev;
    else this.tail = link.prev;
    if (this.slotKeys.length > MIN_CAPACITY && this.count <= this.slotKeys.length * MIN_LOAD) this.rebuild(this.count);
    return true;
  }

  /** The key set least recently (first in the order), if any. */
  oldest(): number | undefined {
    return this.head?.key;
  }

  /** Forgets every entry (an iteration under way ends). */
  clear(): void {
    for (let link = this.head; link; link = link.next) link.removed = true;
    if (this.tail) this.tail.next = undefined;
    this.head = undefined;
    this.tail = undefined;
    this.count = 0;
    this.rebuild(0);
  }

  *entries(): IterableIterator<[number, V]> {
    for (let link = this.head; link; link = link.next) {
      if (!link.removed) yield [link.key, link.value];
    }
  }

  [Symbol.iterator](): IterableIterator<[number, V]> {
    return this.entries();
  }

  *keys(): IterableIterator<number> {
    for (let link = this.head; link; link = link.next) {
      if (!link.removed) yield link.key;
    }
  }

  *values(): IterableIterator<V> {
    for (let link = this.head; link; link = link.next) {
      if (!link.removed) yield link.value;
    }
  }

  /**
   * @internal Slots looked at to find `key` (or to find it absent): the
   * cost of a lookup, which tests bound for keys chosen to collide.
   */
  probes(key: number): number {
    let count = 1;
    for (let slot = keyedHash(key) & this.mask; ; slot = (slot + 1) & this.mask, count++) {
      const link = this.links[slot];
      if (link === undefined || (link !== TOMBSTONE && this.slotKeys[slot] === key)) return count;
    }
  }

  /** The slot holding `key`, or -1. No allocation. */
  private find(key: number): number {
    const { slotKeys, links, mask } = this;
    for (let slot = keyedHash(key) & this.mask; ; slot = (slot + 1) & mask) {
      const link = links[slot];
      if (link === undefined) return -1;
      if (slotKeys[slot] === key && link !== TOMBSTONE) return slot;
    }
  }

  /** Puts `link` in the first free slot of its probe run (its key is not in the table). */
  private place(link: Link<V>): void {
    const { links, mask } = this;
    let slot = keyedHash(link.key) & mask;
    for (; ; slot = (slot + 1) & mask) {
      const at = links[slot];
      if (at === undefined) break;
      if (at === TOMBSTONE) {
        this.tombstones--;
        break;
      }
    }
    this.slotKeys[slot] = link.key;
    links[slot] = link;
  }

  /** New slots for `count` entries, at most half full; tombstones go. */
  private rebuild(count: number): void {
    let capacity = MIN_CAPACITY;
    while (capacity * 0.5 < count) capacity *= 2;
    this.slotKeys = new Uint32Array(capacity);
    this.links = new Array<Link<V> | undefined>(capacity).fill(undefined);
    this.mask = capacity - 1;
    this.tombstones = 0;
    for (let link = this.head; link; link = link.next) this.place(link);
  }
}
