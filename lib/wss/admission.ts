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
 *   handshake slot (and its networks' shares) is given back as soon as the
 *   handshake ends either way. The connection keeps what it was admitted
 *   with (its per-IP key and networks) and gives each slot back once.
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
  admit(client: AdmissionClient): void {
    this.handshakes++;
    this.socketsByIp.set(client.ipKey, (this.socketsByIp.get(client.ipKey) ?? 0) + 1);
    for (const network of client.networks) this.handshakesByNetwork.set(network, (this.handshakesByNetwork.get(network) ?? 0) + 1);
  }

  /** The handshake of a connection admitted as `client` ended: its handshake slot and shares are free. Once per connection. */
  handshakeEnded(client: AdmissionClient): void {
    this.handshakes--;
    for (const network of client.networks) decrement(this.handshakesByNetwork, network);
  }

  /** The socket of a connection admitted as `client` closed: its per-IP slot is free. Once per connection. */
  socketClosed(client: AdmissionClient): void {
    decrement(this.socketsByIp, client.ipKey);
  }
}

function decrement(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left === 0) counts.delete(key);
  else counts.set(key, left);
}
