/**
 * Scenario 8 (cluster): what cluster mode costs and how fast it converges
 * (issue 14). A real nats-server and beacon instances as child processes
 * (`dist/cmd/beacon.js --cluster`), WebSocket daemons in this process.
 *
 * - Cost of a hop: pairs relay at one offered rate, receivers either on
 *   the sender's instance (local) or on another one (cross). CPU per
 *   delivered frame is read from /proc for every process on the path: the
 *   one instance locally; both instances and nats-server across. The
 *   "beacon" column is the cross-instance figure, "baseline" the local one,
 *   so the ratio is the hop's cost. Then the highest offered rate (doubling)
 *   each delivers without loss.
 * - Convergence: nodes authenticate on instance B, 8 at a time; from A a
 *   probe carrying its send time is relayed to each every millisecond from
 *   its auth_ok on. The first that arrives says when the route was in place
 *   (its send time: the goal's figure) and when the node was first reached
 *   (its arrival: plus the hop's latency); measured quiet, then with relays
 *   flowing from A to B meanwhile. Beside it, where the time
 *   goes: an observer in this process watches the directory bucket and the
 *   attach notices (auth_ok to the KV entry, auth_ok to the notice), and
 *   A's and B's largest event-loop stall meanwhile. With --baseline-dist,
 *   a second pair of instances from that build (its own cluster name, same
 *   nats-server) is measured the same way, alternating run by run: before
 *   and after in one run. Moves: a node on A reconnects to B; the time
 *   from B's auth_ok to the old socket's close.
 * - Parts (`--cluster-parts hop,zeroloss,convergence,move,directory`,
 *   default all) run only what is asked.
 * - Directory at scale: entries written into the bucket directly (a node
 *   each, held by a dead instance), then a new instance starts: its load
 *   time, the largest event-loop stall it reports meanwhile, its heap per
 *   entry, and the relay rate of instance A during the load against before.
 * - Every loop is bounded in count and time; traffic stays on 127.0.0.1;
 *   children are stopped by their PIDs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { connect as natsConnect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { NatsServer } from '../../helpers/nats';
import { NATS_THREE_CONF, metaLeaderElected, readShipped, shippedPassword, startThreeNats, type RunningNats } from '../../helpers/nats-deploy';
import { loadSigners, type Signer } from '../common/identities';
import { subjectsFor } from '../../../lib/cluster/wire';
import { spread } from '../common/stats';
import { Figures, sleep, type BenchSettings, type Row, type ServerKind } from './context';

const DIST = join(__dirname, '..', '..', '..');
const cliOf = (dist = DIST) => join(dist, 'cmd', 'beacon.js');

export const CLUSTER_PARTS = ['hop', 'zeroloss', 'convergence', 'move', 'directory'] as const;
export type ClusterPart = typeof CLUSTER_PARTS[number];
/** Watches a child's event loop (servers/loop-watch-preload.ts), loaded with node -r. */
const LOOP_WATCH_PRELOAD = join(__dirname, '..', 'servers', 'loop-watch-preload.js');
const SUBPROTOCOL = 'pilot.v1';

export interface ClusterPlan {
  pairs: number;
  payload: number;
  /** Offered frames per second for the CPU-per-frame figure. */
  rate: number;
  windowMs: number;
  /** Highest offered rate the zero-loss search tries. */
  maxRate: number;
  attaches: number;
  moves: number;
  directoryEntries: number;
  /** What to measure (default: all). */
  parts?: ReadonlySet<ClusterPart>;
  /**
   * Convergence on three nats-servers (the shipped three-machine file on
   * this one machine; A and B on different servers, the bucket with three
   * copies) instead of the one the other parts use.
   */
  threeNats?: boolean;
}

interface Proc {
  child: ChildProcess;
  logs: Array<Record<string, unknown>>;
  url: string;
  http: string;
}

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Spawns an instance; it goes into `procs` at once, so it is stopped even if it never says it listens. */
/** How an instance differs from the default: another build, another cluster, flags for node itself. */
interface InstanceOptions {
  dist?: string;
  clusterName?: string;
  nodeFlags?: string[];
}

async function startInstance(
  settings: BenchSettings, nats: string, id: string, procs: Proc[], { dist, clusterName = 'bench', nodeFlags = [] }: InstanceOptions = {},
): Promise<Proc> {
  const child = spawn(process.execPath, [...nodeFlags, cliOf(dist), '--bind', '127.0.0.1:0', '--udp', '127.0.0.1:0', '--keys', settings.keysPath,
    // dead-after 10 s: the bench's own process heartbeats for the million-entry ghost instance, and a
    // loaded machine can delay it past 2 s, when a survivor would sweep the ghost's entries mid-measurement.
    '--cluster', nats, '--cluster-name', clusterName, '--instance-id', id, '--cluster-dead-after', '10s',
    '--max-per-ip', '100000', '--max-peers', '100000', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const proc: Proc = { child, logs: [], url: '', http: '' };
  procs.push(proc);
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try { proc.logs.push(JSON.parse(line) as Record<string, unknown>); } catch { /* not JSON */ }
  });
  const listening = await waitForLog(proc, 'beacon listening', 120_000);
  proc.url = `ws://${String(listening.bind)}/v1/compat`;
  proc.http = `http://${String(listening.bind)}`;
  return proc;
}

async function waitForLog(proc: Proc, msg: string, ms: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const line = proc.logs.find((l) => l.msg === msg);
    if (line) return line;
    if (proc.child.exitCode !== null) throw new Error(`instance exited before logging ${msg}`);
    await sleep(10);
  }
  throw new Error(`no "${msg}" within ${ms} ms`);
}

async function stopProc(proc: Proc | undefined): Promise<void> {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  const exited = once(proc.child, 'exit');
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

async function metric(proc: Proc, name: string): Promise<number> {
  const text = await (await fetch(`${proc.http}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

/** An authenticated daemon: counts RelayDelivers and notes the time of each. */
class Daemon {
  received = 0;
  onFrame: ((frame: Buffer) => void) | undefined;
  constructor(readonly ws: WebSocket, readonly nodeId: number) {
    ws.on('message', (data, isBinary) => {
      if (!isBinary) return;
      this.received++;
      this.onFrame?.(data as Buffer);
    });
  }

  static async connect(url: string, signer: Signer): Promise<{ daemon: Daemon; authOkAt: number }> {
    const ws = new WebSocket(url, [SUBPROTOCOL]);
    const challenge = await new Promise<string>((resolve, reject) => {
      ws.once('message', (data) => resolve(String(data)));
      ws.once('error', reject);
      ws.once('close', (code) => reject(new Error(`closed ${code} before the challenge`)));
    });
    const { nonce } = JSON.parse(challenge) as { nonce: string };
    ws.send(JSON.stringify({ type: 'auth_reply', node_id: signer.nodeId, public_key: signer.publicKeyBase64, sig: signer.sign(nonce) }));
    const ok = await new Promise<string>((resolve, reject) => {
      ws.once('message', (data) => resolve(String(data)));
      ws.once('close', (code) => reject(new Error(`closed ${code} during auth`)));
    });
    if (!ok.includes('auth_ok')) throw new Error(`expected auth_ok, got ${ok}`);
    const authOkAt = performance.now();
    ws.removeAllListeners('close');
    return { daemon: new Daemon(ws, signer.nodeId), authOkAt };
  }

  close(): void {
    this.ws.terminate();
  }
}

function relay(sender: number, dest: number, payload: Buffer): Buffer {
  const buf = Buffer.allocUnsafe(9 + payload.length);
  buf[0] = 0x05;
  buf.writeUInt32BE(sender, 1);
  buf.writeUInt32BE(dest, 5);
  payload.copy(buf, 9);
  return buf;
}

/** Offers `rate` frames/s from senders[i] to receivers[i] for `ms`; returns sent and delivered. */
async function offer(senders: Daemon[], receivers: Daemon[], rate: number, ms: number, payload: Buffer): Promise<{ sent: number; delivered: number }> {
  const frames = senders.map((s, i) => relay(s.nodeId, receivers[i]!.nodeId, payload));
  const before = receivers.reduce((n, r) => n + r.received, 0);
  let sent = 0;
  const start = performance.now();
  // Paced by the clock, not by timer ticks (which stretch on a busy machine).
  for (let elapsed = 0; elapsed < ms; elapsed = performance.now() - start) {
    const due = Math.min(Math.floor((rate * elapsed) / 1000), sent + rate); // at most a second's worth at once
    for (; sent < due; sent++) {
      const i = sent % senders.length;
      senders[i]!.ws.send(frames[i]!);
    }
    await new Promise(setImmediate);
  }
  // Let the last frames land (bounded).
  const settleUntil = performance.now() + 1_000;
  let last = -1;
  while (performance.now() < settleUntil) {
    const now = receivers.reduce((n, r) => n + r.received, 0);
    if (now - before >= sent || now === last) break;
    last = now;
    await sleep(100);
  }
  return { sent, delivered: receivers.reduce((n, r) => n + r.received, 0) - before };
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export async function clusterScenario(settings: BenchSettings, plan: ClusterPlan): Promise<Row[]> {
  const signers = loadSigners(settings.identitiesPath);
  const signer = (id: number) => {
    const s = signers.get(id);
    if (!s) throw new Error(`no identity ${id}`);
    return s;
  };
  const figures = new Figures('cluster');
  figures.define('CPU per delivered frame (cross-instance vs local)', 'µs', 'lower',
    (_b, ratio) => ({ text: 'cross-instance <= 2.5x local', met: ratio.median <= 2.5 }));
  figures.define('zero-loss rate (cross-instance vs local; bounded by the one-process load generator)', 'frames/s', 'higher');
  const single = new Figures('cluster');
  // With a baseline build the convergence figures pair this build with it, run by run.
  const conv = settings.baselineDist ? figures : single;
  conv.define(CONV_P99, 'ms', 'lower', (b) => ({ text: '<= 50 ms after auth_ok (p99)', met: b.median <= 50 }));
  conv.define(CONV_ARRIVAL_P99, 'ms', 'lower');
  conv.define(CONV_P50, 'ms', 'lower');
  conv.define(CONV_BUSY_P99, 'ms', 'lower', (b) => ({ text: '<= 50 ms after auth_ok (p99)', met: b.median <= 50 }));
  conv.define(CONV_BUSY_ARRIVAL_P99, 'ms', 'lower');
  single.define('moved node: old socket closed after the new auth_ok, p99', 'ms', 'lower', (b) => ({ text: '<= 100 ms (p99)', met: b.median <= 100 }));
  single.define(`directory load, ${plan.directoryEntries} entries`, 'ms', 'lower', (b) => ({ text: plan.directoryEntries >= 1_000_000 ? '<= 10 s' : '<= 10 s at 1M (smaller here)', met: b.median <= 10_000 }));
  single.define('largest event-loop stall while loading (own run)', 'ms', 'lower', (b) => ({ text: '<= 50 ms', met: b.median <= 50 }));
  single.define('largest wall-clock gap while loading (machine included)', 'ms', 'lower');
  single.define('heap per directory entry', 'bytes', 'lower', (b) => ({ text: '<= 150 bytes', met: b.median <= 150 }));
  single.define('relay rate of another instance during the load / before', 'ratio', 'higher', (b) => ({ text: 'unchanged (>= 0.95)', met: b.median >= 0.95 }));

  const parts = plan.parts ?? new Set(CLUSTER_PARTS);
  const payload = Buffer.alloc(plan.payload, 0x61);
  const nats = await NatsServer.start();
  const procs: Proc[] = [];
  const daemons: Daemon[] = [];
  try {
    const a = await startInstance(settings, nats.url(), 'bench-a', procs);
    const b = await startInstance(settings, nats.url(), 'bench-b', procs);
    await Promise.all([waitForLog(a, 'cluster joined', 10_000), waitForLog(b, 'cluster joined', 10_000)]);
    const natsPid = (nats as unknown as { child: ChildProcess }).child.pid!;

    // Node IDs: pairs 1..3P; convergence two ranges (this build, the baseline build) and a watcher each; then moves; then 2P per build for convergence's load.
    const P = plan.pairs;
    const firstAttach = 3 * P + 1;
    const firstMove = firstAttach + 2 * (plan.attaches + 1);
    const senders: Daemon[] = [];
    const localReceivers: Daemon[] = [];
    const crossReceivers: Daemon[] = [];
    if (parts.has('hop') || parts.has('zeroloss') || parts.has('directory')) {
      senders.push(...await Promise.all(Array.from({ length: P }, (_, i) => Daemon.connect(a.url, signer(1 + i)).then((d) => d.daemon))));
      localReceivers.push(...await Promise.all(Array.from({ length: P }, (_, i) => Daemon.connect(a.url, signer(1 + P + i)).then((d) => d.daemon))));
      crossReceivers.push(...await Promise.all(Array.from({ length: P }, (_, i) => Daemon.connect(b.url, signer(1 + 2 * P + i)).then((d) => d.daemon))));
      daemons.push(...senders, ...localReceivers, ...crossReceivers);
      await sleep(500); // the directory has every entry
      await offer(senders, crossReceivers, plan.rate, 300, payload); // warm-up both paths
      await offer(senders, localReceivers, plan.rate, 300, payload);
    }

    // ---- cost of a hop ----
    for (let run = 0; parts.has('hop') && run < settings.runs; run++) {
      for (const kind of run % 2 === 0 ? ['local', 'cross'] as const : ['cross', 'local'] as const) {
        const pids = kind === 'local' ? [a.child.pid!] : [a.child.pid!, b.child.pid!, natsPid];
        const cpu0 = pids.map(cpuSeconds);
        const batches0 = kind === 'cross' ? await metric(a, 'beacon_cluster_batches_total{direction="out"}') : 0;
        const { sent, delivered } = await offer(senders, kind === 'local' ? localReceivers : crossReceivers, plan.rate, plan.windowMs, payload);
        const each = pids.map((pid, i) => cpuSeconds(pid) - cpu0[i]!);
        const cpu = each.reduce((x, y) => x + y, 0);
        const batches = kind === 'cross' ? await metric(a, 'beacon_cluster_batches_total{direction="out"}') - batches0 : 0;
        const perFrame = each.map((c) => ((c * 1e6) / Math.max(1, delivered)).toFixed(1));
        settings.log(`  run ${run + 1} ${kind}: sent ${sent}, delivered ${delivered}, CPU µs per frame ${kind === 'local' ? `instance ${perFrame[0]}`
          : `sender's instance ${perFrame[0]} + receiver's ${perFrame[1]} + nats-server ${perFrame[2]}; ${(delivered / Math.max(1, batches)).toFixed(1)} frames per NATS message`}`);
        figures.add('CPU per delivered frame (cross-instance vs local)', kind === 'cross' ? 'beacon' : 'baseline', (cpu * 1e6) / Math.max(1, delivered));
      }
    }
    for (let run = 0; parts.has('zeroloss') && run < settings.runs; run++) {
      for (const kind of ['local', 'cross'] as const) {
        let best = 0;
        for (let rate = 2_000; rate <= plan.maxRate; rate *= 2) {
          const window = Math.max(300, plan.windowMs / 2);
          const { sent, delivered } = await offer(senders, kind === 'local' ? localReceivers : crossReceivers, rate, window, payload);
          if (delivered < sent) break;
          best = Math.round((sent * 1000) / window);
          if (sent < (rate * window) / 1000 * 0.9) break; // this process cannot offer more
        }
        settings.log(`  run ${run + 1} ${kind}: zero-loss up to ${best} frames/s`);
        figures.add('zero-loss rate (cross-instance vs local; bounded by the one-process load generator)', kind === 'cross' ? 'beacon' : 'baseline', best);
      }
    }

    // ---- convergence ----
    if (parts.has('convergence')) await convergence(settings, plan, nats, procs, signer, payload, firstAttach, firstMove + plan.moves, conv);

    // ---- moves ----
    if (parts.has('move')) {
      const closeMs: number[] = [];
      for (let i = 0; i < plan.moves; i++) {
        const nodeId = firstMove + i;
        const old = await Daemon.connect(a.url, signer(nodeId));
        const closedAt = once(old.daemon.ws, 'close').then(() => performance.now());
        await sleep(20); // the first attach is in the directory
        const moved = await Daemon.connect(b.url, signer(nodeId));
        const at = await Promise.race([closedAt, sleep(2_000).then(() => NaN)]);
        closeMs.push(at - moved.authOkAt);
        old.daemon.close();
        moved.daemon.close();
      }
      settings.log(`  ${plan.moves} moves: old socket closed p50 ${percentile(closeMs, 50).toFixed(1)} ms, p99 ${percentile(closeMs, 99).toFixed(1)} ms`);
      single.add('moved node: old socket closed after the new auth_ok, p99', 'beacon', percentile(closeMs, 99));
    }

    // ---- directory at scale (its failure keeps the figures above) ----
    if (parts.has('directory')) {
      await directoryAtScale(settings, plan, nats, b, senders, localReceivers, payload, procs, single)
        .catch((err: Error) => settings.log(`  directory at scale failed: ${err.message}`));
    }
  } finally {
    for (const d of daemons) d.close();
    await Promise.all(procs.map(stopProc));
    await nats.close();
  }
  // Rows of parts not run are left out.
  return [...figures.rows(), ...single.rows().map((r) => ({ ...r, baseline: spread([]), ratio: spread([]) }))]
    .filter((r) => r.beacon.runs.length > 0);
}

// The goal is about relays *sent* after auth_ok: the send time of the first probe through says when the route was in
// place; its arrival adds the hop's own latency (and every stall on the way), as the figures before 2026-12-01 measured.
const CONV_P99 = 'route to a new node in place on another instance (first probe through, sent after auth_ok), p99';
const CONV_ARRIVAL_P99 = 'first probe arrived after auth_ok, p99';
const CONV_P50 = 'first probe arrived after auth_ok, p50';
const CONV_BUSY_P99 = 'route in place with relays flowing A->B, p99';
const CONV_BUSY_ARRIVAL_P99 = 'first probe arrived with relays flowing A->B, p99';

/**
 * Convergence: a pair of instances per build (this one; the baseline's with
 * --baseline-dist), each under its own cluster name on the one nats-server;
 * runs alternate which build goes first. Each run measures twice: quiet,
 * then busy (relays flowing from A to B at plan.rate meanwhile, as in a
 * cluster at work). An observer connection here watches each build's
 * bucket and attach notices, so the log shows where the time goes.
 */
async function convergence(
  settings: BenchSettings, plan: ClusterPlan, nats: NatsServer, procs: Proc[], signer: (id: number) => Signer,
  payload: Buffer, firstId: number, loadFirstId: number, figures: Figures,
): Promise<void> {
  interface Rig {
    kind: ServerKind; a: Proc; b: Proc; watcher: Daemon; first: number; senders: Daemon[]; receivers: Daemon[];
    kvAt: Map<number, number>; noticeAt: Map<number, number>;
  }
  const kinds: ServerKind[] = settings.baselineDist ? ['beacon', 'baseline'] : ['beacon'];
  let three: RunningNats[] = [];
  let urlA = nats.url();
  let urlB = nats.url();
  let observerOptions: { servers: string; user?: string; pass?: string } = { servers: `127.0.0.1:${nats.port}` };
  if (plan.threeNats) {
    const started = await startThreeNats();
    three = started.started;
    await metaLeaderElected(three[0]!, 3);
    const pass = shippedPassword(readShipped(NATS_THREE_CONF), 'beacon');
    const url = (i: number) => `nats://beacon:${encodeURIComponent(pass)}@127.0.0.1:${started.all[i]!.client}`;
    [urlA, urlB] = [url(0), url(1)];
    observerOptions = { servers: `127.0.0.1:${started.all[2]!.client}`, user: 'beacon', pass };
    settings.log(`  convergence on three nats-servers: A on the first, B on the second, this observer on the third`);
  }
  const observer = await natsConnect(observerOptions);
  const rigs: Rig[] = [];
  const P = plan.pairs;
  try {
    for (const [i, kind] of kinds.entries()) {
      const name = `conv${i}`;
      const dist = kind === 'beacon' ? settings.beaconDist : settings.baselineDist;
      const a = await startInstance(settings, urlA, `${name}-a`, procs, { dist, clusterName: name });
      const b = await startInstance(settings, urlB, `${name}-b`, procs, { dist, clusterName: name });
      await Promise.all([waitForLog(a, 'cluster joined', 30_000), waitForLog(b, 'cluster joined', 30_000)]);
      const first = firstId + i * (plan.attaches + 1);
      const { daemon: watcher } = await Daemon.connect(a.url, signer(first + plan.attaches));
      const load = loadFirstId + i * 2 * P;
      const senders = await Promise.all(Array.from({ length: P }, (_, j) => Daemon.connect(a.url, signer(load + j)).then((d) => d.daemon)));
      const receivers = await Promise.all(Array.from({ length: P }, (_, j) => Daemon.connect(b.url, signer(load + P + j)).then((d) => d.daemon)));
      const rig: Rig = { kind, a, b, watcher, first, senders, receivers, kvAt: new Map(), noticeAt: new Map() };
      rigs.push(rig);
      // First arrival per node in this run: the KV entry (put), the notice (after auth_ok on B).
      const subjects = subjectsFor(name);
      const kv = await new Kvm(observer).open(subjects.bucket);
      const entries = await kv.watch({ include: 'updates', ignoreDeletes: true });
      void (async () => {
        for await (const e of entries) if (!rig.kvAt.has(Number(e.key))) rig.kvAt.set(Number(e.key), performance.now());
      })();
      observer.subscribe(subjects.attaches, {
        callback: (_err, msg) => {
          const nodeId = Number(msg.string().split(' ')[0]);
          if (!rig.noticeAt.has(nodeId)) rig.noticeAt.set(nodeId, performance.now());
        },
      });
    }
    await sleep(500); // the load pairs are in every mirror
    for (let run = 0; run < settings.runs; run++) {
      for (const rig of run % 2 === 0 ? rigs : [...rigs].reverse()) {
        for (const busy of [false, true]) {
          rig.kvAt.clear();
          rig.noticeAt.clear();
          await metric(rig.a, 'beacon_nodejs_eventloop_lag_max_seconds'); // resets the lag windows
          await metric(rig.b, 'beacon_nodejs_eventloop_lag_max_seconds');
          const background = busy ? relayUntil(rig.senders, rig.receivers, plan.rate, payload) : undefined;
          const reach = await attachAll(plan, rig, signer, payload);
          const carried = await background?.stop();
          await sleep(500); // late KV entries reach the observer
          const lagA = await metric(rig.a, 'beacon_nodejs_eventloop_lag_max_seconds');
          const lagB = await metric(rig.b, 'beacon_nodejs_eventloop_lag_max_seconds');
          const reached = reach.filter((r) => Number.isFinite(r.ms));
          const failed = reach.length - reached.length;
          const since = (at: Map<number, number>) => reach.flatMap((r) => at.has(r.nodeId) ? [at.get(r.nodeId)! - r.authOkAt] : []);
          const kvMs = since(rig.kvAt);
          const noticeMs = since(rig.noticeAt);
          const ms = reached.map((r) => r.ms);
          const p = (values: number[]) => values.length === 0 ? 'n/a' : `p50 ${percentile(values, 50).toFixed(1)} / p99 ${percentile(values, 99).toFixed(1)} ms`;
          settings.log(`  run ${run + 1} ${rig.kind} ${busy ? `busy (${carried!.delivered}/${carried!.sent} relays A->B meanwhile)` : 'quiet'}: `
            + `${plan.attaches} attaches, ${failed} never reachable within 2 s; reachable ${p(ms)} `
            + `(first probe through was sent ${p(reached.map((r) => r.sentMs))}); `
            + `observer saw the KV entry ${p(kvMs)} (${kvMs.length}), the notice ${p(noticeMs)} (${noticeMs.length}) after auth_ok; `
            + `largest event-loop stall A ${(lagA * 1000).toFixed(0)} ms, B ${(lagB * 1000).toFixed(0)} ms`);
          const tooMany = failed > plan.attaches / 100;
          figures.add(busy ? CONV_BUSY_P99 : CONV_P99, rig.kind, tooMany ? Infinity : percentile(reached.map((r) => r.sentMs), 99));
          figures.add(busy ? CONV_BUSY_ARRIVAL_P99 : CONV_ARRIVAL_P99, rig.kind, tooMany ? Infinity : percentile(ms, 99));
          if (!busy) figures.add(CONV_P50, rig.kind, percentile(ms, 50));
        }
      }
    }
  } finally {
    for (const rig of rigs) for (const d of [rig.watcher, ...rig.senders, ...rig.receivers]) d.close();
    await observer.close();
    for (const rig of rigs) await Promise.all([stopProc(rig.a), stopProc(rig.b)]);
    for (const server of three) await server.stop();
  }
}

/** Relays from senders[i] to receivers[i] at `rate` frames/s until stopped (at most 60 s); stop() says how many were sent and arrived. */
function relayUntil(senders: Daemon[], receivers: Daemon[], rate: number, payload: Buffer): { stop(): Promise<{ sent: number; delivered: number }> } {
  const frames = senders.map((s, i) => relay(s.nodeId, receivers[i]!.nodeId, payload));
  const before = receivers.reduce((n, r) => n + r.received, 0);
  let sent = 0;
  let stopped = false;
  const done = (async () => {
    const start = performance.now();
    for (let elapsed = 0; !stopped && elapsed < 60_000; elapsed = performance.now() - start) {
      const due = Math.min(Math.floor((rate * elapsed) / 1000), sent + rate);
      for (; sent < due; sent++) senders[sent % senders.length]!.ws.send(frames[sent % senders.length]!);
      await sleep(1);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await done;
      await sleep(200);
      return { sent, delivered: receivers.reduce((n, r) => n + r.received, 0) - before };
    },
  };
}

/**
 * Attaches plan.attaches nodes on B, 8 at a time, probing each from A every
 * millisecond from its auth_ok until one arrives; each probe carries its
 * send time, so the first through tells when the route appeared.
 */
async function attachAll(
  plan: ClusterPlan, rig: { b: Proc; watcher: Daemon; first: number }, signer: (id: number) => Signer, payload: Buffer,
): Promise<Array<{ nodeId: number; authOkAt: number; ms: number; sentMs: number }>> {
  const CONCURRENCY = 8;
  const results: Array<{ nodeId: number; authOkAt: number; ms: number; sentMs: number }> = [];
  let next = 0;
  const attachOne = async (nodeId: number) => {
    const { daemon, authOkAt } = await Daemon.connect(rig.b.url, signer(nodeId));
    const arrived = new Promise<{ at: number; sentAt: number }>((resolve) => {
      // RelayDeliver: type u8 | sender u32 | payload, whose first 8 bytes are the probe's send time.
      daemon.onFrame = (frame) => resolve({ at: performance.now(), sentAt: frame.readDoubleBE(5) });
    });
    let stop = false;
    void (async () => {
      for (let i = 0; i < 2_000 && !stop; i++) {
        const probe = relay(rig.watcher.nodeId, nodeId, payload);
        probe.writeDoubleBE(performance.now(), 9);
        rig.watcher.ws.send(probe);
        await sleep(1);
      }
    })();
    const got = await Promise.race([arrived, sleep(2_000).then(() => ({ at: NaN, sentAt: NaN }))]);
    stop = true;
    results.push({ nodeId, authOkAt, ms: got.at - authOkAt, sentMs: got.sentAt - authOkAt });
    daemon.close();
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < plan.attaches) await attachOne(rig.first + next++);
  }));
  return results;
}

async function directoryAtScale(
  settings: BenchSettings, plan: ClusterPlan, nats: NatsServer, b: Proc, senders: Daemon[], localReceivers: Daemon[],
  payload: Buffer, procs: Proc[], single: Figures,
): Promise<void> {
  // Instance a alone is left to serve the newcomer's snapshot, so the relay rate measured is the server's.
  await stopProc(b);
  // The entries belong to a live instance (this process heartbeats for it), as 1M attached nodes would.
  const nc = await natsConnect({ servers: `127.0.0.1:${nats.port}` });
  // The ghost's heartbeats on a connection of their own, so they never queue behind the million writes.
  const beats = await natsConnect({ servers: `127.0.0.1:${nats.port}` });
  const ghostBeat = setInterval(() => beats.publish('bench.hb.bench-ghost', 'bench-ghost 0b0b'), 200);
  try {
    const kv = await new Kvm(nc).open('bench-directory');
    const base = 100_000_000;
    const value = Buffer.from('w bench-ghost');
    const t0 = Date.now();
    for (let i = 0; i < plan.directoryEntries; i++) {
      nc.publish(`$KV.bench-directory.${base + i}`, value);
      if (i % 50_000 === 49_999) await nc.flush();
    }
    await nc.flush();
    for (let i = 0; i < 600; i++) {
      if ((await kv.status()).values >= plan.directoryEntries) break;
      await sleep(100);
    }
    settings.log(`  wrote ${plan.directoryEntries} entries in ${Date.now() - t0} ms`);
    // An instance of another cluster on the same NATS, whose directory is empty: the heap baseline.
    const control = await startInstance(settings, nats.url(), 'bench-control', procs, { clusterName: 'benchctl' });
    await waitForLog(control, 'cluster directory loaded', 60_000);
    // Instance a relays between local pairs before and during the new instance's load.
    const rateWindow = Math.max(500, plan.windowMs);
    const before = await offer(senders, localReceivers, plan.rate, rateWindow, payload);
    const startedAt = Date.now();
    // The newcomer's loop is watched from "listening" to "loaded": its own longest run, and the wall-clock gap.
    const c = await startInstance(settings, nats.url(), 'bench-c', procs, { nodeFlags: ['-r', LOOP_WATCH_PRELOAD] });
    c.child.kill('SIGUSR2');
    const during = offer(senders, localReceivers, plan.rate, rateWindow, payload);
    const loaded = await waitForLog(c, 'cluster directory loaded', 180_000).catch(async (err: Error) => {
      throw new Error(`${err.message}; its mirror holds ${await metric(c, 'beacon_cluster_directory_entries')} entries`);
    });
    const loadMs = Date.now() - startedAt;
    c.child.kill('SIGUSR2');
    const loop = await waitForLog(c, 'loop-watch', 10_000);
    const duringRate = await during;
    await sleep(1_000);
    // The mirror lives in typed arrays (outside the JS heap): heap used + external memory. It includes
    // garbage not yet collected: the lower of a few reads, for both.
    const heapOf = async (proc: Proc) => {
      let low = Infinity;
      for (let i = 0; i < 5; i++, await sleep(300)) {
        low = Math.min(low, await metric(proc, 'beacon_nodejs_heap_size_used_bytes') + await metric(proc, 'beacon_nodejs_external_memory_bytes'));
      }
      return low;
    };
    const [heapC, heapControl] = [await heapOf(c), await heapOf(control)];
    const entries = Number(loaded.entries);
    // Both mirrors hold the same directory once the newcomer has caught up (procs[0] is instance a, which served it).
    const [mirrorC, mirrorA] = [await metric(c, 'beacon_cluster_directory_entries'), await metric(procs[0]!, 'beacon_cluster_directory_entries')];
    settings.log(`  a second after: the newcomer's mirror holds ${mirrorC} entries, the serving instance's ${mirrorA}${mirrorC === mirrorA ? '' : ' — THEY DIFFER'}`);
    const served = [...procs].filter((p) => p.logs.some((l) => l.msg === 'cluster: served the directory to a newcomer' && l.to === 'bench-c'));
    settings.log(`  new instance: directory of ${entries} entries loaded via ${String(loaded.via)} ${loadMs} ms after its start (${Number(loaded.ms)} ms after joining NATS)`
      + `${served.length > 0 ? '' : ' (no instance logged serving it)'}; its loop's longest own run ${Number(loop.maxBusyMs).toFixed(1)} ms,`
      + ` longest wall-clock gap ${Number(loop.maxStallMs).toFixed(1)} ms (other processes included);`
      + ` heap + external ${(heapC / 1e6).toFixed(0)} MB vs ${(heapControl / 1e6).toFixed(0)} MB for an instance with an empty directory`);
    single.add(`directory load, ${plan.directoryEntries} entries`, 'beacon', loadMs);
    single.add('largest event-loop stall while loading (own run)', 'beacon', Number(loop.maxBusyMs));
    single.add('largest wall-clock gap while loading (machine included)', 'beacon', Number(loop.maxStallMs));
    single.add('heap per directory entry', 'beacon', (heapC - heapControl) / Math.max(1, entries));
    single.add('relay rate of another instance during the load / before', 'beacon',
      before.delivered > 0 ? (duringRate.delivered / Math.max(1, duringRate.sent)) / (before.delivered / before.sent) : NaN);
  } finally {
    clearInterval(ghostBeat);
    await beats.close();
    // An instance that took the ghost for dead and swept its entries spoils the figures above: say so.
    for (const line of procs.flatMap((p) => p.logs)) {
      if (/instance silent|removing a dead/.test(String(line.msg))) settings.log(`  note: ${String(line.msg)} ${String(line.instance ?? '')}`);
    }
    await nc.close();
  }
}
