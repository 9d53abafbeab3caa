/**
 * The soak's figures and its verdict on growth, as pure functions.
 *
 * - A Sample is one scrape of the beacon's /metrics: the resources that
 *   leak (RSS, heap, fds, handles, timers, peers) and the counters.
 * - Growth is judged after the warm-up: the last window of samples against
 *   the first window after the warm-up (the soak uses thirds of the samples
 *   after it), for every resource, each with its stated margin (MARGINS).
 *   Each window is summed up by its quietest sample (SUMMARY): heap in use
 *   swings with garbage collection, and fds, handles, timers and peers with
 *   the work in flight when the sample is taken (handshakes waiting on a
 *   silent registry hold three timers each); a burst raises only some
 *   samples, a leak raises them all, so it shows as a rising floor. RSS,
 *   which does not fall back after a burst, is summed up by the median.
 * - After the load stops and every client has closed, the beacon must come
 *   back to what it held before the load started (fds, handles, timers,
 *   peers, handshakes), within IDLE_SLACK.
 */
import { promValue } from '../helpers/wire';

export interface Sample {
  /** Seconds since the load started. */
  t: number;
  rssMiB: number;
  heapMiB: number;
  fds: number;
  handles: number;
  /** Active (referenced) timers: prom-client's active resources of type Timeout. */
  timers: number;
  peers: number;
  handshakes: number;
  counters: Record<string, number>;
}

/** The resources that must not grow. */
export const RESOURCES = ['rssMiB', 'heapMiB', 'fds', 'handles', 'timers', 'peers'] as const;
export type Resource = (typeof RESOURCES)[number];

/**
 * How each window of samples is summed up. `lowest`: its quietest moment,
 * for what swings with the work in flight (or garbage not yet collected);
 * the one-minute soak's last window holds the registry's silent phase,
 * when 13 handshakes and 40 timers in flight are normal, and its first
 * window does not. `median`: for RSS, which rises with a burst's high
 * water and stays.
 */
export const SUMMARY: Record<Resource, 'median' | 'lowest'> = {
  rssMiB: 'median',
  heapMiB: 'lowest',
  fds: 'lowest',
  handles: 'lowest',
  timers: 'lowest',
  peers: 'lowest',
};

/**
 * How much each resource may grow after the warm-up: `relative` of the
 * baseline plus `absolute`. Even the quietest sample of a window holds the
 * churn's sockets and a few handshakes; a leak of one socket or timer per
 * connection adds over a thousand a minute.
 */
export const MARGINS: Record<Resource, { relative: number; absolute: number }> = {
  rssMiB: { relative: 0.10, absolute: 24 },
  heapMiB: { relative: 0.10, absolute: 8 },
  fds: { relative: 0.10, absolute: 24 },
  handles: { relative: 0.10, absolute: 24 },
  timers: { relative: 0.10, absolute: 24 },
  peers: { relative: 0.10, absolute: 24 },
};

/** After everything closed: what the beacon may hold beyond its pre-load idle figures. */
export const IDLE_SLACK = { fds: 4, handles: 4, timers: 2, peers: 0, handshakes: 0 } as const;

/** The counters printed every minute, as `label: [metric, labels]`. */
const COUNTERS: Record<string, [string, Record<string, string>?]> = {
  authOk: ['beacon_wss_auth_total', { result: 'ok' }],
  badSig: ['beacon_wss_auth_total', { result: 'fail', reason: 'bad_signature' }],
  regDown: ['beacon_wss_auth_total', { result: 'fail', reason: 'registry_unavailable' }],
  authTimeout: ['beacon_wss_auth_total', { result: 'fail', reason: 'timeout' }],
  refused: ['beacon_wss_upgrades_total', { result: 'fail' }],
  replaced: ['beacon_wss_replaced_total'],
  revoked: ['beacon_wss_revoked_total'],
  idle: ['beacon_wss_idle_disconnects_total'],
  relayWss: ['beacon_relay_total', { route: 'wss' }],
  relayUdp: ['beacon_relay_total', { route: 'udp' }],
  relayBeacon: ['beacon_relay_total', { route: 'beacon' }],
  relayUnknown: ['beacon_relay_total', { route: 'unknown' }],
  bufFull: ['beacon_dropped_total', { reason: 'send_buffer_full' }],
  malformed: ['beacon_dropped_total', { reason: 'malformed' }],
  oversized: ['beacon_dropped_total', { reason: 'oversized' }],
  hsBudget: ['beacon_wss_auth_total', { result: 'fail', reason: 'handshake_budget' }],
  reloadOk: ['beacon_keys_reloads_total', { result: 'ok' }],
  reloadFail: ['beacon_keys_reloads_total', { result: 'fail' }],
  regFound: ['beacon_registry_lookups_total', { result: 'found' }],
  regError: ['beacon_registry_lookups_total', { result: 'error' }],
};

export function parseSample(text: string, t: number): Sample {
  const value = (name: string, labels?: Record<string, string>) => promValue(text, name, labels) ?? 0;
  const counters: Record<string, number> = {};
  for (const [label, [name, labels]] of Object.entries(COUNTERS)) counters[label] = value(name, labels);
  return {
    t,
    rssMiB: value('beacon_process_resident_memory_bytes') / 2 ** 20,
    heapMiB: value('beacon_nodejs_heap_size_used_bytes') / 2 ** 20,
    fds: value('beacon_process_open_fds'),
    handles: value('beacon_nodejs_active_handles_total'),
    timers: value('beacon_nodejs_active_resources', { type: 'Timeout' }),
    peers: value('beacon_wss_peers'),
    handshakes: value('beacon_wss_handshakes'),
    counters,
  };
}

export const SAMPLE_HEADER = ['min', 'rss MiB', 'heap MiB', 'fds', 'handles', 'timers', 'peers', 'hs', ...Object.keys(COUNTERS)];

export function sampleRow(sample: Sample): string[] {
  return [
    (sample.t / 60).toFixed(1), sample.rssMiB.toFixed(1), sample.heapMiB.toFixed(1),
    String(sample.fds), String(sample.handles), String(sample.timers), String(sample.peers), String(sample.handshakes),
    ...Object.values(sample.counters).map(String),
  ];
}

export interface GrowthVerdict {
  resource: Resource;
  baseline: number;
  final: number;
  limit: number;
  ok: boolean;
  /** The medians of the two windows, for comparison with runs judged by them (before issue 18). */
  medians: [number, number];
}

/**
 * Compares the first window after `warmupS` with the last window of the
 * run, each summed up as SUMMARY says; each window holds `windowSize`
 * samples (at least one).
 */
export function judgeGrowth(samples: readonly Sample[], warmupS: number, windowSize: number): GrowthVerdict[] {
  const steady = samples.filter((s) => s.t >= warmupS);
  if (steady.length < 2) throw new Error(`only ${steady.length} sample(s) after the ${warmupS} s warm-up; run longer`);
  const size = Math.max(1, Math.min(windowSize, Math.floor(steady.length / 2)));
  const first = steady.slice(0, size);
  const last = steady.slice(-size);
  return RESOURCES.map((resource) => {
    const pick = SUMMARY[resource] === 'lowest' ? min : median;
    const firstValues = first.map((s) => s[resource]);
    const lastValues = last.map((s) => s[resource]);
    const baseline = pick(firstValues);
    const final = pick(lastValues);
    const { relative, absolute } = MARGINS[resource];
    const limit = baseline * (1 + relative) + absolute;
    return { resource, baseline, final, limit, ok: final <= limit, medians: [median(firstValues), median(lastValues)] };
  });
}

/** Resources the beacon still holds after the load, beyond its idle figures before it. */
export function judgeIdle(before: Sample, after: Sample): string[] {
  const problems: string[] = [];
  for (const [resource, slack] of Object.entries(IDLE_SLACK) as Array<[keyof typeof IDLE_SLACK, number]>) {
    if (after[resource] > before[resource] + slack) {
      problems.push(`${resource}: ${after[resource]} after the load, ${before[resource]} before it (slack ${slack})`);
    }
  }
  return problems;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function min(values: readonly number[]): number {
  return Math.min(...values);
}

/** Columns padded to a common width, for the per-minute table. */
export function formatTable(rows: readonly string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => cell.padStart(widths[i]!)).join(' ')).join('\n');
}
