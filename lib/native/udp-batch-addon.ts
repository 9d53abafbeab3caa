/**
 * Loads the optional native addon (packages/udp-batch) once, for every part
 * that uses it: the batched UDP socket (lib/udp), the shared listening
 * socket of --reuse-port (lib/http/listener.ts) and systemd's notification
 * datagram (lib/systemd, through cmd/run.ts).
 *
 * - It is an optional dependency built by node-gyp at `npm ci`; where it
 *   could not build (no compiler, not Linux) loading fails and each part
 *   falls back (dgram, no --reuse-port on Node 20, the /health poll). The
 *   reason is kept for the start-up log.
 * - Addresses cross into the addon as 16 bytes (addressBytes).
 * - Which UDP I/O to run is lib/udp/choose-io.ts's decision, not this module's.
 */
import ipaddr from 'ipaddr.js';
import type * as UdpBatch from '../../packages/udp-batch';

export type UdpBatchAddon = typeof UdpBatch;
export type Handle = UdpBatch.Handle;

let loaded: { addon: UdpBatchAddon | undefined; error: string | undefined } | undefined;

export function loadUdpBatchAddon(): { addon: UdpBatchAddon | undefined; error: string | undefined } {
  if (!loaded) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      loaded = { addon: require('@beacon/udp-batch') as UdpBatchAddon, error: undefined };
    } catch (err) {
      loaded = { addon: undefined, error: (err as Error).message.split('\n')[0] };
    }
  }
  return loaded;
}

/** 16 bytes: an IPv4 address in the first 4 (family 4), or an IPv6 one (IPv4 is mapped on family 6). */
export function addressBytes(address: string, family: 4 | 6): Buffer | undefined {
  if (!ipaddr.isValid(address)) return undefined;
  let ip = ipaddr.parse(address);
  if (family === 4) {
    if (ip.kind() === 'ipv6') {
      const v6 = ip as ipaddr.IPv6;
      if (!v6.isIPv4MappedAddress()) return undefined;
      ip = v6.toIPv4Address();
    }
  } else if (ip.kind() === 'ipv4') {
    ip = (ip as ipaddr.IPv4).toIPv4MappedAddress();
  }
  const out = Buffer.alloc(16);
  out.set(ip.toByteArray());
  return out;
}
