/**
 * Scenario 4: a handshake storm while established peers relay.
 *
 * - 100 established peers (50 pairs, in their own load process) relay at a
 *   steady rate; their one-way latency is recorded before the storm (quiet),
 *   during a storm of valid handshakes, and during a storm of bad
 *   signatures.
 * - The storm process opens, authenticates and closes connections as fast
 *   as it can (a bounded number in flight, several loopback source
 *   addresses) for the whole latency window, cycling through its node IDs.
 * - Handshakes/s are completed handshakes (auth_ok; with bad signatures,
 *   the 1008 refusal) over the window; per server CPU-second is the figure
 *   for one core when the load process is the limit.
 * - The baseline checks no signature: its figures show what auth costs
 *   (its "bad signatures" are accepted like any others).
 */
import type { Child } from '../common/child';
import {
  COMPAT_PATH, Figures, buildRigs, isBeaconBuild, serverOrder, startServer, startWorker, stopAll, type BenchSettings, type Row, type Server,
  type ServerKind,
} from './context';
import { connectWssPairs, measure, type Sender, type Window } from './measure';
import { LOOPBACK_SOURCES } from './memory';
import { fmt } from './relay-throughput';

export interface StormPlan {
  /** Established peers (pairs of them relay). */
  established: number;
  /** Distinct node IDs the storm cycles through, from `storm0`. */
  stormSize: number;
  storm0: number;
  /** Frames/s per established flow. */
  steadyRatePerFlow: number;
  windowMs: number;
}

/** Handshakes in flight from the storm process. */
const STORM_CONCURRENCY = 128;
const PAYLOAD = 64;

interface Rig {
  server: Server;
  steady: Sender;
  storm: Child;
}

interface StormResult {
  ok: number;
  failed: number;
  errors: Record<string, number>;
  ms: number;
}

async function rig(settings: BenchSettings, kind: ServerKind, plan: StormPlan): Promise<Rig> {
  const server = await startServer(settings, kind, { maxPerIp: 100_000, maxHandshakes: 4_096 });
  // The storm runs at lower priority: the established peers' latency must be the server's, not the load core's.
  const [steadyWorker, storm] = await Promise.all([startWorker(settings, `${kind}-steady`), startWorker(settings, `${kind}-storm`, 'sender')]);
  const flows = await connectWssPairs(steadyWorker, server, plan.established / 2, `${kind}: established peers`);
  return { server, steady: { worker: steadyWorker, flows }, storm };
}

async function underStorm(rig: Rig, plan: StormPlan, badSignature: boolean | undefined): Promise<{ window: Window; storm?: StormResult }> {
  const options = { payloadBytes: PAYLOAD, ratePerFlow: plan.steadyRatePerFlow, durationMs: plan.windowMs };
  if (badSignature === undefined) return { window: await measure(rig.server, [rig.steady], [rig.steady.worker], options) };
  const stormIds = Array.from({ length: plan.stormSize }, (_, i) => plan.storm0 + i);
  const [window, storm] = await Promise.all([
    measure(rig.server, [rig.steady], [rig.steady.worker], options),
    rig.storm.request<StormResult>('storm', {
      port: rig.server.http, path: COMPAT_PATH, nodeIds: stormIds, concurrency: STORM_CONCURRENCY,
      localAddresses: LOOPBACK_SOURCES, badSignature, durationMs: plan.windowMs, maxCount: 50_000, timeoutMs: 5_000,
    }, plan.windowMs + 30_000),
  ]);
  return { window, storm };
}

export async function handshakeStorm(settings: BenchSettings, plan: StormPlan): Promise<Row[]> {
  const figures = new Figures(`4 handshake storm (+${plan.established} peers at ${plan.steadyRatePerFlow * plan.established / 2} frames/s)`);
  figures.define('handshakes/s', 'per s', 'higher');
  figures.define('handshakes per server CPU-s', 'per cpu-s', 'higher', (b) => ({ text: 'beacon >= 2000 per core', met: b.median >= 2000 }));
  figures.define('established p99, quiet', 'µs', 'lower');
  figures.define('established p99, storm', 'µs', 'lower', (b) => ({ text: 'beacon < 10 ms', met: b.median < 10_000 }));
  figures.define('bad-signature refusals/s', 'per s', 'higher');
  figures.define('bad-signature refusals per server CPU-s', 'per cpu-s', 'higher');
  figures.define('established p99, bad-signature storm', 'µs', 'lower', (b) => ({ text: 'beacon < 10 ms', met: b.median < 10_000 }));
  figures.define('p99 bad-signature storm / valid storm', 'share', 'lower', (b) => ({ text: 'beacon <= 1.25 (costs no more)', met: b.median <= 1.25 }));
  const rigs: Partial<Record<ServerKind, Rig>> = {};
  try {
    Object.assign(rigs, await buildRigs((kind) => rig(settings, kind, plan)));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        const r = rigs[kind]!;
        if (run === 0) await underStorm(r, { ...plan, windowMs: plan.windowMs / 2 }, undefined); // warm-up, first of each server
        const quiet = await underStorm(r, plan, undefined);
        figures.add('established p99, quiet', kind, quiet.window.latency[0]!.p99);
        const good = await underStorm(r, plan, false);
        const bad = await underStorm(r, plan, true);
        const goodCount = good.storm!.ok;
        const badCount = bad.storm!.errors.close_1008 ?? 0;
        // The naive baseline accepts anything; a beacon build refuses.
        const badRefused = isBeaconBuild(settings, kind) ? badCount : bad.storm!.ok;
        figures.add('handshakes/s', kind, goodCount / (good.storm!.ms / 1000));
        figures.add('handshakes per server CPU-s', kind, goodCount / good.window.cpuSeconds);
        figures.add('established p99, storm', kind, good.window.latency[0]!.p99);
        figures.add('bad-signature refusals/s', kind, badRefused / (bad.storm!.ms / 1000));
        figures.add('bad-signature refusals per server CPU-s', kind, badRefused / bad.window.cpuSeconds);
        figures.add('established p99, bad-signature storm', kind, bad.window.latency[0]!.p99);
        figures.add('p99 bad-signature storm / valid storm', kind, bad.window.latency[0]!.p99 / good.window.latency[0]!.p99);
        const other = (s: StormResult) => Object.entries(s.errors).filter(([code]) => code !== 'close_1008').map(([c, n]) => `${c}: ${n}`).join(', ');
        settings.log(`  storm run ${run + 1} ${kind}: ${goodCount} handshakes in ${fmt(good.storm!.ms)} ms (${fmt(goodCount / (good.storm!.ms / 1000))}/s, cpu ${(good.window.cpuShare * 100).toFixed(0)}%)` +
          `${other(good.storm!) ? ` [failed: ${other(good.storm!)}]` : ''}; p99 quiet ${fmt(quiet.window.latency[0]!.p99)} µs, storm ${fmt(good.window.latency[0]!.p99)} µs;` +
          ` bad signatures: ${badRefused} refused (${fmt(badRefused / (bad.storm!.ms / 1000))}/s)${other(bad.storm!) ? ` [other: ${other(bad.storm!)}]` : ''}, p99 ${fmt(bad.window.latency[0]!.p99)} µs`);
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => [r.steady.worker, r.storm, r.server]));
  }
  return figures.rows();
}
