/**
 * Directory snapshots: how a newcomer loads the directory from a live
 * instance's mirror instead of watching every key of the bucket.
 *
 * Why: a KV watch from the start makes nats-server 2.9 find the last entry
 * of every key before it sends one (about 7.5 s for a million keys), then
 * sends one message per key (about 11 s more through the client). A live
 * instance already holds all of it in memory: it streams its mirror in
 * chunks of thousands of entries over core NATS, and the newcomer then
 * watches only what changed since, from a revision (no per-key scan).
 *
 * Correctness: the server notes R, the last revision its mirror reflects,
 * and walks its mirror over several turns while the watch keeps changing
 * it, so the chunks are a mix of states between R and later. The newcomer
 * applies every entry only over an older revision, then replays the
 * bucket from R + 1: every change after R comes again, in order, so the
 * result is the bucket's state, whatever the mix.
 *
 * Everything here is bytes and bookkeeping; nats-cluster.ts does the I/O.
 *
 * A chunk (big-endian):
 *   'BDS1' | flags u8 | index u32 | fromRevision f64 | total u32 | instances u16
 *   | instances × (length u8 | ID bytes) | entries u32
 *   | entries × (node u32 | instance index u16 | kind u8 | revision f64)
 * total: the server's entries when its walk began, so the newcomer makes
 * room for them at once. flags: LAST ends the snapshot; REFUSED says "not now" (the instance is
 * loading itself, or already serving two), so the newcomer asks again.
 */
import { MAX_NODE_ID, type NodeId } from '../protocol/packets';
import type { AttachKind } from './wire';

const MAGIC = 0x42445331; // 'BDS1'
export const SNAPSHOT_FLAG_LAST = 1;
export const SNAPSHOT_FLAG_REFUSED = 2;
const HEADER_BYTES = 4 + 1 + 4 + 8 + 4 + 2;
const ENTRY_BYTES = 4 + 2 + 1 + 8;
const INSTANCE_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
const KIND_BYTE: Record<AttachKind, number> = { wss: 0, udp: 1 };
const KINDS: readonly AttachKind[] = ['wss', 'udp'];

/** Entries per chunk: about 240 KiB, well under NATS's default 1 MiB max_payload. */
export const SNAPSHOT_CHUNK_ENTRIES = 16_384;
/**
 * Entries the newcomer checks and applies per event-loop turn. Measured on
 * a million entries: a whole chunk per turn ran up to 61 ms of the loop's
 * own time in a newcomer whose code was not yet optimized.
 */
export const SNAPSHOT_SLICE_ENTRIES = 4_096;
/** Bytes of instance IDs one chunk may name (a chunk that would name more ends early). */
const TABLE_BUDGET = 64 * 1024;

/**
 * The mirror as the server walks it, slot by slot across turns. Its
 * entries stay in their slots until it is rebuilt, which bumps
 * `generation` and voids the walk (PlacementTable).
 */
export interface SnapshotSource {
  readonly generation: number;
  /** Entries are moving between slots (a rebuild): no walk may start. */
  readonly migrating: boolean;
  readonly slotCount: number;
  readonly size: number;
  /** The node in `slot`, or 0 when the slot holds none. */
  nodeAt(slot: number): NodeId;
  instanceAt(slot: number): { readonly id: string };
  kindAt(slot: number): AttachKind;
  revAt(slot: number): number;
}

/** The largest number of entries per chunk that fits `maxPayload` with room for the instance table. */
export function chunkEntriesFor(maxPayload: number): number {
  const room = maxPayload - HEADER_BYTES - 4 - TABLE_BUDGET;
  return Math.max(1, Math.min(SNAPSHOT_CHUNK_ENTRIES, Math.floor(room / ENTRY_BYTES)));
}

/** Builds the chunks of one snapshot from the live mirror, a chunk per call. */
export class SnapshotWriter {
  private index = 0;
  private done = false;
  private slot = 0;
  private readonly generation: number;
  private readonly startedMigrating: boolean;
  private readonly slots: number;
  private readonly total: number;
  private readonly scratch: Buffer;

  constructor(
    private readonly source: SnapshotSource,
    private readonly fromRevision: number,
    private readonly maxEntries = SNAPSHOT_CHUNK_ENTRIES,
  ) {
    this.generation = source.generation;
    this.startedMigrating = source.migrating;
    this.slots = source.slotCount;
    this.total = source.size;
    this.scratch = Buffer.allocUnsafe(maxEntries * ENTRY_BYTES);
  }

  /** The mirror was being rebuilt or was rebuilt since the walk began: entries moved, so the snapshot is void (refuse; the newcomer asks again). */
  get invalidated(): boolean {
    return this.startedMigrating || this.source.generation !== this.generation;
  }

  /** The next chunk, or undefined after the last one or once invalidated. */
  next(): Buffer | undefined {
    if (this.done || this.invalidated) return undefined;
    const { source } = this;
    const instances = new Map<string, number>();
    let tableBytes = 0;
    let count = 0;
    let at = 0;
    for (; count < this.maxEntries; this.slot++) {
      if (this.slot === this.slots) {
        this.done = true;
        break;
      }
      const nodeId = source.nodeAt(this.slot);
      if (nodeId === 0) continue;
      const instanceId = source.instanceAt(this.slot).id;
      let instance = instances.get(instanceId);
      if (instance === undefined) {
        if (tableBytes + 1 + instanceId.length > TABLE_BUDGET) break; // this slot opens the next chunk
        tableBytes += 1 + instanceId.length;
        instance = instances.size;
        instances.set(instanceId, instance);
      }
      this.scratch.writeUInt32BE(nodeId, at);
      this.scratch.writeUInt16BE(instance, at + 4);
      this.scratch.writeUInt8(KIND_BYTE[source.kindAt(this.slot)], at + 6);
      this.scratch.writeDoubleBE(source.revAt(this.slot), at + 7);
      at += ENTRY_BYTES;
      count++;
    }
    const ids = [...instances.keys()].map((id) => Buffer.from(id, 'latin1'));
    const chunk = Buffer.allocUnsafe(HEADER_BYTES + ids.reduce((n, id) => n + 1 + id.length, 0) + 4 + at);
    let p = writeHeader(chunk, this.done ? SNAPSHOT_FLAG_LAST : 0, this.index++, this.fromRevision, this.total, ids.length);
    for (const id of ids) {
      chunk.writeUInt8(id.length, p);
      p += 1 + id.copy(chunk, p + 1);
    }
    chunk.writeUInt32BE(count, p);
    this.scratch.copy(chunk, p + 4, 0, at);
    return chunk;
  }
}

/** The answer of an instance that cannot serve a snapshot now. */
export function refusedChunk(): Buffer {
  const chunk = Buffer.alloc(HEADER_BYTES + 4);
  writeHeader(chunk, SNAPSHOT_FLAG_REFUSED | SNAPSHOT_FLAG_LAST, 0, 0, 0, 0);
  return chunk;
}

function writeHeader(chunk: Buffer, flags: number, index: number, fromRevision: number, total: number, instances: number): number {
  chunk.writeUInt32BE(MAGIC, 0);
  chunk.writeUInt8(flags, 4);
  chunk.writeUInt32BE(index, 5);
  chunk.writeDoubleBE(fromRevision, 9);
  chunk.writeUInt32BE(Math.min(total, 0xffffffff), 17);
  chunk.writeUInt16BE(instances, 21);
  return HEADER_BYTES;
}

/** A chunk whose header, instance table and length have been checked; its entries are checked as they are read. */
export interface SnapshotChunk {
  flags: number;
  index: number;
  fromRevision: number;
  /** The server's entries when its walk began (a hint for making room). */
  total: number;
  instanceIds: string[];
  count: number;
  bytes: Buffer;
  entriesAt: number;
}

/** Checks a chunk's header, instance table and length; undefined when it is not one of ours. */
export function decodeSnapshotChunk(data: Uint8Array): SnapshotChunk | undefined {
  const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (bytes.length < HEADER_BYTES + 4 || bytes.readUInt32BE(0) !== MAGIC) return undefined;
  const flags = bytes.readUInt8(4);
  const index = bytes.readUInt32BE(5);
  const fromRevision = bytes.readDoubleBE(9);
  const total = bytes.readUInt32BE(17);
  if ((flags & ~(SNAPSHOT_FLAG_LAST | SNAPSHOT_FLAG_REFUSED)) !== 0 || !isRevision(fromRevision, true)) return undefined;
  const instanceIds: string[] = [];
  let at = HEADER_BYTES;
  for (let n = bytes.readUInt16BE(21); n > 0; n--) {
    if (at >= bytes.length) return undefined;
    const length = bytes.readUInt8(at);
    const id = bytes.toString('latin1', at + 1, at + 1 + length);
    if (at + 1 + length > bytes.length || !INSTANCE_ID.test(id)) return undefined;
    instanceIds.push(id);
    at += 1 + length;
  }
  if (at + 4 > bytes.length) return undefined;
  const count = bytes.readUInt32BE(at);
  const entriesAt = at + 4;
  if (bytes.length - entriesAt !== count * ENTRY_BYTES) return undefined;
  return { flags, index, fromRevision, total, instanceIds, count, bytes, entriesAt };
}

/**
 * Checks and visits the entries `from` to `to` of a decoded chunk, with the
 * instances resolved once per call; false at the first entry that is not
 * well formed (those before it were visited: the caller drops the load).
 */
export function forEachSnapshotEntry<I>(
  chunk: SnapshotChunk, resolve: (instanceId: string) => I, visit: (nodeId: NodeId, instance: I, kind: AttachKind, rev: number) => void,
  from = 0, to = chunk.count,
): boolean {
  const instances = chunk.instanceIds.map(resolve);
  const { bytes } = chunk;
  for (let i = from, p = chunk.entriesAt + from * ENTRY_BYTES; i < to; i++, p += ENTRY_BYTES) {
    const nodeId = bytes.readUInt32BE(p);
    const instance = bytes.readUInt16BE(p + 4);
    const kind = bytes.readUInt8(p + 6);
    const rev = bytes.readDoubleBE(p + 7);
    if (nodeId === 0 || nodeId > MAX_NODE_ID || instance >= instances.length || kind >= KINDS.length || !isRevision(rev, false)) return false;
    visit(nodeId, instances[instance]!, KINDS[kind]!, rev);
  }
  return true;
}

function isRevision(value: number, zeroAllowed: boolean): boolean {
  return Number.isSafeInteger(value) && (value > 0 || (zeroAllowed && value === 0));
}

/**
 * The newcomer's side: chunks must come in order, one snapshot, ending
 * with LAST. Entries are checked and applied a slice per event-loop turn,
 * so a burst of chunks read at once never stalls the loop for longer than
 * one slice.
 */
export type ReceiveOutcome = { kind: 'loaded'; fromRevision: number; entries: number } | { kind: 'refused' } | { kind: 'failed'; why: string };

export class SnapshotReceiver {
  private expected = 0;
  private fromRevision = -1;
  private readonly queue: SnapshotChunk[] = [];
  /** Entries of the chunk at the head of the queue already applied. */
  private applied = 0;
  private draining = false;
  private finished = false;
  private entries = 0;
  private lastReceived = false;

  constructor(
    /** Applies entries `from` to `to` of a chunk; false when one is not well formed. */
    private readonly apply: (chunk: SnapshotChunk, from: number, to: number) => boolean,
    private readonly onMalformed: () => void,
    private readonly settle: (outcome: ReceiveOutcome) => void,
  ) {}

  /** One message on the newcomer's inbox. */
  accept(data: Uint8Array): void {
    if (this.finished) return;
    const chunk = decodeSnapshotChunk(data);
    if (!chunk) {
      this.onMalformed();
      return this.end({ kind: 'failed', why: 'a malformed chunk' });
    }
    if (chunk.flags & SNAPSHOT_FLAG_REFUSED) return this.end({ kind: 'refused' });
    if (chunk.index !== this.expected || (this.fromRevision >= 0 && chunk.fromRevision !== this.fromRevision)) {
      return this.end({ kind: 'failed', why: `chunk ${chunk.index} where ${this.expected} was due (one was lost)` });
    }
    this.expected++;
    this.fromRevision = chunk.fromRevision;
    if (chunk.flags & SNAPSHOT_FLAG_LAST) this.lastReceived = true;
    this.queue.push(chunk);
    if (!this.draining) {
      this.draining = true;
      setImmediate(() => this.drain());
    }
  }

  /** The last chunk has come (some may still be waiting to be applied). */
  get receivedAll(): boolean {
    return this.lastReceived;
  }

  /** Gives up (a timeout, a lost connection); nothing more is applied. */
  fail(why: string): void {
    this.end({ kind: 'failed', why });
  }

  private drain(): void {
    const chunk = this.queue[0];
    if (!chunk || this.finished) {
      this.draining = false;
      return;
    }
    const to = Math.min(chunk.count, this.applied + SNAPSHOT_SLICE_ENTRIES);
    if (!this.apply(chunk, this.applied, to)) {
      this.onMalformed();
      return this.end({ kind: 'failed', why: `a malformed entry in chunk ${chunk.index}` });
    }
    this.entries += to - this.applied;
    this.applied = to;
    if (to === chunk.count) {
      this.queue.shift();
      this.applied = 0;
      if (chunk.flags & SNAPSHOT_FLAG_LAST) return this.end({ kind: 'loaded', fromRevision: chunk.fromRevision, entries: this.entries });
    }
    setImmediate(() => this.drain());
  }

  private end(outcome: ReceiveOutcome): void {
    if (this.finished) return;
    this.finished = true;
    this.queue.length = 0;
    this.settle(outcome);
  }
}
