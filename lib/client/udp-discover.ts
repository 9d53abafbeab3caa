/**
 * Discover over UDP (PROTOCOL.md §1): what a daemon that can use UDP does
 * to learn the endpoint the beacon sees for it.
 *
 * - Sends Discover(node_id) from a fresh socket and resolves with the
 *   DiscoverReply's endpoint. The beacon also records that endpoint as the
 *   node's UDP address, so relays to the node come back to this socket for
 *   as long as it lives (the beacon forgets it after its endpoint TTL).
 * - UDP is best effort: the Discover is sent again every `retryEveryMs`
 *   until a reply or `timeoutMs`.
 * - The socket is connected to the beacon, so only the beacon's datagrams
 *   are read, and "nothing listens there" (ICMP port unreachable) fails
 *   at once instead of at the timeout.
 */
import dgram from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { PacketType, decodePacket, encodeDiscover, isValidNodeId, type Endpoint, type NodeId } from '../protocol';
import { ConnectError } from './errors';

export interface UdpDiscoverOptions {
  host: string;
  port: number;
  nodeId: NodeId;
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

export async function discoverOverUdp(options: UdpDiscoverOptions): Promise<UdpDiscovery> {
  const { host, port, nodeId } = options;
  const timeoutMs = options.timeoutMs ?? 3_000;
  const retryEveryMs = options.retryEveryMs ?? 500;
  if (!isValidNodeId(nodeId)) throw new TypeError(`nodeId must be a node ID (1 to 4294967295), got ${String(nodeId)}`);
  const where = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  let address: string;
  let family: number;
  try {
    ({ address, family } = await lookup(host));
  } catch (err) {
    throw new ConnectError(`cannot resolve "${host}" (${(err as NodeJS.ErrnoException).code ?? 'lookup failed'}): check the beacon's host name`, 'ENOTFOUND');
  }
  const socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
  const packet = encodeDiscover(nodeId);
  return new Promise<UdpDiscovery>((resolve, reject) => {
    let retry: NodeJS.Timeout | undefined;
    let finished = false;
    const finish = (err: Error | undefined, result?: UdpDiscovery) => {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      clearInterval(retry);
      socket.close();
      if (err) reject(err);
      else resolve(result as UdpDiscovery);
    };
    const deadline = setTimeout(() => finish(new ConnectError(
      `no DiscoverReply from ${where} within ${timeoutMs} ms: is the beacon's --udp address reachable from here (UDP, firewalls), and is the port right?`,
      'ETIMEDOUT')), timeoutMs);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED') {
        finish(new ConnectError(`nothing listens on UDP ${where}: is the beacon running, and is that its --udp port?`, 'ECONNREFUSED', { cause: err.code }));
      } else {
        finish(new ConnectError(`UDP to ${where} failed: ${err.code ?? ''} ${err.message}`.trim(), 'ENETWORK', { cause: err.code }));
      }
    });
    socket.on('message', (msg) => {
      const reply = decodePacket(msg);
      if (reply?.type !== PacketType.DiscoverReply) return;
      finish(undefined, { endpoint: reply.endpoint, localPort: socket.address().port });
    });
    const send = () => socket.send(packet, (err) => { if (err) socket.emit('error', err); });
    socket.connect(port, address, () => {
      if (finished) return;
      send();
      retry = setInterval(send, retryEveryMs);
    });
  });
}
