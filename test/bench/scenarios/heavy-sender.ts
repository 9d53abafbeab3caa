/**
 * Scenario 10: one heavy sender (issue 12) against steady pairs.
 *
 * - Steady: 16 pairs of WebSocket peers, 64 B frames, 10k frames/s in all,
 *   in one load process; their one-way latency and losses are measured.
 * - Flooder: one more pair, in a process of its own at lower priority,
 *   sends 1200 B frames (scenario 10) or 12 B ones, 21-byte relays (the
 *   load worker stamps 12 bytes; scenario 11, issue 19) as fast as its socket takes them (open loop:
 *   only TCP holds it back) to a receiver that reads at once.
 * - Each run: the steady pairs alone for a window; then the flooder starts,
 *   and after a ramp (its burst spent) the steady pairs run the same window
 *   beside it; then the flooder stops and its backlog drains before the
 *   next run.
 * - Reported: steady p50/p99 alone and with the flooder, and their ratios
 *   within the run (goal: within 2x); steady frames lost (goal: none); the
 *   flooder's delivered rate over the window, and as a share of its budget
 *   (goal: held to it): frames × the larger of their wire size and the
 *   least a frame costs (--peer-rate / --peer-frame-rate), over --peer-rate. The beacon runs on its
 *   defaults; the baseline (the naive relay, or another beacon build with
 *   --baseline-dist) shows what an unbounded sender does.
 */
import type { Child } from '../common/child';
import { DEFAULTS } from '../../../lib/config';
import {
  COMPAT_PATH, Figures, buildRigs, isBeaconBuild, serverOrder, serverStats, sleep, startServer, startWorker, stopAll,
  type BenchSettings, type Row, type Server, type ServerKind,
} from './context';
import { connectWssPairs, measure, type Sender } from './measure';

export interface HeavySenderPlan {
  steadyPairs: number;
  /** Frames/s of all steady pairs together. */
  steadyRate: number;
  windowMs: number;
  /** Payload of the flooder's relays: 1200 (scenario 10) or 12 (21-byte relays, scenario 11). */
  floodPayload: number;
}

const STEADY_PAYLOAD = 64;

/** Wire bytes of one flood frame as the beacon reads it: masked client header + Relay header (9) + payload. */
function floodWireBytes(payload: number): number {
  return (9 + payload < 126 ? 6 : 8) + 9 + payload;
}

/** What one flood frame costs of the budget: its wire size, or the least a frame costs if more. */
function floodFrameCost(payload: number): number {
  return Math.max(floodWireBytes(payload), Math.ceil(DEFAULTS.peerRateBytesPerSec / DEFAULTS.peerFrameRate));
}
/** The flooder runs this long before the steady window, so its burst is spent and it is at its rate. */
const RAMP_MS = 400;
/** Ratio of steady latency with/without the flooder that counts as not crowded out. */
const GOAL_RATIO = 2;

interface Rig {
  server: Server;
  steady: Sender;
  flood: Sender;
}

async function rig(settings: BenchSettings, kind: ServerKind, plan: HeavySenderPlan): Promise<Rig> {
  const server = await startServer(settings, kind, { maxPerIp: 100_000 });
  const steadyWorker = await startWorker(settings, `${kind}-steady`);
  const steadyFlows = await connectWssPairs(steadyWorker, server, plan.steadyPairs, `${kind}: steady peers`);
  // Lower priority: on the shared load core, the steady pairs' receiver must not be the one that waits.
  const floodWorker = await startWorker(settings, `${kind}-flood`, 'sender');
  const from = 2 * plan.steadyPairs + 1;
  const f = await floodWorker.request<{ ok: number }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: [from, from + 1], concurrency: 2 });
  if (f.ok !== 2) throw new Error(`${kind}: flooding pair did not connect`);
  return {
    server,
    steady: { worker: steadyWorker, flows: steadyFlows, ratePerFlow: plan.steadyRate / plan.steadyPairs },
    flood: { worker: floodWorker, flows: [{ from, to: from + 1, via: 'wss', openLoop: true }], ratePerFlow: 0 },
  };
}

/** Waits until the flood receiver's count stops moving (the flooder's backlog has drained), bounded. */
async function drainFlood(flood: Child): Promise<void> {
  const deadline = performance.now() + 10_000;
  let last = -1;
  for (;;) {
    const { received } = await flood.request<{ received: number }>('recvReport');
    if (received === last || performance.now() > deadline) return;
    last = received;
    await sleep(200);
  }
}

export async function heavySender(settings: BenchSettings, plan: HeavySenderPlan): Promise<Row[]> {
  const budgetMiB = DEFAULTS.peerRateBytesPerSec / 2 ** 20;
  const figures = new Figures(`${plan.floodPayload < 64 ? 11 : 10} heavy sender (${plan.steadyPairs} pairs at ${plan.steadyRate / 1000}k frames/s + 1 flooding pair, ${plan.floodPayload} B)`);
  figures.define('steady p50, alone', 'µs', 'lower');
  figures.define('steady p50, with flooder', 'µs', 'lower');
  figures.define('steady p50, with / without flooder', 'ratio', 'lower', (b) => ({ text: `beacon <= ${GOAL_RATIO}`, met: b.median <= GOAL_RATIO }));
  figures.define('steady p99, alone', 'µs', 'lower');
  figures.define('steady p99, with flooder', 'µs', 'lower');
  figures.define('steady p99, with / without flooder', 'ratio', 'lower', (b) => ({ text: `beacon <= ${GOAL_RATIO}`, met: b.median <= GOAL_RATIO }));
  figures.define('steady frames lost (both phases)', 'frames', 'lower', (b) => ({ text: 'beacon 0 in every run', met: b.max === 0 }));
  figures.define('flooder delivered', 'MB/s', 'lower');
  figures.define('flooder delivered, frames', 'per s', 'lower');
  const budgetName = `flooder / its budget (${budgetMiB} MiB/s, ${DEFAULTS.peerFrameRate / 1000}k frames/s default)`;
  figures.define(budgetName, 'share', 'lower', (b) => ({ text: 'beacon <= 1.05', met: b.max <= 1.05 }));
  figures.define('flooder read pauses (beacon counter)', 'per s', 'lower');
  const rigs: Partial<Record<ServerKind, Rig>> = {};
  try {
    Object.assign(rigs, await buildRigs((kind) => rig(settings, kind, plan)));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        const { server, steady, flood } = rigs[kind]!;
        const receivers = [steady.worker];
        const options = { payloadBytes: STEADY_PAYLOAD, ratePerFlow: 0, durationMs: plan.windowMs };
        await measure(server, [steady], receivers, { ...options, durationMs: Math.min(300, plan.windowMs / 2) }); // warm-up
        const alone = await measure(server, [steady], receivers, options);

        await flood.worker.request('recvReset');
        const flooding = flood.worker.request('run', {
          flows: flood.flows, payloadBytes: plan.floodPayload, ratePerFlow: 0, durationMs: RAMP_MS + plan.windowMs + 200,
        }, RAMP_MS + plan.windowMs + 20_000);
        await sleep(RAMP_MS);
        const isBeacon = isBeaconBuild(settings, kind);
        const pauses0 = isBeacon ? (await serverStats(server)).stats.peerReadPauses as number : NaN;
        await flood.worker.request('recvReset');
        const t0 = performance.now();
        const beside = await measure(server, [steady], receivers, options);
        const floodReport = await flood.worker.request<{ received: number }>('recvReport');
        const seconds = (performance.now() - t0) / 1000;
        const pauses = isBeacon ? (await serverStats(server)).stats.peerReadPauses as number - pauses0 : NaN;
        await flooding;
        await drainFlood(flood.worker);

        const floodFramesPerSec = floodReport.received / seconds;
        const floodBytesPerSec = floodFramesPerSec * floodWireBytes(plan.floodPayload);
        const [a, b] = [alone.latency[0]!, beside.latency[0]!];
        figures.add('steady p50, alone', kind, a.p50);
        figures.add('steady p50, with flooder', kind, b.p50);
        figures.add('steady p50, with / without flooder', kind, b.p50 / a.p50);
        figures.add('steady p99, alone', kind, a.p99);
        figures.add('steady p99, with flooder', kind, b.p99);
        figures.add('steady p99, with / without flooder', kind, b.p99 / a.p99);
        figures.add('steady frames lost (both phases)', kind, Math.max(0, alone.lost) + Math.max(0, beside.lost));
        figures.add('flooder delivered', kind, floodBytesPerSec / 1e6);
        figures.add('flooder delivered, frames', kind, floodFramesPerSec);
        figures.add(budgetName, kind, floodFramesPerSec * floodFrameCost(plan.floodPayload) / DEFAULTS.peerRateBytesPerSec);
        figures.add('flooder read pauses (beacon counter)', kind, pauses / seconds);
        settings.log(`  heavy sender run ${run + 1} ${kind}: steady p50 ${a.p50} -> ${b.p50} µs, p99 ${a.p99} -> ${b.p99} µs,` +
          ` lost ${alone.lost}+${beside.lost}, steady sent ${alone.sent}/${beside.sent} of ${alone.offered}/${beside.offered},` +
          ` flooder ${(floodBytesPerSec / 2 ** 20).toFixed(1)} MiB/s, ${Math.round(floodFramesPerSec)} frames/s${isBeacon ? `, ${pauses} pauses` : ''}`);
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => [r.steady.worker, r.flood.worker, r.server]));
  }
  return figures.rows();
}
