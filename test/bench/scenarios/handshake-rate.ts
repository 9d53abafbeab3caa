/**
 * Scenario 12: how many good handshakes one server core completes (issue 22).
 *
 * - The server alone on its core, nothing else connected; one load process
 *   on the other core keeps 64 handshakes in flight (real upgrade, challenge,
 *   Ed25519 signature, auth_ok, then a client close), from eight loopback
 *   source addresses, cycling through a pool of node IDs larger than any
 *   cache of verify keys, as a fleet reconnecting is.
 * - Good handshakes/s is auth_ok received over the window; per server
 *   CPU-second it is the figure for one core even when the load core is the
 *   limit (the load process's own CPU share is reported to show when it is).
 * - Then the same with bad signatures: every one must be refused (1008);
 *   one accepted is a failed goal. The naive baseline checks no signature:
 *   its "bad" handshakes are accepted.
 * - The signing keys of the pool are built before the first window.
 */
import type { Child } from '../common/child';
import {
  MANY_HANDSHAKES, COMPAT_PATH, Figures, buildRigs, isBeaconBuild, serverOrder, startServer, startWorker, stopAll, type BenchSettings, type Row, type Server,
  type ServerKind,
} from './context';
import { LOOPBACK_SOURCES } from './memory';
import { fmt } from './relay-throughput';

export interface HandshakeRatePlan {
  /** Node IDs cycled through, from `first`. */
  poolSize: number;
  first: number;
  /** Handshakes in flight. */
  concurrency: number;
  windowMs: number;
}

/** Issue 22's goal for one core. */
const GOAL_PER_SECOND = 2_500;

interface StormResult {
  ok: number;
  failed: number;
  errors: Record<string, number>;
  ms: number;
}

interface Rig {
  server: Server;
  load: Child;
}

interface Window {
  result: StormResult;
  serverCpuSeconds: number;
  loadCpuShare: number;
}

async function rig(settings: BenchSettings, kind: ServerKind, plan: HandshakeRatePlan): Promise<Rig> {
  const server = await startServer(settings, kind, MANY_HANDSHAKES);
  const load = await startWorker(settings, `${kind}-handshakes`);
  await load.request('prepareSigners', { nodeIds: pool(plan) }, 120_000);
  return { server, load };
}

function pool(plan: HandshakeRatePlan): number[] {
  return Array.from({ length: plan.poolSize }, (_, i) => plan.first + i);
}

async function window(r: Rig, plan: HandshakeRatePlan, badSignature: boolean, durationMs: number): Promise<Window> {
  const server0 = r.server.child.cpuSeconds();
  const load0 = r.load.cpuSeconds();
  const t0 = performance.now();
  const result = await r.load.request<StormResult>('storm', {
    port: r.server.http, path: COMPAT_PATH, nodeIds: pool(plan), concurrency: plan.concurrency,
    localAddresses: LOOPBACK_SOURCES, badSignature, durationMs, maxCount: 1_000_000, timeoutMs: 10_000,
  }, durationMs + 30_000);
  const wall = (performance.now() - t0) / 1000;
  return { result, serverCpuSeconds: r.server.child.cpuSeconds() - server0, loadCpuShare: (r.load.cpuSeconds() - load0) / wall };
}

export async function handshakeRate(settings: BenchSettings, plan: HandshakeRatePlan): Promise<Row[]> {
  const figures = new Figures(`12 handshake rate (${plan.concurrency} in flight, ${plan.poolSize} node IDs, nothing else)`);
  figures.define('good handshakes/s', 'per s', 'higher', (b) => ({ text: `beacon >= ${GOAL_PER_SECOND}/s on one core`, met: b.median >= GOAL_PER_SECOND }));
  figures.define('good handshakes per server CPU-s', 'per cpu-s', 'higher');
  figures.define('server CPU, good handshakes', '% core', 'higher');
  figures.define('load process CPU, good handshakes', '% core', 'lower');
  figures.define('handshakes failed (not auth_ok)', 'count', 'lower');
  figures.define('bad-signature refusals/s', 'per s', 'higher');
  figures.define('bad signatures accepted', 'count', 'lower', (b) => ({ text: 'beacon 0 in every run', met: b.max === 0 }));
  const rigs: Partial<Record<ServerKind, Rig>> = {};
  try {
    Object.assign(rigs, await buildRigs((kind) => rig(settings, kind, plan)));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        const r = rigs[kind]!;
        if (run === 0) await window(r, plan, false, plan.windowMs / 2); // warm-up: code compiled, pool's first keys seen
        const good = await window(r, plan, false, plan.windowMs);
        const bad = await window(r, plan, true, plan.windowMs / 2);
        const seconds = good.result.ms / 1000;
        const refused = bad.result.errors.close_1008 ?? 0;
        figures.add('good handshakes/s', kind, good.result.ok / seconds);
        figures.add('good handshakes per server CPU-s', kind, good.result.ok / good.serverCpuSeconds);
        figures.add('server CPU, good handshakes', kind, 100 * good.serverCpuSeconds / seconds);
        figures.add('load process CPU, good handshakes', kind, 100 * good.loadCpuShare);
        figures.add('handshakes failed (not auth_ok)', kind, good.result.failed);
        figures.add('bad-signature refusals/s', kind, (isBeaconBuild(settings, kind) ? refused : bad.result.ok) / (bad.result.ms / 1000));
        figures.add('bad signatures accepted', kind, bad.result.ok);
        const errors = (s: StormResult) => Object.entries(s.errors).map(([c, n]) => `${c}: ${n}`).join(', ');
        settings.log(`  handshake rate run ${run + 1} ${kind}: ${good.result.ok} in ${fmt(good.result.ms)} ms = ${fmt(good.result.ok / seconds)}/s,` +
          ` server cpu ${(100 * good.serverCpuSeconds / seconds).toFixed(0)}%, load cpu ${(100 * good.loadCpuShare).toFixed(0)}%` +
          `${good.result.failed ? ` [failed: ${errors(good.result)}]` : ''}; bad signatures: ${refused} refused, ${bad.result.ok} accepted` +
          `${Object.keys(bad.result.errors).some((c) => c !== 'close_1008') ? ` [${errors(bad.result)}]` : ''}`);
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => [r.load, r.server]));
  }
  return figures.rows();
}
