/**
 * Runs the real `beacon-client` CLI (dist/cmd/beacon-client.js) as a child
 * process. Every wait is bounded; every child is killed by its own PID.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { withTimeout } from './harness';

export const CLI = join(__dirname, '..', '..', 'cmd', 'beacon-client.js');

export interface CliResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

const running = new Set<CliProcess>();

export class CliProcess {
  readonly child: ChildProcessWithoutNullStreams;
  stdout = '';
  stderr = '';
  private readonly exited: Promise<CliResult>;

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [CLI, ...args], { stdio: 'pipe' });
    this.child.stdout.setEncoding('utf8').on('data', (s: string) => { this.stdout += s; });
    this.child.stderr.setEncoding('utf8').on('data', (s: string) => { this.stderr += s; });
    running.add(this);
    this.exited = once(this.child, 'close').then(([code, signal]) => {
      running.delete(this);
      return { code: code as number | null, signal: signal as NodeJS.Signals | null, stdout: this.stdout, stderr: this.stderr };
    });
  }

  /** Resolves once `stream` has printed a line matching `pattern`; rejects after `ms` or at exit. */
  async waitFor(stream: 'stdout' | 'stderr', pattern: RegExp, ms = 5_000): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const line = this[stream].split('\n').find((l) => pattern.test(l));
      if (line !== undefined) return line;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`the CLI exited (${this.child.exitCode ?? this.child.signalCode}) before ${stream} matched ${pattern}; stderr: ${this.stderr}`);
      }
      if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${stream} to match ${pattern}; stdout: ${this.stdout} stderr: ${this.stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** Resolves with the exit; rejects after `ms`. */
  result(ms = 10_000): Promise<CliResult> {
    return withTimeout(this.exited, ms, 'the CLI to exit');
  }

  /** SIGTERM, then the exit (SIGKILL if it does not come within `ms`). */
  async stop(ms = 3_000): Promise<CliResult> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    try {
      return await this.result(ms);
    } catch (err) {
      this.child.kill('SIGKILL');
      throw err;
    }
  }
}

/** Runs the CLI to completion. */
export async function runCli(args: string[], ms = 10_000): Promise<CliResult> {
  const proc = new CliProcess(args);
  proc.child.stdin.end();
  try {
    return await proc.result(ms);
  } catch (err) {
    proc.child.kill('SIGKILL');
    throw err;
  }
}

/** Kills (by PID) every CLI child this test file spawned that is still running (for an after() hook). */
export function killSpawnedCli(): void {
  for (const proc of running) proc.child.kill('SIGKILL');
}
