/**
 * What every scenario shares: the run's settings, starting servers and load
 * generators in their own pinned processes, and the result rows.
 *
 * - Servers run on core 0 (SERVER_CORE), load generators on core 1
 *   (LOAD_CORE), when taskset exists: the figure is one beacon core's.
 * - A server is the beacon (`startBeacon` with a keys file) or the
 *   baseline (the naive relay); both are started the same way.
 * - Rows pair the beacon's figure with the baseline's from the same run,
 *   run by run, so the ratio is computed per run before taking medians.
 */
import { Child, spawnChild } from '../common/child';
import { spread, type Spread } from '../common/stats';

export const SERVER_CORE = 0;
export const LOAD_CORE = 1;
export const COMPAT_PATH = '/v1/compat';

export type ServerKind = 'beacon' | 'baseline';
export const SERVER_KINDS: readonly ServerKind[] = ['beacon', 'baseline'];

/** Which server goes first in run `run`: flipped every run, so neither always meets a warmer or cooler machine. */
export function serverOrder(run: number): readonly ServerKind[] {
  return run % 2 === 0 ? SERVER_KINDS : [...SERVER_KINDS].reverse();
}

export interface BenchSettings {
  quick: boolean;
  /** Repetitions of every measurement (median, min, max over them). */
  runs: number;
  /** Write a CPU profile of each beacon process into this directory. */
  profileDir?: string;
  /** The beacon build the "beacon" server runs (default: this one); for before/after runs. */
  beaconDist?: string;
  /** Run the baseline slot with another beacon build instead of the naive relay. */
  baselineDist?: string;
  /** Extra environment of the baseline slot's process (A/B of a switch on one build). */
  baselineEnv?: Record<string, string>;
  identitiesPath: string;
  keysPath: string;
  /** Node IDs with keys in the keys file: 1..identityCount. */
  identityCount: number;
  log: (line: string) => void;
}

export interface Row {
  scenario: string;
  metric: string;
  unit: string;
  better: 'higher' | 'lower';
  beacon: Spread;
  baseline: Spread;
  /** beacon / baseline, run by run. */
  ratio: Spread;
  goal?: { text: string; met: boolean };
  note?: string;
}

export interface Server {
  kind: ServerKind;
  child: Child;
  http: number;
  udp: number;
}

export interface ServerStats {
  stats: Record<string, unknown> & {
    dropped?: Record<string, number>;
    framesOut?: number;
    udpSent?: number;
  };
  peers: number;
  memory: NodeJS.MemoryUsage;
}

/** Whether `kind` runs a beacon build: always the beacon slot, and the baseline slot under --baseline-dist. */
export function isBeaconBuild(settings: BenchSettings, kind: ServerKind): boolean {
  return kind === 'beacon' || settings.baselineDist !== undefined;
}

/** Server limits for scenarios that connect thousands of daemons from a few loopback addresses as fast as they can. */
export const MANY_HANDSHAKES = { maxPerIp: 1_000_000, maxHandshakes: 4_096, maxPeers: 100_000 } as const;

/** Node flags from an environment variable, space-separated; none when it is unset. */
function flagsFrom(variable: string): string[] {
  return process.env[variable]?.split(' ').filter(Boolean) ?? [];
}

export async function startServer(settings: BenchSettings, kind: ServerKind, overrides: Record<string, unknown> = {}): Promise<Server> {
  // BENCH_SERVER_NODE_FLAGS (e.g. --trace-gc) adds flags to the server processes, for a diagnosis.
  // BENCH_BEACON_NODE_FLAGS adds flags to the beacon slot only (e.g. a V8 heap setting against the same build without it).
  const nodeFlags = ['--expose-gc', ...flagsFrom('BENCH_SERVER_NODE_FLAGS'), ...(kind === 'beacon' ? flagsFrom('BENCH_BEACON_NODE_FLAGS') : [])];
  const profile = settings.profileDir !== undefined && kind === 'beacon';
  const dist = kind === 'beacon' ? settings.beaconDist : settings.baselineDist;
  const script = dist
    ? `${dist}/test/bench/servers/beacon-server.js`
    : kind === 'beacon' ? 'servers/beacon-server.js' : 'servers/naive-relay.js';
  const config = { keysFile: settings.keysPath, ...overrides, ...(profile ? { profileDir: settings.profileDir } : {}) };
  // The naive relay is ws as a user installs it: without the optional native helpers.
  const naive = kind === 'baseline' && !dist;
  const env = { ...(naive ? { WS_NO_BUFFER_UTIL: '1' } : {}), ...(kind === 'baseline' ? settings.baselineEnv : {}) };
  const child = spawnChild(script, {
    core: SERVER_CORE, nodeFlags, args: [JSON.stringify(config)], name: kind, absolute: dist !== undefined, env,
  });
  const ready = await child.ready;
  // Profile from here: the load, not the start-up.
  if (profile) await child.request('profileStart');
  return { kind, child, http: ready.http as number, udp: ready.udp as number };
}

/**
 * A load generator. On the shared load core, `sender` ones run at lower
 * priority than receivers, and `background` ones only when nothing else
 * there wants the core (a storm beside latency probes: see spawnChild's `idle`).
 */
export async function startWorker(settings: BenchSettings, name: string, role: 'sender' | 'receiver' | 'background' = 'receiver'): Promise<Child> {
  const child = spawnChild('load/worker.js', {
    core: LOAD_CORE, args: [settings.identitiesPath], name, nice: role === 'sender' ? 10 : 0, idle: role === 'background',
  });
  await child.ready;
  return child;
}

export function serverStats(server: Server): Promise<ServerStats> {
  return server.child.request<ServerStats>('stats');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Collects per-run figures of both servers and turns them into rows. */
export class Figures {
  private readonly values = new Map<string, { unit: string; better: 'higher' | 'lower'; beacon: number[]; baseline: number[]; goal?: (s: Spread) => { text: string; met: boolean } }>();

  constructor(private readonly scenario: string) {}

  define(metric: string, unit: string, better: 'higher' | 'lower', goal?: (beacon: Spread, ratio: Spread) => { text: string; met: boolean }): void {
    if (!this.values.has(metric)) this.values.set(metric, { unit, better, beacon: [], baseline: [], goal: goal as never });
  }

  add(metric: string, kind: ServerKind, value: number): void {
    const entry = this.values.get(metric);
    if (!entry) throw new Error(`metric ${metric} not defined`);
    entry[kind].push(value);
  }

  rows(): Row[] {
    const rows: Row[] = [];
    for (const [metric, v] of this.values) {
      const ratios = v.beacon.map((b, i) => b / (v.baseline[i] ?? NaN));
      const beacon = spread(v.beacon);
      const ratio = spread(ratios);
      const goal = v.goal as ((b: Spread, r: Spread) => { text: string; met: boolean }) | undefined;
      rows.push({
        scenario: this.scenario, metric, unit: v.unit, better: v.better,
        beacon, baseline: spread(v.baseline), ratio, goal: goal?.(beacon, ratio),
      });
    }
    return rows;
  }
}

/** Builds the beacon's and the baseline's rigs at the same time (set-up, nothing is measured). */
export async function buildRigs<R>(build: (kind: ServerKind) => Promise<R>): Promise<Record<ServerKind, R>> {
  const settled = await Promise.allSettled(SERVER_KINDS.map(build));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return Object.fromEntries(settled.map((s, i) => [SERVER_KINDS[i], (s as PromiseFulfilledResult<R>).value])) as Record<ServerKind, R>;
}

/** Stops children, ignoring those already gone; never throws. */
export async function stopAll(children: readonly (Child | Server | undefined)[]): Promise<void> {
  await Promise.all(children.map((c) => {
    const child = c instanceof Child ? c : c?.child;
    return child?.stop().catch(() => {});
  }));
}
