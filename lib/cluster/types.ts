/**
 * What the composition root sees of cluster mode: a ClusterNode and what it
 * needs from the beacon. Importing this file loads no NATS code; the NATS
 * side (nats-cluster.ts) is imported only when --cluster is set.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { BeaconConfig } from '../config';
import type { BeaconStats, ClusterGauges, DropReason } from '../metrics';
import type { NodeId } from '../protocol/packets';
import type { ClusterInstance } from '../relay/router';
import type { UdpEndpoint } from '../udp/endpoints';
import type { BorrowedBytes } from '../udp/transport';
import type { AddressGroup } from './rebalance';
import type { AttachKind } from './wire';

export type { AttachKind };

export interface ClusterDeps {
  config: BeaconConfig;
  /** This process's ID in the cluster (instance-id.ts). */
  instanceId: string;
  /** How to give a second process another ID, for the line that refuses it. */
  instanceIdFix: string;
  stats: BeaconStats;
  log: FastifyBaseLogger;
  /** Delivers a relay another instance forwarded, locally only. */
  deliverLocally(relay: Buffer): void;
  /** Another instance now holds the node: close our WebSocket with 4001, or forget its UDP endpoint. */
  evict(nodeId: NodeId, kind: AttachKind): void;
  /** This instance's UDP endpoint for the node, if it still has one (they expire silently). */
  udpEndpointOf(nodeId: NodeId): UdpEndpoint | undefined;
  /** WebSocket peers attached here now (heartbeats carry it, for rebalancing). */
  peerCount(): number;
  /**
   * Takes over a UDP node of a dead instance that shared this address: its
   * endpoint is recorded here as a Discover would record it (within the
   * endpoint table's limits, never over a WebSocket) and claimed anew; false when refused.
   */
  adoptUdpEndpoint(nodeId: NodeId, endpoint: UdpEndpoint): boolean;
  /**
   * The instance's view of the cluster is complete (directory current,
   * every live instance heard): from now on a UDP relay's sender can be
   * checked against the WebSocket nodes of every instance.
   */
  onViewComplete(): void;
  /** A failure after start that the operator must fix (a second live process with our ID). */
  onFatal(err: Error): void;
}

export interface ClusterNode extends ClusterGauges {
  readonly instanceId: string;
  instanceOf(nodeId: NodeId): ClusterInstance | undefined;
  /** Queues a relay for `instance`; it is copied, so a borrowed one may be passed. */
  forward(instance: ClusterInstance, relay: BorrowedBytes): void;
  /**
   * The endpoint of a UDP node that another live instance sharing this
   * address claims, when no WebSocket holds it anywhere: this instance
   * sends to it from its own socket. Lent until the next call.
   */
  sharedUdpEndpointOf(nodeId: NodeId): UdpEndpoint | undefined;
  /**
   * The live instances sharing this one's address, for rebalancing;
   * undefined when it shares none or is cut off from NATS (the counts would be stale).
   */
  addressGroup(): AddressGroup | undefined;
  /** This instance begins a graceful stop: its heartbeats say so from now on (it leaves the rebalancing group). */
  drain(): void;
  /** Attached over WebSocket to another live instance. */
  isWssElsewhere(nodeId: NodeId): boolean;
  /** A daemon authenticated here over WebSocket (auth_ok). */
  attached(nodeId: NodeId): void;
  /** Its WebSocket closed (only when it was the current one). */
  detached(nodeId: NodeId): void;
  /**
   * Whether a new UDP claim (a Discover or PunchRequest for a node not yet
   * at that address here) from `address` may be taken now: undefined if
   * so, else the drop reason (not ready yet, the source over its budget).
   */
  admitUdpClaim(address: string): DropReason | undefined;
  /** The UDP side recorded `nodeId`'s endpoint: a new one (`isNew`) or a refresh. */
  udpEndpointRecorded(nodeId: NodeId, endpoint: UdpEndpoint, isNew: boolean): void;
  /** @internal Slots looked at to find `nodeId` in the directory (the mirror, then the UDP claims). */
  directoryProbes(nodeId: NodeId): number;
  close(): Promise<void>;
}
