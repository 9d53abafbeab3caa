/**
 * Opens the HTTP/WebSocket listener (--bind) of a fastify app.
 *
 * - Plain: fastify's own listen on the host and port.
 * - Shared (--reuse-port): the socket gets SO_REUSEPORT, so the cluster's
 *   processes on one machine listen on one address and the kernel spreads
 *   new connections over them. Node 22.12+ sets it itself (`reusePort`);
 *   on older Node the udp-batch addon opens the listening socket and
 *   fastify listens on its descriptor (`fd`, a core listen option fastify
 *   passes through), so fastify still owns the server: its hooks run and
 *   close() closes it.
 * - It does not decide whether sharing can work here (lib/reuse-port.ts)
 *   nor word errors: they reject with the socket's `code` (EADDRINUSE, ...)
 *   for the caller to name the flag.
 */
import { closeSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { FastifyInstance, FastifyListenOptions } from 'fastify';
import type { HostPort } from '../config/units';
import { nodeHasReusePort } from '../reuse-port';
import { addressBytes, type UdpBatchAddon } from '../native/udp-batch-addon';

/** Node's default backlog, as fastify's own listen gets it. */
const LISTEN_BACKLOG = 511;

/** What net's listen takes beyond fastify's declared options (fastify passes them through). */
type CoreListenOptions = FastifyListenOptions & { fd?: number; reusePort?: boolean };

/** Listens on `at`; with `reuse`, shared with other processes through SO_REUSEPORT. */
export async function listenHttp(app: FastifyInstance, at: HostPort, reuse?: { addon: UdpBatchAddon }): Promise<void> {
  if (!reuse) {
    await app.listen({ host: at.host, port: at.port });
    return;
  }
  if (nodeHasReusePort()) {
    const options: CoreListenOptions = { host: at.host, port: at.port, reusePort: true };
    await app.listen(options);
    return;
  }
  const address = isIP(at.host) !== 0 ? at.host : (await lookup(at.host)).address;
  const family = isIP(address) === 6 ? 6 : 4;
  const bytes = addressBytes(address, family);
  if (!bytes) throw Object.assign(new Error(`${address} is not an IP address`), { code: 'EADDRNOTAVAIL' });
  const fd = reuse.addon.listenTcp(family, bytes, at.port, LISTEN_BACKLOG, true);
  try {
    await app.ready();
  } catch (err) {
    closeSync(fd); // no server took it over
    throw err;
  }
  // From here the server owns the descriptor (and closes it, on a failed listen too). The
  // resolved address as host: fastify would otherwise default to 'localhost' and open more listeners.
  const options: CoreListenOptions = { fd, host: address };
  await app.listen(options);
}
