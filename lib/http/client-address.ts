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
  return `${ipaddr.IPv6.networkAddressFromCIDR(`${ip}/${ipv6PrefixBits}`).toString()}/${ipv6PrefixBits}`;
}
