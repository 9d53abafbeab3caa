/**
 * The beacon's UDP side (PROTOCOL.md §1): one dgram socket, IPv4 or IPv6.
 *
 * - Discover records the source as the node's endpoint and answers with it;
 *   PunchRequest records the requester and sends each side a PunchCommand
 *   with the other's endpoint; Relay goes to the router; Sync goes to the
 *   beacon peers table, from configured peers only.
 * - UDP cannot speak for a node attached over WebSocket (§3): such packets
 *   are dropped and counted.
 * - Malformed packets and unknown types are dropped and counted, never
 *   answered. Nothing is logged per packet.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import { isIP, type AddressInfo } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import type { BeaconConfig } from '../config';
import type { BeaconStats } from '../metrics';
// From the module itself, not the '../protocol' index: the index's
// re-exports are getters, a call's worth of cost on every packet.
import {
  PacketType, decodePacket, encodeDiscoverReply, encodePunchCommand, isRelay, relaySender, type NodeId,
} from '../protocol/packets';
import type { BeaconPeers } from '../relay/beacon-peers';
import type { RelayRouter } from '../relay/router';
import { EndpointTable, type UdpEndpoint } from './endpoints';

/**
 * dgram resolves the address of every send through dns.lookup, which for an
 * IP literal still costs a call, a closure and a tick per packet. Every
 * address the beacon sends to is a literal (a datagram's source, a resolved
 * beacon peer): answer those at once; names (the bind host) go to DNS.
 */
function lookupLiteral(
  address: string, family: dns.LookupOneOptions | number,
  callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  const literal = isIP(address);
  if (literal !== 0) return callback(null, address, literal);
  dns.lookup(address, family as dns.LookupOneOptions, callback);
}

/**
 * Kernel buffers of the UDP socket. The default receive buffer (~208 KiB)
 * holds about a millisecond of relays at full rate: any pause of the event
 * loop (a GC, a big WebSocket batch) overflows it and the kernel drops.
 * Linux caps these at net.core.rmem_max / wmem_max.
 */
const UDP_RECV_BUFFER_BYTES = 4 * 1024 * 1024;
const UDP_SEND_BUFFER_BYTES = 1024 * 1024;

function setBufferSizes(socket: dgram.Socket, log: FastifyBaseLogger): void {
  try {
    socket.setRecvBufferSize(UDP_RECV_BUFFER_BYTES);
    socket.setSendBufferSize(UDP_SEND_BUFFER_BYTES);
  } catch (err) {
    log.debug({ err }, 'udp socket buffer sizes left at the system default');
  }
}

export interface UdpServerDeps {
  config: BeaconConfig;
  stats: BeaconStats;
  log: FastifyBaseLogger;
  router: RelayRouter;
  beaconPeers: () => BeaconPeers;
  isAttachedOverWss: (nodeId: NodeId) => boolean;
  /** A node's endpoint was recorded or refreshed here (cluster mode announces it). */
  onEndpointRecorded?: (nodeId: NodeId) => void;
}

export class UdpServer {
  readonly endpoints: EndpointTable;
  private socket: dgram.Socket | undefined;
  private expiry: NodeJS.Timeout | undefined;

  constructor(private readonly deps: UdpServerDeps) {
    this.endpoints = new EndpointTable(deps.config.udpEndpointTtlMs, deps.config.maxUdpEndpoints);
  }

  /** 'udp6' sockets report IPv4 sources as IPv4-mapped IPv6. */
  get family(): 'udp4' | 'udp6' {
    return isIP(this.deps.config.udp.host) === 6 ? 'udp6' : 'udp4';
  }

  async start(): Promise<AddressInfo> {
    const { host, port } = this.deps.config.udp;
    const socket = dgram.createSocket({ type: this.family, lookup: lookupLiteral });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, host, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    setBufferSizes(socket, this.deps.log);
    socket.on('error', (err) => {
      this.deps.stats.drop('udp_send_error');
      this.deps.log.debug({ err }, 'udp socket error');
    });
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo.address, rinfo.port));
    this.socket = socket;
    const sweepMs = Math.max(1000, Math.floor(this.deps.config.udpEndpointTtlMs / 4));
    this.expiry = setInterval(() => this.endpoints.expire(), sweepMs);
    this.expiry.unref();
    return socket.address();
  }

  /** Sends one datagram; failures (e.g. too large for a datagram) are counted, never thrown. */
  send(packet: Buffer, to: UdpEndpoint): void {
    this.socket?.send(packet, to.port, to.address, this.onSent);
  }

  /** One callback for every send: without one, Node drops send errors silently. */
  private readonly onSent = (err: Error | null): void => {
    if (err) this.deps.stats.drop('udp_send_error');
    else this.deps.stats.udpSent++;
  };

  /** The address `ip` has on this socket (IPv4 on a udp6 socket is mapped). */
  wireAddress(ip: string): string {
    return this.family === 'udp6' && isIP(ip) === 4 ? `::ffff:${ip}` : ip;
  }

  close(): Promise<void> {
    clearInterval(this.expiry);
    const socket = this.socket;
    this.socket = undefined;
    return new Promise((resolve) => (socket ? socket.close(() => resolve()) : resolve()));
  }

  private onMessage(msg: Buffer, address: string, port: number): void {
    const { stats } = this.deps;
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
    if (this.deps.isAttachedOverWss(relaySender(msg))) return stats.drop('wss_node_over_udp');
    const fromBeacon = this.deps.beaconPeers().peerAt(address, port) !== undefined;
    this.deps.router.route(msg, fromBeacon ? 'beacon' : 'udp');
  }

  private onDiscover(msg: Buffer, address: string, port: number): void {
    const { stats } = this.deps;
    const packet = decodePacket(msg);
    if (packet?.type !== PacketType.Discover) return stats.drop('malformed');
    if (this.deps.isAttachedOverWss(packet.nodeId)) return stats.drop('wss_node_over_udp');
    if (!this.endpoints.record(packet.nodeId, address, port)) stats.drop('endpoint_table_full');
    else this.deps.onEndpointRecorded?.(packet.nodeId);
    const source: UdpEndpoint = { address, port, ip: '' };
    this.send(encodeDiscoverReply({ ip: address, port }), source);
  }

  private onPunchRequest(msg: Buffer, address: string, port: number): void {
    const { stats, isAttachedOverWss } = this.deps;
    const packet = decodePacket(msg);
    if (packet?.type !== PacketType.PunchRequest) return stats.drop('malformed');
    if (isAttachedOverWss(packet.requester)) return stats.drop('wss_node_over_udp');
    if (!this.endpoints.record(packet.requester, address, port)) return stats.drop('endpoint_table_full');
    this.deps.onEndpointRecorded?.(packet.requester);
    const requester = this.endpoints.get(packet.requester)!;
    const target = isAttachedOverWss(packet.target) ? undefined : this.endpoints.get(packet.target);
    if (!target) return stats.drop('punch_unavailable');
    this.send(encodePunchCommand(target), requester);
    this.send(encodePunchCommand(requester), target);
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
