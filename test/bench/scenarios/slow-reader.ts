/**
 * Scenario 7: one receiver stops reading while the others relay at full rate.
 *
 * - Phase A: the other pairs relay as fast as their windows allow; their
 *   delivered rate is the reference.
 * - Phase B: a fresh receiver connects and stops reading (its socket is
 *   paused, so TCP fills up), and its sender sends to it, open loop, at the
 *   others' per-pair rate of phase A, while the others relay as in phase A.
 *   Before that, the sender fills the reader's TCP buffers alone, as fast
 *   as it can, for one window.
 * - Reported: the others' throughput in B over A (goal: lose < 10%), the
 *   server's RSS growth over phase B (read from /proc every 100 ms; goal:
 *   flat, the beacon's send buffer is bounded), and the beacon's drops with
 *   reason send_buffer_full, read from its /metrics endpoint.
 */
import { request } from 'node:http';
import type { Child } from '../common/child';
import {
  COMPAT_PATH, Figures, buildRigs, isBeaconBuild, serverOrder, serverStats, sleep, startServer, startWorker, stopAll,
  type BenchSettings, type Row, type Server, type ServerKind,
} from './context';
import { measure, type Flow, type Sender } from './measure';
import { fmt } from './relay-throughput';

export interface SlowReaderPlan {
  pairs: number;
  windowMs: number;
}

const PAYLOAD = 1200;
const WORKERS = 2;
/** RSS growth in phase B under which memory counts as flat. */
const FLAT_BYTES = 16 * 2 ** 20;

interface Rig {
  server: Server;
  bulk: Sender[];
  slow: Child;
  slowSender: number;
}

async function rig(settings: BenchSettings, kind: ServerKind, plan: SlowReaderPlan): Promise<Rig> {
  const server = await startServer(settings, kind, { maxPerIp: 100_000 });
  const bulk: Sender[] = [];
  for (let w = 0; w < WORKERS; w++) {
    const worker = await startWorker(settings, `${kind}-load${w}`);
    const pairs = Array.from({ length: plan.pairs }, (_, i) => i).filter((i) => i % WORKERS === w);
    const ids = pairs.flatMap((i) => [2 * i + 1, 2 * i + 2]);
    const r = await worker.request<{ ok: number; errors: object }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: ids, concurrency: 16 });
    if (r.ok !== ids.length) throw new Error(`${kind}: ${r.ok}/${ids.length} peers connected: ${JSON.stringify(r.errors)}`);
    bulk.push({ worker, flows: pairs.map((i): Flow => ({ from: 2 * i + 1, to: 2 * i + 2, via: 'wss' })) });
  }
  const slow = await startWorker(settings, `${kind}-slow`);
  const slowSender = 2 * plan.pairs + 1;
  const r = await slow.request<{ ok: number }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: [slowSender], concurrency: 1 });
  if (r.ok !== 1) throw new Error(`${kind}: slow sender did not connect`);
  return { server, bulk, slow, slowSender };
}

/** The value of beacon_dropped_total{reason="send_buffer_full"} at /metrics. */
function scrapeSendBufferDrops(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', timeout: 5_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => { text += chunk; });
      res.on('end', () => {
        const line = /^beacon_dropped_total\{reason="send_buffer_full"\} (\d+)/m.exec(text);
        resolve(line ? Number(line[1]) : NaN);
      });
    });
    req.on('timeout', () => req.destroy(new Error('/metrics timed out')));
    req.on('error', reject);
    req.end();
  });
}

export async function slowReader(settings: BenchSettings, plan: SlowReaderPlan): Promise<Row[]> {
  const figures = new Figures(`7 slow reader (${plan.pairs} pairs, ${PAYLOAD} B)`);
  figures.define('others delivered, no slow reader', 'frames/s', 'higher');
  figures.define('others delivered, with slow reader', 'frames/s', 'higher');
  figures.define('others keep, with / without', 'share', 'higher', (b) => ({ text: 'beacon >= 0.90', met: b.median >= 0.9 }));
  figures.define('server RSS growth during slow reader', 'MB', 'lower', (b) => ({ text: `beacon < ${FLAT_BYTES / 2 ** 20} MB`, met: b.median < FLAT_BYTES / 2 ** 20 }));
  figures.define('send_buffer_full drops (from /metrics)', 'frames', 'higher', (b) => ({ text: 'beacon > 0', met: b.median > 0 }));
  const rigs: Partial<Record<ServerKind, Rig>> = {};
  try {
    Object.assign(rigs, await buildRigs((kind) => rig(settings, kind, plan)));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        const { server, bulk, slow, slowSender } = rigs[kind]!;
        const receivers = bulk.map((b) => b.worker);
        const options = { payloadBytes: PAYLOAD, ratePerFlow: 0, durationMs: plan.windowMs };
        await measure(server, bulk, receivers, { ...options, durationMs: Math.min(300, plan.windowMs / 2) });
        const a = await measure(server, bulk, receivers, options);
        // A new receiver for each run: the last one's queues are full for good.
        const slowReceiver = slowSender + 1 + run;
        const r = await slow.request<{ ok: number }>('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: [slowReceiver], concurrency: 1 });
        if (r.ok !== 1) throw new Error(`${kind}: slow receiver did not connect`);
        await slow.request('pauseReading', { nodeIds: [slowReceiver] });
        const isBeacon = isBeaconBuild(settings, kind); // the naive relay has no /metrics
        const drops0 = isBeacon ? await scrapeSendBufferDrops(server.http) : 0;
        const rss0 = server.child.rssBytes();
        let rssMax = rss0;
        let sampling = true;
        const sampler = (async () => {
          while (sampling) {
            rssMax = Math.max(rssMax, server.child.rssBytes());
            await sleep(100);
          }
        })();
        const slowFlow: Sender = {
          worker: slow, ratePerFlow: a.deliveredPerSec / plan.pairs,
          flows: [{ from: slowSender, to: slowReceiver, via: 'wss', openLoop: true }],
        };
        // The slow reader's TCP buffers (megabytes on loopback) are filled first, as fast as
        // its sender can, so that phase B sees a reader that is stuck, not one still absorbing.
        await measure(server, [{ ...slowFlow, ratePerFlow: 0 }], [], { ...options, durationMs: plan.windowMs });
        const b = await measure(server, [...bulk, slowFlow], receivers, options);
        sampling = false;
        await sampler;
        const drops = isBeacon ? await scrapeSendBufferDrops(server.http) - drops0 : 0;
        const stats = await serverStats(server);
        await slow.request('close', { nodeIds: [slowReceiver] });
        figures.add('others delivered, no slow reader', kind, a.deliveredPerSec);
        figures.add('others delivered, with slow reader', kind, b.deliveredPerSec);
        figures.add('others keep, with / without', kind, b.deliveredPerSec / a.deliveredPerSec);
        figures.add('server RSS growth during slow reader', kind, (rssMax - rss0) / 2 ** 20);
        figures.add('send_buffer_full drops (from /metrics)', kind, drops);
        settings.log(`  slow reader run ${run + 1} ${kind}: others ${fmt(a.deliveredPerSec)}/s -> ${fmt(b.deliveredPerSec)}/s` +
          ` (${((b.deliveredPerSec / a.deliveredPerSec) * 100).toFixed(0)}%), RSS ${(rss0 / 2 ** 20).toFixed(0)} -> max ${(rssMax / 2 ** 20).toFixed(0)} MB,` +
          ` drops ${drops}${isBeacon ? ` (stats: ${stats.stats.dropped?.send_buffer_full})` : ''}`);
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => [...r.bulk.map((b) => b.worker), r.slow, r.server]));
  }
  return figures.rows();
}
