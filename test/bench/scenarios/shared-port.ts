/**
 * Scenario 16 (shared): UDP relay throughput of two instances sharing one
 * address (--reuse-port) against one instance, and the share of
 * cross-instance relays that still pay a NATS hop (issue 21).
 *
 * - A real nats-server and beacon instances as child processes
 *   (`dist/cmd/beacon.js --cluster --reuse-port`, each with its own
 *   --ops-bind), all pinned to the server core: the two instances share one
 *   core, the one instance has it alone, so the figure is what sharing the
 *   address costs or saves at the same CPU budget. Load generators on the
 *   load core, as in every scenario.
 * - UDP daemons in the load processes, one socket each: the kernel spreads
 *   their flows over the instances, so about half the pairs cross
 *   instances. Before measuring, every instance has heard every claim.
 * - Saturation (offered far above what the server core relays) and frames
 *   per server CPU-second (all instances and nats-server summed: the hop
 *   costs NATS too; nats-server is not pinned), run by run, "beacon" =
 *   two instances sharing the address, "baseline" = one; then the same
 *   against two instances with a port each (the layout without
 *   --reuse-port: a daemon is on the instance whose port it was given, half
 *   the pairs cross, and those relays cross NATS), which is what the
 *   hop-free path saves; and the hop share: relays forwarded over NATS /
 *   (those + `udp_shared` deliveries), summed over the instances.
 * - Every loop is bounded; traffic stays on 127.0.0.1; children are stopped
 *   by their PIDs.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { NatsServer } from '../../helpers/nats';
import { promValue } from '../../helpers/wire';
import { cpuSecondsOf, hasTaskset, type Child } from '../common/child';
import { Figures, SERVER_CORE, sleep, startWorker, stopAll, type BenchSettings, type Row } from './context';
import { measure, type Sender } from './measure';
import { fmt } from './relay-throughput';

export interface SharedPortPlan {
  pairs: number;
  payload: number;
  windowMs: number;
}

const CLI = join(__dirname, '..', '..', '..', 'cmd', 'beacon.js');
/** Load processes; each holds both ends of its flows. */
const WORKERS = 2;
/** Offered rate that makes UDP senders go as fast as the load core lets them. */
const UDP_BLAST_RATE = 2_000_000;

interface Instance {
  child: ChildProcess;
  logs: Array<Record<string, unknown>>;
  ops: string;
  udpPort: number;
}

async function waitForLog(instance: Instance, msg: string, ms: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const line = instance.logs.find((l) => l.msg === msg);
    if (line) return line;
    if (instance.child.exitCode !== null) throw new Error(`instance exited before logging ${msg}`);
    await sleep(10);
  }
  throw new Error(`no "${msg}" within ${ms} ms`);
}

/** An instance pinned to the server core: on the shared address (port 0 for the first), or (`shared` false) on ports of its own. */
async function startInstance(
  settings: BenchSettings, nats: string, clusterName: string, udpPort: number, bindPort: number, shared: boolean,
): Promise<Instance> {
  const args = [CLI, '--bind', `127.0.0.1:${bindPort}`, '--udp', `127.0.0.1:${udpPort}`, '--ops-bind', '127.0.0.1:0',
    ...(shared ? ['--reuse-port', '--rebalance-rate', '0'] : []),
    '--keys', settings.keysPath, '--cluster', nats, '--cluster-name', clusterName, '--cluster-dead-after', '2s',
    '--max-per-ip', '100000', '--max-udp-endpoints-per-ip', '100000', '--log-level', 'info'];
  const taskset = hasTaskset ? spawnSync('sh', ['-c', 'command -v taskset'], { encoding: 'utf8' }).stdout.trim() : '';
  const child = taskset
    ? spawn(taskset, ['-c', String(SERVER_CORE), process.execPath, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const instance: Instance = { child, logs: [], ops: '', udpPort: 0 };
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try { instance.logs.push(JSON.parse(line) as Record<string, unknown>); } catch { /* not JSON */ }
  });
  const listening = await waitForLog(instance, 'beacon listening', 60_000);
  instance.ops = `http://${String(listening.opsBind)}`;
  instance.udpPort = Number(String(listening.udp).split(':').pop());
  await waitForLog(instance, 'cluster: directory current and every live instance heard; taking UDP claims', 60_000);
  return instance;
}

async function stopInstance(instance: Instance): Promise<void> {
  if (instance.child.exitCode !== null || instance.child.signalCode !== null) return;
  const exited = once(instance.child, 'exit');
  instance.child.kill('SIGTERM');
  const timer = setTimeout(() => instance.child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

async function metric(instance: Instance, name: string, labels: Record<string, string> = {}): Promise<number> {
  return promValue(await (await fetch(`${instance.ops}/metrics`)).text(), name, labels) ?? NaN;
}

async function total(instances: readonly Instance[], name: string, labels: Record<string, string> = {}): Promise<number> {
  let sum = 0;
  for (const instance of instances) sum += await metric(instance, name, labels);
  return sum;
}

interface Rig {
  instances: Instance[];
  workers: Child[];
  senders: Sender[];
}

type Layout = 'one' | 'shared' | 'ports';
const LAYOUT_NAMES: Record<Layout, string> = { one: 'one instance', shared: 'two instances sharing one port', ports: 'two instances, a port each' };

/**
 * The instances of a layout (one; two sharing one address; two with a port
 * each), UDP daemons for every pair Discovered through them, every claim
 * heard everywhere. With a port each, pair i's sender is on instance i % 2
 * and its receiver on (i >> 1) % 2: half the pairs cross, as the kernel's
 * spread makes them on a shared port.
 */
async function rig(settings: BenchSettings, nats: string, layout: Layout, plan: SharedPortPlan): Promise<Rig> {
  const instances: Instance[] = [];
  const workers: Child[] = [];
  try {
    let bindPort = 0;
    let udpPort = 0;
    for (let i = 0; i < (layout === 'one' ? 1 : 2); i++) {
      const instance = await startInstance(settings, nats, `shared-${layout}`, udpPort, bindPort, layout !== 'ports');
      instances.push(instance);
      if (layout === 'ports') continue;
      udpPort = instance.udpPort;
      bindPort = Number(String(instance.logs.find((l) => l.msg === 'beacon listening')!.bind).split(':').pop());
    }
    const portOf = (nodeId: number) => {
      const pair = Math.floor((nodeId - 1) / 2);
      return instances[nodeId % 2 === 1 ? pair % instances.length : (pair >> 1) % instances.length]!.udpPort;
    };
    const senders: Sender[] = [];
    for (let w = 0; w < WORKERS; w++) {
      const worker = await startWorker(settings, `shared-${layout}-load${w}`, 'sender');
      workers.push(worker);
      const pairs = Array.from({ length: plan.pairs }, (_, i) => i).filter((i) => i % WORKERS === w);
      const ids = pairs.flatMap((i) => [2 * i + 1, 2 * i + 2]);
      for (const instance of instances) {
        const here = ids.filter((id) => portOf(id) === instance.udpPort);
        const r = await worker.request<{ ok: number }>('udpOpen', { port: instance.udpPort, nodeIds: here });
        if (r.ok !== here.length) throw new Error(`${layout}: only ${r.ok}/${here.length} UDP clients discovered`);
        if (layout !== 'ports') break; // one address: every daemon Discovers through it
      }
      senders.push({ worker, flows: pairs.map((i) => ({ from: 2 * i + 1, to: 2 * i + 2, via: 'udp' as const })) });
    }
    // Every instance holds every node (its own or another's claim) before anything is measured.
    const deadline = Date.now() + 10_000;
    for (const instance of instances) {
      while (await metric(instance, 'beacon_cluster_directory_entries') < 2 * plan.pairs) {
        if (Date.now() > deadline) throw new Error(`${layout}: claims did not reach every instance within 10 s`);
        await sleep(50);
      }
    }
    const spread = await Promise.all(instances.map((i) => metric(i, 'beacon_udp_endpoints')));
    settings.log(`  ${LAYOUT_NAMES[layout]}: UDP daemons per instance ${spread.join(' / ')}`);
    return { instances, workers, senders };
  } catch (err) {
    await stopAll(workers);
    await Promise.all(instances.map(stopInstance));
    throw err;
  }
}

export async function sharedPort(settings: BenchSettings, plan: SharedPortPlan): Promise<Row[]> {
  const name = '16 shared address (UDP->UDP)';
  const vsOne = new Figures(name);
  const vsPorts = new Figures(name);
  const hops = new Figures(name);
  const sat = (against: string) => `two instances sharing one port vs ${against}, saturation ${plan.payload} B: delivered`;
  const perCpu = (against: string) => `two instances sharing one port vs ${against}, ${plan.payload} B: frames per server CPU-s (instances and nats-server summed)`;
  const hop = 'relays to a node on the other instance that still crossed NATS';
  for (const [figures, against] of [[vsOne, 'one instance'], [vsPorts, 'two with a port each']] as const) {
    figures.define(sat(against), 'frames/s', 'higher');
    figures.define(perCpu(against), 'frames/cpu-s', 'higher');
  }
  hops.define(hop, '% of cross-instance relays', 'lower', (b) => ({ text: '0 % (UDP destinations never pay a hop)', met: b.median === 0 }));
  const nats = await NatsServer.start();
  const natsPid = (nats as unknown as { child: ChildProcess }).child.pid!;
  const rigs: Partial<Record<Layout, Rig>> = {};
  try {
    for (const layout of ['one', 'shared', 'ports'] as const) rigs[layout] = await rig(settings, nats.url(), layout, plan);
    const flows = plan.pairs;
    const orders: ReadonlyArray<readonly Layout[]> = [['one', 'shared', 'ports'], ['ports', 'shared', 'one'], ['shared', 'one', 'ports']];
    for (let run = 0; run < settings.runs; run++) {
      for (const layout of orders[run % orders.length]!) {
        const { instances, senders } = rigs[layout]!;
        const pids = [...instances.map((i) => i.child.pid!), natsPid];
        const cpu = { child: { cpuSeconds: () => pids.reduce((sum, pid) => sum + cpuSecondsOf(pid), 0) } };
        const bulk = senders.map((s) => s.worker);
        const options = { payloadBytes: plan.payload, ratePerFlow: UDP_BLAST_RATE / flows };
        await measure(cpu, senders, bulk, { ...options, durationMs: Math.min(300, plan.windowMs / 2) }); // warm-up
        const before = { forwarded: await total(instances, 'beacon_cluster_frames_total', { direction: 'out' }),
          shared: await total(instances, 'beacon_relay_total', { route: 'udp_shared' }) };
        const w = await measure(cpu, senders, bulk, { ...options, durationMs: plan.windowMs });
        const forwarded = await total(instances, 'beacon_cluster_frames_total', { direction: 'out' }) - before.forwarded;
        const shared = await total(instances, 'beacon_relay_total', { route: 'udp_shared' }) - before.shared;
        const share = (100 * forwarded) / Math.max(1, forwarded + shared);
        if (layout === 'shared') {
          for (const [figures, against] of [[vsOne, 'one instance'], [vsPorts, 'two with a port each']] as const) {
            figures.add(sat(against), 'beacon', w.deliveredPerSec);
            figures.add(perCpu(against), 'beacon', w.perCpuSecond);
          }
          hops.add(hop, 'beacon', share);
        } else {
          const [figures, against] = layout === 'one' ? [vsOne, 'one instance'] as const : [vsPorts, 'two with a port each'] as const;
          figures.add(sat(against), 'baseline', w.deliveredPerSec);
          figures.add(perCpu(against), 'baseline', w.perCpuSecond);
        }
        const crossing = layout === 'one' ? '' : `; cross-instance relays ${shared + forwarded}, over NATS ${forwarded} (${share.toFixed(2)} %)`;
        settings.log(`  run ${run + 1} ${LAYOUT_NAMES[layout]}: ${fmt(w.deliveredPerSec)}/s delivered, ${fmt(w.perCpuSecond)}/cpu-s, `
          + `servers (instances and nats-server) ${(w.cpuShare * 100).toFixed(0)}% of a core, lost ${w.lost}${crossing}`);
      }
    }
  } finally {
    await stopAll(Object.values(rigs).flatMap((r) => r.workers));
    await Promise.all(Object.values(rigs).flatMap((r) => r.instances).map(stopInstance));
    await nats.close();
  }
  return [...vsOne.rows(), ...vsPorts.rows(), ...hops.rows()];
}
