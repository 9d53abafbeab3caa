/**
 * `--udp-io`: which transport the UDP side runs (lib/udp/transport.ts).
 * `auto` takes batched where the udp-batch addon loaded, dgram otherwise;
 * an explicit choice is taken as asked (the beacon refuses `batched`
 * without the addon, naming the fix).
 */
import type { UdpIo, UdpIoChoice } from '../config/choices';
import { loadUdpBatchAddon, type UdpBatchAddon } from '../native/udp-batch-addon';

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
