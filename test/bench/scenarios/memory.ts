/**
 * Scenario 5: memory per idle authenticated peer.
 *
 * - A fresh server per run. It first serves 200 peers that then leave (so
 *   its code is compiled and its heap sized, as in any beacon that has
 *   run); its RSS after that and a full collection is the empty figure
 *   (the keys file is loaded by then). Peers are then connected in
 *   steps (1,000 then 10,000), and after each step the server collects
 *   again and reports RSS. Per peer = (RSS - empty) / peers.
 * - Peers come from two load processes and from several loopback source
 *   addresses (127.0.0.2-9), so no address runs out of ephemeral ports; the
 *   beacon's maxPerIp, maxPeers and maxHandshakes are raised for it.
 */
import type { Child } from '../common/child';
import {
  COMPAT_PATH, Figures, serverOrder, serverStats, sleep, startServer, startWorker, stopAll,
  type BenchSettings, type Row, type Server,
} from './context';

export interface MemoryPlan {
  counts: number[];
}

export const LOOPBACK_SOURCES = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`);
const GOAL_BYTES = 6 * 1024;
const GOAL_PEERS = 10_000;

async function rssAfterGc(server: Server): Promise<{ rss: number; heapUsed: number }> {
  const m = await server.child.request<NodeJS.MemoryUsage>('gc');
  // Let the allocator return what the collection freed before reading RSS.
  await sleep(100);
  return { rss: server.child.rssBytes(), heapUsed: m.heapUsed };
}

/** Peers connected and closed before the empty figure: code and heap warmed up, no peer left. */
const WARM_UP_PEERS = 200;

export async function warmUp(server: Server, workers: readonly Child[]): Promise<void> {
  const ids = Array.from({ length: WARM_UP_PEERS }, (_, i) => i + 1);
  await workers[0]!.request('wssConnect', { port: server.http, path: COMPAT_PATH, nodeIds: ids, concurrency: 64, localAddresses: LOOPBACK_SOURCES }, 60_000);
  await workers[0]!.request('closeAll');
  const deadline = Date.now() + 10_000;
  while ((await serverStats(server)).peers > 0) {
    if (Date.now() > deadline) throw new Error(`${server.kind}: warm-up peers still attached after 10 s`);
    await sleep(50);
  }
}

export async function memoryPerPeer(settings: BenchSettings, plan: MemoryPlan): Promise<Row[]> {
  const figures = new Figures('5 memory per idle peer');
  const largest = Math.max(...plan.counts);
  for (const count of plan.counts) {
    // The goal is about 10,000 peers; with fewer, fixed costs dominate (--quick).
    figures.define(`RSS per peer at ${count}`, 'bytes', 'lower', count === largest && count >= GOAL_PEERS
      ? (b) => ({ text: `beacon <= ${GOAL_BYTES} B at ${count}`, met: b.median <= GOAL_BYTES })
      : undefined);
    figures.define(`heap per peer at ${count}`, 'bytes', 'lower');
    if (count !== plan.counts[0]) figures.define(`RSS per added peer, ${plan.counts[0]} -> ${count}`, 'bytes', 'lower');
  }
  figures.define('empty server RSS', 'MB', 'lower');
  figures.define(`connect ${largest} peers`, 'peers/s', 'higher');
  const workers: Child[] = [];
  let server: Server | undefined;
  try {
    workers.push(...await Promise.all([startWorker(settings, 'mem-a'), startWorker(settings, 'mem-b')]));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        server = await startServer(settings, kind, { maxPeers: largest * 2, maxHandshakes: 8192, maxPerIp: largest * 2 });
        await warmUp(server, workers);
        const empty = await rssAfterGc(server);
        figures.add('empty server RSS', kind, empty.rss / 2 ** 20);
        let connected = 0;
        let connectMs = 0;
        let first = empty;
        for (const count of plan.counts) {
          const ids = Array.from({ length: count - connected }, (_, i) => connected + 1 + i);
          const halves = [ids.filter((_, i) => i % 2 === 0), ids.filter((_, i) => i % 2 === 1)];
          const t = performance.now();
          const results = await Promise.all(workers.map((w, i) => w.request<{ ok: number; errors: object }>('wssConnect', {
            port: server!.http, path: COMPAT_PATH, nodeIds: halves[i], concurrency: 64, localAddresses: LOOPBACK_SOURCES,
          }, 120_000)));
          connectMs += performance.now() - t;
          const ok = results.reduce((n, r) => n + r.ok, 0);
          if (ok !== ids.length) throw new Error(`${kind}: ${ok}/${ids.length} peers connected: ${JSON.stringify(results.map((r) => r.errors))}`);
          connected = count;
          const peers = (await serverStats(server)).peers;
          if (peers !== count) throw new Error(`${kind}: server reports ${peers} peers, expected ${count}`);
          const m = await rssAfterGc(server);
          figures.add(`RSS per peer at ${count}`, kind, (m.rss - empty.rss) / count);
          if (count !== plan.counts[0]) figures.add(`RSS per added peer, ${plan.counts[0]} -> ${count}`, kind, (m.rss - first.rss) / (count - plan.counts[0]!));
          if (count === plan.counts[0]) first = m;
          figures.add(`heap per peer at ${count}`, kind, (m.heapUsed - empty.heapUsed) / count);
          settings.log(`  memory run ${run + 1} ${kind}: ${count} peers, RSS ${(m.rss / 2 ** 20).toFixed(1)} MB (empty ${(empty.rss / 2 ** 20).toFixed(1)} MB), ${((m.rss - empty.rss) / count).toFixed(0)} B/peer`);
        }
        figures.add(`connect ${largest} peers`, kind, largest / (connectMs / 1000));
        await Promise.all(workers.map((w) => w.request('closeAll')));
        await server.child.stop();
        server = undefined;
      }
    }
  } finally {
    await stopAll([...workers, server]);
  }
  return figures.rows();
}
