/**
 * Ports for servers a test starts as other processes (nats-server, Caddy,
 * the beacon's CLI), which must be given a number: bind port 0, read it,
 * close, hand the number on.
 *
 * - The kernel may give the same free number to the next bind of port 0.
 *   A test that asked for two ports in a row once got one number twice (a
 *   nats-server's client and monitoring ports) and the server exited with
 *   "address already in use". So no number is handed out twice in one
 *   test process (each test file runs in its own).
 * - What is left is another process taking the number between our close
 *   and the server's bind: the same as for any port-0 pick, and rare.
 */
import dgram from 'node:dgram';
import net from 'node:net';

const TRIES = 50;
const handedOutTcp = new Set<number>();
const handedOutUdp = new Set<number>();

function bindTcp(port: number, host: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, host, () => {
      const bound = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(bound));
    });
  });
}

function bindUdp(port: number, host: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    socket.once('error', () => { socket.close(); resolve(undefined); });
    socket.bind(port, host, () => {
      const bound = socket.address().port;
      socket.close(() => resolve(bound));
    });
  });
}

/** A port `bind` got for port 0 that `handedOut` does not hold yet (then it does). */
async function pickNew(bind: typeof bindTcp, handedOut: Set<number>, protocol: string, host: string): Promise<number> {
  for (let attempt = 0; attempt < TRIES; attempt++) {
    const port = await bind(0, host);
    if (port !== undefined && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no new free ${protocol} port on ${host} in ${TRIES} tries`);
}

/** A TCP port on `host` that was free a moment ago and that this process has not handed out before. */
export function freeTcpPort(host = '127.0.0.1'): Promise<number> {
  return pickNew(bindTcp, handedOutTcp, 'TCP', host);
}

/** A UDP port on `host` that was free a moment ago and that this process has not handed out before. */
export function freeUdpPort(host = '127.0.0.1'): Promise<number> {
  return pickNew(bindUdp, handedOutUdp, 'UDP', host);
}

/**
 * A port on `host` that was free for both TCP and UDP a moment ago, for a
 * server that listens on both (Caddy serves HTTP/3 on the UDP port of its
 * HTTPS port). A TCP port alone once came with its UDP twin held by another
 * process's socket, and Caddy exited with "address already in use".
 */
export async function freeTcpUdpPort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < TRIES; attempt++) {
    const port = await freeTcpPort(host);
    if (!handedOutUdp.has(port) && await bindUdp(port, host) !== undefined) {
      handedOutUdp.add(port);
      return port;
    }
  }
  throw new Error(`no port free for both TCP and UDP on ${host} in ${TRIES} tries`);
}

/** A TCP port P on `host` with P + 1 free too (consecutive ports, as instances 1 and 2 take them), both handed out. */
export async function freeConsecutiveTcpPorts(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < TRIES; attempt++) {
    const port = await freeTcpPort(host);
    const next = port + 1;
    if (next <= 65535 && !handedOutTcp.has(next) && await bindTcp(next, host) !== undefined) {
      handedOutTcp.add(next);
      return port;
    }
  }
  throw new Error(`no two consecutive free TCP ports on ${host} in ${TRIES} tries`);
}
