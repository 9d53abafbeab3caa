/**
 * A real nats-server (Debian's, with JetStream unless told) for the cluster tests: on
 * 127.0.0.1 and a free port, its store in a temporary directory, stopped
 * by its PID. It can be stopped and started again on the same port and
 * store, as an operator's restart would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freeTcpPort } from './free-ports';
import { withTimeout } from './harness';

/** Where Debian puts it; PATH otherwise (.ci/install-deps installs it when missing). */
export const NATS_SERVER = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((path) => existsSync(path)) ?? 'nats-server';

export interface NatsOptions {
  user?: string;
  password?: string;
  /** A configuration file's text (e.g. users with permissions), given with -c; the flags above still apply. */
  config?: string;
  /** false: no -js, as Debian's own nats-server service runs (default true). */
  jetstream?: boolean;
}

export class NatsServer {
  private child: ChildProcess | undefined;
  private readonly dir = mkdtempSync(join(tmpdir(), 'beacon-nats-'));
  log = '';

  private constructor(readonly port: number, private readonly options: NatsOptions) {}

  static async start(options: NatsOptions = {}, port?: number): Promise<NatsServer> {
    const server = new NatsServer(port ?? await freeTcpPort(), options);
    await server.start();
    return server;
  }

  /** nats://127.0.0.1:PORT, with user:password@ when given. */
  url(user = this.options.user, password = this.options.password): string {
    const auth = user !== undefined ? `${encodeURIComponent(user)}:${encodeURIComponent(password ?? '')}@` : '';
    return `nats://${auth}127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  async start(): Promise<void> {
    const args = ['-a', '127.0.0.1', '-p', String(this.port), ...(this.options.jetstream === false ? [] : ['-js', '-sd', this.dir])];
    if (this.options.user !== undefined) args.push('--user', this.options.user, '--pass', this.options.password ?? '');
    if (this.options.config !== undefined) {
      const file = join(this.dir, 'nats.conf');
      writeFileSync(file, this.options.config);
      args.push('-c', file);
    }
    const child = spawn(NATS_SERVER, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr!.setEncoding('utf8').on('data', (text: string) => { this.log += text; });
    child.once('exit', () => { if (this.child === child) this.child = undefined; });
    await withTimeout(waitForReady(this, child), 10_000, `nats-server on port ${this.port} (log: ${this.log.slice(-500)})`);
  }

  /** Stops it (SIGKILL: no goodbye to clients) and waits for the exit. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }

  async close(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function waitForReady(server: NatsServer, child: ChildProcess): Promise<void> {
  while (true) {
    if (child.exitCode !== null) throw new Error(`nats-server exited: ${server.log.slice(-500)}`);
    if (server.log.includes('Server is ready') && await accepts(server.port)) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

