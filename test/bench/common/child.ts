/**
 * Child processes of the benchmark, from the orchestrator's side.
 *
 * - Every server and every load generator is its own Node process, started
 *   through `taskset -c CORE` when taskset exists, with the fd limit raised
 *   to the hard limit (10,000 peers need 10,000 sockets).
 * - Requests go over the IPC channel as `{ id, cmd, args }` and come back as
 *   `{ id, result }` or `{ id, error }`; every request has a deadline.
 * - `stop()` asks the child to exit and kills it, by its own PID, if it has
 *   not within a few seconds. Only processes started here are ever killed.
 * - CPU time is read from /proc/PID/stat (all threads, 10 ms resolution)
 *   so that measuring a busy server never runs on its event loop.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** What every child sends once it is ready; servers add their ports. */
export interface ReadyMessage {
  type: 'ready';
  pid: number;
  [key: string]: unknown;
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

const TASKSET = findCommand('taskset');
const NICE = findCommand('nice');
const CHRT = findCommand('chrt');
const CLOCK_TICKS_PER_SECOND = 100;
/** Every child is started from the compiled bench directory. */
const BENCH_DIR = join(__dirname, '..');

function findCommand(name: string): string | undefined {
  const found = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const path = found.stdout.trim();
  return found.status === 0 && path ? path : undefined;
}

export const hasTaskset = TASKSET !== undefined;

/** CPU seconds (user + system, all threads) process `pid` has used so far. */
export function cpuSecondsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** Pins every thread of a running process (one the bench started, e.g. Caddy) to `core`; false without taskset. */
export function pinProcess(pid: number, core: number): boolean {
  if (!TASKSET) return false;
  return spawnSync(TASKSET, ['-a', '-p', '-c', String(core), String(pid)], { stdio: 'ignore' }).status === 0;
}

/** The hard limit on open files every child gets as its limit: bounds the peers one process can hold. */
export const fdHardLimit = ((): number => {
  const found = spawnSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' });
  const text = found.stdout.trim();
  return text === 'unlimited' ? Infinity : Number(text) || 1024;
})();

export interface SpawnOptions {
  /** Core to pin to; ignored without taskset. */
  core?: number;
  nodeFlags?: string[];
  args?: string[];
  /** How long the child may take to say it is ready. */
  readyTimeoutMs?: number;
  /** A name for error messages. */
  name?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Lower the child's priority (senders: receivers must never be the ones losing packets). */
  nice?: number;
  /**
   * Run the child only when its core has nothing else to run (SCHED_IDLE,
   * through `chrt --idle 0` when chrt exists). Unlike a nice value, a woken
   * process of normal priority takes the core from it at once; a nice one
   * keeps it to the end of its slice (3-4 ms here).
   */
  idle?: boolean;
  /** `script` is an absolute path (another build), not one under dist/test/bench. */
  absolute?: boolean;
}

/** Every child started and not yet exited: what `stopLeftovers` ends. */
const live = new Set<Child>();

/** Stops children a failed scenario left behind (each by its own PID). */
export async function stopLeftovers(): Promise<number> {
  const left = [...live];
  await Promise.all(left.map((c) => c.stop().catch(() => {})));
  return left.length;
}

export class Child {
  readonly ready: Promise<ReadyMessage>;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private exited = false;
  private readonly exit: Promise<void>;

  constructor(readonly name: string, private readonly proc: ChildProcess, readyTimeoutMs: number) {
    live.add(this);
    this.exit = new Promise((resolve) => proc.once('exit', () => {
      this.exited = true;
      live.delete(this);
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`${name} exited`));
      }
      this.pending.clear();
      resolve();
    }));
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name} not ready within ${readyTimeoutMs} ms`)), readyTimeoutMs);
      proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited with ${code} before it was ready`)); });
      proc.on('message', (msg: { type?: string; id?: number; result?: unknown; error?: string }) => {
        if (msg.type === 'ready') {
          clearTimeout(timer);
          resolve(msg as ReadyMessage);
          return;
        }
        const p = msg.id === undefined ? undefined : this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id!);
        clearTimeout(p.timer);
        if (msg.error !== undefined) p.reject(new Error(`${name}: ${msg.error}`));
        else p.resolve(msg.result);
      });
    });
    this.ready.catch(() => {});
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Sends one command; rejects after `timeoutMs`. */
  request<T>(cmd: string, args: unknown = {}, timeoutMs = 30_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}: ${cmd} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.proc.send({ id, cmd, args });
    });
  }

  /** CPU seconds (user + system, all threads) the child has used so far. */
  cpuSeconds(): number {
    return cpuSecondsOf(this.pid);
  }

  /**
   * The resident set from /proc (works while the child is busy), in bytes:
   * in all, and its parts, anonymous memory (heap, buffers) and mapped files
   * (code); NaN for a field the kernel does not give.
   */
  rss(): { total: number; anon: number; file: number } {
    const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const bytes = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return { total: bytes('VmRSS'), anon: bytes('RssAnon'), file: bytes('RssFile') };
  }

  /** Resident set size in bytes (see `rss`). */
  rssBytes(): number {
    return this.rss().total;
  }

  /**
   * Holds the child still (SIGSTOP) while another server is measured on the
   * same core, so its own chores (timers, a collection after its run) do not
   * land in the other's window; `thaw` lets it go on.
   */
  freeze(): void {
    if (!this.exited) this.proc.kill('SIGSTOP');
  }

  thaw(): void {
    if (!this.exited) this.proc.kill('SIGCONT');
  }

  /** Asks the child to exit; kills it (by PID) after `graceMs`. */
  async stop(graceMs = 5_000): Promise<void> {
    if (this.exited) return;
    try {
      this.proc.send({ id: 0, cmd: 'exit', args: {} });
    } catch {
      // channel already closed; the kill below ends it
    }
    const timer = setTimeout(() => { if (!this.exited) this.proc.kill('SIGKILL'); }, graceMs);
    await this.exit;
    clearTimeout(timer);
  }
}

/** Starts `script` (a path under dist/test/bench) as a child process. */
export function spawnChild(script: string, options: SpawnOptions = {}): Child {
  const node = [...(options.nodeFlags ?? []), options.absolute ? script : join(BENCH_DIR, script), ...(options.args ?? [])];
  const pin = TASKSET && options.core !== undefined ? [TASKSET, '-c', String(options.core)] : [];
  if (options.nice && NICE) pin.push(NICE, '-n', String(options.nice));
  if (options.idle && CHRT) pin.push(CHRT, '--idle', '0');
  // Raise the soft fd limit to the hard one, then exec: the PID stays the child's.
  const command = [process.execPath, ...node];
  const proc = spawn('sh', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', ...pin, ...command], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, NODE_OPTIONS: '', ...options.env },
  });
  return new Child(options.name ?? script, proc, options.readyTimeoutMs ?? 30_000);
}
