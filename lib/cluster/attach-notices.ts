/**
 * Attach notices: other instances learn of a new attachment at once, not
 * when the KV entry comes round through JetStream.
 *
 * - When a node attaches here over WebSocket (auth_ok), the instance
 *   writes its directory entry as before and, in the same turn, publishes
 *   a notice on `<name>.att.<instance>` over core NATS: `<node> w
 *   <instance>`, one short ASCII line. (Instances of an older version also
 *   sent `u` notices for UDP endpoints; those are ignored: UDP claims have
 *   their own subject, udp-claims.ts, and never shadow a WebSocket.) At most once, like
 *   heartbeats: a lost notice costs only the head start.
 * - The other instances keep a notice as a provisional route in a small
 *   table (ProvisionalRoutes): capped at MAX_PROVISIONAL entries (the
 *   oldest goes first) and forgotten after PROVISIONAL_TTL_MS. The router
 *   asks it before the mirror, and only while it holds anything.
 * - The KV entry is the truth. The one that names the notice's instance
 *   confirms it, and the provisional route goes (the mirror now says the
 *   same). One that names another instance leaves it standing: through
 *   one NATS server an instance's notice arrives before its own KV entry,
 *   so such an entry is older than the notice (the node was there before).
 * - A newer notice for the node replaces the route; a node that attaches
 *   here forgets it. A route to an instance that dies stops at once (the
 *   router checks `live`). A notice from an instance we have not heard
 *   heartbeat is ignored; one that is not ours (garbage, or on another
 *   instance's subject) is counted `cluster_malformed`.
 * - Notices do not decide evictions (4001): only KV revisions do.
 */
import type { NodeId } from '../protocol/packets';
import { NodeMap } from '../tables/node-map';
import type { Instance } from './instances';
import { decodePlacement, decodeNodeKey, encodePlacement, type AttachKind } from './wire';

/**
 * How long a notice stands without its KV entry. The entry usually comes
 * within tens of milliseconds (p99 about 100 ms on a loaded 2-core
 * machine); a reconnect storm behind the 256-write window can take longer,
 * and past this the mirror routes as it would without notices. It is also
 * the longest a stale notice (its own KV entry lost) can misroute.
 */
export const PROVISIONAL_TTL_MS = 2_000;

/**
 * Provisional routes held at once (~120 bytes each, so ~8 MB at most).
 * They only live until their KV entry comes, so this is thousands of
 * attaches per second cluster-wide with seconds of KV lag; beyond it the
 * oldest are dropped, which only costs their head start.
 */
export const MAX_PROVISIONAL = 65_536;

export interface AttachNotice {
  nodeId: NodeId;
  kind: AttachKind;
  instanceId: string;
}

export function encodeAttachNotice(nodeId: NodeId, kind: AttachKind, instanceId: string): string {
  return `${nodeId} ${encodePlacement(kind, instanceId)}`;
}

/** The notice, or undefined for anything that is not one of ours. */
export function decodeAttachNotice(text: string): AttachNotice | undefined {
  const space = text.indexOf(' ');
  if (space < 0) return undefined;
  const nodeId = decodeNodeKey(text.slice(0, space));
  const placement = decodePlacement(text.slice(space + 1));
  return nodeId !== undefined && placement ? { nodeId, ...placement } : undefined;
}

interface Provisional {
  instance: Instance;
  kind: AttachKind;
  /** When the notice came (clock ms). */
  at: number;
}

export class ProvisionalRoutes {
  /**
   * In order of arrival (a renewed route moves to the end), so expiry and
   * the cap take from the front. A NodeMap, not a Map: a stranger's
   * Discover at any instance becomes a notice here, so the IDs are chosen.
   */
  private readonly routes = new NodeMap<Provisional>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ttlMs = PROVISIONAL_TTL_MS,
    private readonly cap = MAX_PROVISIONAL,
    private readonly clock: () => number = Date.now,
  ) {}

  get size(): number {
    return this.routes.size;
  }

  /**
   * A notice: `nodeId` just attached to `instance`. `mirrored` is the
   * instance the mirror names for it, if any: a notice that only repeats
   * it (its KV entry came first) adds nothing.
   */
  noted(nodeId: NodeId, instance: Instance, kind: AttachKind, mirrored: Instance | undefined): void {
    this.routes.delete(nodeId);
    if (instance.self || instance === mirrored) return;
    if (this.routes.size >= this.cap) this.routes.delete(this.routes.oldest()!);
    this.routes.set(nodeId, { instance, kind, at: this.clock() });
    this.expireLater();
  }

  /** The mirror got a KV entry naming `instance` for the node: a notice from it is confirmed. */
  confirmed(nodeId: NodeId, instance: Instance): void {
    if (this.routes.get(nodeId)?.instance === instance) this.routes.delete(nodeId);
  }

  /** The node attached here: notices from elsewhere are older. */
  forget(nodeId: NodeId): void {
    this.routes.delete(nodeId);
  }

  /** The live instance, other than this one, a notice names for `nodeId`. Hot path: one lookup. */
  instanceOf(nodeId: NodeId): Instance | undefined {
    const route = this.routes.get(nodeId);
    if (route === undefined) return undefined;
    const { instance } = route;
    return instance.live && !instance.self ? instance : undefined;
  }

  /** The notice standing for `nodeId`, live instance or not. */
  placementOf(nodeId: NodeId): { readonly instance: Instance; readonly kind: AttachKind } | undefined {
    return this.routes.get(nodeId);
  }

  /** A notice says the node is on a WebSocket of another live instance (docs/protocol.md §3). */
  isWssElsewhere(nodeId: NodeId): boolean {
    const route = this.routes.get(nodeId);
    return route !== undefined && route.kind === 'wss' && route.instance.live && !route.instance.self;
  }

  /** Forgets routes older than the TTL. */
  expire(now = this.clock()): void {
    for (const [nodeId, route] of this.routes) {
      if (now - route.at < this.ttlMs) break;
      this.routes.delete(nodeId);
    }
    if (this.routes.size === 0) this.stop();
  }

  /** Forgets everything (cut off from NATS: notices may have been missed; or closing). */
  clear(): void {
    this.routes.clear();
    this.stop();
  }

  private expireLater(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.expire(), Math.max(10, Math.floor(this.ttlMs / 4)));
    this.timer.unref();
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
