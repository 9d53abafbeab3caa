/**
 * Loads the optional udp-batch addon (packages/udp-batch) once.
 *
 * - It is an optional dependency built by node-gyp at `npm ci`; where it
 *   could not build (no compiler, not Linux) loading fails and the beacon
 *   runs on dgram. The reason is kept for the start-up log.
 * - Addresses cross into the addon as 16 bytes (addressBytes).
 */
import ipaddr from 'ipaddr.js';
import type * as UdpBatch from '../../packages/udp-batch';
import type { UdpIo, UdpIoChoice } from './transport';

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

export interface UdpIoDecision {
  io: UdpIo;
  addon: UdpBatchAddon | undefined;
  /** Why the addon is not used when batched was asked for or would be the default. */
  addonError: string | undefined;
}

/** `--udp-io`: batched where the addon loaded (auto), or what was asked; the caller refuses 'batched' without the addon. */
export function chooseUdpIo(choice: UdpIoChoice): UdpIoDecision {
  if (choice === 'dgram') return { io: 'dgram', addon: undefined, addonError: undefined };
  const { addon, error } = loadUdpBatchAddon();
  return addon ? { io: 'batched', addon, addonError: undefined } : { io: 'dgram', addon: undefined, addonError: error };
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
