/**
 * Debian's nats-server running the shipped NATS configurations
 * (deploy/nats/), for tests: the configuration adapted to a test machine,
 * the server started and stopped by PID, and a small probe that speaks
 * just enough of the NATS client protocol to check a login and ask the
 * JetStream API a question.
 *
 * - `adaptNatsConfig` changes only what differs on a test machine: the
 *   client, cluster and monitoring ports, the store directory, the server
 *   name and the route URLs' hosts. Each change is checked to have happened
 *   exactly once, so what runs is the shipped file.
 * - The probe is test-only: it sends CONNECT and PING and reads PONG or
 *   -ERR, and a request is SUB + PUB + the first MSG on the inbox. Every
 *   wait is bounded.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { REPO_ROOT, get, requireTool, sleep, startTool, tempDir } from './deploy';
import { freeTcpPort } from './free-ports';

export const NATS_SINGLE_CONF = join(REPO_ROOT, 'deploy', 'nats', 'nats-server.conf');
export const NATS_THREE_CONF = join(REPO_ROOT, 'deploy', 'nats', 'nats-server-3.conf');

function replaceOnce(text: string, find: RegExp, replacement: string, what: string): string {
  const count = (text.match(new RegExp(find.source, `${find.flags.replace('g', '')}g`)) ?? []).length;
  if (count !== 1) throw new Error(`the shipped NATS configuration should contain ${what} exactly once, found ${count}`);
  return text.replace(find, replacement);
}

export interface NatsPorts {
  client: number;
  monitor: number;
  /** The cluster (route) port, for the three-machine file. */
  cluster?: number;
}

/** The shipped file with ports, store, name and routes moved for this machine. */
export function adaptNatsConfig(shipped: string, ports: NatsPorts, storeDir: string,
  three?: { serverName: string; routePorts: number[] }): string {
  let text = shipped;
  text = replaceOnce(text, /^port: 4222$/m, `port: ${ports.client}`, '"port: 4222"');
  text = replaceOnce(text, /^http: 127\.0\.0\.1:8222$/m, `http: 127.0.0.1:${ports.monitor}`, '"http: 127.0.0.1:8222"');
  text = replaceOnce(text, /^ {2}store_dir: \/var\/lib\/nats$/m, `  store_dir: ${JSON.stringify(storeDir)}`, '"store_dir: /var/lib/nats"');
  if (three) {
    text = replaceOnce(text, /^host: 0\.0\.0\.0$/m, 'host: 127.0.0.1', '"host: 0.0.0.0"');
    text = replaceOnce(text, /^server_name: beacon-nats-1$/m, `server_name: ${three.serverName}`, '"server_name: beacon-nats-1"');
    text = replaceOnce(text, /^ {2}host: 0\.0\.0\.0\n {2}port: 6222$/m, `  host: 127.0.0.1\n  port: ${ports.cluster}`, 'the cluster listener on 0.0.0.0:6222');
    three.routePorts.forEach((port, i) => {
      text = replaceOnce(text, new RegExp(`@nats-${i + 1}\\.example\\.internal:6222$`, 'm'), `@127.0.0.1:${port}`, `the route to nats-${i + 1}`);
    });
  }
  return text;
}

export interface RunningNats {
  pid: number;
  ports: NatsPorts;
  logs(): string;
  /** GET on its monitoring port, parsed as JSON. */
  monitor(path: string): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 20_000;

/** Runs nats-server on `config` (text); resolves once /healthz answers 200. */
export async function startNats(config: string, ports: NatsPorts, readyPath = '/healthz'): Promise<RunningNats> {
  const bin = requireTool('nats-server');
  const dir = tempDir('nats');
  const file = join(dir, 'nats-server.conf');
  writeFileSync(file, config);
  const base = `http://127.0.0.1:${ports.monitor}`;
  const monitor = async (path: string) => {
    const answer = await get(base, path, { timeoutMs: 2_000 });
    return JSON.parse(answer.body) as Record<string, unknown>;
  };
  const { tool } = await startTool('nats-server', bin, ['-c', file], {}, async () => {
    const answer = await get(base, readyPath, { timeoutMs: 1_000 });
    if (answer.status !== 200) throw new Error(`${readyPath} answered ${answer.status}: ${answer.body.slice(0, 200)}`);
  }, START_TIMEOUT_MS);
  return { pid: tool.pid, ports, logs: tool.logs, monitor, stop: tool.stop };
}

/** Free client and monitoring ports (and a cluster port) on 127.0.0.1. */
export async function freeNatsPorts(cluster = false): Promise<NatsPorts> {
  return { client: await freeTcpPort(), monitor: await freeTcpPort(), ...(cluster ? { cluster: await freeTcpPort() } : {}) };
}

/**
 * A lone nats-server on free loopback ports with JetStream (its store in a
 * temporary directory) and `extra` in its configuration: a tls block,
 * users, an operator. Stop it with `stop()`.
 */
export async function startNatsWith(extra: string): Promise<RunningNats> {
  const ports = await freeNatsPorts();
  const config = `host: 127.0.0.1\nport: ${ports.client}\nhttp: 127.0.0.1:${ports.monitor}\n`
    + `jetstream { store_dir: ${JSON.stringify(tempDir('nats-store'))} }\n${extra}\n`;
  return startNats(config, ports);
}

/**
 * Three servers on the shipped three-machine file, on free ports. A port
 * found free can be taken by another process before the server binds it:
 * then all three start again on new ports (three tries). The caller stops
 * the servers.
 */
export async function startThreeNats(): Promise<{ all: NatsPorts[]; started: RunningNats[] }> {
  const shipped = readShipped(NATS_THREE_CONF);
  for (let attempt = 1; ; attempt++) {
    const all = [await freeNatsPorts(true), await freeNatsPorts(true), await freeNatsPorts(true)];
    const routePorts = all.map((p) => p.cluster!);
    const results = await Promise.allSettled(all.map((p, i) => startNats(
      adaptNatsConfig(shipped, p, tempDir(`nats-store-${i + 1}`), { serverName: `beacon-nats-${i + 1}`, routePorts }), p, '/varz')));
    const started = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : []);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (!failed) return { all, started };
    for (const server of started) await server.stop();
    if (attempt === 3 || !/address already in use/.test(String(failed.reason))) throw failed.reason;
  }
}

/** Waits (45 s at most) until the JetStream meta group of `server`'s cluster has a leader and `size` members. */
export async function metaLeaderElected(server: RunningNats, size: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 45_000;
  let meta: Record<string, unknown> | undefined;
  while (Date.now() < deadline) {
    meta = (await server.monitor('/jsz').catch(() => ({}) as Record<string, unknown>)).meta_cluster as Record<string, unknown> | undefined;
    if (meta?.leader && meta.cluster_size === size) return meta;
    await sleep(200);
  }
  throw new Error(`no JetStream leader among ${size}: ${JSON.stringify(meta)}`);
}

export interface StreamDetail {
  name: string;
  config: { num_replicas: number };
  state: { messages: number };
  cluster?: { leader?: string; replicas?: { name: string; current?: boolean }[] };
}

/** A directory bucket's stream as `server` reports it on its monitoring port (/jsz); undefined while there is none. */
export async function directoryStream(server: RunningNats, account = 'BEACON', bucket = 'beacon-directory'): Promise<StreamDetail | undefined> {
  const jsz = await server.monitor('/jsz?accounts=true&streams=true&config=true');
  const accounts = (jsz.account_details ?? []) as { name: string; stream_detail?: StreamDetail[] }[];
  return accounts.find((a) => a.name === account)?.stream_detail?.find((st) => st.name === `KV_${bucket}`);
}

/** One NATS client connection speaking just CONNECT, PING, SUB, PUB and MSG. */
export class NatsProbe {
  private buffer = '';
  private readonly waiters = new Set<() => void>();
  private ended = false;
  /** Subscription IDs: one per request, so a late reply to an earlier one is never taken for this one's. */
  private sid = 0;
  /** The last lines passed over while waiting (late replies, -ERR), for failure messages. */
  private skipped: string[] = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => { this.buffer += chunk; this.wake(); });
    socket.on('close', () => { this.ended = true; this.wake(); });
    socket.on('error', () => undefined);
  }

  /**
   * Connects and logs in; resolves with the server's INFO and the answer to
   * the first PING: 'PONG', or the -ERR line (e.g. an authorization violation).
   */
  static async login(port: number, user?: string, pass?: string): Promise<{ probe: NatsProbe; info: Record<string, unknown>; answer: string }> {
    const socket = net.connect(port, '127.0.0.1');
    const probe = new NatsProbe(socket);
    const infoLine = await probe.line(/^INFO /, 5_000);
    const info = JSON.parse(infoLine.slice(5)) as Record<string, unknown>;
    const connect = { verbose: false, pedantic: false, protocol: 1, headers: false, name: 'beacon-deploy-test', ...(user ? { user, pass } : {}) };
    socket.write(`CONNECT ${JSON.stringify(connect)}\r\nPING\r\n`);
    const answer = await probe.line(/^(PONG|-ERR)/, 5_000);
    return { probe, info, answer };
  }

  /** A request: the first reply on a fresh inbox, parsed as JSON. */
  async request(subject: string, body: unknown, timeoutMs = 5_000): Promise<Record<string, unknown>> {
    const sid = ++this.sid;
    const inbox = `_INBOX.probe${sid}`;
    const payload = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
    this.socket.write(`SUB ${inbox} ${sid}\r\nPUB ${subject} ${inbox} ${payload.length}\r\n${payload.toString('utf8')}\r\n`);
    try {
      // MSG <subject> <sid> [reply-to] <bytes>; a message that crossed a route may carry extra spaces.
      const header = await this.line(new RegExp(`^MSG\\s+${inbox.replace(/\./g, '\\.')}\\s+${sid}\\s+(?:\\S+\\s+)?\\d+$`), timeoutMs);
      const size = Number(header.trim().split(/\s+/).at(-1));
      return JSON.parse(await this.take(size, timeoutMs)) as Record<string, unknown>;
    } finally {
      this.socket.write(`UNSUB ${sid}\r\n`);
    }
  }

  close(): void {
    this.socket.destroy();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /** The next CRLF line matching `pattern` (lines before it are dropped; PINGs answered). */
  private line(pattern: RegExp, ms: number): Promise<string> {
    return this.wait(ms, `a line matching ${pattern}`, () => {
      for (;;) {
        const end = this.buffer.indexOf('\r\n');
        if (end < 0) return undefined;
        const line = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 2);
        if (line === 'PING') { this.socket.write('PONG\r\n'); continue; }
        if (pattern.test(line)) return line;
        this.skipped = [...this.skipped, line].slice(-5);
      }
    });
  }

  /** `size` bytes of payload and its CRLF (ASCII/JSON payloads only). */
  private take(size: number, ms: number): Promise<string> {
    return this.wait(ms, `${size} bytes of payload`, () => {
      if (this.buffer.length < size + 2) return undefined;
      const data = this.buffer.slice(0, size);
      this.buffer = this.buffer.slice(size + 2);
      return data;
    });
  }

  private wait<T>(ms: number, what: string, attempt: () => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const got = attempt();
        if (got !== undefined) { done(); resolve(got); return; }
        if (this.ended) { done(); reject(new Error(`the NATS connection closed while waiting for ${what}; unread: ${this.buffer}`)); }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} from NATS within ${ms} ms; passed over: ${JSON.stringify(this.skipped)}; unread: ${this.buffer}`));
      }, ms);
      const done = () => { clearTimeout(timer); this.waiters.delete(check); };
      this.waiters.add(check);
      check();
    });
  }
}

/** The shipped files' passwords, as the tests log in with them. */
export function shippedPassword(config: string, user: string): string {
  const match = new RegExp(`user: ${user}, password: "([^"]+)"`).exec(config);
  if (!match) throw new Error(`no password for user ${user} in the shipped NATS configuration`);
  return match[1]!;
}

export function readShipped(path: string): string {
  return readFileSync(path, 'utf8');
}
