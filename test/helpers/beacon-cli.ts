/**
 * Runs the real `beacon` CLI (dist/cmd/beacon.js) as a child process, for
 * tests of the CLI: each child in its own temporary directory (so no
 * ./keys.json leaks in) with the BEACON_* variables of the test process
 * removed; waited on by its JSON log lines or its exit, never by sleeping.
 * Every wait is bounded, generously: a loaded 2-core machine takes
 * seconds to start a Node process. cleanUpBeaconCli() kills what is left
 * by PID.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { COMPAT_PATH } from '../../lib/protocol';
import { withTimeout } from './harness';

export const CLI = join(__dirname, '..', '..', 'cmd', 'beacon.js');
/** Port 0 everywhere, and timeouts short enough that nothing waits on production defaults. */
export const FAST = ['--bind', '127.0.0.1:0', '--udp', '127.0.0.1:0', '--auth-timeout', '2s', '--shutdown-grace', '500ms'];
/** The test process's environment without BEACON_* and systemd's notification variables (a CI under systemd may set them). */
const BASE_ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('BEACON_')
  && !['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID'].includes(name)));

const running = new Set<ChildProcessWithoutNullStreams>();
const dirs: string[] = [];
/** WebSockets a test opened; terminated by cleanUpBeaconCli(). */
export const sockets: WebSocket[] = [];

/** For an after() hook: kills (by PID) the children still running, closes the sockets, removes the directories. */
export function cleanUpBeaconCli(): void {
  for (const child of running) child.kill('SIGKILL'); // by its PID: ChildProcess.kill signals child.pid
  for (const ws of sockets) ws.terminate();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'beacon-cli-'));
  dirs.push(dir);
  return dir;
}

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Runs node through this command (e.g. a shell that sets WATCHDOG_PID=$$ and execs "$@"). */
  through?: string[];
}

/** One `beacon` child: its JSON log lines (stdout), its stderr, its exit. */
export class BeaconProcess {
  readonly child: ChildProcessWithoutNullStreams;
  readonly logs: LogLine[] = [];
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exit>;
  private readonly onLine = new Set<() => void>();

  constructor(args: string[], options: SpawnOptions = {}) {
    const argv = [...(options.through ?? []), process.execPath, CLI, ...args];
    this.child = spawn(argv[0]!, argv.slice(1), {
      cwd: options.cwd ?? tempDir(),
      env: { ...BASE_ENV, ...options.env },
      stdio: 'pipe',
    });
    running.add(this.child);
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.stdout += `${line}\n`;
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        return; // --help, keygen and keys add print text
      }
      for (const notify of [...this.onLine]) notify();
    });
    this.child.stderr.setEncoding('utf8').on('data', (text: string) => {
      this.stderr += text;
      for (const notify of [...this.onLine]) notify();
    });
    this.exited = once(this.child, 'close').then(([code, signal]) => {
      running.delete(this.child);
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  /** The first log line matching `predicate`, already logged or to come; rejects at exit or after `ms`. */
  waitForLog(predicate: (line: LogLine) => boolean, what: string, ms = 15_000): Promise<LogLine> {
    let notify: (() => void) | undefined;
    const found = new Promise<LogLine>((resolve, reject) => {
      notify = () => {
        const line = this.logs.find(predicate);
        if (line) resolve(line);
      };
      this.onLine.add(notify);
      notify();
      void this.exited.then(({ code, signal }) => {
        notify?.();
        reject(new Error(`beacon exited (${code ?? signal}) before logging ${what}; stderr: ${this.stderr}`));
      });
    });
    return withTimeout(found, ms, what).finally(() => { if (notify) this.onLine.delete(notify); });
  }

  /** The first match of `pattern` in stderr, already written or to come; rejects at exit or after `ms`. */
  waitForStderr(pattern: RegExp, what: string, ms = 15_000): Promise<RegExpExecArray> {
    let notify: (() => void) | undefined;
    const found = new Promise<RegExpExecArray>((resolve, reject) => {
      notify = () => {
        const match = pattern.exec(this.stderr);
        if (match) resolve(match);
      };
      this.onLine.add(notify);
      notify();
      void this.exited.then(({ code, signal }) => {
        notify?.();
        reject(new Error(`beacon exited (${code ?? signal}) before writing ${what} on stderr; stderr: ${this.stderr}`));
      });
    });
    return withTimeout(found, ms, what).finally(() => { if (notify) this.onLine.delete(notify); });
  }

  /** Resolves with the exit; rejects after `ms`. */
  exit(ms = 20_000): Promise<Exit> {
    return withTimeout(this.exited, ms, 'the beacon to exit');
  }

  signal(signal: NodeJS.Signals): void {
    assert.ok(this.child.kill(signal), `could not send ${signal} to pid ${this.child.pid}`);
  }
}

/** A running beacon and the addresses it logged in its 'beacon listening' line. */
export interface Running {
  proc: BeaconProcess;
  listening: LogLine;
  bind: string;
  url: string;
  httpBase: string;
}

export async function startCli(args: string[], options: SpawnOptions = {}): Promise<Running> {
  const proc = new BeaconProcess(args, options);
  const listening = await proc.waitForLog((l) => l.msg === 'beacon listening', "'beacon listening'");
  const bind = String(listening.bind);
  return { proc, listening, bind, url: `ws://${bind}${COMPAT_PATH}`, httpBase: `http://${bind}` };
}

/** Runs a command that exits by itself; resolves with its exit and output. */
export async function runCli(args: string[], options: SpawnOptions = {}): Promise<Exit & { stdout: string; stderr: string }> {
  const proc = new BeaconProcess(args, options);
  const exit = await proc.exit();
  return { ...exit, stdout: proc.stdout, stderr: proc.stderr };
}

/** Exit code 2 and exactly one stderr line `beacon: ...` containing every `needle`; no stack trace. */
export function assertUsageError(result: Exit & { stderr: string }, ...needles: string[]): void {
  assert.equal(result.code, 2, `exit code; stderr: ${result.stderr}`);
  const lines = result.stderr.split('\n').filter((line) => line.length > 0);
  assert.equal(lines.length, 1, `one stderr line, got: ${result.stderr}`);
  assert.match(lines[0], /^beacon: \S/);
  assert.doesNotMatch(lines[0], /\bat .+:\d+:\d+/);
  for (const needle of needles) assert.ok(lines[0].includes(needle), `stderr names ${needle}: ${lines[0]}`);
}

export async function stopCli(proc: BeaconProcess): Promise<void> {
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(5_000), { code: 0, signal: null });
}

export function assertRunning(proc: BeaconProcess): void {
  assert.equal(proc.child.exitCode, null, `beacon exited; stderr: ${proc.stderr}`);
}
