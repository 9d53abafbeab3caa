/**
 * Scenario 3: mixed routes, WSS->UDP and UDP->WSS at the same time.
 *
 * - One load process per direction (its flows' senders and receivers), so
 *   each direction's deliveries are counted apart.
 * - Alone: each direction's saturation on its own (as fast as its windows
 *   allow). Balance is the slower direction's rate over the faster's (goal:
 *   no direction slower by more than 1.5x, i.e. balance >= 0.67).
 * - Both at once: the same rate offered in both directions, 95% of half
 *   the slower direction's saturation, then lower shares until neither
 *   direction loses anything: the delivered rates of the first step give
 *   the balance at equal offered rates, the lossless steps the zero-loss
 *   rate (as achieved, per direction).
 */
import type { Child } from '../common/child';
import {
  COMPAT_PATH, Figures, buildRigs, serverOrder, startServer, startWorker, stopAll, type BenchSettings, type Row, type Server,
  type ServerKind,
} from './context';
import { ZERO_LOSS_LADDER, lossless, measure, type Flow, type Sender } from './measure';
import { fmt } from './relay-throughput';
import type { Spread } from '../common/stats';

export interface MixedPlan {
  pairs: number;
  payload: number;
  windowMs: number;
  searchWindowMs: number;
  searchSteps: number;
}

interface Rig {
  server: Server;
  /** [WSS->UDP, UDP->WSS] */
  directions: [Sender, Sender];
}

async function connect(worker: Child, server: Server, wss: number[], udp: number[]): Promise<void> {
  const w = await worker.request<{ ok: number; errors: object }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: wss, concurrency: 16 });
  if (w.ok !== wss.length) throw new Error(`${server.kind}: ${w.ok}/${wss.length} peers connected: ${JSON.stringify(w.errors)}`);
  const u = await worker.request<{ ok: number }>('udpOpen', { port: server.udp, nodeIds: udp });
  if (u.ok !== udp.length) throw new Error(`${server.kind}: ${u.ok}/${udp.length} UDP clients discovered`);
}

async function rig(settings: BenchSettings, kind: ServerKind, plan: MixedPlan): Promise<Rig> {
  const server = await startServer(settings, kind, { maxPerIp: 100_000 });
  const pairs = Array.from({ length: plan.pairs }, (_, i) => i);
  // Pair i: 4i+1 (WSS) -> 4i+2 (UDP), and 4i+3 (UDP) -> 4i+4 (WSS).
  const toUdp: Flow[] = pairs.map((i) => ({ from: 4 * i + 1, to: 4 * i + 2, via: 'wss' }));
  const toWss: Flow[] = pairs.map((i) => ({ from: 4 * i + 3, to: 4 * i + 4, via: 'udp' }));
  const [a, b] = await Promise.all([startWorker(settings, `${kind}-wss-to-udp`), startWorker(settings, `${kind}-udp-to-wss`)]);
  await connect(a, server, toUdp.map((f) => f.from), toUdp.map((f) => f.to));
  await connect(b, server, toWss.map((f) => f.to), toWss.map((f) => f.from));
  return { server, directions: [{ worker: a, flows: toUdp }, { worker: b, flows: toWss }] };
}

export async function mixedRoutes(settings: BenchSettings, plan: MixedPlan): Promise<Row[]> {
  const figures = new Figures(`3 mixed routes, ${plan.payload} B`);
  const balanceGoal = 1 / 1.5;
  const balance = (b: Spread) => ({ text: `beacon >= ${balanceGoal.toFixed(2)} (1.5x)`, met: b.median >= balanceGoal });
  figures.define('WSS->UDP alone, saturation', 'frames/s', 'higher');
  figures.define('UDP->WSS alone, saturation', 'frames/s', 'higher');
  figures.define('balance alone: slower / faster', 'share', 'higher', balance);
  figures.define('both at once, same offered rate: WSS->UDP delivered', 'frames/s', 'higher');
  figures.define('both at once, same offered rate: UDP->WSS delivered', 'frames/s', 'higher');
  figures.define('balance both at once: slower / faster', 'share', 'higher', balance);
  figures.define('zero-loss rate per direction, both at once', 'frames/s', 'higher');
  const rigs: Partial<Record<ServerKind, Rig>> = {};
  try {
    Object.assign(rigs, await buildRigs((kind) => rig(settings, kind, plan)));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        const { server, directions } = rigs[kind]!;
        const workers = directions.map((d) => d.worker);
        const saturate = { payloadBytes: plan.payload, ratePerFlow: 0 };
        // Each direction alone, as fast as its windows allow.
        const alone: number[] = [];
        const aloneCpu: number[] = [];
        for (const d of directions) {
          await measure(server, [d], [d.worker], { ...saturate, durationMs: Math.min(300, plan.windowMs / 2) });
          const w = await measure(server, [d], [d.worker], { ...saturate, durationMs: plan.windowMs });
          alone.push(w.deliveredPerSec);
          aloneCpu.push(w.cpuShare);
        }
        figures.add('WSS->UDP alone, saturation', kind, alone[0]!);
        figures.add('UDP->WSS alone, saturation', kind, alone[1]!);
        figures.add('balance alone: slower / faster', kind, Math.min(...alone) / Math.max(...alone));
        // Both at once, the same rate offered in each direction: the top of the
        // ladder gives the per-direction delivered rates, the first lossless step the zero-loss rate.
        // Half of the slower direction's saturation each: together about what one direction alone can carry.
        const top = Math.min(...alone) / 2;
        let zeroLoss = 0;
        const tries: string[] = [];
        for (const [step, share] of ZERO_LOSS_LADDER.slice(0, plan.searchSteps).entries()) {
          const rate = top * share;
          const z = await measure(server, directions, workers, { payloadBytes: plan.payload, ratePerFlow: rate / plan.pairs, durationMs: plan.searchWindowMs, drainMs: 500 });
          if (step === 0) {
            const seconds = z.ms / 1000;
            const [toUdp, toWss] = [z.inWindow[0]! / seconds, z.inWindow[1]! / seconds];
            figures.add('both at once, same offered rate: WSS->UDP delivered', kind, toUdp);
            figures.add('both at once, same offered rate: UDP->WSS delivered', kind, toWss);
            figures.add('balance both at once: slower / faster', kind, Math.min(toUdp, toWss) / Math.max(toUdp, toWss));
            tries.push(`delivered WSS->UDP ${fmt(toUdp)}/s, UDP->WSS ${fmt(toWss)}/s, cpu ${(z.cpuShare * 100).toFixed(0)}%`);
          }
          tries.push(`${fmt(rate)}: ${lossless(z) ? 'ok' : `lost ${z.lost}, sent ${((z.sent / z.offered) * 100).toFixed(0)}%`}`);
          // Per direction, at the rate achieved without loss (as in zeroLossRate).
          if (z.lost <= 0) zeroLoss = Math.max(zeroLoss, z.sent / 2 / (z.ms / 1000));
          if (lossless(z)) break;
        }
        figures.add('zero-loss rate per direction, both at once', kind, zeroLoss);
        settings.log(`  mixed run ${run + 1} ${kind}: alone WSS->UDP ${fmt(alone[0]!)}/s (cpu ${(aloneCpu[0]! * 100).toFixed(0)}%), UDP->WSS ${fmt(alone[1]!)}/s (cpu ${(aloneCpu[1]! * 100).toFixed(0)}%); both at once, each offered ${fmt(top * ZERO_LOSS_LADDER[0]!)}/s: ${tries.join('; ')}`);
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => [...r.directions.map((d) => d.worker), r.server]));
  }
  return figures.rows();
}
