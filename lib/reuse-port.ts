/**
 * --reuse-port: whether this process can open --bind and --udp with
 * SO_REUSEPORT, decided before anything binds.
 *
 * - Node 22.12 and later set SO_REUSEPORT themselves (`reusePort` of
 *   net's listen and dgram's createSocket); Node 20 ignores the option
 *   silently, so there the udp-batch addon opens both sockets.
 * - The addon is required on every Node: the batched UDP socket is the
 *   beacon's UDP path, and one rule is easier to deploy than two. Without it
 *   the problem names the addon's load error and how to build it.
 * - It does not open sockets (lib/http/listener.ts and lib/udp do).
 */
import type { UdpIo } from './config/choices';

/** Node's net and dgram take `reusePort` from 22.12 (and 23.1 on the odd line); older ones ignore it. */
export function nodeHasReusePort(version: string = process.versions.node): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major >= 24 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/** The one line that says why --reuse-port cannot work here, and the fix; undefined when it can. */
export function reusePortProblem(addonError: string | undefined, udpIo: UdpIo, nodeVersion = process.versions.node): string | undefined {
  if (addonError !== undefined) {
    return `--reuse-port: the udp-batch addon is not available (${addonError}); on Linux, install g++, make and python3 `
      + 'and run `npm ci` again (or `npm rebuild @beacon/udp-batch`), or run without --reuse-port (each process its own --bind and --udp)';
  }
  if (udpIo === 'dgram' && !nodeHasReusePort(nodeVersion)) {
    return `--reuse-port with --udp-io dgram needs Node 22.12 or later (dgram's reusePort; this is Node ${nodeVersion}): `
      + 'use --udp-io auto or batched';
  }
  return undefined;
}
