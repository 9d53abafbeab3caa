/**
 * Scenario 15: the deployed path, through a real Caddy with TLS, against
 * the beacon direct (issue 22, figures only).
 *
 * - One beacon (this build) and one Caddy running the shipped Caddyfile
 *   (test/helpers/caddy.ts: bound to loopback, `tls internal`), both pinned
 *   to the server core; the load on the other core. In the table the
 *   "beacon" column is direct to the beacon, the "baseline" column through
 *   Caddy; the ratio is direct / through Caddy.
 * - Handshakes: 64 in flight for a window, as in scenario 12 (over TLS,
 *   trusting Caddy's local CA, when through Caddy).
 * - Relay: 16 pairs of WebSocket peers at saturation, 64 B, one pair set
 *   direct and one through Caddy, on the same beacon, alternately.
 * - CPU per handshake and per frame is the beacon's and Caddy's, read from
 *   /proc apart, so an operator sees where the full path's cost lies.
 */
import { cpuSecondsOf, pinProcess, type Child } from '../common/child';
import { adaptShippedCaddyfile, startCaddy, type RunningCaddy } from '../../helpers/caddy';
import {
  MANY_HANDSHAKES, COMPAT_PATH, Figures, SERVER_CORE, sleep, startServer, startWorker, stopAll, type BenchSettings, type Row, type Server, type ServerKind,
} from './context';
import { measure, type Flow, type Sender } from './measure';
import { LOOPBACK_SOURCES } from './memory';
import { fmt } from './relay-throughput';

export interface DeployedPathPlan {
  pairs: number;
  windowMs: number;
  handshakePool: number;
  handshakeFirst: number;
}

const PAYLOAD = 64;
const CONCURRENCY = 64;

/** The columns of this scenario's table: direct to the beacon, or through Caddy. */
const PATHS: Record<ServerKind, string> = { beacon: 'direct', baseline: 'through Caddy (TLS)' };

interface Path {
  port: number;
  tlsCa: string | undefined;
  worker: Child;
  sender: Sender;
}

function cpuOf(server: Server, caddy: RunningCaddy): { beacon: number; caddy: number } {
  return { beacon: server.child.cpuSeconds(), caddy: cpuSecondsOf(caddy.pid) };
}

export async function deployedPath(settings: BenchSettings, plan: DeployedPathPlan): Promise<Row[]> {
  const figures = new Figures(`15 deployed path (beacon column: direct; baseline column: through Caddy with TLS)`);
  figures.define('good handshakes/s', 'per s', 'higher');
  figures.define('beacon CPU per handshake', 'µs', 'lower');
  figures.define('Caddy CPU per handshake', 'µs', 'lower');
  figures.define('load process CPU, handshakes', '% core', 'lower');
  figures.define('relay saturation 64 B: delivered', 'frames/s', 'higher');
  figures.define('beacon CPU per frame', 'µs', 'lower');
  figures.define('Caddy CPU per frame', 'µs', 'lower');
  let server: Server | undefined;
  let caddy: RunningCaddy | undefined;
  const workers: Child[] = [];
  try {
    server = await startServer({ ...settings, baselineDist: undefined, profileDir: undefined }, 'beacon', MANY_HANDSHAKES);
    caddy = await startCaddy(adaptShippedCaddyfile(server.http));
    const pinned = pinProcess(caddy.pid, SERVER_CORE);
    settings.log(`  Caddy pid ${caddy.pid} on ${caddy.base}${pinned ? `, pinned to core ${SERVER_CORE} with the beacon` : ', NOT pinned (no taskset)'}`);
    const paths = {} as Record<ServerKind, Path>;
    for (const kind of ['beacon', 'baseline'] as const) {
      const worker = await startWorker(settings, `${PATHS[kind]}`);
      workers.push(worker);
      const first = kind === 'beacon' ? 1 : 2 * plan.pairs + 1;
      const ids = Array.from({ length: 2 * plan.pairs }, (_, i) => first + i);
      const port = kind === 'beacon' ? server.http : Number(new URL(caddy.base).port);
      const tlsCa = kind === 'beacon' ? undefined : caddy.rootCa;
      const r = await worker.request<{ ok: number; errors: object }>('wssConnect', { port, path: COMPAT_PATH, nodeIds: ids, concurrency: 16, tlsCa });
      if (r.ok !== ids.length) throw new Error(`${PATHS[kind]}: ${r.ok}/${ids.length} peers connected: ${JSON.stringify(r.errors)}`);
      const flows = Array.from({ length: plan.pairs }, (_, i): Flow => ({ from: first + 2 * i, to: first + 2 * i + 1, via: 'wss' }));
      const pool = Array.from({ length: plan.handshakePool }, (_, i) => plan.handshakeFirst + i);
      await worker.request('prepareSigners', { nodeIds: pool }, 120_000);
      paths[kind] = { port, tlsCa, worker, sender: { worker, flows } };
    }
    const pool = Array.from({ length: plan.handshakePool }, (_, i) => plan.handshakeFirst + i);
    for (let run = 0; run < settings.runs; run++) {
      for (const kind of run % 2 === 0 ? ['beacon', 'baseline'] as const : ['baseline', 'beacon'] as const) {
        const path = paths[kind];
        const windows = run === 0 ? [plan.windowMs / 2, plan.windowMs] : [plan.windowMs]; // the first is a warm-up
        let rate = { ok: 0, ms: 1, beacon: 0, caddy: 0, load: 0 };
        for (const durationMs of windows) {
          const cpu0 = cpuOf(server, caddy);
          const load0 = path.worker.cpuSeconds();
          const storm = await path.worker.request<{ ok: number; ms: number; errors: object }>('storm', {
            port: path.port, path: COMPAT_PATH, nodeIds: pool, concurrency: CONCURRENCY, localAddresses: LOOPBACK_SOURCES,
            durationMs, maxCount: 1_000_000, timeoutMs: 10_000, tlsCa: path.tlsCa,
          }, durationMs + 30_000);
          const cpu1 = cpuOf(server, caddy);
          rate = { ok: storm.ok, ms: storm.ms, beacon: cpu1.beacon - cpu0.beacon, caddy: cpu1.caddy - cpu0.caddy, load: path.worker.cpuSeconds() - load0 };
        }
        await sleep(200); // the storm's closes settle before the relay window
        const cpu0 = cpuOf(server, caddy);
        const w = await measure(server, [path.sender], [path.worker], { payloadBytes: PAYLOAD, ratePerFlow: 0, durationMs: plan.windowMs });
        const cpu1 = cpuOf(server, caddy);
        const frames = w.total.reduce((a, b) => a + b, 0);
        figures.add('good handshakes/s', kind, rate.ok / (rate.ms / 1000));
        figures.add('beacon CPU per handshake', kind, 1e6 * rate.beacon / rate.ok);
        figures.add('Caddy CPU per handshake', kind, kind === 'beacon' ? NaN : 1e6 * rate.caddy / rate.ok);
        figures.add('load process CPU, handshakes', kind, 100 * rate.load / (rate.ms / 1000));
        figures.add('relay saturation 64 B: delivered', kind, w.deliveredPerSec);
        figures.add('beacon CPU per frame', kind, 1e6 * (cpu1.beacon - cpu0.beacon) / frames);
        figures.add('Caddy CPU per frame', kind, kind === 'beacon' ? NaN : 1e6 * (cpu1.caddy - cpu0.caddy) / frames);
        settings.log(`  deployed path run ${run + 1} ${PATHS[kind]}: ${fmt(rate.ok / (rate.ms / 1000))} handshakes/s` +
          ` (beacon ${fmt(1e6 * rate.beacon / rate.ok)} µs, Caddy ${fmt(1e6 * rate.caddy / rate.ok)} µs CPU each; load cpu ${(100 * rate.load / (rate.ms / 1000)).toFixed(0)}%);` +
          ` relay ${fmt(w.deliveredPerSec)} frames/s (beacon ${(1e6 * (cpu1.beacon - cpu0.beacon) / frames).toFixed(2)} µs,` +
          ` Caddy ${(1e6 * (cpu1.caddy - cpu0.caddy) / frames).toFixed(2)} µs CPU each)`);
      }
    }
  } finally {
    await stopAll([...workers, server]);
    await caddy?.stop();
  }
  return figures.rows();
}
