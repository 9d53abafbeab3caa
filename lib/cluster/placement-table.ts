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
 * many tombstones). A rebuild is incremental: the new slots are allocated
 * at once, and every later change moves a few entries of the old slots
 * over (a lookup that finds an entry there moves it), since moving a
 * million at once took 110 ms (most of it the kernel handing over fresh
 * pages). A rebuild bumps `generation`, which tells a snapshot walking the
 * slots across turns that its walk is void; no walk starts while one runs.
 *
 * About 30 bytes per entry at the largest load (15 bytes a slot, at least
 * half the slots free), twice that while a rebuild runs. A table made
 * `withPayloads` keeps one more number per slot for its owner (the UDP
 * claims keep their endpoint there: udp-claims.ts), 8 bytes a slot more.
 *
 * A slot is the top bits of keyedHash(node), secret per process: strangers
 * choose node IDs (a UDP Discover at any instance lands here), and under a
 * fixed hash thousands chosen to share a probe run made every lookup near
 * them walk it (issue 19: 5 % of a core became 95 %).
 */
import type { NodeId } from '../protocol/packets';
import { keyedHash } from '../tables/keyed-hash';
import type { AttachKind } from './wire';

const EMPTY = 0;
const TOMBSTONE = 3;
const KIND_CODE: Record<AttachKind, number> = { wss: 1, udp: 2 };
const KINDS: readonly (AttachKind | undefined)[] = [undefined, 'wss', 'udp'];
const MIN_CAPACITY = 1024;
/** Slots used (entries and tombstones) past this share of the capacity rebuild the table. */
const MAX_LOAD = 0.7;
/**
 * Old slots moved over per change while a rebuild runs. A rebuild starts
 * at 0.7 of the old capacity and leaves the new one at most half full, so
 * it has 0.4 × the old capacity of inserts before the next one is due:
 * 4 slots per change finishes well within that.
 */
const MOVE_PER_CHANGE = 4;

/** One set of slots: parallel typed arrays. */
class Slots {
  readonly keys: Uint32Array;
  /** EMPTY, TOMBSTONE, or the kind's code (an entry). */
  readonly states: Uint8Array;
  readonly revs: Float64Array;
  readonly instanceIndexes: Uint16Array;
  /** The owner's number for each slot (withPayloads), else undefined. */
  readonly payloads: Float64Array | undefined;
  /** Slot of a node: the top log2(capacity) bits of its hash. */
  readonly shift: number;
  readonly mask: number;

  constructor(readonly capacity: number, withPayloads: boolean) {
    this.keys = new Uint32Array(capacity);
    this.states = new Uint8Array(capacity);
    this.revs = new Float64Array(capacity);
    this.instanceIndexes = new Uint16Array(capacity);
    this.payloads = withPayloads ? new Float64Array(capacity) : undefined;
    this.shift = 32 - Math.log2(capacity);
    this.mask = capacity - 1;
  }

  find(nodeId: NodeId): number {
    for (let slot = keyedHash(nodeId) >>> this.shift; ; slot = (slot + 1) & this.mask) {
      const state = this.states[slot]!;
      if (state === EMPTY) return -1;
      if (state !== TOMBSTONE && this.keys[slot] === nodeId) return slot;
    }
  }

  /** Slots looked at to find `nodeId`, or to find it absent. */
  probes(nodeId: NodeId): number {
    let count = 1;
    for (let slot = keyedHash(nodeId) >>> this.shift; ; slot = (slot + 1) & this.mask, count++) {
      const state = this.states[slot]!;
      if (state === EMPTY || (state !== TOMBSTONE && this.keys[slot] === nodeId)) return count;
    }
  }

  freeSlotFor(nodeId: NodeId): number {
    let slot = keyedHash(nodeId) >>> this.shift;
    while (this.states[slot] !== EMPTY && this.states[slot] !== TOMBSTONE) slot = (slot + 1) & this.mask;
    return slot;
  }

  nodeAt(slot: number): NodeId {
    const state = this.states[slot]!;
    return state === EMPTY || state === TOMBSTONE ? 0 : this.keys[slot]!;
  }
}

export class PlacementTable<I extends { readonly id: string }> {
  private slots: Slots;
  /** The slots a rebuild is moving entries out of, and how far it has got. */
  private old: Slots | undefined;
  private moved = 0;
  private readonly instances: I[] = [];
  private readonly indexOf = new Map<I, number>();
  private entries = 0;
  /** Tombstones in the current slots. */
  private tombstones = 0;
  /** Bumped when a rebuild starts and ends: slot numbers from before mean nothing after. */
  generation = 0;

  /**
   * `minCapacity`: a power of two; tests use small ones to meet rebuilds
   * often. `withPayloads`: keep a number per entry (payloadAt, set's last argument).
   */
  constructor(private readonly minCapacity = MIN_CAPACITY, private readonly withPayloads = false) {
    if (minCapacity < 8 || (minCapacity & (minCapacity - 1)) !== 0) throw new RangeError('minCapacity must be a power of two, at least 8');
    this.slots = new Slots(minCapacity, withPayloads);
  }

  get size(): number {
    return this.entries;
  }

  /** A rebuild is moving entries: slots cannot be walked now. */
  get migrating(): boolean {
    return this.old !== undefined;
  }

  /** Moves up to `slots` old slots of a running rebuild; true when none is left (a snapshot about to walk calls this, a slice per turn). */
  advanceRebuild(slots: number): boolean {
    this.moveSome(slots);
    return this.old === undefined;
  }

  /** Room for `count` entries without a rebuild (a load that knows its size calls this first, on a new table). */
  reserve(count: number): void {
    if (count + this.tombstones <= this.slots.capacity * MAX_LOAD) return;
    this.startRebuild(count);
    this.moveSome(Infinity);
  }

  /** The slot holding `nodeId`, or -1. Hot path: no allocation. */
  find(nodeId: NodeId): number {
    const slot = this.slots.find(nodeId);
    if (slot >= 0 || this.old === undefined) return slot;
    // Not moved yet: move it now, so slots returned are always current ones.
    const oldSlot = this.old.find(nodeId);
    return oldSlot < 0 ? -1 : this.moveOne(oldSlot);
  }

  /**
   * @internal Slots `find` looks at for `nodeId` (the old slots too, while
   * a rebuild runs and it is not moved yet): the cost of a lookup, which
   * tests bound for IDs chosen to collide.
   */
  probes(nodeId: NodeId): number {
    const inCurrent = this.slots.probes(nodeId);
    if (this.old === undefined || this.slots.find(nodeId) >= 0) return inCurrent;
    return inCurrent + this.old.probes(nodeId);
  }

  instanceAt(slot: number): I {
    return this.instances[this.slots.instanceIndexes[slot]!]!;
  }

  kindAt(slot: number): AttachKind {
    return KINDS[this.slots.states[slot]!]!;
  }

  revAt(slot: number): number {
    return this.slots.revs[slot]!;
  }

  /** The number kept with the entry in `slot` (a table made withPayloads; 0 otherwise). */
  payloadAt(slot: number): number {
    return this.slots.payloads?.[slot] ?? 0;
  }

  set(nodeId: NodeId, instance: I, kind: AttachKind, rev: number, payload = 0): void {
    let slot = this.find(nodeId);
    if (slot < 0) {
      if (this.old === undefined && this.entries + 1 + this.tombstones > this.slots.capacity * MAX_LOAD) this.startRebuild(this.entries + 1);
      slot = this.slots.freeSlotFor(nodeId);
      if (this.slots.states[slot] === TOMBSTONE) this.tombstones--;
      this.slots.keys[slot] = nodeId;
      this.entries++;
    }
    this.slots.states[slot] = KIND_CODE[kind];
    this.slots.revs[slot] = rev;
    this.slots.instanceIndexes[slot] = this.indexFor(instance);
    if (this.slots.payloads) this.slots.payloads[slot] = payload;
    this.moveSome(MOVE_PER_CHANGE);
  }

  delete(nodeId: NodeId): boolean {
    const slot = this.find(nodeId);
    if (slot >= 0) {
      this.slots.states[slot] = TOMBSTONE;
      this.entries--;
      this.tombstones++;
    }
    this.moveSome(MOVE_PER_CHANGE);
    return slot >= 0;
  }

  /** Slots to walk for every entry: 0 ≤ slot < slotCount (see nodeAt); not while migrating. */
  get slotCount(): number {
    return this.slots.capacity;
  }

  /** The node in `slot`, or 0 when the slot holds none. */
  nodeAt(slot: number): NodeId {
    return this.slots.nodeAt(slot);
  }

  /** Every entry as [node, slot]; nothing may change the table during the loop. */
  *[Symbol.iterator](): IterableIterator<[NodeId, number]> {
    this.moveSome(Infinity);
    for (let slot = 0; slot < this.slots.capacity; slot++) {
      const nodeId = this.slots.nodeAt(slot);
      if (nodeId !== 0) yield [nodeId, slot];
    }
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

  /** New slots sized for `count` entries at half load; the old ones empty out as changes come. */
  private startRebuild(count: number): void {
    this.moveSome(Infinity); // at most one rebuild at a time
    let capacity = this.minCapacity;
    while (capacity * 0.5 < count) capacity *= 2;
    this.old = this.slots;
    this.moved = 0;
    this.slots = new Slots(capacity, this.withPayloads);
    this.tombstones = 0;
    this.generation++;
  }

  /** Moves the entries of up to `count` old slots into the current ones. */
  private moveSome(count: number): void {
    const old = this.old;
    if (old === undefined) return;
    const end = Math.min(old.capacity, this.moved + count);
    for (; this.moved < end; this.moved++) {
      if (old.nodeAt(this.moved) !== 0) this.moveOne(this.moved);
    }
    if (this.moved === old.capacity) {
      this.old = undefined;
      this.generation++;
    }
  }

  /** Moves one old slot's entry; returns its new slot. */
  private moveOne(oldSlot: number): number {
    const old = this.old!;
    const nodeId = old.keys[oldSlot]!;
    const slot = this.slots.freeSlotFor(nodeId);
    if (this.slots.states[slot] === TOMBSTONE) this.tombstones--;
    this.slots.keys[slot] = nodeId;
    this.slots.states[slot] = old.states[oldSlot]!;
    this.slots.revs[slot] = old.revs[oldSlot]!;
    this.slots.instanceIndexes[slot] = old.instanceIndexes[oldSlot]!;
    if (this.slots.payloads) this.slots.payloads[slot] = old.payloads![oldSlot]!;
    old.states[oldSlot] = TOMBSTONE; // keeps the old probe chains whole
    return slot;
  }
}
