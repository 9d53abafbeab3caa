/**
 * Admission of WebSocket upgrades, decided before any WebSocket work.
 *
 * - Three limits, each its own refusal reason: authenticated peers
 *   (`maxPeers`, HTTP 503), sockets still in the handshake
 *   (`maxHandshakes`, HTTP 503), and sockets of any state from one client IP
 *   (`maxPerIp`, HTTP 429).
 * - An admitted upgrade holds a slot until its TCP socket closes; the
 *   handshake slot is given back as soon as the handshake ends either way.
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

  /** Takes a socket slot for `ip` and a handshake slot; returns their release functions. */
  admit(ip: string): { endHandshake: () => void; releaseSocket: () => void } {
    this.handshakes++;
    this.socketsByIp.set(ip, (this.socketsByIp.get(ip) ?? 0) + 1);
    let handshakeOpen = true;
    let socketOpen = true;
    const endHandshake = () => {
      if (!handshakeOpen) return;
      handshakeOpen = false;
      this.handshakes--;
    };
    const releaseSocket = () => {
      endHandshake();
      if (!socketOpen) return;
      socketOpen = false;
      const left = (this.socketsByIp.get(ip) ?? 1) - 1;
      if (left === 0) this.socketsByIp.delete(ip);
      else this.socketsByIp.set(ip, left);
    };
    return { endHandshake, releaseSocket };
  }

  socketsFrom(ip: string): number {
    return this.socketsByIp.get(ip) ?? 0;
  }
}
