/**
 * Admission of WebSocket upgrades, decided before any WebSocket work.
 *
 * - Four limits, each its own refusal reason: authenticated peers
 *   (`maxPeers`, HTTP 503), sockets still in the handshake
 *   (`maxHandshakes`, HTTP 503), sockets of any state from one client IP
 *   (`maxPerIp`, HTTP 429), counted under its per-IP key (IPv6 by prefix,
 *   see lib/net/client-address.ts), and handshakes from one IPv6 /48 or
 *   /56 (HANDSHAKE_SHARES of `maxHandshakes`, HTTP 429): sixteen /64s of
 *   one /56 at `maxPerIp` each used to hold every handshake slot (issue 19).
 * - An admitted upgrade holds a slot until its TCP socket closes; the
 *   handshake slot is given back as soon as the handshake ends either way.
 *   Both are held by an AdmissionTicket: a small object with its methods on
 *   the prototype, not closures, since every peer keeps one for its life.
 * - Pure bookkeeping: no sockets, no timers.
 */
import type { RefusalReason } from '../metrics';
import { IPV6_NETWORK_BITS } from '../net/client-address';

/**
 * The share of the handshake slots one IPv6 network may hold, by prefix
 * length as IPV6_NETWORK_BITS lists them (/48, /56). An address costs an
 * attacker nothing inside the network it was given, so the bound is on the
 * network: a /48 (often one customer) holds at most a quarter of the
 * slots, a /56 (often one home) an eighth. IPv4 is not shared out so: an
 * address costs money, and many clients share a carrier's /24.
 */
export const HANDSHAKE_SHARES: Readonly<Record<(typeof IPV6_NETWORK_BITS)[number], number>> = { 48: 1 / 4, 56: 1 / 8 };

/** Who is asking: the per-IP key, and the IPv6 networks it is in (none for IPv4). */
export interface AdmissionClient {
  ipKey: string;
  networks: readonly string[];
}
export interface AdmissionLimits {
  maxPeers: number;
  maxHandshakes: number;
  maxPerIp: number;
}

export class Admission {
  private handshakes = 0;
  private readonly socketsByIp = new Map<string, number>();
  /** Handshakes in progress by IPv6 network key (see AdmissionClient). */
  private readonly handshakesByNetwork = new Map<string, number>();
  /** The most handshakes one network may hold, in the order of IPV6_NETWORK_BITS. */
  private readonly networkCaps: number[];

  constructor(private readonly limits: AdmissionLimits) {
    this.networkCaps = IPV6_NETWORK_BITS.map((bits) => Math.max(1, Math.floor(limits.maxHandshakes * HANDSHAKE_SHARES[bits])));
  }

  get handshakesInProgress(): number {
    return this.handshakes;
  }

  /** Why an upgrade from `client` must be refused now, or undefined to admit it. */
  check(client: AdmissionClient, authenticatedPeers: number): RefusalReason | undefined {
    if (authenticatedPeers >= this.limits.maxPeers) return 'max_peers';
    if (this.handshakes >= this.limits.maxHandshakes) return 'max_handshakes';
    if ((this.socketsByIp.get(client.ipKey) ?? 0) >= this.limits.maxPerIp) return 'max_per_ip';
    for (let i = 0; i < client.networks.length; i++) {
      if ((this.handshakesByNetwork.get(client.networks[i]!) ?? 0) >= this.networkCaps[i]!) return 'max_handshakes_per_prefix';
    }
    return undefined;
  }

  /** Takes a socket slot for the client's IP, a handshake slot, and one of its networks' handshake shares. */
  admit(client: AdmissionClient): AdmissionTicket {
    this.handshakes++;
    this.socketsByIp.set(client.ipKey, (this.socketsByIp.get(client.ipKey) ?? 0) + 1);
    for (const network of client.networks) this.handshakesByNetwork.set(network, (this.handshakesByNetwork.get(network) ?? 0) + 1);
    return new AdmissionTicket(this, client.ipKey, client.networks.length > 0 ? client.networks : undefined);
  }

  socketsFrom(ip: string): number {
    return this.socketsByIp.get(ip) ?? 0;
  }

  /** @internal Called once per ticket, by the ticket. */
  handshakeEnded(networks: readonly string[] | undefined): void {
    this.handshakes--;
    if (networks) for (const network of networks) decrement(this.handshakesByNetwork, network);
  }

  /** @internal Called once per ticket, by the ticket. */
  socketClosed(ip: string): void {
    decrement(this.socketsByIp, ip);
  }
}

function decrement(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left === 0) counts.delete(key);
  else counts.set(key, left);
}

/** The slots one admitted socket holds; each is given back once, whatever is called twice. */
export class AdmissionTicket {
  private inHandshake = true;
  private socketOpen = true;

  /** `networks`: the IPv6 networks whose handshake shares it holds until the handshake ends. */
  constructor(private readonly admission: Admission, readonly ip: string, private networks: readonly string[] | undefined) {}

  endHandshake(): void {
    if (!this.inHandshake) return;
    this.inHandshake = false;
    this.admission.handshakeEnded(this.networks);
    this.networks = undefined;
  }

  /** The socket closed: both slots are free. */
  release(): void {
    this.endHandshake();
    if (!this.socketOpen) return;
    this.socketOpen = false;
    this.admission.socketClosed(this.ip);
  }
}
