/**
 * The dgram transport: Node's own UDP socket, one `message` event and one
 * `send` per datagram. The fallback where the udp-batch addon is not built,
 * and `--udp-io dgram`.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import { isIP, type AddressInfo } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import type { BeaconStats } from '../metrics';
import type { UdpEndpoint } from './endpoints';
import {
  UDP_RECV_BUFFER_BYTES, UDP_SEND_BUFFER_BYTES, type DatagramReceiver, type DatagramTransport,
} from './transport';

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

export class DgramTransport implements DatagramTransport {
  readonly io = 'dgram';
  private socket: dgram.Socket | undefined;

  constructor(
    private readonly family: 'udp4' | 'udp6',
    private readonly receive: DatagramReceiver,
    private readonly stats: BeaconStats,
    private readonly log: FastifyBaseLogger,
  ) {}

  async bind(host: string, port: number, reusePort = false): Promise<AddressInfo> {
    // `reusePort` is Node 22.12's (older ones ignore it: lib/reuse-port.ts refuses them first); @types/node 20 lacks it.
    const options: dgram.SocketOptions & { reusePort?: boolean } = { type: this.family, lookup: lookupLiteral };
    if (reusePort) options.reusePort = true;
    const socket = dgram.createSocket(options);
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, host, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    try {
      socket.setRecvBufferSize(UDP_RECV_BUFFER_BYTES);
      socket.setSendBufferSize(UDP_SEND_BUFFER_BYTES);
    } catch (err) {
      this.log.debug({ err }, 'udp socket buffer sizes left at the system default');
    }
    socket.on('error', (err) => {
      this.stats.drop('udp_send_error');
      this.log.debug({ err }, 'udp socket error');
    });
    const receive = this.receive;
    socket.on('message', (msg, rinfo) => receive(msg, rinfo.address, rinfo.port));
    this.socket = socket;
    return socket.address();
  }

  send(packet: Buffer, to: UdpEndpoint): void {
    this.socket?.send(packet, to.port, to.address, this.onSent);
  }

  /** One callback for every send: without one, Node drops send errors silently. */
  private readonly onSent = (err: Error | null): void => {
    if (err) this.stats.drop('udp_send_error');
    else this.stats.udpSent++;
  };

  close(): Promise<void> {
    const socket = this.socket;
    this.socket = undefined;
    return new Promise((resolve) => (socket ? socket.close(() => resolve()) : resolve()));
  }
}
