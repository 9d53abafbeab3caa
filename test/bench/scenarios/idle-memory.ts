/**
 * Scenario 13: RSS per additional idle authenticated peer, as a running
 * beacon grows, without forced collections (issue 22).
 *
 * - A fresh server per run, warmed up as in scenario 5 (200 peers that
 *   leave). Peers are then connected up to each count in `counts` (two
 *   load processes, eight loopback source addresses, 64 in flight); after
 *   each step the server is left alone for SETTLE_MS and its RSS read from
 *   /proc. No collection is forced: what is measured is what the process
 *   holds, as an operator's `ps` shows it.
 * - The figure: the slope between the first two counts (RSS added per
 *   peer, 5,000 -> 15,000 in the full run), so fixed costs and the warm-up
 *   cancel out. Also reported: RSS at each count.
 * - `projectTo` (100,000 in the full run) is measured when this machine's
 *   open-file limit lets one process hold that many sockets; otherwise the
 *   row is the projection RSS(last count) + slope x the peers still to add,
 *   and says so (a hard limit is not something a bench can raise).
 */
import type { Child } from '../common/child';
import { fdHardLimit } from '../common/child';
import {
  COMPAT_PATH, Figures, serverOrder, serverStats, sleep, startServer, startWorker, stopAll,
  type BenchSettings, type Row, type Server,
} from './context';
import { LOOPBACK_SOURCES, warmUp } from './memory';

export interface IdleMemoryPlan {
  /** Peer counts, ascending; the slope is taken between the first two. */
  counts: number[];
  /** A larger count measured if the fd limit allows, projected otherwise. */
  projectTo: number;
}

/** Issue 22's goal for the slope. */
const GOAL_BYTES_PER_PEER = 3.5 * 1024;
/** Quiet time before RSS is read: the last handshakes' garbage is what it is, nothing is still arriving. */
const SETTLE_MS = 1_000;
/** Peers one load process holds at most (its sockets count against the same fd limit). */
const PEERS_PER_LOAD_PROCESS = 12_000;
/** Descriptors the server needs beyond its peers' sockets. */
const FD_MARGIN = 1_000;

async function connectTo(server: Server, workers: readonly Child[], from: number, to: number): Promise<void> {
  const ids = Array.from({ length: to - from }, (_, i) => from + 1 + i);
  const shares = workers.map((_, w) => ids.filter((_, i) => i % workers.length === w));
  const results = await Promise.all(workers.map((w, i) => w.request<{ ok: number; errors: object }>('wssConnect', {
    port: server.http, path: COMPAT_PATH, nodeIds: shares[i], concurrency: Math.ceil(64 / workers.length), localAddresses: LOOPBACK_SOURCES,
  }, 300_000)));
  const ok = results.reduce((n, r) => n + r.ok, 0);
  if (ok !== ids.length) throw new Error(`${server.kind}: ${ok}/${ids.length} peers connected: ${JSON.stringify(results.map((r) => r.errors))}`);
  const peers = (await serverStats(server)).peers;
  if (peers !== to) throw new Error(`${server.kind}: server reports ${peers} peers, expected ${to}`);
}

/** The server's resident set (in all: `total`; and its parts) and its JS heap, in bytes. */
interface MemoryReading {
  total: number;
  anon: number;
  file: number;
  heapUsed: number;
  external: number;
}

async function settledMemory(server: Server): Promise<MemoryReading> {
  await sleep(SETTLE_MS);
  const rss = server.child.rss();
  const { memory } = await serverStats(server);
  return { ...rss, heapUsed: memory.heapUsed, external: memory.external };
}

/** Bytes per added peer of each part, for the run's log line: where the RSS slope is. */
function slopeParts(a: MemoryReading, b: MemoryReading, peers: number): string {
  const per = (k: keyof MemoryReading) => ((b[k] - a[k]) / peers).toFixed(0);
  return `anon ${per('anon')}, file ${per('file')}, JS heap used ${per('heapUsed')}, external ${per('external')}`;
}

export async function idleMemory(settings: BenchSettings, plan: IdleMemoryPlan): Promise<Row[]> {
  const [low, high] = plan.counts as [number, number];
  const measureLargest = fdHardLimit >= plan.projectTo + FD_MARGIN;
  const largest = measureLargest ? plan.projectTo : plan.counts[plan.counts.length - 1]!;
  const figures = new Figures(`13 idle peers, RSS without forced GC`);
  const slope = `RSS per added peer, ${low} -> ${high}`;
  figures.define(slope, 'bytes', 'lower', (b) => ({ text: `beacon <= ${GOAL_BYTES_PER_PEER} B`, met: b.median <= GOAL_BYTES_PER_PEER }));
  for (const count of plan.counts) figures.define(`RSS at ${count} peers`, 'MB', 'lower');
  const projected = `RSS at ${plan.projectTo} peers${measureLargest ? '' : ` (projected: fd limit ${fdHardLimit} here)`}`;
  figures.define(projected, 'MB', 'lower');
  figures.define('empty server RSS (after warm-up)', 'MB', 'lower');
  const workers: Child[] = [];
  let server: Server | undefined;
  try {
    const processes = Math.max(2, Math.ceil(largest / PEERS_PER_LOAD_PROCESS));
    workers.push(...await Promise.all(Array.from({ length: processes }, (_, i) => startWorker(settings, `idle-${i}`))));
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of serverOrder(run)) {
        server = await startServer(settings, kind, { maxPeers: largest * 2, maxHandshakes: 8_192, maxPerIp: largest * 2 });
        await warmUp(server, workers);
        const empty = (await settledMemory(server)).total;
        figures.add('empty server RSS (after warm-up)', kind, empty / 2 ** 20);
        const readings: MemoryReading[] = [];
        let connected = 0;
        for (const count of measureLargest ? [...plan.counts, plan.projectTo] : plan.counts) {
          await connectTo(server, count > 2 * PEERS_PER_LOAD_PROCESS ? workers : workers.slice(0, 2), connected, count);
          connected = count;
          const reading = await settledMemory(server);
          readings.push(reading);
          if (count !== plan.projectTo) figures.add(`RSS at ${count} peers`, kind, reading.total / 2 ** 20);
        }
        const rss = readings.map((r) => r.total);
        const perPeer = (rss[1]! - rss[0]!) / (high - low);
        figures.add(slope, kind, perPeer);
        const last = plan.counts[plan.counts.length - 1]!;
        const atLargest = measureLargest ? rss[rss.length - 1]! : rss[plan.counts.length - 1]! + perPeer * (plan.projectTo - last);
        figures.add(projected, kind, atLargest / 2 ** 20);
        settings.log(`  idle memory run ${run + 1} ${kind}: empty ${(empty / 2 ** 20).toFixed(1)} MB, ` +
          `${plan.counts.map((c, i) => `${c}: ${(rss[i]! / 2 ** 20).toFixed(1)} MB`).join(', ')}; ${perPeer.toFixed(0)} B per added peer (${slopeParts(readings[0]!, readings[1]!, high - low)}); ` +
          `${plan.projectTo}: ${(atLargest / 2 ** 20).toFixed(0)} MB${measureLargest ? '' : ' (projected)'}`);
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
