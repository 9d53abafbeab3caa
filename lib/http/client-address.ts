/**
 * The key a client address is counted under by the per-IP limits.
 *
 * - IPv4: the address itself.
 * - IPv6: its first `ipv6PrefixBits` bits (64 by default). One subscriber
 *   usually gets a whole /64 (or more) and picks addresses in it freely, so
 *   counting full IPv6 addresses would let one host look like millions.
 * - Addresses that are not IPs are returned as they are (callers refuse them).
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

export function perIpKey(ip: string, ipv6PrefixBits: number): string {
  if (isIP(ip) !== 6 || ipv6PrefixBits >= 128) return ip;
  const bytes = ipaddr.IPv6.parse(ip).toByteArray();
  for (let bit = ipv6PrefixBits; bit < 128; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return `${ipaddr.fromByteArray(bytes).toString()}/${ipv6PrefixBits}`;
}
