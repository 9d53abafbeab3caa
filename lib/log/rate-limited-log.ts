/**
 * Log lines a stranger can cause at will (refused upgrades, failed
 * handshakes), or one key reconnecting in a loop (peer connected,
 * replaced, disconnected), rate-limited.
 *
 * - The beacon's logger writes stdout synchronously (so the last lines
 *   before an exit are never lost). A flood of such lines with a slow log
 *   reader would then block the event loop on every write: one stranger
 *   would set the pace of every peer.
 * - Per message: the first `burst` lines of each `windowMs` are written as
 *   they come; the rest are only counted, and one line at the end of the
 *   window says how many were left out. The metrics count every event.
 */
import type { FastifyBaseLogger } from 'fastify';

export interface RateLimit {
  burst: number;
  windowMs: number;
}

/**
 * 5 lines a second on average per kind of line (~1 KB/s): enough to see
 * who and why, far below what even a slow log reader takes.
 */
export const STRANGER_LOG_LIMIT: RateLimit = { burst: 50, windowMs: 10_000 };

export class RateLimitedLog {
  private windowStart = 0;
  private written = 0;
  private leftOut = 0;
  private summary: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: FastifyBaseLogger,
    private readonly msg: string,
    private readonly limit: RateLimit = STRANGER_LOG_LIMIT,
  ) {}

  info(fields: Record<string, unknown>): void {
    const now = Date.now();
    if (now - this.windowStart >= this.limit.windowMs) {
      this.flush();
      this.windowStart = now;
      this.written = 0;
    }
    if (this.written < this.limit.burst) {
      this.written++;
      this.log.info(fields, this.msg);
      return;
    }
    this.leftOut++;
    if (!this.summary) {
      this.summary = setTimeout(() => this.flush(), this.windowStart + this.limit.windowMs - now);
      this.summary.unref();
    }
  }

  /** Writes the count of lines left out, if any. */
  flush(): void {
    clearTimeout(this.summary);
    this.summary = undefined;
    if (this.leftOut === 0) return;
    this.log.info({ leftOut: this.leftOut, windowMs: this.limit.windowMs }, `${this.msg}: more lines left out (rate limit); the metrics count them all`);
    this.leftOut = 0;
  }
}
