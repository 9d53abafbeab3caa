/**
 * Ports for servers a test starts as other processes (nats-server, Caddy,
 * the beacon's CLI), which must be given a number before they bind it.
 *
 * Picking by binding port 0 and closing raced with everything else on the
 * machine: the kernel hands a just-closed number to the next bind of port
 * 0 (7 repeats in 300 picks here) and to clients' source ports, in this
 * process or any other (test files run side by side). A nats-server once
 * got one number for two of its ports and exited with "address already in
 * use". So:
 *
 * - Numbers come from below the kernel's ephemeral range
 *   (`ip_local_port_range`, 32768-60999 by default): binds of port 0 and
 *   source ports never get them, in any process.
 * - Test processes share that range: a number is claimed with a file
 *   created exclusively under the system's temp directory
 *   (`beacon-test-ports-UID/PORT`, holding the claimer's PID) and freed when
 *   the claimer exits. A claim whose process is gone is stale and taken
 *   over. No number is handed out twice, in one process or across them.
 * - A claimed number is then checked free (bind, close) for each protocol
 *   the server needs: something outside the tests may hold it.
 */
import dgram from 'node:dgram';
import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type Protocol = 'tcp' | 'udp';

const TRIES = 200;
/** The lowest number handed out: clear of the well-known and common service ports. */
const LOWEST = 20_000;
const EPHEMERAL_DEFAULT = { low: 32_768, high: 60_999 };

/** One per user: a directory another user made would not be writable. */
export const CLAIMS_DIR = join(tmpdir(), `beacon-test-ports-${process.getuid?.() ?? 'user'}`);

/** The numbers this process claimed (their files go when it exits). */
const claimed = new Set<number>();
let claimsReady = false;

/** The kernel's range for port-0 binds and source ports. */
export function ephemeralRange(): { low: number; high: number } {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high)) return { low: low!, high: high! };
  } catch {
    // not Linux, or no procfs: the kernel's default
  }
  return EPHEMERAL_DEFAULT;
}

/** Numbers a pick range must have outside the ephemeral range to be used. */
export const ROOM = 2_000;

/**
 * The numbers to pick from: below the ephemeral range, or above it if too
 * little is left below. A machine whose ephemeral range leaves no room
 * (some containers set 1024-65535) gets 20000-65535: claims still keep
 * test processes apart, and only the race with port-0 binds is back.
 */
export function pickRange(): { low: number; high: number } {
  const ephemeral = ephemeralRange();
  if (ephemeral.low - LOWEST >= ROOM) return { low: LOWEST, high: ephemeral.low - 1 };
  if (65_535 - ephemeral.high >= ROOM) return { low: ephemeral.high + 1, high: 65_535 };
  return { low: LOWEST, high: 65_535 };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // alive, someone else's
  }
}

/** Once per process, before its first claim: the directory, and the release at exit. */
function prepareClaims(): void {
  if (claimsReady) return;
  mkdirSync(CLAIMS_DIR, { recursive: true });
  process.on('exit', releaseClaims);
  claimsReady = true;
}

function releaseClaims(): void {
  for (const port of claimed) {
    try {
      unlinkSync(join(CLAIMS_DIR, String(port)));
    } catch {
      // already gone
    }
  }
}

/** Claims `port` for this process, across test processes; false if a live process holds it (this one included). */
export function claimNumber(port: number): boolean {
  if (claimed.has(port)) return false;
  prepareClaims();
  const file = join(CLAIMS_DIR, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      claimed.add(port);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder = NaN;
    try {
      holder = Number(readFileSync(file, 'utf8'));
    } catch {
      continue; // its holder just freed it: try again
    }
    // A claim being written has no PID yet: treat it as held.
    if (!Number.isInteger(holder) || holder <= 0 || isAlive(holder)) return false;
    try {
      unlinkSync(file); // stale: its process is gone
    } catch {
      // someone else took it over first; the exclusive create decides
    }
  }
  return false;
}

function canBind(protocol: Protocol, port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    if (protocol === 'tcp') {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, host, () => server.close(() => resolve(true)));
      return;
    }
    const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    socket.once('error', () => { socket.close(); resolve(false); });
    socket.bind(port, host, () => socket.close(() => resolve(true)));
  });
}

/** Whether `port` is free on `host` for every protocol in `needs`. */
export async function isFree(port: number, needs: readonly Protocol[], host: string): Promise<boolean> {
  for (const protocol of needs) if (!await canBind(protocol, port, host)) return false;
  return true;
}

/**
 * `count` consecutive numbers from P, each claimed for this process and
 * free for `needs` on `host`. A number claimed but found taken stays
 * claimed (nothing else of ours should try it again).
 */
async function pick(count: number, needs: readonly Protocol[], host: string): Promise<number> {
  const range = pickRange();
  const span = range.high - range.low + 1 - (count - 1);
  for (let attempt = 0; attempt < TRIES; attempt++) {
    const first = range.low + Math.floor(Math.random() * span);
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = claimNumber(first + i) && await isFree(first + i, needs, host);
    if (ok) return first;
  }
  throw new Error(`no ${count === 1 ? '' : `${count} consecutive `}free ${needs.join('+').toUpperCase()} port on ${host} in ${TRIES} tries (range ${range.low}-${range.high})`);
}

/** A TCP port on `host`, free a moment ago, that no test process has been handed. */
export function freeTcpPort(host = '127.0.0.1'): Promise<number> {
  return pick(1, ['tcp'], host);
}

/** A UDP port on `host`, free a moment ago, that no test process has been handed. */
export function freeUdpPort(host = '127.0.0.1'): Promise<number> {
  return pick(1, ['udp'], host);
}

/** A port free for both TCP and UDP, for a server that listens on both (Caddy serves HTTP/3 on its HTTPS port's UDP twin). */
export function freeTcpUdpPort(host = '127.0.0.1'): Promise<number> {
  return pick(1, ['tcp', 'udp'], host);
}

/** A TCP port P on `host` with P + 1 free too (consecutive ports, as instances 1 and 2 take them), both handed out. */
export function freeConsecutiveTcpPorts(host = '127.0.0.1'): Promise<number> {
  return pick(2, ['tcp'], host);
}
