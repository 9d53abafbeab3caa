/**
 * Operator endpoints: GET /health for load balancers and GET /metrics for
 * Prometheus.
 *
 * - /health answers 200 while serving and 503 once shutdown has begun, so
 *   a balancer stops sending new daemons before the listener closes.
 * - /metrics is Prometheus text from the beacon's own registry. It must not
 *   be exposed through the reverse proxy (see the Caddyfile).
 * - Registered on the --bind listener, and on the --ops-bind one when set
 *   (ops-server.ts): both answer for this process.
 */
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

/** What the routes report: whether the beacon is shutting down, and its peers. */
export interface OpsState {
  draining(): boolean;
  peers(): number;
}

export function registerOpsRoutes(app: FastifyInstance, registry: Registry, state: OpsState): void {
  app.get('/health', async (_req, reply) => {
    if (state.draining()) return reply.code(503).send({ status: 'shutting down' });
    return { status: 'ok', peers: state.peers() };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.type(registry.contentType);
    return registry.metrics();
  });
}
