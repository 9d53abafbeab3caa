/**
 * The directory: which instance each node is attached to, and how.
 *
 * - The truth is a JetStream KV bucket, one key per node, written on attach
 *   and deleted on detach; every instance mirrors it in memory through a KV
 *   watch, so the router decides synchronously (one Map lookup, no await,
 *   no allocation per packet).
 * - One node, one attachment cluster-wide: the last writer wins by KV
 *   revision. An instance whose node is written anew by another instance
 *   evicts its own attachment (WebSocket: close 4001; UDP: forget the
 *   endpoint). A write still in flight is compared when its revision comes.
 * - Deletes are conditional on our own revision, so a replaced attachment's
 *   teardown never removes the newer entry, in the KV as in the local map.
 * - Self-healing: an entry of ours that we no longer hold (a delete lost
 *   while cut off, an earlier life of this instance ID) is deleted when the
 *   watch shows it; an entry of ours deleted by someone else (a survivor
 *   that took us for dead) is written again.
 * - Trust only goes up: the directory holds WebSocket attachments (UDP
 *   claims are soft state, udp-claims.ts). A `u` entry (written by an
 *   instance of an older version) never replaces a live instance's
 *   WebSocket entry in the mirror, and never evicts ours: ours is written
 *   again, so the bucket says the truth. A WebSocket entry elsewhere makes
 *   this instance give up its UDP claim for the node (`wssAttachedElsewhere`).
 */
import type { NodeId } from '../protocol/packets';
import type { Instance } from './instances';
import { NodeMap } from '../tables/node-map';
import { PlacementTable } from './placement-table';
import { encodePlacement, type AttachKind } from './wire';


/** The KV operations the directory needs (the NATS bucket, or nothing while cut off). */
export interface DirectoryStore {
  put(key: string, value: string): Promise<number>;
  delete(key: string, previousRev: number): Promise<void>;
}

/** A node attached here, as announced (or being announced) in the KV. */
interface OwnEntry {
  kind: AttachKind;
  /** Revision of our write; undefined while it is in flight (or not yet sent). */
  rev: number | undefined;
  /** Highest revision another instance wrote for this node while ours was in flight. */
  remoteRev: number;
  /** Highest revision of a `u` entry written over ours while ours was in flight: ours is written again when it lands. */
  udpOverRev: number;
}

export interface DirectoryDeps {
  self: Instance;
  /** Another instance now holds `nodeId`: drop our attachment of `kind` (4001 / forget the endpoint). */
  evict(nodeId: NodeId, kind: AttachKind): void;
  /** The mirror now says another live instance holds `nodeId` over WebSocket (a UDP claim here gives way). */
  wssAttachedElsewhere?(nodeId: NodeId): void;
  /** A KV operation failed (cut off, timeout); reconnecting re-announces everything. */
  onStoreError(err: unknown, op: string): void;
  /** Smallest mirror table (tests use small ones to meet rebuilds). */
  minTableCapacity?: number;
}

/**
 * KV writes in flight at once. A reconnect re-announces every node of this
 * instance and a survivor deletes every entry of a dead one: tens of
 * thousands of requests at once would time out in the client's queue
 * rather than wait; beyond the window they wait here, in order.
 */
export const STORE_WINDOW = 256;

/** Runs at most `limit` async operations at once, the rest in order as slots free. */
class Window {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  run<T>(op: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.running++;
        op().then(resolve, reject).finally(() => {
          this.running--;
          this.waiting.shift()?.();
        });
      };
      if (this.running < this.limit) start();
      else this.waiting.push(start);
    });
  }
}

export class Directory {
  /** Where each node is attached, with its KV revision. */
  private mirror: PlacementTable<Instance>;
  /**
   * While (re)loading, entries go here and routes keep using the old
   * mirror; the new one replaces it in one step when the load is complete,
   * so entries deleted while we were away do not linger.
   */
  private next: PlacementTable<Instance> | undefined;
  private readonly window = new Window(STORE_WINDOW);
  /** Keyed by IDs strangers choose (UDP claims), so a NodeMap (see lib/tables). */
  private readonly own = new NodeMap<OwnEntry>();
  /** Set while connected and the bucket is open. */
  store: DirectoryStore | undefined;

  constructor(private readonly deps: DirectoryDeps) {
    this.mirror = new PlacementTable(deps.minTableCapacity);
  }

  get size(): number {
    return this.mirror.size;
  }

  /** The live instance, other than this one, that holds `nodeId`. Hot path. */
  instanceOf(nodeId: NodeId): Instance | undefined {
    const slot = this.mirror.find(nodeId);
    if (slot < 0) return undefined;
    const instance = this.mirror.instanceAt(slot);
    return instance.live && !instance.self ? instance : undefined;
  }

  /** Attached over WebSocket to another live instance (docs/protocol.md §3 across instances). */
  isWssElsewhere(nodeId: NodeId): boolean {
    return this.wssHolderOf(nodeId) !== undefined;
  }

  /** The other live instance the mirror says holds `nodeId` over WebSocket (not this one: see isOwn). */
  wssHolderOf(nodeId: NodeId): Instance | undefined {
    const slot = this.mirror.find(nodeId);
    if (slot < 0 || this.mirror.kindAt(slot) !== 'wss') return undefined;
    const instance = this.mirror.instanceAt(slot);
    return instance.live && !instance.self ? instance : undefined;
  }

  /** @internal Slots the mirror looks at to find `nodeId` (tests bound it for IDs chosen to collide). */
  probes(nodeId: NodeId): number {
    return this.mirror.probes(nodeId);
  }

  isOwn(nodeId: NodeId, kind: AttachKind): boolean {
    return this.own.get(nodeId)?.kind === kind;
  }

  // ---- local attachments ---------------------------------------------------

  /** A node attached here (auth_ok, or a new UDP endpoint). */
  attached(nodeId: NodeId, kind: AttachKind): void {
    const entry = this.own.get(nodeId);
    if (entry?.kind === kind) return; // announced already, or its write is in flight
    this.own.set(nodeId, { kind, rev: undefined, remoteRev: 0, udpOverRev: 0 });
    this.announce(nodeId);
  }

  /** A node's attachment of `kind` here ended (only when it was the current one). */
  detached(nodeId: NodeId, kind: AttachKind): void {
    const entry = this.own.get(nodeId);
    if (!entry || entry.kind !== kind) return;
    this.own.delete(nodeId);
    for (const table of [this.mirror, this.next]) {
      const slot = table?.find(nodeId) ?? -1;
      if (slot >= 0 && table!.instanceAt(slot).self) table!.delete(nodeId);
    }
    // A write in flight is deleted when its revision comes back (announce).
    if (entry.rev !== undefined) this.remove(nodeId, entry.rev);
  }

  /** After (re)connecting: write every attachment of ours again. */
  announceAll(): void {
    for (const [nodeId, entry] of this.own) this.announceAgain(nodeId, entry);
  }

  /** On shutdown: delete every entry of ours that has landed; resolves when the deletes did. */
  async withdrawAll(): Promise<void> {
    const deletes: Promise<void>[] = [];
    for (const [nodeId, entry] of this.own) {
      if (entry.rev !== undefined) deletes.push(this.remove(nodeId, entry.rev));
    }
    this.own.clear();
    await Promise.all(deletes);
  }

  // ---- loading, the watch ---------------------------------------------------

  /** A (re)load begins: entries from now on fill a new mirror. */
  beginLoad(): void {
    this.next = new PlacementTable(this.deps.minTableCapacity);
  }

  /** The load in progress will bring about `count` entries: room for them at once, so it never rebuilds. */
  expectEntries(count: number): void {
    (this.next ?? this.mirror).reserve(count);
  }

  /** The load is complete: the new mirror replaces the old one. */
  finishLoad(): void {
    if (!this.next) return;
    this.mirror = this.next;
    this.next = undefined;
  }

  /** The mirror itself, for a snapshot to walk across turns (see PlacementTable.generation). */
  placements(): PlacementTable<Instance> {
    return this.mirror;
  }

  /** A put from the watch or a snapshot; one older than what the mirror holds changes nothing. */
  applyPut(nodeId: NodeId, instance: Instance, kind: AttachKind, rev: number): void {
    const target = this.next ?? this.mirror;
    const slot = target.find(nodeId);
    if (slot >= 0 && target.revAt(slot) >= rev) return;
    const entry = this.own.get(nodeId);
    if (kind === 'udp' && !instance.self) {
      // A UDP claim never takes a node from a WebSocket: not ours (written again), not another live instance's.
      if (entry?.kind === 'wss') {
        if (entry.rev === undefined) entry.udpOverRev = Math.max(entry.udpOverRev, rev);
        else this.announceAgain(nodeId, entry);
        return;
      }
      if (slot >= 0 && target.kindAt(slot) === 'wss' && target.instanceAt(slot).live && target.instanceAt(slot) !== instance) return;
    }
    target.set(nodeId, instance, kind, rev);
    if (kind === 'wss' && !instance.self) this.deps.wssAttachedElsewhere?.(nodeId);
    if (instance.self) {
      // Ours, but not held: left over from a lost delete or an earlier life of this ID.
      if (!entry) this.remove(nodeId, rev);
      return;
    }
    if (!entry) return;
    if (entry.rev === undefined) entry.remoteRev = Math.max(entry.remoteRev, rev);
    else if (rev > entry.rev) this.evict(nodeId, entry.kind);
  }

  applyDelete(nodeId: NodeId, rev: number): void {
    const target = this.next ?? this.mirror;
    const slot = target.find(nodeId);
    if (slot >= 0 && target.revAt(slot) < rev) target.delete(nodeId);
    const entry = this.own.get(nodeId);
    // Someone removed an entry of ours we still hold (took us for dead): write it again.
    if (entry?.rev !== undefined && rev > entry.rev) this.announceAgain(nodeId, entry);
  }

  /** Entries a dead instance held, for the survivor that removes them. */
  entriesOf(instance: Instance): Array<[NodeId, number]> {
    const entries: Array<[NodeId, number]> = [];
    for (const [nodeId, slot] of this.mirror) if (this.mirror.instanceAt(slot) === instance) entries.push([nodeId, this.mirror.revAt(slot)]);
    return entries;
  }

  /** Deletes `nodeId`'s entry if it is still at `rev`. */
  remove(nodeId: NodeId, rev: number): Promise<void> {
    if (!this.store) return Promise.resolve();
    return this.window.run(() => this.store?.delete(String(nodeId), rev) ?? Promise.resolve()).catch((err: unknown) => {
      // "wrong last sequence": someone wrote it since; theirs stands.
      if (!isWrongSequence(err)) this.deps.onStoreError(err, 'delete');
    });
  }

  private evict(nodeId: NodeId, kind: AttachKind): void {
    this.own.delete(nodeId);
    this.deps.evict(nodeId, kind);
  }

  private announce(nodeId: NodeId): void {
    const entry = this.own.get(nodeId);
    if (!this.store || !entry) return; // announced on (re)connect
    this.window.run(() => {
      // Still ours and still connected when its turn comes?
      if (this.own.get(nodeId) !== entry || !this.store) return Promise.resolve(undefined);
      return this.store.put(String(nodeId), encodePlacement(entry.kind, this.deps.self.id));
    }).then((rev) => {
      if (rev === undefined) return;
      const current = this.own.get(nodeId);
      if (current !== entry) {
        // Detached (or replaced by another attachment here) while in flight.
        if (current === undefined) void this.remove(nodeId, rev);
        return;
      }
      entry.rev = rev;
      if (entry.remoteRev > rev) this.evict(nodeId, entry.kind);
      else if (entry.udpOverRev > rev) this.announceAgain(nodeId, entry);
    }, (err: unknown) => this.deps.onStoreError(err, 'put'));
  }

  /** Writes our entry for `nodeId` again (after a reconnect, or when someone removed or overwrote it). */
  private announceAgain(nodeId: NodeId, entry: OwnEntry): void {
    entry.rev = undefined;
    entry.remoteRev = 0;
    entry.udpOverRev = 0;
    this.announce(nodeId);
  }
}

function isWrongSequence(err: unknown): boolean {
  return err instanceof Error && /wrong last sequence/i.test(err.message);
}
