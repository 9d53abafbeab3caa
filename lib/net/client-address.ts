/**
 * The key a client address is counted under by the per-IP limits.
 *
 * - IPv4: the address itself.
 * - IPv6: its first `ipv6PrefixBits` bits (64 by default). One subscriber
 *   usually gets a whole /64 (or more) and picks addresses in it freely, so
 *   counting full IPv6 addresses would let one host look like millions.
 * - Addresses that are not IPs are returned as they are (callers refuse them).
 * - Larger IPv6 networks (`ipv6Networks`): a /56 or a /48 is what one
 *   customer or one site is given, for free, so one host can also spread
 *   over its 256 or 65,536 /64s; the handshake slots are shared out among
 *   such networks too (lib/wss/admission.ts).
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

export function perIpKey(ip: string, ipv6PrefixBits: number): string {
  if (isIP(ip) !== 6 || ipv6PrefixBits >= 128) return ip;
  return `${ipaddr.IPv6.networkAddressFromCIDR(`${ip}/${ipv6PrefixBits}`).toString()}/${ipv6PrefixBits}`;
}

/** The IPv6 networks one site is commonly given, larger first: what the handshake shares are counted by. */
export const IPV6_NETWORK_BITS = [48, 56] as const;

const NO_NETWORKS: readonly string[] = Object.freeze([]);

/** The keys of `ip`'s /48 and /56 (as IPV6_NETWORK_BITS lists them); none for IPv4. */
export function ipv6Networks(ip: string): readonly string[] {
  if (isIP(ip) !== 6) return NO_NETWORKS;
  return IPV6_NETWORK_BITS.map((bits) => perIpKey(ip, bits));
}
