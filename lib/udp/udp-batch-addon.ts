/**
 * Loads the optional udp-batch addon (packages/udp-batch) once.
 *
 * - It is an optional dependency built by node-gyp at `npm ci`; where it
 *   could not build (no compiler, not Linux) loading fails and the beacon
 *   runs on dgram. The reason is kept for the start-up log.
 */
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
