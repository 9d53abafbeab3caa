/**
 * The UDP transport: the one place the beacon's datagrams meet a socket.
 *
 * - Two implementations behind one interface: `DgramTransport` (Node's
 *   dgram, one JavaScript call per datagram) and `BatchTransport` (the
 *   udp-batch addon: recvmmsg/sendmmsg, one JavaScript call per batch).
 *   `--udp-io` picks one (choose-io.ts); `auto` takes batched where the addon is built.
 * - Both hand every datagram to the same `DatagramReceiver`, so the UDP
 *   side (udp-server.ts) and everything after it is the same code.
 * - Sends never throw and never block: a refused send is counted
 *   (`udp_send_error`), and on the batched path a full socket buffer drops
 *   the datagram (`udp_send_full`) where dgram would queue it.
 * - A received datagram is lent, not given (`BorrowedBytes`): valid until
 *   the end of the event-loop turn that delivered it. Batched, it is a slot
 *   of the receive area, which recvmmsg refills in a later turn; whatever
 *   keeps bytes longer (the cluster forwarder's held batch, a queue, a
 *   retry) copies them first. test/buffer-lifetime.test.ts holds both
 *   transports to it.
 */
import type { AddressInfo } from 'node:net';
import type { UdpIo } from '../config/choices';
import type { UdpEndpoint } from './endpoints';

/**
 * Bytes lent for the rest of the current event-loop turn (STYLE.md: a
 * slice is borrowed, not owned). Read them, rewrite them in place, hand
 * them to a send or a write that is done by the end of the turn
 * (setImmediate callbacks scheduled in this turn still see them; a timer
 * does not); to keep them longer, copy them. The name is the contract: a
 * function taking `BorrowedBytes` promises not to keep the reference.
 */
export type BorrowedBytes = Buffer;

/** Called once per received datagram, in arrival order; `msg` is lent until the end of the turn. */
export type DatagramReceiver = (msg: BorrowedBytes, address: string, port: number) => void;

export interface DatagramTransport {
  readonly io: UdpIo;
  /**
   * Binds and starts receiving; rejects with the socket error (its `code`,
   * e.g. EADDRINUSE). With `reusePort` the socket gets SO_REUSEPORT, so
   * processes sharing the address each get a share of the flows (the
   * caller checks first that this Node can: lib/reuse-port.ts).
   */
  bind(host: string, port: number, reusePort?: boolean): Promise<AddressInfo>;
  /** Sends one datagram (batched: queued, out by the end of the turn). */
  send(packet: Buffer, to: UdpEndpoint): void;
  /** Stops receiving and closes the socket; no datagram is delivered after it. */
  close(): Promise<void>;
}

/**
 * Kernel buffers of the UDP socket. The default receive buffer (~208 KiB)
 * holds about a millisecond of relays at full rate: any pause of the event
 * loop (a GC, a big WebSocket batch) overflows it and the kernel drops.
 * Linux caps these at net.core.rmem_max / wmem_max.
 */
export const UDP_RECV_BUFFER_BYTES = 4 * 1024 * 1024;
export const UDP_SEND_BUFFER_BYTES = 1024 * 1024;
