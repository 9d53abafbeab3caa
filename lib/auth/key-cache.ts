/**
 * A cache in front of a slow key source (the registry), so a reconnect storm
 * does not become a registry storm (docs/protocol.md §4).
 *
 * - Found keys are remembered for `keyCacheTtlMs`, unknown nodes for
 *   `keyCacheNegativeTtlMs`; `unavailable` is never remembered.
 * - At most `keyCacheMaxEntries` entries; when full, new answers are simply
 *   not cached (expired entries are swept periodically).
 * - Concurrent lookups of one node share one request to the source, which
 *   has the source's own timeout. Each caller waits only up to its own
 *   deadline: one in a hurry (a stranger near the end of its handshake)
 *   gives up alone, never shortening the request for the others, and an
 *   answer that comes after it gave up still fills the cache.
 * - Every lookup not answered from the cache counts as a miss.
 */
import NodeCache from 'node-cache';
import type { NodeId } from '../protocol';
import type { BeaconConfig } from '../config';
import type { BeaconStats } from '../metrics/stats';
import type { KeyLookup } from './keys';

/** Any key source: resolves within its own timeout, never rejects. */
export type KeyLookupFn = (nodeId: NodeId) => Promise<KeyLookup>;

export type KeyCacheConfig = Pick<BeaconConfig, 'keyCacheTtlMs' | 'keyCacheNegativeTtlMs' | 'keyCacheMaxEntries'>;

export interface CachedKeyLookupOptions {
  config: KeyCacheConfig;
  stats: BeaconStats;
}

/** Bounds on how often expired entries are swept out (they hold room in a full cache). */
const MIN_CHECK_PERIOD_S = 1;
const MAX_CHECK_PERIOD_S = 60;

type Cacheable = Exclude<KeyLookup, { status: 'unavailable' }>;

export class CachedKeyLookup {
  readonly #source: KeyLookupFn;
  readonly #config: KeyCacheConfig;
  readonly #stats: BeaconStats;
  readonly #cache: NodeCache;
  readonly #inFlight = new Map<NodeId, Promise<KeyLookup>>();

  constructor(source: KeyLookupFn, options: CachedKeyLookupOptions) {
    this.#source = source;
    this.#config = options.config;
    this.#stats = options.stats;
    this.#cache = new NodeCache({
      useClones: false,
      maxKeys: options.config.keyCacheMaxEntries,
      checkperiod: checkPeriodSeconds(options.config),
    });
  }

  /** Entries held now (expired ones included until swept). */
  get size(): number {
    return this.#cache.getStats().keys;
  }

  /** Resolves within `timeoutMs` (this caller's deadline); never rejects. */
  lookup(nodeId: NodeId, timeoutMs: number): Promise<KeyLookup> {
    const cached = this.#cache.get<Cacheable>(nodeId);
    if (cached) {
      this.#stats.keyCacheHits++;
      return Promise.resolve(cached);
    }
    this.#stats.keyCacheMisses++;
    let request = this.#inFlight.get(nodeId);
    if (!request) {
      request = this.#fetch(nodeId);
      this.#inFlight.set(nodeId, request);
    }
    return withDeadline(request, timeoutMs);
  }

  /** Stops the sweep timer and forgets everything. */
  close(): void {
    this.#cache.flushAll();
    this.#cache.close();
  }

  async #fetch(nodeId: NodeId): Promise<KeyLookup> {
    let result: KeyLookup;
    try {
      result = await this.#source(nodeId);
    } catch (err) {
      result = { status: 'unavailable', error: err instanceof Error ? err.message : String(err) };
    } finally {
      this.#inFlight.delete(nodeId);
    }
    this.#remember(nodeId, result);
    return result;
  }

  #remember(nodeId: NodeId, result: KeyLookup): void {
    if (result.status === 'unavailable') return;
    const ttlMs = result.status === 'found' ? this.#config.keyCacheTtlMs : this.#config.keyCacheNegativeTtlMs;
    try {
      this.#cache.set<Cacheable>(nodeId, result, ttlMs / 1000);
    } catch {
      // Full (ECACHEFULL): the answer is still returned, just not remembered.
    }
  }
}

/** `request`'s result, or unavailable once `timeoutMs` passed; the request itself runs on. */
function withDeadline(request: Promise<KeyLookup>, timeoutMs: number): Promise<KeyLookup> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, timeoutMs), {
      status: 'unavailable', error: `no key source answer within this caller's ${timeoutMs} ms`,
    } satisfies KeyLookup);
    void request.then((result) => {
      clearTimeout(timer);
      resolve(result);
    });
  });
}

function checkPeriodSeconds(config: KeyCacheConfig): number {
  const shortestTtlS = Math.min(config.keyCacheTtlMs, config.keyCacheNegativeTtlMs) / 1000;
  return Math.min(MAX_CHECK_PERIOD_S, Math.max(MIN_CHECK_PERIOD_S, Math.ceil(shortestTtlS)));
}
