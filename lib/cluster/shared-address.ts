/**
 * Which instances share this one's address (--reuse-port): a key equal for
 * two processes exactly when they listen on the same sockets' address, so
 * a datagram from either leaves from the same source address and port (a
 * node's NAT mapping holds for both) and a daemon connecting to --bind may
 * land on either.
 *
 * - The key hashes the network stack (this boot of the kernel, and the
 *   network namespace) with the bound --bind and --udp. Processes of one
 *   namespace of one running kernel that bound the same addresses with
 *   SO_REUSEPORT share them; on other machines (or in other containers) the
 *   same flags give another key.
 * - Without --reuse-port, or where /proc does not say (not Linux), there is
 *   no key: this instance shares nothing, and relays for nodes on the
 *   others cross NATS as before.
 * - It travels in heartbeats as a NATS header (SHARED_ADDRESS_HEADER), which
 *   instances of an older version ignore.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';

/** The heartbeat header carrying the key. */
export const SHARED_ADDRESS_HEADER = 'Beacon-Shared-Address';
/** Hex digits of the key: 64 bits, so two different addresses never meet by chance. */
const KEY_DIGITS = 16;
export const SHARED_ADDRESS_KEY = new RegExp(`^[0-9a-f]{${KEY_DIGITS}}$`);

export interface BoundAddress {
  address: string;
  port: number;
}

/** What identifies the network stack: the kernel's boot ID and the network namespace (Linux's /proc). */
export function networkStackId(): string | undefined {
  try {
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const namespace = readlinkSync('/proc/self/ns/net');
    return boot && namespace ? `${boot} ${namespace}` : undefined;
  } catch {
    return undefined;
  }
}

/** The key of the address this process shares (--reuse-port), or undefined when it shares none. */
export function sharedAddressKey(
  reusePort: boolean, bind: BoundAddress, udp: BoundAddress, stack: string | undefined = networkStackId(),
): string | undefined {
  if (!reusePort || stack === undefined) return undefined;
  const text = `${stack}|${bind.address}:${bind.port}|${udp.address}:${udp.port}`;
  return createHash('sha256').update(text).digest('hex').slice(0, KEY_DIGITS);
}
