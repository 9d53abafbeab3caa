/**
 * Scenarios 1, 2 and 6: relay throughput (WSS->WSS, UDP->UDP) and one-way
 * latency at half of saturation.
 *
 * - Both servers run side by side, each with its own sender and receiver
 *   processes; runs alternate beacon/baseline (order flipped every run) so
 *   that drift on the machine hits both alike.
 * - Saturation: WebSocket senders write as fast as their sockets accept;
 *   UDP senders blast as fast as the load process can. The delivered rate
 *   is counted at the receivers. Frames per server CPU-second are reported
 *   beside it: when the load core is the limit, that is still the figure
 *   of one beacon core.
 * - Zero loss: offered at 95%, then 85%, 70% ... of saturation until a try
 *   loses nothing and meets its offer; the highest rate achieved without
 *   loss is the figure.
 * - Latency (WebSocket, 64 B): a low-rate probe pair in its own process
 *   (the bulk load runs at lower priority) measures one-way latency while
 *   the bulk is offered at half of each server's own saturation in that
 *   run, and again at one rate for both (SAME_RATE).
 */
import type { Child } from '../common/child';
import {
  COMPAT_PATH, Figures, buildRigs, serverOrder, startServer, startWorker, stopAll, type BenchSettings, type Row, type Server,
  type ServerKind,
} from './context';
import { measure, zeroLossRate, type Flow, type Sender } from './measure';

export interface ThroughputPlan {
  via: 'wss' | 'udp';
  pairs: number;
  payloads: number[];
  windowMs: number;
  searchWindowMs: number;
  searchSteps: number;
  latencyWindowMs: number;
}

interface Rig {
  server: Server;
  senders: Sender[];
  workers: Child[];
  /** WebSocket only: one low-rate pair in its own process, for latency. */
  probe?: Sender;
}

/** Frames/s of the latency probe. */
const PROBE_RATE = 2_000;
/** Bulk frames/s offered to both servers for the same-load latency figure (about half the naive relay's saturation). */
const SAME_RATE = 40_000;

/** Load processes per server; each holds both ends of its flows. */
const WORKERS = 2;

/** Offered rate that makes UDP senders go as fast as the load core lets them. */
const UDP_BLAST_RATE = 2_000_000;

async function rig(settings: BenchSettings, kind: ServerKind, plan: ThroughputPlan): Promise<Rig> {
  const server = await startServer(settings, kind, { maxPerIp: 100_000 });
  const workers: Child[] = [];
  const senders: Sender[] = [];
  for (let w = 0; w < WORKERS; w++) {
    // Bulk load runs at lower priority than the probe, so the probe's
    // receiver is not the one that makes frames wait.
    const worker = await startWorker(settings, `${kind}-load${w}`, 'sender');
    workers.push(worker);
    // Pairs w, w + WORKERS, ...: node 2i+1 sends to node 2i+2.
    const pairs = Array.from({ length: plan.pairs }, (_, i) => i).filter((i) => i % WORKERS === w);
    const ids = pairs.flatMap((i) => [2 * i + 1, 2 * i + 2]);
    if (plan.via === 'wss') {
      const r = await worker.request<{ ok: number; errors: object }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: ids, concurrency: 16 });
      if (r.ok !== ids.length) throw new Error(`${kind}: only ${r.ok}/${ids.length} peers connected: ${JSON.stringify(r.errors)}`);
    } else {
      const r = await worker.request<{ ok: number }>('udpOpen', { port: server.udp, nodeIds: ids });
      if (r.ok !== ids.length) throw new Error(`${kind}: only ${r.ok}/${ids.length} UDP clients discovered`);
    }
    senders.push({ worker, flows: pairs.map((i): Flow => ({ from: 2 * i + 1, to: 2 * i + 2, via: plan.via })) });
  }
  let probe: Sender | undefined;
  if (plan.via === 'wss') {
    const worker = await startWorker(settings, `${kind}-probe`);
    workers.push(worker);
    const ids = [2 * plan.pairs + 1, 2 * plan.pairs + 2];
    const r = await worker.request<{ ok: number; errors: object }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: ids, concurrency: 2 });
    if (r.ok !== 2) throw new Error(`${kind}: probe peers did not connect: ${JSON.stringify(r.errors)}`);
    probe = { worker, flows: [{ from: ids[0]!, to: ids[1]!, via: 'wss' }], ratePerFlow: PROBE_RATE };
  }
  return { server, senders: senders, workers, probe };
}

export async function relayThroughput(settings: BenchSettings, plan: ThroughputPlan): Promise<Row[]> {
  const name = plan.via === 'wss' ? '1 WSS->WSS' : '2 UDP->UDP';
  const goalRatio = plan.via === 'wss' ? 2.5 : 2;
  const figures = new Figures(name);
  const latency = new Figures('6 latency (WSS, 64 B, half saturation)');
  const rigs: Partial<Record<ServerKind, Rig>> = {};
  try {
    Object.assign(rigs, await buildRigs((kind) => rig(settings, kind, plan)));
    for (const payload of plan.payloads) {
      const sat = `saturation ${payload} B`;
      figures.define(`${sat}: delivered`, 'frames/s', 'higher', (_b, r) => ({ text: `ratio >= ${goalRatio}`, met: r.median >= goalRatio }));
      // UDP per CPU-second (issue 13, batched I/O): 3x the naive dgram relay at 64 B, 2.5x at 1200 B.
      const cpuGoal = plan.via === 'udp' ? (payload <= 64 ? 3 : 2.5) : goalRatio;
      figures.define(`${sat}: per server CPU-s`, 'frames/cpu-s', 'higher', (_b, r) => ({ text: `ratio >= ${cpuGoal}`, met: r.median >= cpuGoal }));
      figures.define(`${sat}: server CPU`, '% core', 'higher');
      figures.define(`zero-loss rate ${payload} B`, 'frames/s', 'higher', (_b, r) => ({ text: `ratio >= ${goalRatio}`, met: r.median >= goalRatio }));
    }
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        const { server, senders, probe } = rigs[kind]!;
        const bulk = senders.map((s) => s.worker);
        const flows = senders.reduce((n, s) => n + s.flows.length, 0);
        for (const payload of plan.payloads) {
          const ratePerFlow = plan.via === 'wss' ? 0 : UDP_BLAST_RATE / flows;
          // Warm-up (JIT, socket buffers), not recorded.
          await measure(server, senders, bulk, { payloadBytes: payload, ratePerFlow, durationMs: Math.min(300, plan.windowMs / 2) });
          const w = await measure(server, senders, bulk, { payloadBytes: payload, ratePerFlow, durationMs: plan.windowMs });
          const sat = `saturation ${payload} B`;
          figures.add(`${sat}: delivered`, kind, w.deliveredPerSec);
          figures.add(`${sat}: per server CPU-s`, kind, w.perCpuSecond);
          figures.add(`${sat}: server CPU`, kind, w.cpuShare * 100);
          settings.log(`  ${name} run ${run + 1} ${kind} ${payload} B: saturation ${fmt(w.deliveredPerSec)}/s, ${fmt(w.perCpuSecond)}/cpu-s, cpu ${(w.cpuShare * 100).toFixed(0)}%, lost ${w.lost}`);
          const zl = await zeroLossRate(server, senders, bulk, {
            payloadBytes: payload, durationMs: plan.searchWindowMs, drainMs: 500,
            saturation: w.deliveredPerSec, steps: plan.searchSteps,
          });
          figures.add(`zero-loss rate ${payload} B`, kind, zl.rate);
          settings.log(`  ${name} run ${run + 1} ${kind} ${payload} B: zero-loss ${fmt(zl.rate)}/s (${zl.tries.map((t) => `${fmt(t.rate)}${t.passed ? ' ok' : ` lost ${t.lost}, sent ${(t.sentShare * 100).toFixed(0)}%`}`).join('; ')})`);
          if (plan.via === 'wss' && payload === plan.payloads[0]) {
            const half = w.deliveredPerSec / 2;
            const l = await measure(server, [...senders, probe!], [...bulk, probe!.worker], { payloadBytes: payload, ratePerFlow: half / flows, durationMs: plan.latencyWindowMs });
            const s = l.latency[l.latency.length - 1]!;
            latency.define('offered (half saturation)', 'frames/s', 'higher');
            latency.define('p50', 'µs', 'lower');
            latency.define('p99', 'µs', 'lower', (b) => ({ text: 'beacon p99 < 1000 µs', met: b.median < 1000 }));
            latency.define('p99.9', 'µs', 'lower');
            latency.add('offered (half saturation)', kind, half);
            latency.add('p50', kind, s.p50);
            latency.add('p99', kind, s.p99);
            latency.add('p99.9', kind, s.p999);
            settings.log(`  latency run ${run + 1} ${kind} at ${fmt(half)}/s: p50 ${s.p50} µs, p99 ${s.p99} µs, p99.9 ${s.p999} µs (lost ${l.lost})`);
            // The same offered rate for both servers, low enough that the load core is not the limit.
            const same = await measure(server, [...senders, probe!], [...bulk, probe!.worker], { payloadBytes: payload, ratePerFlow: SAME_RATE / flows, durationMs: plan.latencyWindowMs });
            const q = same.latency[same.latency.length - 1]!;
            latency.define(`p99 at ${fmt(SAME_RATE)}/s for both`, 'µs', 'lower');
            latency.add(`p99 at ${fmt(SAME_RATE)}/s for both`, kind, q.p99);
            settings.log(`  latency run ${run + 1} ${kind} at ${fmt(SAME_RATE)}/s: p50 ${q.p50} µs, p99 ${q.p99} µs, p99.9 ${q.p999} µs (lost ${same.lost})`);
            // The floor: the probe alone at 2k/s, server nearly idle. What this machine adds to
            // any loopback hop (waking an idle core, scheduling the probe) shows here.
            const alone = await measure(server, [probe!], [probe!.worker], { payloadBytes: payload, ratePerFlow: PROBE_RATE, durationMs: plan.latencyWindowMs });
            const f = alone.latency[alone.latency.length - 1]!;
            latency.define(`p99, probe alone (${fmt(PROBE_RATE)}/s, no other load)`, 'µs', 'lower');
            latency.add(`p99, probe alone (${fmt(PROBE_RATE)}/s, no other load)`, kind, f.p99);
            settings.log(`  latency run ${run + 1} ${kind} probe alone: p50 ${f.p50} µs, p99 ${f.p99} µs, p99.9 ${f.p999} µs (lost ${alone.lost})`);
          }
        }
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => [...r.workers, r.server]));
  }
  return [...figures.rows(), ...latency.rows()];
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 10_000) return `${(n / 1000).toFixed(0)}k`;
  if (Math.abs(n) >= 1_000) return `${(n / 1000).toFixed(1)}k`;
  return n.toFixed(n < 10 ? 2 : 0);
}

