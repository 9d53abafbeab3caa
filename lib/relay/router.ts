/**
 * The relay router: for every Relay, from either transport, decide where it
 * goes and hand it to that transport (docs/protocol.md §1, §2).
 *
 * - Order: attached over WebSocket -> RelayDeliver via writeFrame; else a
 *   UDP endpoint -> RelayDeliver datagram; else (cluster, --reuse-port) a
 *   UDP node that another instance sharing this address claims, on no
 *   WebSocket anywhere -> RelayDeliver datagram from this socket
 *   (`udp_shared`: its NAT mapping is for this address too); else attached
 *   to another live instance of the cluster -> the original Relay,
 *   unchanged, handed to the forwarder for that instance; else a node
 *   announced by a beacon peer -> the original Relay, unchanged, to that
 *   beacon; else drop, counted as unknown.
 * - A Relay that came from a beacon peer is never forwarded to a beacon
 *   again, and one that another instance forwarded is delivered here or
 *   dropped, never forwarded again (no loops).
 * - Decisions read only the tables behind `RelayPorts`, each asked once per
 *   relay; the router never touches sockets, it calls the transports
 *   through the same ports.
 * - The RelayDeliver is the Relay rewritten in place: no copy per packet.
 *   A relay is borrowed (`BorrowedBytes`: a datagram's bytes are a slot of
 *   the batched receive area): every port sends it or copies it within the
 *   turn, and none keeps the reference.
 */
import type { BeaconStats } from '../metrics';
// From the module itself, not the '../protocol' index: the index's
// re-exports are getters, a call's worth of cost on every packet.
import { relayDest, relayToDeliverInPlace, type NodeId } from '../protocol/packets';
import type { UdpEndpoint } from '../udp/endpoints';
import type { BorrowedBytes } from '../udp/transport';

export type RelayOrigin = 'wss' | 'udp' | 'beacon' | 'cluster';
export type Route = 'wss' | 'udp' | 'udp_shared' | 'cluster' | 'beacon' | 'unknown';

/** Another instance of the cluster, as the router sees it: something to hand frames to. */
export interface ClusterInstance {
  readonly id: string;
}

export interface RelayPorts {
  isAttachedOverWss(nodeId: NodeId): boolean;
  /**
   * Sends to a WebSocket peer; false when it could not (the transport counts
   * why). `atTurnEnd`: the frame may wait for the end of the event-loop turn
   * to share a write with others: relays that came as datagrams, one per
   * callback.
   */
  writeFrame(nodeId: NodeId, packet: BorrowedBytes, atTurnEnd: boolean): boolean;
  udpEndpointOf(nodeId: NodeId): UdpEndpoint | undefined;
  /**
   * The endpoint of a UDP node that another instance sharing this one's
   * address claims, when no WebSocket holds the node anywhere; undefined
   * otherwise (and always without --reuse-port). Lent: valid until the next call.
   */
  sharedUdpEndpointOf(nodeId: NodeId): UdpEndpoint | undefined;
  beaconFor(nodeId: NodeId): UdpEndpoint | undefined;
  sendDatagram(packet: BorrowedBytes, to: UdpEndpoint): void;
  /** The live instance of the cluster the node is attached to; undefined when none (or no cluster). */
  instanceOf(nodeId: NodeId): ClusterInstance | undefined;
  /** Hands a Relay to the forwarder for `instance`, which copies it (it counts its own drops). */
  forwardToInstance(instance: ClusterInstance, relay: BorrowedBytes): void;
}

export class RelayRouter {
  constructor(private readonly ports: RelayPorts, private readonly stats: BeaconStats) {}

  /**
   * Routes a well-formed Relay (checked by the transport). Consumes `relay`:
   * it may be rewritten in place. Each lookup is made once: the endpoint or
   * instance found decides the route and is the one used.
   */
  route(relay: BorrowedBytes, origin: RelayOrigin): Route {
    const { ports, stats } = this;
    const dest = relayDest(relay);
    if (ports.isAttachedOverWss(dest)) {
      stats.relay.wss++;
      ports.writeFrame(dest, relayToDeliverInPlace(relay), origin !== 'wss');
      return 'wss';
    }
    const endpoint = ports.udpEndpointOf(dest);
    if (endpoint) {
      stats.relay.udp++;
      ports.sendDatagram(relayToDeliverInPlace(relay), endpoint);
      return 'udp';
    }
    const shared = ports.sharedUdpEndpointOf(dest);
    if (shared) {
      stats.relay.udp_shared++;
      ports.sendDatagram(relayToDeliverInPlace(relay), shared);
      return 'udp_shared';
    }
    // No loops: a relay another instance forwarded goes no further, nor one from a beacon peer to a beacon.
    if (origin !== 'cluster') {
      const instance = ports.instanceOf(dest);
      if (instance) {
        stats.relay.cluster++;
        ports.forwardToInstance(instance, relay);
        return 'cluster';
      }
      const beacon = origin === 'beacon' ? undefined : ports.beaconFor(dest);
      if (beacon) {
        stats.relay.beacon++;
        ports.sendDatagram(relay, beacon);
        return 'beacon';
      }
    }
    stats.relay.unknown++;
    // Forwarded by another instance for a node that left here since: not a stranger's relay.
    stats.drop(origin === 'cluster' ? 'cluster_moved' : 'unknown_dest');
    return 'unknown';
  }
}
