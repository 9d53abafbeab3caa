/**
 * Helpers for the tests of the shipped operator files (Caddyfile, deploy/):
 * finding the Debian tools they need, running them with a bound on time,
 * starting a long-running one (Caddy, nats-server) and waiting until it is ready,
 * free ports, HTTP(S) requests with a private CA and a source address, and
 * reading metric names out of Prometheus text.
 *
 * - A missing tool is a failure, never a skip: the message says to run
 *   .ci/install-deps, which installs it.
 * - Every child process is bounded in time and killed by its own PID.
 */
import { execFile, spawn, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';

/** The repository root (dist/test/helpers -> ../../..). */
export const REPO_ROOT = resolve(__dirname, '..', '..', '..');

/** Which Debian package brings each tool the deploy tests run. */
const PACKAGE_OF: Record<string, string> = {
  caddy: 'caddy',
  promtool: 'prometheus',
  'systemd-analyze': 'systemd',
  'nats-server': 'nats-server',
  openssl: 'openssl',
  setpriv: 'util-linux',
};

/** The absolute path of `tool` on PATH, or throws an Error that says how to install it. */
export function requireTool(tool: string): string {
  // Debian puts some (nats-server) in /usr/sbin, which a non-root PATH may lack.
  for (const dir of [...(process.env.PATH ?? '/usr/bin:/bin').split(delimiter), '/usr/sbin']) {
    const candidate = join(dir, tool);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  const pkg = PACKAGE_OF[tool] ?? tool;
  throw new Error(`${tool} is not installed (Debian package "${pkg}"): run .ci/install-deps as root, `
    + `or apt-get install -y ${pkg}; this test does not skip without it`);
}

const tempDirs: string[] = [];

/** A fresh directory under the OS temp dir, removed when the test process exits. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `beacon-${prefix}-`));
  if (tempDirs.length === 0) {
    process.once('exit', () => { for (const d of tempDirs) rmSync(d, { recursive: true, force: true }); });
  }
  tempDirs.push(dir);
  return dir;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `file args` to completion (killed after `timeoutMs`); never throws for a non-zero exit. */
export function run(file: string, args: readonly string[], options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolvePromise) => {
    execFile(file, args, {
      env: options.env ?? process.env, cwd: options.cwd, timeout: options.timeoutMs ?? 30_000,
      killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, encoding: 'utf8',
    }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals }) | null;
      resolvePromise({
        code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
        signal: e?.signal ?? null,
        stdout, stderr,
        ms: Date.now() - started,
      });
    });
  });
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface RequestOptions {
  /** PEM CA to trust for https:// (e.g. Caddy's local root). */
  ca?: string;
  /** Source address of the connection (e.g. 127.0.0.7). */
  localAddress?: string;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

/**
 * GET `base` + `path`, with `path` sent exactly as given (no normalisation,
 * so `/health/../metrics` reaches the server as written).
 */
export function get(base: string, path: string, options: RequestOptions = {}): Promise<HttpAnswer> {
  const url = new URL(base);
  const secure = url.protocol === 'https:';
  const request = secure ? https.request : http.request;
  return new Promise((resolvePromise, reject) => {
    const req = request({
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port) || (secure ? 443 : 80),
      path,
      method: 'GET',
      headers: { connection: 'close', ...options.headers },
      ca: options.ca,
      localAddress: options.localAddress,
      agent: false,
      timeout: options.timeoutMs ?? 3_000,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${base}${path}: no answer within ${options.timeoutMs ?? 3_000} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Metric family names in Prometheus text: every sample's name, plus for
 * histograms and summaries the family name without _bucket/_sum/_count
 * (from the # TYPE lines), so either spelling of a name can be checked.
 */
export function exportedMetricNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)/.exec(line);
    if (type) {
      names.add(type[1]!);
      if (type[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(type[1] + s);
      if (type[2] === 'summary') for (const s of ['_sum', '_count']) names.add(type[1] + s);
      continue;
    }
    if (!line || line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
    if (sample) names.add(sample[1]!);
  }
  return names;
}

/** Sleeps `ms` (for bounded polling loops only). */
export function sleep(ms: number): Promise<void> {
  return new Promise((ok) => setTimeout(ok, ms));
}

/** A long-running tool started by startTool: its PID, its recent output, and a bounded stop. */
export interface RunningTool {
  pid: number;
  /** The last 64 KiB of its stdout and stderr. */
  logs(): string;
  /** SIGTERM, SIGKILL after 5 s; resolves when it has exited. */
  stop(): Promise<void>;
}

/**
 * Spawns `bin` (named `name` in messages) and polls `probe` every 100 ms
 * until it resolves: its value and the running tool come back. A probe
 * that throws means "not yet" (its message is kept for the error). If the
 * tool exits first, or `timeoutMs` passes, it is stopped and the rejection
 * carries its output.
 */
export async function startTool<T>(
  name: string, bin: string, args: readonly string[], options: SpawnOptions, probe: () => Promise<T>, timeoutMs = 20_000,
): Promise<{ tool: RunningTool; ready: T }> {
  const child = spawn(bin, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk: Buffer) => { output = (output + chunk.toString('utf8')).slice(-64 * 1024); };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited: string | undefined;
  child.on('exit', (code, signal) => { exited = `${name} exited (code ${code}, signal ${signal})`; });
  child.on('error', (err) => { exited = `${name} could not be started: ${err.message}`; });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    const gone = new Promise<void>((ok) => child.once('exit', () => ok()));
    process.kill(child.pid, 'SIGTERM');
    const timer = setTimeout(() => { if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL'); }, 5_000);
    await gone;
    clearTimeout(timer);
  };
  const deadline = Date.now() + timeoutMs;
  let last = 'not asked yet';
  try {
    for (;;) {
      if (exited) throw new Error(`${exited} before it was ready; its output:\n${output}`);
      if (Date.now() > deadline) throw new Error(`${name} was not ready within ${timeoutMs} ms (${last}); its output:\n${output}`);
      try {
        const ready = await probe();
        return { tool: { pid: child.pid!, logs: () => output, stop }, ready };
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(100);
    }
  } catch (err) {
    await stop();
    throw err;
  }
}
