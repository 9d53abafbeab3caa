/**
 * The beacon's UDP side (docs/protocol.md §1): one socket, IPv4 or IPv6.
 *
 * - Discover records the source as the node's endpoint and answers with it;
 *   a Discover for node 0 (an address query) is answered and recorded nowhere;
 *   PunchRequest records the requester and sends each side a PunchCommand
 *   with the other's endpoint; Relay goes to the router; Sync goes to the
 *   beacon peers table, from configured peers only.
 * - UDP cannot speak for a node attached over WebSocket (§3): such packets
 *   are dropped and counted.
 * - Malformed packets and unknown types are dropped and counted, never
 *   answered. Nothing is logged per packet.
 * - The socket is a DatagramTransport (transport.ts): dgram, or the batched
 *   addon, which calls `receive` for each datagram of a batch and sends the
 *   batch's replies and relays together when `receive` has seen them all.
 * - Cluster mode with --reuse-port: a PunchRequest's target may be a UDP
 *   node another instance sharing this address claims (its NAT mapping is
 *   for this socket's address too), and a dead sharer's nodes are adopted
 *   here (`adoptEndpoint`) within the table's limits.
 * - A source address over --udp-rate-per-ip or --udp-byte-rate-per-ip has
 *   its packets dropped and counted (rate_limited, byte_rate_limited) before
 *   anything else is done with them; configured beacon peers are exempt
 *   (source-rate-limit.ts).
 */
import { isIP, type AddressInfo } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import type { BeaconConfig } from '../config';
import type { BeaconStats, DropReason } from '../metrics';
// From the module itself, not the '../protocol' index: the index's
// re-exports are getters, a call's worth of cost on every packet.
import {
  ADDRESS_QUERY_NODE_ID, PacketType, decodePacket, encodeDiscoverReply, encodePunchCommand, isRelay, relaySender, type NodeId,
} from '../protocol/packets';
import type { BeaconPeers } from '../relay/beacon-peers';
import type { RelayRouter } from '../relay/router';
import { BatchTransport } from './batch-transport';
import { DgramTransport } from './dgram-transport';
import { EndpointTable, type UdpEndpoint } from './endpoints';
import type { UdpIo } from '../config/choices';
import type { DatagramTransport } from './transport';
import type { UdpBatchAddon } from '../native/udp-batch-addon';
import { SourceRateLimiter } from './source-rate-limit';

export interface UdpServerDeps {
  config: BeaconConfig;
  stats: BeaconStats;
  log: FastifyBaseLogger;
  router: RelayRouter;
  beaconPeers: () => BeaconPeers;
  isAttachedOverWss: (nodeId: NodeId) => boolean;
  /**
   * Cluster mode: whether a new endpoint (a node not yet at this address
   * here) may be recorded now; undefined if so, else the drop reason. The
   * Discover is answered either way.
   */
  admitNewEndpoint?: (nodeId: NodeId, address: string) => DropReason | undefined;
  /** A node's endpoint was recorded (`isNew`) or refreshed here (cluster mode announces a new one). */
  onEndpointRecorded?: (nodeId: NodeId, endpoint: UdpEndpoint, isNew: boolean) => void;
  /**
   * Cluster mode with --reuse-port: the endpoint of a UDP node another
   * instance sharing this address claims (lent until the next call), so a
   * PunchRequest can name it and send to it from this socket.
   */
  sharedEndpointOf?: (nodeId: NodeId) => UdpEndpoint | undefined;
  /** Which transport: 'batched' needs `addon`. */
  io: UdpIo;
  addon?: UdpBatchAddon;
}

export class UdpServer {
  readonly endpoints: EndpointTable;
  /**
   * Whether a UDP packet's sender can be checked against every node on a
   * WebSocket (isAttachedOverWss). A cluster instance sets it false until
   * it knows the other instances' nodes: until then UDP relays are dropped
   * (`cluster_not_ready`), since any of them could speak for such a node.
   */
  sendersCheckable = true;
  readonly sourceLimit: SourceRateLimiter;
  private transport: DatagramTransport | undefined;
  private expiry: NodeJS.Timeout | undefined;

  constructor(private readonly deps: UdpServerDeps) {
    const { config } = deps;
    this.endpoints = new EndpointTable({
      ttlMs: config.udpEndpointTtlMs,
      maxEntries: config.maxUdpEndpoints,
      maxPerSource: config.maxUdpEndpointsPerIp,
      ipv6PrefixBits: config.ipv6PrefixBits,
    });
    this.sourceLimit = new SourceRateLimiter({ packetsPerSec: config.udpRatePerIp, bytesPerSec: config.udpByteRatePerIp });
  }

  /** 'udp6' sockets report IPv4 sources as IPv4-mapped IPv6. */
  get family(): 'udp4' | 'udp6' {
    return isIP(this.deps.config.udp.host) === 6 ? 'udp6' : 'udp4';
  }

  async start(): Promise<AddressInfo> {
    const { config, stats, log, io, addon } = this.deps;
    const receive = (msg: Buffer, address: string, port: number) => this.receive(msg, address, port);
    const transport: DatagramTransport = io === 'batched'
      ? new BatchTransport(addon!, this.family, receive, stats)
      : new DgramTransport(this.family, receive, stats, log);
    const address = await transport.bind(config.udp.host, config.udp.port, config.reusePort);
    this.transport = transport;
    const sweepMs = Math.max(1000, Math.floor(config.udpEndpointTtlMs / 4));
    this.expiry = setInterval(() => this.endpoints.expire(), sweepMs);
    this.expiry.unref();
    return address;
  }

  /** Sends one datagram; failures (e.g. too large for a datagram) are counted, never thrown. */
  send(packet: Buffer, to: UdpEndpoint): void {
    this.transport?.send(packet, to);
  }

  /** The address `ip` has on this socket (IPv4 on a udp6 socket is mapped). */
  wireAddress(ip: string): string {
    return this.family === 'udp6' && isIP(ip) === 4 ? `::ffff:${ip}` : ip;
  }

  close(): Promise<void> {
    clearInterval(this.expiry);
    const transport = this.transport;
    this.transport = undefined;
    return transport ? transport.close() : Promise.resolve();
  }

  /** One received datagram, from either transport. */
  private receive(msg: Buffer, address: string, port: number): void {
    const { stats } = this.deps;
    const verdict = this.sourceLimit.allow(address, msg.length);
    if (verdict !== 'ok' && this.deps.beaconPeers().peerAt(address, port) === undefined) {
      return stats.drop(verdict === 'packets' ? 'rate_limited' : 'byte_rate_limited');
    }
    switch (msg[0]) {
      case PacketType.Relay:
        stats.udpPackets.relay++;
        return this.onRelay(msg, address, port);
      case PacketType.Discover:
        stats.udpPackets.discover++;
        return this.onDiscover(msg, address, port);
      case PacketType.PunchRequest:
        stats.udpPackets.punch_request++;
        return this.onPunchRequest(msg, address, port);
      case PacketType.Sync:
        stats.udpPackets.sync++;
        return this.onSync(msg, address, port);
      default:
        stats.udpPackets.other++;
        stats.drop(decodePacket(msg) ? 'unexpected_type' : 'malformed');
    }
  }

  private onRelay(msg: Buffer, address: string, port: number): void {
    const { stats } = this.deps;
    if (!isRelay(msg)) return stats.drop('malformed');
    if (!this.sendersCheckable) return stats.drop('cluster_not_ready');
    if (this.deps.isAttachedOverWss(relaySender(msg))) return stats.drop('wss_node_over_udp');
    const fromBeacon = this.deps.beaconPeers().peerAt(address, port) !== undefined;
    this.deps.router.route(msg, fromBeacon ? 'beacon' : 'udp');
  }

  private onDiscover(msg: Buffer, address: string, port: number): void {
    const { stats } = this.deps;
    const packet = decodePacket(msg);
    if (packet?.type !== PacketType.Discover) return stats.drop('malformed');
    if (packet.nodeId === ADDRESS_QUERY_NODE_ID) {
      // "What is my address?" from a daemon not yet registered: answered, nothing recorded or announced.
      stats.addressQueries.udp++;
    } else {
      if (this.deps.isAttachedOverWss(packet.nodeId)) return stats.drop('wss_node_over_udp');
      this.recordEndpoint(packet.nodeId, address, port);
    }
    const source: UdpEndpoint = { address, port, ip: '' };
    this.send(encodeDiscoverReply({ ip: address, port }), source);
  }

  private onPunchRequest(msg: Buffer, address: string, port: number): void {
    const { stats, isAttachedOverWss } = this.deps;
    const packet = decodePacket(msg);
    if (packet?.type !== PacketType.PunchRequest) return stats.drop('malformed');
    if (isAttachedOverWss(packet.requester)) return stats.drop('wss_node_over_udp');
    if (!this.recordEndpoint(packet.requester, address, port)) return;
    const requester = this.endpoints.get(packet.requester)!;
    const target = isAttachedOverWss(packet.target) ? undefined
      : this.endpoints.get(packet.target) ?? this.deps.sharedEndpointOf?.(packet.target);
    if (!target) return stats.drop('punch_unavailable');
    this.send(encodePunchCommand(target), requester);
    this.send(encodePunchCommand(requester), target);
  }

  /**
   * Records `nodeId` at its source; false (counted) when refused: the
   * source holds its share, or (cluster mode) a new endpoint cannot be
   * taken now. A refresh (same node, same address) is always taken.
   */
  private recordEndpoint(nodeId: NodeId, address: string, port: number): boolean {
    const { stats } = this.deps;
    const known = this.endpoints.get(nodeId);
    const isNew = known === undefined || known.address !== address || known.port !== port;
    if (isNew && this.deps.admitNewEndpoint) {
      const refusal = this.deps.admitNewEndpoint(nodeId, address);
      if (refusal !== undefined) {
        stats.drop(refusal);
        return false;
      }
    }
    return this.storeEndpoint(nodeId, address, port, isNew);
  }

  /**
   * Records the endpoint of a UDP node that a dead instance sharing this
   * address held (cluster mode adopts it): as a Discover from there would,
   * within the table's limits (per source, in all) and never for a node on
   * a WebSocket; not counted against the source's claim budget, since the
   * dead instance took it within its own. False when refused or already known here.
   */
  adoptEndpoint(nodeId: NodeId, address: string, port: number): boolean {
    if (this.endpoints.get(nodeId) !== undefined || this.deps.isAttachedOverWss(nodeId)) return false;
    return this.storeEndpoint(nodeId, address, port, true);
  }

  /** Writes the endpoint into the table within its limits (counted when refused or evicting), then tells the cluster. */
  private storeEndpoint(nodeId: NodeId, address: string, port: number, isNew: boolean): boolean {
    const { stats } = this.deps;
    switch (this.endpoints.record(nodeId, address, port)) {
      case 'source_full':
        stats.drop('endpoint_source_full');
        return false;
      case 'evicted_oldest':
        stats.udpEndpointsEvicted++;
        break;
      case 'recorded':
        break;
    }
    this.deps.onEndpointRecorded?.(nodeId, this.endpoints.get(nodeId)!, isNew);
    return true;
  }

  private onSync(msg: Buffer, address: string, port: number): void {
    const { stats } = this.deps;
    const packet = decodePacket(msg);
    if (packet?.type !== PacketType.Sync) return stats.drop('malformed');
    const beaconPeers = this.deps.beaconPeers();
    const peer = beaconPeers.peerAt(address, port);
    if (!peer) return stats.drop('stranger_sync');
    stats.syncsReceived++;
    beaconPeers.acceptSync(peer, packet.nodeIds, (id) => this.deps.isAttachedOverWss(id) || this.endpoints.get(id) !== undefined);
  }
}
