/**
 * One measured window of relay traffic, and the searches built on it.
 *
 * - `measure`: senders (one or more load processes) run their flows for a
 *   bounded time; receivers count what arrived during the window and, after
 *   a bounded drain, in total. The server's CPU time over window + drain
 *   gives frames per CPU-second: the figure for one core that a noisy
 *   machine disturbs least.
 * - `zeroLossRate`: the highest rate achieved without losing a frame, over
 *   a few offered shares of the saturation figure.
 */
import type { Child } from '../common/child';
import type { LatencySummary } from '../common/stats';
import type { RunResult } from '../load/worker';
import { COMPAT_PATH, sleep, type Server } from './context';

export interface Flow {
  from: number;
  to: number;
  via: 'wss' | 'udp';
  /** Ignore the in-flight window (towards a slow reader). */
  openLoop?: boolean;
}

/**
 * Connects node IDs `first` .. `first + 2 * pairs - 1` from `worker` over
 * WebSocket and pairs them as flows first -> first + 1, ...; throws naming
 * `what` and the errors if any of them did not connect.
 */
export async function connectWssPairs(worker: Child, server: Server, pairs: number, what: string, first = 1): Promise<Flow[]> {
  const ids = Array.from({ length: 2 * pairs }, (_, i) => first + i);
  const r = await worker.request<{ ok: number; errors: object }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: ids, concurrency: 16 });
  if (r.ok !== ids.length) throw new Error(`${what}: ${r.ok}/${ids.length} connected: ${JSON.stringify(r.errors)}`);
  return Array.from({ length: pairs }, (_, i): Flow => ({ from: first + 2 * i, to: first + 2 * i + 1, via: 'wss' }));
}

export interface Sender {
  worker: Child;
  flows: Flow[];
  /** Overrides the measurement's rate for these flows (a latency probe). */
  ratePerFlow?: number;
}

export interface RecvReport {
  received: number;
  receivedBytes: number;
  latency: LatencySummary;
}

export interface Window {
  offered: number;
  sent: number;
  /** Received by each receiver process within the window. */
  inWindow: number[];
  /** Received by each receiver process after the drain. */
  total: number[];
  /** Wall time of the sending window (ms). */
  ms: number;
  /** Frames delivered per second within the window (all receivers). */
  deliveredPerSec: number;
  /** Server CPU seconds over window + drain. */
  cpuSeconds: number;
  /** Frames delivered per server CPU-second. */
  perCpuSecond: number;
  /** Share of one core the server used during the window (0..1). */
  cpuShare: number;
  lost: number;
  latency: LatencySummary[];
}

export interface MeasureOptions {
  payloadBytes: number;
  /** Frames/s per flow; 0 = as fast as the sockets accept (WebSocket only). */
  ratePerFlow: number;
  durationMs: number;
  /** Longest wait for stragglers after the window. */
  drainMs?: number;
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

/** Whose CPU a window is charged to: a server, or several processes summed (scenario 16's instances). */
export interface CpuSource {
  child: Pick<Child, 'cpuSeconds'>;
}

export async function measure(server: CpuSource, senders: readonly Sender[], receivers: readonly Child[], options: MeasureOptions): Promise<Window> {
  await Promise.all(receivers.map((r) => r.request('recvReset')));
  const cpu0 = server.child.cpuSeconds();
  const t0 = performance.now();
  const runs = await Promise.all(senders.map((s) => s.worker.request<RunResult>('run', {
    flows: s.flows, payloadBytes: options.payloadBytes, ratePerFlow: s.ratePerFlow ?? options.ratePerFlow, durationMs: options.durationMs,
  }, options.durationMs + 15_000)));
  const atEnd = await Promise.all(receivers.map((r) => r.request<RecvReport>('recvReport')));
  const wall = performance.now() - t0;
  const cpuWindow = server.child.cpuSeconds() - cpu0;
  const sent = sum(runs.map((r) => r.sent));
  const offered = sum(runs.map((r) => r.offered));
  // Drain: until everything sent arrived or nothing moved for 150 ms, bounded.
  const drainDeadline = performance.now() + (options.drainMs ?? 1_000);
  let reports = atEnd;
  let last = sum(atEnd.map((r) => r.received));
  let stableSince = performance.now();
  while (last < sent && performance.now() < drainDeadline && performance.now() - stableSince < 150) {
    await sleep(25);
    reports = await Promise.all(receivers.map((r) => r.request<RecvReport>('recvReport')));
    const now = sum(reports.map((r) => r.received));
    if (now !== last) stableSince = performance.now();
    last = now;
  }
  const cpuSeconds = server.child.cpuSeconds() - cpu0;
  const ms = Math.max(...runs.map((r) => r.ms));
  const inWindow = atEnd.map((r) => r.received);
  const total = reports.map((r) => r.received);
  return {
    offered, sent, inWindow, total, ms,
    deliveredPerSec: sum(inWindow) / (wall / 1000),
    cpuSeconds,
    perCpuSecond: cpuSeconds > 0 ? sum(total) / cpuSeconds : NaN,
    cpuShare: cpuWindow / (wall / 1000),
    lost: sent - sum(total),
    latency: reports.map((r) => r.latency),
  };
}

/** True when every frame sent arrived and the senders met the offered rate. */
export function lossless(w: Window): boolean {
  return w.lost <= 0 && w.sent >= 0.98 * w.offered;
}

export interface ZeroLoss {
  /** Highest rate achieved without loss (frames/s, all flows); 0 if every try lost frames. */
  rate: number;
  tries: { rate: number; passed: boolean; lost: number; sentShare: number }[];
}

/** Shares of the saturation rate tried, highest first, for the zero-loss rate. */
export const ZERO_LOSS_LADDER = [0.95, 0.85, 0.7, 0.5, 0.3];

/**
 * Offers `saturation` times each share of ZERO_LOSS_LADDER, highest first,
 * at most `steps` tries. A try without loss counts at the rate it achieved
 * (senders on the one load core may fall short of a high offer without
 * anything being lost); the ladder stops at the first try that lost
 * nothing and met its offer. Each try is one bounded `measure`.
 */
export async function zeroLossRate(
  server: Server, senders: readonly Sender[], receivers: readonly Child[],
  options: Omit<MeasureOptions, 'ratePerFlow'> & { saturation: number; steps: number },
): Promise<ZeroLoss> {
  const flows = sum(senders.map((s) => s.flows.length));
  const tries: ZeroLoss['tries'] = [];
  let best = 0;
  for (const share of ZERO_LOSS_LADDER.slice(0, options.steps)) {
    const rate = options.saturation * share;
    const w = await measure(server, senders, receivers, { ...options, ratePerFlow: rate / flows });
    tries.push({ rate: Math.round(rate), passed: lossless(w), lost: w.lost, sentShare: w.offered ? w.sent / w.offered : 0 });
    if (w.lost <= 0) best = Math.max(best, w.sent / (w.ms / 1000));
    if (lossless(w)) break;
  }
  return { rate: best, tries };
}
