/**
 * The UDP side of a daemon (docs/protocol.md §1): what a daemon that can use
 * UDP does instead of the compat WebSocket.
 *
 * - `UdpNode` owns one UDP socket connected to the beacon, so only the
 *   beacon's datagrams are read and "nothing listens there" (ICMP port
 *   unreachable) fails at once instead of at a timeout.
 * - `discover()` sends Discover(node_id) and resolves with the
 *   DiscoverReply's endpoint. The beacon also records that endpoint as the
 *   node's UDP address, so Relays to the node come to this socket; a
 *   Discover every `keepaliveMs` keeps that record (and any NAT mapping on
 *   the way) fresh while the node lives.
 * - Node ID 0 (ADDRESS_QUERY_NODE_ID) only asks: "what is my address?", as a
 *   Go daemon does before it registers. The beacon answers and records
 *   nothing, so such a node sends no keepalive and cannot relay.
 * - UDP is best effort: Discover is sent again every `retryEveryMs` until
 *   a reply or the timeout; a Relay is sent once, never queued.
 * - UDP has no authentication: the beacon takes the sender on trust,
 *   except that it drops UDP packets claiming a node attached over
 *   WebSocket.
 */
import dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import { lookup } from 'node:dns/promises';
import {
  ADDRESS_QUERY_NODE_ID, PacketType, decodePacket, encodeDiscover, encodeRelay, isValidNodeId,
  type Endpoint, type NodeId, type Packet,
} from '../protocol';
import { ClientError, ConnectError } from './errors';

export interface UdpNodeOptions {
  host: string;
  port: number;
  /** The node to discover as; ADDRESS_QUERY_NODE_ID (0) only asks for the address and registers nothing. */
  nodeId: NodeId;
  /** A Discover this often keeps the beacon's record and NAT mappings fresh. Default 25 s; 0 for none (always none for node 0). */
  keepaliveMs?: number;
}

export interface UdpDiscoverOptions extends UdpNodeOptions {
  /** Default 3 s. */
  timeoutMs?: number;
  /** Default 500 ms. */
  retryEveryMs?: number;
}

export interface UdpDiscovery {
  /** The address and port the beacon saw. */
  endpoint: Endpoint;
  /** The local port the Discover went from. */
  localPort: number;
}

/** `1.2.3.4:5` or `[::1]:5`. */
export function formatEndpoint({ ip, port }: Endpoint): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export class UdpNode extends EventEmitter<{ packet: [packet: Packet, raw: Buffer]; error: [error: ConnectError] }> {
  private keepalive: NodeJS.Timeout | undefined;
  private closed = false;
  private failure: ConnectError | undefined;

  private constructor(
    private readonly socket: dgram.Socket,
    readonly nodeId: NodeId,
    readonly where: string,
  ) {
    super();
  }

  /** Resolves the beacon's host, binds a socket and connects it to the beacon. */
  static async open(options: UdpNodeOptions): Promise<UdpNode> {
    const { host, port, nodeId } = options;
    if (nodeId !== ADDRESS_QUERY_NODE_ID && !isValidNodeId(nodeId)) {
      throw new TypeError(`nodeId must be a node ID (1 to 4294967295), or 0 to only ask for the address, got ${String(nodeId)}`);
    }
    const where = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    let address: string;
    let family: number;
    try {
      ({ address, family } = await lookup(host));
    } catch (err) {
      throw new ConnectError(`cannot resolve "${host}" (${(err as NodeJS.ErrnoException).code ?? 'lookup failed'}): check the beacon's host name`, 'ENOTFOUND');
    }
    const socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    const node = new UdpNode(socket, nodeId, where);
    socket.on('error', (err: NodeJS.ErrnoException) => node.onError(err));
    socket.on('message', (msg) => {
      const packet = decodePacket(msg);
      if (packet) node.emit('packet', packet, msg);
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(port, address, () => { socket.off('error', reject); resolve(); });
    }).catch((err: NodeJS.ErrnoException) => {
      socket.close();
      throw new ConnectError(`UDP to ${where} failed: ${err.code ?? ''} ${err.message}`.trim(), 'ENETWORK', { cause: err.code });
    });
    const keepaliveMs = nodeId === ADDRESS_QUERY_NODE_ID ? 0 : options.keepaliveMs ?? 25_000;
    if (keepaliveMs > 0) {
      node.keepalive = setInterval(() => node.sendRaw(encodeDiscover(nodeId)), keepaliveMs);
      node.keepalive.unref();
    }
    return node;
  }

  get localPort(): number {
    return this.socket.address().port;
  }

  /** Sends Discover (again every `retryEveryMs`) until a DiscoverReply, the timeout, or a socket error. */
  discover(timeoutMs = 3_000, retryEveryMs = 500): Promise<Endpoint> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new ClientError('the UDP node was closed', 'ECLIENTCLOSED'));
    return new Promise<Endpoint>((resolve, reject) => {
      const finish = (err: ConnectError | undefined, endpoint?: Endpoint) => {
        clearTimeout(deadline);
        clearInterval(retry);
        this.off('packet', onPacket);
        this.off('error', onError);
        if (err) reject(err);
        else resolve(endpoint as Endpoint);
      };
      const onPacket = (packet: Packet) => { if (packet.type === PacketType.DiscoverReply) finish(undefined, packet.endpoint); };
      const onError = (err: ConnectError) => finish(err);
      const deadline = setTimeout(() => finish(new ConnectError(
        `no DiscoverReply from ${this.where} within ${timeoutMs} ms: is the beacon's --udp address reachable from here (UDP, firewalls), and is the port right?`,
        'ETIMEDOUT')), timeoutMs);
      const send = () => this.sendRaw(encodeDiscover(this.nodeId));
      const retry = setInterval(send, retryEveryMs);
      this.on('packet', onPacket);
      this.on('error', onError);
      send();
    });
  }

  /** Sends one Relay from this node to `dest`; best effort, never queued. */
  relay(dest: NodeId, payload: Uint8Array | string): void {
    if (!isValidNodeId(dest)) throw new RangeError(`dest must be a node ID (1 to 4294967295), got ${String(dest)}`);
    if (this.nodeId === ADDRESS_QUERY_NODE_ID) throw new RangeError('node 0 only asks for its address and cannot relay: open the UdpNode with its node ID');
    if (this.failure) throw this.failure;
    if (this.closed) throw new ClientError('the UDP node was closed', 'ECLIENTCLOSED');
    this.sendRaw(encodeRelay(this.nodeId, dest, typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepalive);
    this.socket.close();
  }

  private sendRaw(packet: Buffer): void {
    if (this.closed) return;
    this.socket.send(packet, (err) => { if (err) this.onError(err as NodeJS.ErrnoException); });
  }

  private onError(err: NodeJS.ErrnoException): void {
    // A connected UDP socket learns of ICMP "port unreachable" as ECONNREFUSED.
    const error = err.code === 'ECONNREFUSED'
      ? new ConnectError(`nothing listens on UDP ${this.where}: is the beacon running, and is that its --udp port?`, 'ECONNREFUSED', { cause: err.code })
      : new ConnectError(`UDP to ${this.where} failed: ${err.code ?? ''} ${err.message}`.trim(), 'ENETWORK', { cause: err.code });
    if (err.code !== 'ECONNREFUSED') this.failure = error;
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }
}

/** One Discover from a fresh socket: the endpoint the beacon sees, then the socket is closed. */
export async function discoverOverUdp(options: UdpDiscoverOptions): Promise<UdpDiscovery> {
  const node = await UdpNode.open({ ...options, keepaliveMs: 0 });
  try {
    const endpoint = await node.discover(options.timeoutMs, options.retryEveryMs);
    return { endpoint, localPort: node.localPort };
  } finally {
    node.close();
  }
}
