/** Small statistics for the benchmark: a latency histogram and median/min/max. */

/** 1 µs buckets up to this; slower samples go to one overflow bucket (and `max`). */
const HISTOGRAM_LIMIT_US = 200_000;

export interface LatencySummary {
  count: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
}

export class LatencyHistogram {
  private readonly buckets = new Uint32Array(HISTOGRAM_LIMIT_US + 1);
  private count = 0;
  private max = 0;

  record(us: number): void {
    const bucket = us <= 0 ? 0 : us >= HISTOGRAM_LIMIT_US ? HISTOGRAM_LIMIT_US : Math.floor(us);
    this.buckets[bucket]++;
    this.count++;
    if (us > this.max) this.max = us;
  }

  reset(): void {
    this.buckets.fill(0);
    this.count = 0;
    this.max = 0;
  }

  /** Percentiles in microseconds (bucket upper bounds). */
  summary(): LatencySummary {
    return { count: this.count, p50: this.percentile(0.5), p99: this.percentile(0.99), p999: this.percentile(0.999), max: this.max };
  }

  private percentile(q: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.ceil(q * this.count);
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i]!;
      if (seen >= rank) return i === HISTOGRAM_LIMIT_US ? this.max : i + 1;
    }
    return this.max;
  }
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export function spread(values: readonly number[]): Spread {
  const runs = values.filter((v) => Number.isFinite(v));
  if (runs.length === 0) return { median: NaN, min: NaN, max: NaN, runs: [...values] };
  const sorted = [...runs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, runs: [...values] };
}
