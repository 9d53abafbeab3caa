/**
 * What the composition root sees of cluster mode: a ClusterNode and what it
 * needs from the beacon. Importing this file loads no NATS code; the NATS
 * side (nats-cluster.ts) is imported only when --cluster is set.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { BeaconConfig } from '../config';
import type { BeaconStats, ClusterGauges } from '../metrics';
import type { NodeId } from '../protocol/packets';
import type { ClusterInstance } from '../relay/router';
import type { BorrowedBytes } from '../udp/transport';
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
  /** Whether this instance still has a UDP endpoint for the node (they expire silently). */
  hasUdpEndpoint(nodeId: NodeId): boolean;
  /** A failure after start that the operator must fix (a second live process with our ID). */
  onFatal(err: Error): void;
}

export interface ClusterNode extends ClusterGauges {
  readonly instanceId: string;
  instanceOf(nodeId: NodeId): ClusterInstance | undefined;
  /** Queues a relay for `instance`; it is copied, so a borrowed one may be passed. */
  forward(instance: ClusterInstance, relay: BorrowedBytes): void;
  /** Attached over WebSocket to another live instance. */
  isWssElsewhere(nodeId: NodeId): boolean;
  attached(nodeId: NodeId, kind: AttachKind): void;
  /** @internal Slots the directory's mirror looks at to find `nodeId`. */
  directoryProbes(nodeId: NodeId): number;
  detached(nodeId: NodeId, kind: AttachKind): void;
  close(): Promise<void>;
}
