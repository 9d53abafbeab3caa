/**
 * What a flood of refused upgrades costs when the beacon's log reader is
 * slow (issue 10). The beacon runs in a child process with stdout on a
 * pipe this script reads either at once ("fast") or at a fixed byte rate
 * ("slow", like a stalled journald or a terminal over SSH).
 *
 *   node dist/test/bench/log-flood.js [--dist DIR] [--seconds N] [--reader-bytes-per-s N] [--flooders N]
 *
 * - One handshake is held open with --max-handshakes 1, so every other
 *   upgrade is refused (HTTP 503) and logged as `upgrade refused`.
 * - `--flooders` loops send upgrades back to back for `--seconds`, while
 *   /health is probed every 50 ms.
 * - Printed per reader: refusals answered per second, /health latency p50
 *   and max, and log bytes the reader got. Only 127.0.0.1; every loop is
 *   bounded in time; the child is killed by its PID at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import WebSocket from 'ws';
import { COMPAT_SUBPROTOCOL } from '../../lib/protocol';
import { freeUdpPort } from '../helpers/free-ports';

interface Options { dist: string; seconds: number; readerBytesPerS: number; flooders: number }

function parseArgs(argv: string[]): Options {
  const options: Options = { dist: resolve(__dirname, '../..'), seconds: 5, readerBytesPerS: 16 * 1024, flooders: 16 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1] ?? ''];
    if (flag === '--dist') options.dist = resolve(value);
    else if (flag === '--seconds') options.seconds = Number(value);
    else if (flag === '--reader-bytes-per-s') options.readerBytesPerS = Number(value);
    else if (flag === '--flooders') options.flooders = Number(value);
    else throw new Error(`unknown flag ${flag}`);
  }
  return options;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function request(port: number, path: string, headers: Record<string, string> = {}, timeoutMs = 10_000): Promise<number> {
  return new Promise((resolveStatus) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers, agent: false, timeout: timeoutMs });
    req.on('response', (res) => { res.resume(); resolveStatus(res.statusCode ?? 0); req.destroy(); });
    req.on('upgrade', (_res, socket) => { socket.destroy(); resolveStatus(101); });
    req.on('timeout', () => { req.destroy(); resolveStatus(-1); });
    req.on('error', () => resolveStatus(0));
    req.end();
  });
}

async function freeTcpPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** Reads the child's stdout at once, or at `bytesPerS`. */
function readLogs(child: ChildProcess, bytesPerS: number | undefined): { bytes: () => number; stop: () => void } {
  let total = 0;
  let budget = bytesPerS ?? Infinity;
  const stdout = child.stdout!;
  stdout.on('data', (chunk: Buffer) => {
    total += chunk.length;
    budget -= chunk.length;
    if (budget <= 0) stdout.pause();
  });
  const tick = bytesPerS === undefined ? undefined : setInterval(() => {
    budget = Math.min(budget + bytesPerS / 10, bytesPerS / 10);
    if (budget > 0) stdout.resume();
  }, 100);
  return { bytes: () => total, stop: () => { clearInterval(tick); stdout.resume(); } };
}

async function run(options: Options, reader: 'fast' | 'slow'): Promise<void> {
  const [httpPort, udpPort] = [await freeTcpPort(), await freeUdpPort()];
  const child = spawn(process.execPath, [
    join(options.dist, 'cmd/beacon.js'), '--bind', `127.0.0.1:${httpPort}`, '--udp', `127.0.0.1:${udpPort}`,
    '--max-handshakes', '1', '--auth-timeout', '60s',
  ], { cwd: mkdtempSync(join(tmpdir(), 'log-flood-')), stdio: ['ignore', 'pipe', 'inherit'] });
  const logs = readLogs(child, reader === 'slow' ? options.readerBytesPerS : undefined);
  try {
    const readyBy = Date.now() + 10_000;
    while (await request(httpPort, '/health', {}, 1_000) !== 200) {
      if (Date.now() > readyBy) throw new Error('the beacon did not start');
      await sleep(50);
    }
    const held = new WebSocket(`ws://127.0.0.1:${httpPort}/v1/compat`, [COMPAT_SUBPROTOCOL]);
    await new Promise((r, j) => { held.once('message', r); held.once('error', j); });

    const upgrade = {
      Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Protocol': COMPAT_SUBPROTOCOL,
    };
    const endAt = Date.now() + options.seconds * 1000;
    let refused = 0;
    const flooders = Array.from({ length: options.flooders }, async () => {
      while (Date.now() < endAt) if (await request(httpPort, '/v1/compat', upgrade, 5_000) === 503) refused++;
    });
    const latencies: number[] = [];
    const probe = (async () => {
      while (Date.now() < endAt) {
        const started = process.hrtime.bigint();
        await request(httpPort, '/health', {}, 10_000);
        latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
        await sleep(50);
      }
    })();
    const startedAt = Date.now();
    await Promise.all([...flooders, probe]);
    const elapsedS = (Date.now() - startedAt) / 1000;
    held.terminate();
    latencies.sort((a, b) => a - b);
    const p50 = latencies[Math.floor(latencies.length / 2)] ?? NaN;
    const max = latencies[latencies.length - 1] ?? NaN;
    console.log(`${reader.padEnd(4)} reader${reader === 'slow' ? ` (${options.readerBytesPerS} B/s)` : ''}: `
      + `${Math.round(refused / elapsedS)} refusals/s, /health p50 ${p50.toFixed(1)} ms max ${max.toFixed(1)} ms `
      + `(${latencies.length} probes), ${logs.bytes()} log bytes read`);
  } finally {
    logs.stop();
    child.kill('SIGKILL');
  }
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  console.log(`beacon build: ${options.dist}; ${options.flooders} flooders for ${options.seconds} s`);
  await run(options, 'fast');
  await run(options, 'slow');
}

main().then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1); });
