/**
 * Bounds on raw TCP connections to the HTTP listener, before any request
 * is read from them.
 *
 * - Node's headersTimeout starts only at a request's first byte, so a
 *   connection that never sends one would be held for ever: every
 *   connection must complete its first request's headers within
 *   `headersDeadlineMs` of connecting, or it is destroyed (counted
 *   `headers_timeout`). Later requests on a kept-alive connection are
 *   Node's (headersTimeout, keepAliveTimeout).
 * - At most `maxPerIp` connections from one client address (IPv6 by
 *   prefix), counted at accept; one more is destroyed at once, unanswered
 *   (counted `max_per_ip`). Trusted proxies (Caddy) are exempt: one proxy
 *   connection carries many clients, whose forwarded addresses the upgrade's
 *   admission counts once the headers are read.
 * - Sockets only: no HTTP parsing. Handlers are shared by all sockets
 *   (memory per peer); the state a socket needs rides on it. The headers
 *   deadlines are one queue on one timer (lib/deadline-queue.ts), not a
 *   timer per connection.
 */
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { BeaconStats } from '../metrics';
import { canonicalIp } from '../protocol';
import { DeadlineQueue, NO_DEADLINE } from '../deadline-queue';
import { perIpKey } from '../net/client-address';

export interface ConnectionGuardOptions {
  headersDeadlineMs: number;
  maxPerIp: number;
  ipv6PrefixBits: number;
  /** Whether `ip` (canonical) is a proxy whose X-Forwarded-For is believed. */
  isTrustedProxy: (ip: string) => boolean;
  stats: BeaconStats;
}

const DEADLINE = Symbol('headersDeadline');
const IP_KEY = Symbol('perIpKey');
type GuardedSocket = Socket & { [DEADLINE]?: number; [IP_KEY]?: string };

export class ConnectionGuard {
  private readonly perIp = new Map<string, number>();
  private readonly onConnection: (socket: Socket) => void;
  private readonly onHeaders: (req: { socket: Socket }) => void;
  /** `this` is the socket that closed. */
  private readonly onClose: (this: Socket) => void;
  private readonly deadlines: DeadlineQueue<GuardedSocket>;

  constructor(private readonly options: ConnectionGuardOptions) {
    const guard = this;
    this.onConnection = (socket) => this.accept(socket as GuardedSocket);
    this.onHeaders = (req) => this.clearDeadline(req.socket as GuardedSocket);
    this.onClose = function onClose() {
      const socket = this as GuardedSocket;
      guard.clearDeadline(socket);
      const key = socket[IP_KEY];
      if (key !== undefined) guard.release(key);
    };
    this.deadlines = new DeadlineQueue<GuardedSocket>(options.headersDeadlineMs, (socket) => {
      socket[DEADLINE] = NO_DEADLINE;
      options.stats.connectionsClosed.headers_timeout++;
      socket.destroy();
    });
  }

  /** Guards every connection `server` accepts from now on. */
  attach(server: Server): void {
    server.on('connection', this.onConnection);
    // Both mean a request's headers are complete.
    server.on('request', this.onHeaders);
    server.on('upgrade', this.onHeaders);
  }

  private accept(socket: GuardedSocket): void {
    const { options } = this;
    const ip = canonicalIp(socket.remoteAddress ?? '');
    const key = perIpKey(ip, options.ipv6PrefixBits);
    const count = this.perIp.get(key) ?? 0;
    // Whether the address is a trusted proxy (a parse of it) is asked only at the cap: proxies are never capped.
    if (count < options.maxPerIp) {
      this.perIp.set(key, count + 1);
      socket[IP_KEY] = key;
    } else if (!options.isTrustedProxy(ip)) {
      options.stats.connectionsClosed.max_per_ip++;
      socket.destroy();
      return;
    }
    socket[DEADLINE] = this.deadlines.add(socket);
    socket.on('close', this.onClose); // 'close' comes once; `once` would wrap it per socket
  }

  private clearDeadline(socket: GuardedSocket): void {
    const ticket = socket[DEADLINE];
    if (ticket === undefined || ticket === NO_DEADLINE) return;
    this.deadlines.cancel(ticket);
    socket[DEADLINE] = NO_DEADLINE;
  }

  private release(key: string): void {
    const left = (this.perIp.get(key) ?? 1) - 1;
    if (left === 0) this.perIp.delete(key);
    else this.perIp.set(key, left);
  }
}
