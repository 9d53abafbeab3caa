/**
 * The UDP side's per-source budgets (--udp-rate-per-ip in packets,
 * --udp-byte-rate-per-ip in bytes; docs/rate-limits.md).
 *
 * - A datagram's source can be spoofed and cannot be slowed down, so a
 *   source over either budget has its packets dropped; the caller counts
 *   them (`rate_limited`, `byte_rate_limited`). Keyed by address, not port:
 *   one host (or one NAT), one budget.
 * - An abuse bound, not a traffic shaper: the defaults sit above what the
 *   daemons behind one busy NAT send (docs/rate-limits.md has the numbers).
 * - Each budget is a token bucket holding one second's worth, kept in its
 *   GCRA form: per source, the time at which each bucket would be full
 *   again. A packet passes only if both buckets hold enough, and is then
 *   charged to both. No timers, no I/O: any transport that can call
 *   `allow(address, bytes)` per datagram uses it as it is.
 * - Bounded: at most `maxSources` addresses. A source whose buckets are
 *   full again is the same as one never seen, so it is forgotten in a sweep
 *   (every SWEEP_EVERY_MS, and when the table is full, at most once per
 *   FULL_SWEEP_MIN_MS); if the table is still full, the oldest entry
 *   makes room (that source starts again with full buckets).
 */

/** Addresses tracked at most: ~150 bytes each, so about 10 MB at worst. */
export const MAX_RATE_SOURCES = 65_536;
/** Sources idle long enough to be full again are forgotten this often in normal operation. */
const SWEEP_EVERY_MS = 30_000;
/** A full table (many sources at once, maybe spoofed) is swept at most this often; in between the oldest entry is evicted. */
const FULL_SWEEP_MIN_MS = 1_000;
/** Each bucket holds one second's worth of its rate. */
const BURST_MS = 1_000;
// The epsilon keeps float rounding from refusing the last packet of a burst.
const BURST_LIMIT_MS = BURST_MS + 1e-6;

/** What `allow` decided: pass, or which budget the source is over. */
export type RateVerdict = 'ok' | 'packets' | 'bytes';

/** One source's buckets: when each would be full again (performance.now() ms). */
interface SourceBudget {
  packetsFullAt: number;
  bytesFullAt: number;
}

export interface SourceRates {
  packetsPerSec: number;
  bytesPerSec: number;
}

export class SourceRateLimiter {
  private readonly sources = new Map<string, SourceBudget>();
  /** Milliseconds one packet costs, and one byte. */
  private readonly msPerPacket: number;
  private readonly msPerByte: number;
  private lastSweep = performance.now();

  constructor(rates: SourceRates, private readonly maxSources = MAX_RATE_SOURCES) {
    this.msPerPacket = 1000 / rates.packetsPerSec;
    this.msPerByte = 1000 / rates.bytesPerSec;
  }

  /** Addresses with a budget in the table now. */
  get size(): number {
    return this.sources.size;
  }

  /** Whether a datagram of `bytes` from `address` is within both budgets; charges both if so. */
  allow(address: string, bytes: number, now = performance.now()): RateVerdict {
    const packetCost = this.msPerPacket;
    const byteCost = bytes * this.msPerByte;
    const budget = this.sources.get(address);
    if (budget === undefined) {
      this.makeRoom(now);
      if (byteCost > BURST_LIMIT_MS) return 'bytes'; // larger than a whole second's worth: never passes
      this.sources.set(address, { packetsFullAt: now + packetCost, bytesFullAt: now + byteCost });
      return 'ok';
    }
    const packetsFullAt = (budget.packetsFullAt > now ? budget.packetsFullAt : now) + packetCost;
    if (packetsFullAt - now > BURST_LIMIT_MS) return 'packets';
    const bytesFullAt = (budget.bytesFullAt > now ? budget.bytesFullAt : now) + byteCost;
    if (bytesFullAt - now > BURST_LIMIT_MS) return 'bytes';
    budget.packetsFullAt = packetsFullAt;
    budget.bytesFullAt = bytesFullAt;
    return 'ok';
  }

  private makeRoom(now: number): void {
    const table = this.sources;
    if (now - this.lastSweep >= SWEEP_EVERY_MS
      || (table.size >= this.maxSources && now - this.lastSweep >= FULL_SWEEP_MIN_MS)) {
      this.lastSweep = now;
      for (const [address, budget] of table) {
        if (budget.packetsFullAt <= now && budget.bytesFullAt <= now) table.delete(address);
      }
    }
    // Maps iterate in insertion order: the first key is the oldest entry.
    while (table.size >= this.maxSources) table.delete(table.keys().next().value!);
  }
}
