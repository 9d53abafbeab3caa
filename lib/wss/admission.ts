/**
 * Admission of WebSocket upgrades, decided before any WebSocket work.
 *
 * - Three limits, each its own refusal reason: authenticated peers
 *   (`maxPeers`, HTTP 503), sockets still in the handshake
 *   (`maxHandshakes`, HTTP 503), and sockets of any state from one client IP
 *   (`maxPerIp`, HTTP 429), counted under its per-IP key (IPv6 by prefix,
 *   see lib/http/client-address.ts).
 * - An admitted upgrade holds a slot until its TCP socket closes; the
 *   handshake slot is given back as soon as the handshake ends either way.
 *   Both are held by an AdmissionTicket: a small object with its methods on
 *   the prototype, not closures, since every peer keeps one for its life.
 * - Pure bookkeeping: no sockets, no timers.
 */
import type { RefusalReason } from '../metrics';

export interface AdmissionLimits {
  maxPeers: number;
  maxHandshakes: number;
  maxPerIp: number;
}

export class Admission {
  private handshakes = 0;
  private readonly socketsByIp = new Map<string, number>();

  constructor(private readonly limits: AdmissionLimits) {}

  get handshakesInProgress(): number {
    return this.handshakes;
  }

  /** Why an upgrade from `ip` must be refused now, or undefined to admit it. */
  check(ip: string, authenticatedPeers: number): RefusalReason | undefined {
    if (authenticatedPeers >= this.limits.maxPeers) return 'max_peers';
    if (this.handshakes >= this.limits.maxHandshakes) return 'max_handshakes';
    if ((this.socketsByIp.get(ip) ?? 0) >= this.limits.maxPerIp) return 'max_per_ip';
    return undefined;
  }

  /** Takes a socket slot for `ip` and a handshake slot. */
  admit(ip: string): AdmissionTicket {
    this.handshakes++;
    this.socketsByIp.set(ip, (this.socketsByIp.get(ip) ?? 0) + 1);
    return new AdmissionTicket(this, ip);
  }

  socketsFrom(ip: string): number {
    return this.socketsByIp.get(ip) ?? 0;
  }

  /** @internal Called once per ticket, by the ticket. */
  handshakeEnded(): void {
    this.handshakes--;
  }

  /** @internal Called once per ticket, by the ticket. */
  socketClosed(ip: string): void {
    const left = (this.socketsByIp.get(ip) ?? 1) - 1;
    if (left === 0) this.socketsByIp.delete(ip);
    else this.socketsByIp.set(ip, left);
  }
}

/** The slots one admitted socket holds; each is given back once, whatever is called twice. */
export class AdmissionTicket {
  private inHandshake = true;
  private socketOpen = true;

  constructor(private readonly admission: Admission, readonly ip: string) {}

  endHandshake(): void {
    if (!this.inHandshake) return;
    this.inHandshake = false;
    this.admission.handshakeEnded();
  }

  /** The socket closed: both slots are free. */
  release(): void {
    this.endHandshake();
    if (!this.socketOpen) return;
    this.socketOpen = false;
    this.admission.socketClosed(this.ip);
  }
}
