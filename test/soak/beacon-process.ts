/**
 * The beacon under soak: the real CLI (`dist/cmd/beacon.js`) in its own
 * process, as an operator runs it.
 *
 * - Binds port 0 for HTTP and UDP and reads the bound ports from its
 *   `beacon listening` log line; every later log line is counted, not kept.
 * - Figures come from where an operator reads them: `/metrics` (prom-client's
 *   process metrics and the beacon's counters) and /proc.
 * - Stopped with SIGTERM, by its own PID; SIGKILL only if it does not exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { withTimeout } from '../helpers/harness';

/** dist/cmd/beacon.js of the build this file belongs to. */
const BEACON_CLI = join(__dirname, '..', '..', 'cmd', 'beacon.js');

export class BeaconProcess {
  logLines = 0;
  /** Log lines at level error or fatal; each one is reported. */
  readonly errors: string[] = [];
  private exitCode: number | null | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    private readonly proc: ChildProcess,
    readonly httpPort: number,
    readonly udpPort: number,
  ) {
    this.exited = once(proc, 'exit').then(([code]) => { this.exitCode = code as number | null; });
  }

  static async start(flags: string[]): Promise<BeaconProcess> {
    const proc = spawn(process.execPath, [BEACON_CLI, '--bind', '127.0.0.1:0', '--udp', '127.0.0.1:0', ...flags], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    const lines = createInterface({ input: proc.stdout! });
    let beacon: BeaconProcess | undefined;
    const errors: string[] = [];
    const listening = new Promise<{ http: number; udp: number }>((resolve, reject) => {
      proc.once('exit', (code) => reject(new Error(`the beacon exited with ${code} before it listened`)));
      const keep = process.env.SOAK_BEACON_LOG ? createWriteStream(process.env.SOAK_BEACON_LOG) : undefined;
      lines.on('line', (line) => {
        keep?.write(`${line}\n`);
        if (beacon) beacon.logLines++;
        let entry: { level?: number; msg?: string; bind?: string; udp?: string };
        try {
          entry = JSON.parse(line) as typeof entry;
        } catch {
          (beacon?.errors ?? errors).push(`not JSON: ${line}`);
          return;
        }
        if ((entry.level ?? 0) >= 50) (beacon?.errors ?? errors).push(line);
        if (entry.msg === 'beacon listening' && entry.bind && entry.udp) {
          resolve({ http: portOf(entry.bind), udp: portOf(entry.udp) });
        }
      });
    });
    const ports = await withTimeout(listening, 15_000, 'the beacon to listen');
    beacon = new BeaconProcess(proc, ports.http, ports.udp);
    beacon.errors.push(...errors);
    return beacon;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  signal(name: NodeJS.Signals): void {
    if (this.running) this.proc.kill(name);
  }

  /** The Prometheus text at /metrics. */
  async scrape(): Promise<string> {
    const res = await fetch(`http://127.0.0.1:${this.httpPort}/metrics`, { signal: AbortSignal.timeout(10_000) });
    if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
    return res.text();
  }

  /** SIGTERM, then the exit code; SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<number | null> {
    if (this.running) {
      this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    return this.exitCode ?? null;
  }
}

function portOf(hostPort: string): number {
  return Number(hostPort.slice(hostPort.lastIndexOf(':') + 1));
}
