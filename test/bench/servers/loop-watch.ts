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
 * - `gc`: the garbage collector's pauses in the window (perf_hooks 'gc'
 *   entries): the time in all of them, in pauses of 2 ms or more, and the
 *   longest young (scavenge) and full (mark-compact) pause, so a stretch
 *   can be told apart from the beacon's own work.
 */
import { readFileSync } from 'node:fs';
import { constants, monitorEventLoopDelay, PerformanceObserver, type IntervalHistogram, type NodeGCPerformanceDetail } from 'node:perf_hooks';

const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`;

/** The main thread's time on a CPU and waiting for one (runnable, not running) so far, in ms; NaN when the kernel does not say. */
function schedMs(): { onCpu: number; waiting: number } {
  try {
    const [onCpu, waiting] = readFileSync(SCHEDSTAT, 'utf8').split(' ');
    return { onCpu: Number(onCpu) / 1e6, waiting: Number(waiting) / 1e6 };
  } catch {
    return { onCpu: NaN, waiting: NaN };
  }
}

/** A stretch between two ticks at least this long is taken apart (own CPU, waiting for the core, the rest). */
export const LONG_STRETCH_MS = 4;

/** A GC pause at least this long is one a relayed frame feels (quiet p99 is ~1 ms). */
export const LONG_GC_PAUSE_MS = 2;

export interface GcPauses {
  totalMs: number;
  count: number;
  longMs: number;
  longCount: number;
  maxYoungMs: number;
  maxFullMs: number;
}

/** What a watch saw between its start and stop. */
export interface LoopReport {
  maxStallMs: number;
  p99StallMs: number;
  timeP99StallMs: number;
  maxBusyMs: number;
  /**
   * Stretches between ticks of LONG_STRETCH_MS or more, taken apart by the
   * scheduler's statistics: their wall time in all, the main thread's time on
   * a CPU in them (its own work and GC on the main thread), its time runnable
   * but waiting for a CPU (other threads or processes on the core); the rest
   * it was blocked (e.g. a GC pause waiting for helper threads).
   */
  long: { wallMs: number; onCpuMs: number; waitingMs: number };
  gc: GcPauses;
}

/** The report of a build whose server has no loop watch: every figure NaN. */
export const NO_LOOP_REPORT: LoopReport = {
  maxStallMs: NaN, p99StallMs: NaN, timeP99StallMs: NaN, maxBusyMs: NaN,
  long: { wallMs: NaN, onCpuMs: NaN, waitingMs: NaN },
  gc: { totalMs: NaN, count: NaN, longMs: NaN, longCount: NaN, maxYoungMs: NaN, maxFullMs: NaN },
};

/**
 * The `loopWatchStart`/`loopWatchStop` commands of a bench child (the
 * beacon's server and the load workers): one watch at a time.
 */
export function loopWatchCommands(): { loopWatchStart: (args: { resolutionMs: number }) => void; loopWatchStop: () => LoopReport | null } {
  let watch: LoopWatch | undefined;
  return {
    loopWatchStart: (args) => {
      watch?.stop();
      watch = new LoopWatch(args.resolutionMs);
    },
    loopWatchStop: () => {
      const got = watch?.stop();
      watch = undefined;
      return got ?? null;
    },
  };
}

export class LoopWatch {
  private readonly histogram: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  private maxBusyMs = 0;
  private readonly long = { wallMs: 0, onCpuMs: 0, waitingMs: 0 };
  private readonly gc: GcPauses = { totalMs: 0, count: 0, longMs: 0, longCount: 0, maxYoungMs: 0, maxFullMs: 0 };
  private readonly gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const ms = entry.duration;
      const kind = (entry as unknown as { detail?: NodeGCPerformanceDetail }).detail?.kind;
      this.gc.totalMs += ms;
      this.gc.count++;
      if (ms >= LONG_GC_PAUSE_MS) {
        this.gc.longMs += ms;
        this.gc.longCount++;
      }
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) this.gc.maxYoungMs = Math.max(this.gc.maxYoungMs, ms);
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) this.gc.maxFullMs = Math.max(this.gc.maxFullMs, ms);
    }
  });

  constructor(private readonly resolutionMs: number) {
    this.histogram = monitorEventLoopDelay({ resolution: resolutionMs });
    this.histogram.enable();
    this.gcObserver.observe({ entryTypes: ['gc'] });
    let last = schedMs();
    let lastWall = performance.now();
    this.timer = setInterval(() => {
      const now = schedMs();
      const wall = performance.now();
      const onCpu = now.onCpu - last.onCpu;
      this.maxBusyMs = Math.max(this.maxBusyMs, onCpu);
      if (wall - lastWall >= LONG_STRETCH_MS) {
        this.long.wallMs += wall - lastWall;
        this.long.onCpuMs += onCpu;
        this.long.waitingMs += now.waiting - last.waiting;
      }
      last = now;
      lastWall = wall;
    }, resolutionMs);
  }

  stop(): LoopReport {
    this.histogram.disable();
    clearInterval(this.timer);
    this.gcObserver.disconnect();
    return {
      gc: this.gc,
      timeP99StallMs: Math.max(0, timeWeightedPercentile(this.histogram, 99) / 1e6 - this.resolutionMs),
      maxStallMs: Math.max(0, this.histogram.max / 1e6 - this.resolutionMs),
      p99StallMs: Math.max(0, this.histogram.percentile(99) / 1e6 - this.resolutionMs),
      maxBusyMs: this.maxBusyMs,
      long: this.long,
    };
  }
}

/**
 * The histogram's percentile weighted by time rather than by sample: a
 * stall of 20 ms is one sample but 20 ms in which frames arrive and wait,
 * so this is the stall a frame arriving at a random moment is in at `p`.
 */
function timeWeightedPercentile(histogram: IntervalHistogram, p: number): number {
  const points = [...histogram.percentiles.entries()].sort((a, b) => a[0] - b[0]);
  const weighted: [number, number][] = [];
  let previous = 0;
  let total = 0;
  for (const [percentile, value] of points) {
    const time = (percentile - previous) * value;
    previous = percentile;
    if (time <= 0) continue;
    weighted.push([value, time]);
    total += time;
  }
  let seen = 0;
  for (const [value, time] of weighted) {
    seen += time;
    if (seen >= total * p / 100) return value;
  }
  return weighted.length ? weighted[weighted.length - 1]![0] : 0;
}
