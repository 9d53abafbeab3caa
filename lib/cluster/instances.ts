/**
 * The instances of a cluster and whether each is alive (liveness).
 *
 * - Every instance publishes a heartbeat every `deadAfterMs / 5`; one not
 *   heard from for `deadAfterMs` is dead: `live` turns false, so mirrors
 *   stop routing to it at once (the router reads the flag, nothing else).
 *   One that says goodbye (a graceful stop) is not live from then on.
 * - One survivor, the live instance with the lowest ID, removes a dead
 *   instance's directory entries (also those of an instance it never heard
 *   from, once it has listened for dead-after); the others wait for the
 *   deletes.
 * - While this instance is cut off from NATS nobody is declared dead (we
 *   cannot hear them); on reconnect everyone gets a fresh `deadAfterMs`.
 * - An Instance also carries what the forwarder batches for it this turn,
 *   so a forwarded frame costs no lookup beyond the directory's.
 */
import type { ClusterInstance } from '../relay/router';
import type { OutgoingBatch } from './forwarder';

export class Instance implements ClusterInstance {
  live: boolean;
  lastSeen = 0;
  incarnation = '';
  /** Its entries were removed (by us, as the sweeper) since it died. */
  swept = false;
  /** The forwarder's batch for it (forwarder.ts); undefined until a relay is forwarded to it. */
  outgoing: OutgoingBatch | undefined;
  /**
   * It listens on this instance's own --bind and --udp (--reuse-port, same
   * machine: shared-address.ts), so its UDP claims' endpoints can be sent
   * to from this instance's socket. Said by its heartbeats; for this
   * instance, whether it shares an address at all.
   */
  sharesAddress = false;
  /** WebSocket peers it holds, as its last heartbeat said (undefined: an older version, which does not say). */
  peers: number | undefined;
  /** Its heartbeats say it is draining (a graceful stop): it is no longer counted when rebalancing. */
  draining = false;
  /** When it came (back) to life (its first heartbeat, or a new incarnation), ms; for this instance, when it joined. */
  cameAt = 0;

  constructor(readonly id: string, readonly self: boolean, readonly forwardSubject: string) {
    this.live = self;
  }
}

export class Instances {
  private readonly byId = new Map<string, Instance>();
  readonly self: Instance;

  constructor(selfId: string, private readonly deadAfterMs: number, private readonly forwardSubject: (id: string) => string) {
    this.self = new Instance(selfId, true, forwardSubject(selfId));
    this.byId.set(selfId, this.self);
  }

  /** The instance named `id`, known from now on (not live until it heartbeats). */
  get(id: string): Instance {
    let instance = this.byId.get(id);
    if (!instance) {
      instance = new Instance(id, false, this.forwardSubject(id));
      this.byId.set(id, instance);
    }
    return instance;
  }

  /** The instance named `id` if we have heard of it; unlike `get`, names nothing new. */
  find(id: string): Instance | undefined {
    return this.byId.get(id);
  }

  /** Records a heartbeat; returns the instance, and whether it just came (back) to life. */
  heartbeat(id: string, incarnation: string, now: number): { instance: Instance; cameAlive: boolean } {
    const instance = this.get(id);
    const cameAlive = !instance.live || instance.incarnation !== incarnation;
    if (cameAlive) instance.cameAt = now;
    instance.lastSeen = now;
    instance.incarnation = incarnation;
    instance.live = true;
    instance.swept = false;
    return { instance, cameAlive };
  }

  /**
   * A goodbye from `id`: the instance, no longer live, if it was live under
   * that incarnation; undefined otherwise (unknown, already gone, or a goodbye
   * from an earlier process under the same ID).
   */
  left(id: string, incarnation: string): Instance | undefined {
    const instance = this.byId.get(id);
    if (!instance || instance.self || !instance.live || instance.incarnation !== incarnation) return undefined;
    instance.live = false;
    return instance;
  }

  /** Instances silent past dead-after, now dead. Call only while connected. */
  expire(now: number): Instance[] {
    const died: Instance[] = [];
    for (const instance of this.byId.values()) {
      if (instance.self || !instance.live || now - instance.lastSeen <= this.deadAfterMs) continue;
      instance.live = false;
      died.push(instance);
    }
    return died;
  }

  /** After a reconnect: everyone gets a fresh dead-after to be heard again. */
  graceAll(now: number): void {
    for (const instance of this.byId.values()) instance.lastSeen = now;
  }

  /** Dead instances whose entries nobody has removed yet, when this instance is the one to do it. */
  toSweep(): Instance[] {
    let lowest = this.self.id;
    for (const instance of this.byId.values()) if (instance.live && instance.id < lowest) lowest = instance.id;
    if (lowest !== this.self.id) return [];
    return [...this.byId.values()].filter((instance) => !instance.live && !instance.swept);
  }

  /** The live instance (this one included) with the lowest ID among those `matching`; undefined when none. */
  lowestLive(matching: (instance: Instance) => boolean): Instance | undefined {
    let lowest: Instance | undefined;
    for (const instance of this.byId.values()) {
      if (instance.live && matching(instance) && (lowest === undefined || instance.id < lowest.id)) lowest = instance;
    }
    return lowest;
  }

  /** Every live instance, this one included. */
  live(): Instance[] {
    return [...this.byId.values()].filter((instance) => instance.live);
  }

  get liveCount(): number {
    let n = 0;
    for (const instance of this.byId.values()) if (instance.live) n++;
    return n;
  }
}
