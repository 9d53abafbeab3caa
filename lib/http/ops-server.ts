/**
 * The ops address (--ops-bind): /health and /metrics of this process alone,
 * on a listener of its own.
 *
 * - With --reuse-port the processes of a cluster share --bind, and there
 *   /health and /metrics answer for whichever process the kernel picked;
 *   Prometheus and health checks need each process at an address of its
 *   own. The routes are the same ones (ops-routes.ts), over the same
 *   registry, so both addresses give one answer.
 * - Only those two routes: no WebSocket, nothing a daemon uses. Operators
 *   and Prometheus are few, so the listener holds few connections and
 *   drops slow or idle ones quickly (a stranger who reaches it cannot hold
 *   it for long, nor hold more than OPS_MAX_CONNECTIONS sockets).
 * - It does not choose the address or word listen errors (the caller
 *   names --ops-bind).
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import type { HostPort } from '../config/units';
import { registerOpsRoutes, type OpsState } from './ops-routes';

/** Scrapers, health checks and an operator's curl at once; far more than one Prometheus needs. */
export const OPS_MAX_CONNECTIONS = 32;
/** A request must arrive whole within this (a scrape request is a few hundred bytes). */
const OPS_REQUEST_TIMEOUT_MS = 10_000;
/** An idle kept-alive connection is closed after this; below Prometheus's usual 15 s interval, so scrapes never hold sockets between them. */
const OPS_KEEP_ALIVE_MS = 5_000;

/** Listens on `at` with /health and /metrics; resolves with the app (close() it at shutdown). */
export async function listenOps(at: HostPort, registry: Registry, state: OpsState, log: FastifyBaseLogger): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024,
    requestTimeout: OPS_REQUEST_TIMEOUT_MS,
    keepAliveTimeout: OPS_KEEP_ALIVE_MS,
    connectionTimeout: OPS_REQUEST_TIMEOUT_MS,
    forceCloseConnections: true,
  });
  registerOpsRoutes(app, registry, state);
  try {
    await app.listen({ host: at.host, port: at.port });
  } catch (err) {
    await app.close();
    throw err;
  }
  app.server.maxConnections = OPS_MAX_CONNECTIONS;
  app.server.headersTimeout = OPS_REQUEST_TIMEOUT_MS;
  return app;
}
