/**
 * Beacon instances of a cluster as child processes (`dist/cmd/beacon.js`
 * with --cluster), so a SIGKILL is real: each on 127.0.0.1 port 0, with a
 * shared keys file, short timeouts, and its JSON log lines kept for waits.
 * Every child still running when the test file ends is killed by its PID.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after } from 'node:test';
import { COMPAT_PATH, encodeRelay, encodeRelayDeliver } from '../../lib/protocol';
import { eventually, withTimeout } from './harness';
import { keysFileJson, type TestIdentity } from './identity';
import { promValue, type WsPeer } from './wire';

const CLI = join(__dirname, '..', '..', 'cmd', 'beacon.js');
const BASE_ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('BEACON_')));
export const FAST = ['--bind', '127.0.0.1:0', '--udp', '127.0.0.1:0', '--auth-timeout', '2s', '--shutdown-grace', '300ms'];

const running = new Set<ChildProcessWithoutNullStreams>();
const dirs: string[] = [];
after(() => {
  for (const child of running) child.kill('SIGKILL'); // ChildProcess.kill signals child.pid
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** A keys file for `ids` in a temporary directory. */
export function writeKeys(ids: readonly TestIdentity[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'beacon-cluster-'));
  dirs.push(dir);
  const path = join(dir, 'keys.json');
  writeFileSync(path, keysFileJson(ids));
  return path;
}

export class Instance {
  readonly child: ChildProcessWithoutNullStreams;
  readonly logs: LogLine[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  url = '';
  httpBase = '';
  udpPort = 0;
  /** Its ID in the cluster, as it logged it (set by sharedInstance). */
  instanceId = '';
  private readonly waiters = new Set<() => void>();

  constructor(readonly name: string, args: string[], env: Record<string, string> = {}) {
    const cwd = mkdtempSync(join(tmpdir(), 'beacon-instance-'));
    dirs.push(cwd);
    this.child = spawn(process.execPath, [CLI, ...args], { cwd, env: { ...BASE_ENV, ...env }, stdio: 'pipe' });
    running.add(this.child);
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        return;
      }
      for (const wake of [...this.waiters]) wake();
    });
    this.child.stderr.setEncoding('utf8').on('data', (text: string) => { this.stderr += text; });
    this.exited = once(this.child, 'close').then(([code, signal]) => {
      running.delete(this.child);
      for (const wake of [...this.waiters]) wake();
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  /**
   * The first log line matching `predicate` (already logged or to come); rejects at exit or after `ms`.
   * 20 s, as for Caddy and nats-server: an instance starting while the machine was loaded took over 10 s
   * to log 'beacon listening'.
   */
  waitForLog(predicate: (line: LogLine) => boolean, what: string, ms = 20_000): Promise<LogLine> {
    let wake: (() => void) | undefined;
    let exited = false;
    const found = new Promise<LogLine>((resolve, reject) => {
      wake = () => {
        const line = this.logs.find(predicate);
        if (line) return resolve(line);
        if (exited) reject(new Error(`${this.name} exited before logging ${what}; stderr: ${this.stderr}`));
      };
      this.waiters.add(wake);
      wake();
    });
    // The waiters are woken at exit before this runs: look once more, knowing it exited.
    void this.exited.then(() => {
      exited = true;
      wake?.();
    });
    return withTimeout(found, ms, `${this.name}: ${what}`).finally(() => { if (wake) this.waiters.delete(wake); });
  }

  async metrics(): Promise<string> {
    const res = await fetch(`${this.httpBase}/metrics`);
    return res.text();
  }

  async metric(name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
    return promValue(await this.metrics(), name, labels);
  }

  /** Polls /metrics until `name{labels}` satisfies `ok`. */
  async waitForMetric(name: string, labels: Record<string, string>, ok: (value: number) => boolean, ms = 10_000): Promise<number> {
    let last: number | undefined;
    const deadline = Date.now() + ms;
    while (true) {
      last = await this.metric(name, labels).catch(() => undefined);
      if (last !== undefined && ok(last)) return last;
      if (Date.now() > deadline) throw new Error(`${this.name}: ${name}${JSON.stringify(labels)} is ${last} after ${ms} ms`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    await withTimeout(this.exited, 10_000, `${this.name} to exit`);
  }
}

export interface InstanceOptions {
  nats: string;
  keys: string;
  id?: string;
  deadAfter?: string;
  extra?: string[];
  /** sharedInstance: the --ops-bind port (default 0, any): a fixed one keeps the default ID across a restart. */
  opsPort?: number;
}

/** Spawns an instance and waits for it to listen (it may or may not have joined yet). */
export async function spawnInstance(name: string, options: InstanceOptions): Promise<Instance> {
  const args = [...FAST, '--keys', options.keys, '--cluster', options.nats, '--instance-id', options.id ?? name,
    '--cluster-dead-after', options.deadAfter ?? '1s', ...(options.extra ?? [])];
  const instance = new Instance(name, args);
  const listening = await instance.waitForLog((l) => l.msg === 'beacon listening', "'beacon listening'");
  const bind = String(listening.bind);
  instance.url = `ws://${bind}${COMPAT_PATH}`;
  instance.httpBase = `http://${bind}`;
  instance.udpPort = Number(String(listening.udp).split(':').pop());
  return instance;
}

/** Logged once an instance's view of the cluster is complete: from then on it takes UDP claims and relays. */
export const VIEW_COMPLETE = 'cluster: directory current and every live instance heard; taking UDP claims';

/**
 * Spawns an instance and waits until it joined the cluster, takes UDP
 * claims (its view is complete: a dead-after after joining) and sees
 * `expectInstances` live instances.
 */
export async function joinedInstance(name: string, options: InstanceOptions, expectInstances = 1): Promise<Instance> {
  const instance = await spawnInstance(name, options);
  await instance.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'");
  await instance.waitForLog((l) => l.msg === VIEW_COMPLETE, `'${VIEW_COMPLETE}'`);
  await instance.waitForMetric('beacon_cluster_instances', {}, (n) => n >= expectInstances);
  return instance;
}

/** Waits until every instance sees `n` live instances. */
export async function allSee(instances: readonly Instance[], n: number, ms = 10_000): Promise<void> {
  await Promise.all(instances.map((i) => i.waitForMetric('beacon_cluster_instances', {}, (v) => v === n, ms)));
}

/**
 * Sends a relay from `sender` (on `from`) to `dest` until `to` receives it:
 * the directory reaches another instance a moment after auth_ok.
 */
export async function relayUntilDelivered(from: WsPeer, sender: TestIdentity, to: WsPeer, dest: number, text: string, ms = 8_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (true) {
    from.send(encodeRelay(sender.nodeId, dest, Buffer.from(text)));
    const expected = encodeRelayDeliver(sender.nodeId, Buffer.from(text));
    // Earlier traffic may still be arriving: skip it, and the repeats of this relay after it.
    for (let got = await to.next(200).catch(() => undefined); got; got = await to.next(200).catch(() => undefined)) {
      if (!got.equals(expected)) continue;
      while (await to.next(100).catch(() => undefined));
      return;
    }
    if (Date.now() > deadline) throw new Error(`${text}: nothing delivered within ${ms} ms`);
  }
}

export { eventually };

/** The --bind and --udp ports instances share (--reuse-port); 0 until the first one bound them. */
export interface SharedAddress {
  bindPort: number;
  udpPort: number;
}

/**
 * Spawns an instance on the shared address (--reuse-port, port 0 for the
 * first, whose ports are then written into `address`) with an --ops-bind
 * of its own, where its metrics are read; waits until it takes UDP claims.
 * Every daemon of a test comes from 127.0.0.1: --max-per-ip is raised for them.
 * The auth timeout is the production one (10 s), as the test helpers' waits.
 */
export async function sharedInstance(name: string, address: SharedAddress, options: InstanceOptions): Promise<Instance> {
  const instance = new Instance(name, [
    '--bind', `127.0.0.1:${address.bindPort}`, '--udp', `127.0.0.1:${address.udpPort}`, '--reuse-port', '--ops-bind', `127.0.0.1:${options.opsPort ?? 0}`,
    // Tests connect a few dozen daemons at once: on a loaded machine their handshakes took over 2 s (closed 1008).
    '--auth-timeout', '10s', '--shutdown-grace', '300ms', '--max-per-ip', '1000', '--keys', options.keys, '--cluster', options.nats,
    '--cluster-dead-after', options.deadAfter ?? '1s', ...(options.extra ?? []),
  ]);
  const listening = await instance.waitForLog((l) => l.msg === 'beacon listening', "'beacon listening'");
  address.bindPort = Number(String(listening.bind).split(':').pop());
  address.udpPort = Number(String(listening.udp).split(':').pop());
  instance.url = `ws://127.0.0.1:${address.bindPort}${COMPAT_PATH}`;
  instance.httpBase = `http://${String(listening.opsBind)}`;
  instance.udpPort = address.udpPort;
  instance.instanceId = String(listening.instanceId);
  await instance.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'");
  await instance.waitForLog((l) => l.msg === VIEW_COMPLETE, `'${VIEW_COMPLETE}'`);
  return instance;
}
