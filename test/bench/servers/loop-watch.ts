/**
 * How long the beacon's event loop went without turning, for the keys-file
 * scenario: two views of the same stretch.
 *
 * - `maxStallMs` (and `p99StallMs`): the longest stretch of wall time
 *   between two turns (perf_hooks.monitorEventLoopDelay), whatever the
 *   cause, including other processes on a shared core.
 * - `maxBusyMs`: the longest time the main thread itself ran on a CPU
 *   between two turns (Linux scheduler statistics), so the beacon's own
 *   work, not the machine's other load; NaN where /proc has no schedstat.
 */
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`;

/** The main thread's time on a CPU so far, in ms; NaN when the kernel does not say. */
function onCpuMs(): number {
  try {
    return Number(readFileSync(SCHEDSTAT, 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return NaN;
  }
}

export class LoopWatch {
  private readonly histogram: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  private maxBusyMs = 0;

  constructor(private readonly resolutionMs: number) {
    this.histogram = monitorEventLoopDelay({ resolution: resolutionMs });
    this.histogram.enable();
    let last = onCpuMs();
    this.timer = setInterval(() => {
      const now = onCpuMs();
      this.maxBusyMs = Math.max(this.maxBusyMs, now - last);
      last = now;
    }, resolutionMs);
  }

  stop(): { maxStallMs: number; p99StallMs: number; maxBusyMs: number } {
    this.histogram.disable();
    clearInterval(this.timer);
    return {
      maxStallMs: Math.max(0, this.histogram.max / 1e6 - this.resolutionMs),
      p99StallMs: Math.max(0, this.histogram.percentile(99) / 1e6 - this.resolutionMs),
      maxBusyMs: this.maxBusyMs,
    };
  }
}
