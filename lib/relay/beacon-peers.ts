/**
 * Beacon peers and the nodes they announce (docs/protocol.md §1, Sync).
 *
 * - Only configured peer addresses are beacon peers: a Sync from anyone
 *   else is refused, since it could claim nodes and hijack their traffic.
 * - A Sync replaces everything known from that peer, skipping nodes
 *   attached here; the table is bounded by peers × 65535.
 * - What a peer announced expires when it has sent no Sync for
 *   SYNC_ROUTE_LIFETIME_INTERVALS Sync intervals: a beacon that died
 *   stops getting relays a few intervals later, not at its next Sync.
 * - Matching a datagram's source is allocation-free: addresses are stored
 *   in the form the local socket reports them.
 * - Node IDs index NodeMaps (keyed hash), not Maps: a Sync's source can be
 *   spoofed, so its IDs may be chosen to collide under V8's integer hash.
 */
import { MAX_SYNC_NODES, encodeSync, type NodeId } from '../protocol';
import { NodeMap } from '../tables/node-map';
import type { UdpEndpoint } from '../udp/endpoints';

/** The node IDs one beacon peer announced. */
type Announced = NodeMap<true>;

/** Node IDs that fit in one Sync datagram (65507-byte UDP payload). */
export const MAX_SYNC_NODES_PER_DATAGRAM = Math.min(MAX_SYNC_NODES, Math.floor((65_507 - 7) / 4));

/**
 * Sync intervals without a Sync after which a peer's routes are dropped:
 * one lost datagram (or a late timer) must not drop them, three in a row
 * means the peer is gone.
 */
export const SYNC_ROUTE_LIFETIME_INTERVALS = 3;

export class BeaconPeers {
  private readonly routes = new NodeMap<UdpEndpoint>();
  private readonly announced = new Map<UdpEndpoint, Announced>();
  private readonly lastSyncAt = new Map<UdpEndpoint, number>();

  constructor(readonly peers: readonly UdpEndpoint[]) {}

  get routeCount(): number {
    return this.routes.size;
  }

  /** The configured peer a datagram came from, if any. */
  peerAt(address: string, port: number): UdpEndpoint | undefined {
    for (const peer of this.peers) {
      if (peer.port === port && peer.address === address) return peer;
    }
    return undefined;
  }

  /** The beacon peer that announced `nodeId`. */
  routeOf(nodeId: NodeId): UdpEndpoint | undefined {
    return this.routes.get(nodeId);
  }

  /**
   * Replaces what `peer` announced with `nodeIds`, skipping local nodes. A
   * node `peer` no longer announces keeps a route through another beacon
   * peer that still does (found by fuzzing: it used to have none until that
   * peer's next Sync).
   */
  acceptSync(peer: UdpEndpoint, nodeIds: readonly NodeId[], isLocal: (nodeId: NodeId) => boolean, now = Date.now()): void {
    const previous = this.announced.get(peer) ?? new NodeMap<true>();
    const kept: Announced = new NodeMap<true>();
    for (const nodeId of nodeIds) {
      if (isLocal(nodeId)) continue;
      kept.set(nodeId, true);
      this.routes.set(nodeId, peer);
    }
    this.announced.set(peer, kept);
    this.lastSyncAt.set(peer, now);
    this.reroute(peer, previous, kept);
  }

  /** Drops the routes of peers that sent no Sync within `maxAgeMs`; returns how many peers. */
  expire(maxAgeMs: number, now = Date.now()): number {
    let expired = 0;
    for (const [peer, at] of this.lastSyncAt) {
      if (now - at < maxAgeMs) continue;
      this.forget(peer);
      this.lastSyncAt.delete(peer);
      expired++;
    }
    return expired;
  }

  private forget(peer: UdpEndpoint): void {
    const previous = this.announced.get(peer) ?? new NodeMap<true>();
    this.announced.delete(peer);
    this.reroute(peer, previous, new NodeMap<true>());
  }

  /** Routes through `peer` to nodes it no longer announces move to another peer that does, or go. */
  private reroute(peer: UdpEndpoint, previous: Announced, kept: Announced): void {
    for (const nodeId of previous.keys()) {
      if (kept.has(nodeId) || this.routes.get(nodeId) !== peer) continue;
      const other = this.otherAnnouncer(peer, nodeId);
      if (other) this.routes.set(nodeId, other);
      else this.routes.delete(nodeId);
    }
  }

  private otherAnnouncer(except: UdpEndpoint, nodeId: NodeId): UdpEndpoint | undefined {
    for (const [peer, nodeIds] of this.announced) {
      if (peer !== except && nodeIds.has(nodeId)) return peer;
    }
    return undefined;
  }

  /** @internal Slots looked at to find `nodeId`'s route (tests bound it for IDs chosen to collide). */
  routeProbes(nodeId: NodeId): number {
    return this.routes.probes(nodeId);
  }

  /** The Sync to send; `truncated` when there were more nodes than fit. */
  syncPacket(beaconId: number, localNodes: readonly NodeId[]): { packet: Buffer; truncated: boolean } {
    const truncated = localNodes.length > MAX_SYNC_NODES_PER_DATAGRAM;
    const ids = truncated ? localNodes.slice(0, MAX_SYNC_NODES_PER_DATAGRAM) : localNodes;
    return { packet: encodeSync(beaconId, ids), truncated };
  }
}
