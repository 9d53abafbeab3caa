/**
 * The beacon's one place to ask "which public key is registered for node N".
 *
 * - The keys file first: a synchronous lookup, always current (the
 *   KeysFile swaps its key table on reload), verify-ready keys cached there.
 * - Then the registry, through the cache (positive and negative TTLs).
 * - With neither configured, every node is unknown.
 * - `isCurrent` re-checks a key against the file as it is now: a reload
 *   can land while a handshake is verifying, or after a peer attached.
 * - `close()` closes the registry client and cache it opened; the KeysFile
 *   belongs to the caller, who closes it.
 */
import type { HostPort, BeaconConfig } from '../config';
import type { NodeId } from '../protocol';
import type { BeaconStats } from '../metrics/stats';
import type { KeyDirectory, KeyLookup, KeySourceName } from './keys';
import type { KeysFile } from './keys-file';
import { RegistryClient } from './registry-client';
import { CachedKeyLookup } from './key-cache';

export interface KeyDirectoryOptions {
  keysFile?: KeysFile;
  registry?: HostPort;
  config: BeaconConfig;
  stats: BeaconStats;
}

const UNKNOWN: KeyLookup = Object.freeze({ status: 'unknown' });

export function createKeyDirectory(options: KeyDirectoryOptions): KeyDirectory {
  const { keysFile, config, stats } = options;
  const client = options.registry
    ? new RegistryClient({ registry: options.registry, stats, timeoutMs: config.registryTimeoutMs })
    : undefined;
  const cache = client
    ? new CachedKeyLookup((nodeId) => client.lookup(nodeId), { config, stats })
    : undefined;

  return {
    lookup(nodeId: NodeId, timeoutMs: number): Promise<KeyLookup> {
      const key = keysFile?.lookup(nodeId);
      if (key) return Promise.resolve({ status: 'found', key });
      return cache ? cache.lookup(nodeId, timeoutMs) : Promise.resolve(UNKNOWN);
    },
    isCurrent(nodeId: NodeId, raw: Buffer, source: KeySourceName): boolean {
      const inFile = keysFile?.keys.rawOf(nodeId);
      return inFile ? inFile.equals(raw) : source !== 'file';
    },
    close(): void {
      cache?.close();
      client?.close();
    },
  };
}
