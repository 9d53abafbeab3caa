/**
 * The UDP side's per-source packet budget (--udp-rate-per-ip;
 * docs/rate-limits.md).
 *
 * - A datagram's source can be spoofed and cannot be slowed down, so a
 *   source over budget has its packets dropped; the caller counts them
 *   (`rate_limited`). Keyed by address, not port: one host, one budget.
 * - A token bucket of `rate` packets per second holding one second's worth,
 *   kept in its GCRA form: one number per source, the time at which its
 *   bucket would be full again. No timers, no I/O: any transport that can
 *   call `allow(address)` per datagram uses it as it is.
 * - Bounded: at most `maxSources` addresses. A source whose bucket is full
 *   again is the same as one never seen, so it is forgotten in a sweep
 *   (every SWEEP_EVERY_MS, and when the table is full, at most once per
 *   FULL_SWEEP_MIN_MS); if the table is still full, the oldest entry
 *   makes room (that source starts again with a full bucket).
 */

/** Addresses tracked at most: ~100 bytes each, so a few MB at worst. */
export const MAX_RATE_SOURCES = 65_536;
/** Sources idle long enough to be full again are forgotten this often in normal operation. */
const SWEEP_EVERY_MS = 30_000;
/** A full table (many sources at once, maybe spoofed) is swept at most this often; in between the oldest entry is evicted. */
const FULL_SWEEP_MIN_MS = 1_000;

export class SourceRateLimiter {
  /** Per address: when its bucket would be full again (performance.now() ms). */
  private readonly fullAt = new Map<string, number>();
  /** Milliseconds one packet costs, and the bucket's size in milliseconds of rate. */
  private readonly msPerPacket: number;
  private readonly burstMs: number;
  private lastSweep = performance.now();

  constructor(packetsPerSec: number, private readonly maxSources = MAX_RATE_SOURCES) {
    this.msPerPacket = 1000 / packetsPerSec;
    this.burstMs = 1000; // one second's worth of packets
  }

  /** Addresses with a budget in the table now. */
  get size(): number {
    return this.fullAt.size;
  }

  /** Whether a packet from `address` is within its budget; charges it if so. */
  allow(address: string, now = performance.now()): boolean {
    const fullAt = this.fullAt.get(address);
    if (fullAt === undefined) {
      this.makeRoom(now);
      this.fullAt.set(address, now + this.msPerPacket);
      return true;
    }
    const next = (fullAt > now ? fullAt : now) + this.msPerPacket;
    // The epsilon keeps float rounding from refusing the last packet of a burst.
    if (next - now > this.burstMs + 1e-6) return false;
    this.fullAt.set(address, next);
    return true;
  }

  private makeRoom(now: number): void {
    const table = this.fullAt;
    if (now - this.lastSweep >= SWEEP_EVERY_MS
      || (table.size >= this.maxSources && now - this.lastSweep >= FULL_SWEEP_MIN_MS)) {
      this.lastSweep = now;
      for (const [address, fullAt] of table) if (fullAt <= now) table.delete(address);
    }
    // Maps iterate in insertion order: the first key is the oldest entry.
    while (table.size >= this.maxSources) table.delete(table.keys().next().value!);
  }
}
