/**
 * The directory's mirror: node ID → (instance, kind, revision), for a
 * million nodes without a pause.
 *
 * Why not a Map of objects: measured with a million entries, growing a Map
 * rehashes it in one step (about 100 ms at 512k → 1M entries, and sharding
 * does not help: uniform keys make every shard grow in the same turn), and
 * a million live objects make young-generation collections slow (up to
 * 86 ms each). Here everything lives in typed arrays (no object per entry,
 * nothing for the collector to trace), and a load that knows its size
 * reserves the capacity once, so it never rehashes.
 *
 * Open addressing with linear probing; a deleted slot becomes a tombstone,
 * so entries never move except when the table is rebuilt (growth, or too
 * many tombstones). A rebuild bumps `generation`, which tells a snapshot
 * walking the slots across turns that its walk is void.
 *
 * About 30 bytes per entry at the largest load (15 bytes a slot, at least
 * half the slots free).
 */
import type { NodeId } from '../protocol/packets';
import type { AttachKind } from './wire';

const EMPTY = 0;
const TOMBSTONE = 3;
const KIND_CODE: Record<AttachKind, number> = { wss: 1, udp: 2 };
const KINDS: readonly (AttachKind | undefined)[] = [undefined, 'wss', 'udp'];
const MIN_CAPACITY = 1024;
/** Slots used (entries and tombstones) past this share of the capacity rebuild the table. */
const MAX_LOAD = 0.7;

export class PlacementTable<I extends { readonly id: string }> {
  private capacity: number;
  /** Slot of a node: the top log2(capacity) bits of its hash. */
  private shift: number;
  private keys: Uint32Array;
  /** EMPTY, TOMBSTONE, or the kind's code (an entry). */
  private states: Uint8Array;
  private revs: Float64Array;
  private instanceIndexes: Uint16Array;
  private readonly instances: I[] = [];
  private readonly indexOf = new Map<I, number>();
  private entries = 0;
  private tombstones = 0;
  /** Bumped by every rebuild: slot numbers from before mean nothing after. */
  generation = 0;

  /** `minCapacity`: a power of two; tests use small ones to meet rebuilds often. */
  constructor(private readonly minCapacity = MIN_CAPACITY) {
    if (minCapacity < 8 || (minCapacity & (minCapacity - 1)) !== 0) throw new RangeError('minCapacity must be a power of two, at least 8');
    this.capacity = minCapacity;
    this.shift = 32 - Math.log2(minCapacity);
    this.keys = new Uint32Array(minCapacity);
    this.states = new Uint8Array(minCapacity);
    this.revs = new Float64Array(minCapacity);
    this.instanceIndexes = new Uint16Array(minCapacity);
  }

  get size(): number {
    return this.entries;
  }

  /** Room for `count` entries without a rebuild (a load that knows its size calls this first). */
  reserve(count: number): void {
    if (count + this.tombstones > this.capacity * MAX_LOAD) this.rebuild(count);
  }

  /** The slot holding `nodeId`, or -1. Hot path: no allocation. */
  find(nodeId: NodeId): number {
    const mask = this.capacity - 1;
    for (let slot = hash(nodeId) >>> this.shift; ; slot = (slot + 1) & mask) {
      const state = this.states[slot]!;
      if (state === EMPTY) return -1;
      if (state !== TOMBSTONE && this.keys[slot] === nodeId) return slot;
    }
  }

  instanceAt(slot: number): I {
    return this.instances[this.instanceIndexes[slot]!]!;
  }

  kindAt(slot: number): AttachKind {
    return KINDS[this.states[slot]!]!;
  }

  revAt(slot: number): number {
    return this.revs[slot]!;
  }

  set(nodeId: NodeId, instance: I, kind: AttachKind, rev: number): void {
    let slot = this.find(nodeId);
    if (slot < 0) {
      this.reserve(this.entries + 1);
      slot = this.freeSlotFor(nodeId);
      if (this.states[slot] === TOMBSTONE) this.tombstones--;
      this.keys[slot] = nodeId;
      this.entries++;
    }
    this.states[slot] = KIND_CODE[kind];
    this.revs[slot] = rev;
    this.instanceIndexes[slot] = this.indexFor(instance);
  }

  delete(nodeId: NodeId): boolean {
    const slot = this.find(nodeId);
    if (slot < 0) return false;
    this.states[slot] = TOMBSTONE;
    this.entries--;
    this.tombstones++;
    return true;
  }

  /** Slots to walk for every entry: 0 ≤ slot < slotCount (see nodeAt). */
  get slotCount(): number {
    return this.capacity;
  }

  /** The node in `slot`, or 0 when the slot holds none. */
  nodeAt(slot: number): NodeId {
    const state = this.states[slot]!;
    return state === EMPTY || state === TOMBSTONE ? 0 : this.keys[slot]!;
  }

  *[Symbol.iterator](): IterableIterator<[NodeId, number]> {
    for (let slot = 0; slot < this.capacity; slot++) {
      const nodeId = this.nodeAt(slot);
      if (nodeId !== 0) yield [nodeId, slot];
    }
  }

  private freeSlotFor(nodeId: NodeId): number {
    const mask = this.capacity - 1;
    let slot = hash(nodeId) >>> this.shift;
    while (this.states[slot] !== EMPTY && this.states[slot] !== TOMBSTONE) slot = (slot + 1) & mask;
    return slot;
  }

  private indexFor(instance: I): number {
    let index = this.indexOf.get(instance);
    if (index === undefined) {
      index = this.instances.length;
      if (index > 0xffff) throw new RangeError('more than 65,536 instances in one directory');
      this.instances.push(instance);
      this.indexOf.set(instance, index);
    }
    return index;
  }

  /** A table sized for `count` entries at half load, every entry moved in. */
  private rebuild(count: number): void {
    let capacity = this.minCapacity;
    while (capacity * 0.5 < count) capacity *= 2;
    const { keys, states, revs, instanceIndexes } = this;
    const old = this.capacity;
    this.capacity = capacity;
    this.shift = 32 - Math.log2(capacity);
    this.keys = new Uint32Array(capacity);
    this.states = new Uint8Array(capacity);
    this.revs = new Float64Array(capacity);
    this.instanceIndexes = new Uint16Array(capacity);
    this.tombstones = 0;
    this.generation++;
    for (let from = 0; from < old; from++) {
      const state = states[from]!;
      if (state === EMPTY || state === TOMBSTONE) continue;
      const to = this.freeSlotFor(keys[from]!);
      this.keys[to] = keys[from]!;
      this.states[to] = state;
      this.revs[to] = revs[from]!;
      this.instanceIndexes[to] = instanceIndexes[from]!;
    }
  }
}

/** Spreads node IDs over the slots (Fibonacci hashing: the top bits are used); IDs are often sequential. */
function hash(nodeId: NodeId): number {
  return Math.imul(nodeId, 0x9e3779b1) >>> 0;
}
