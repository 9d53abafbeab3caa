/**
 * The HTTP side of a WebSocket upgrade, taken off the server before any
 * routing (issue 22): every upgrade the listener gets comes here, not to
 * fastify, which keeps /health and /metrics.
 *
 * - `upgradeTarget`: whether the request is for the compat path (GET
 *   /v1/compat, query ignored, as fastify's route matched it); anything
 *   else is refused as `not_compat_path`.
 * - `clientAddress`: the client's address as fastify's `req.ip` gave it
 *   (@fastify/proxy-addr: X-Forwarded-For believed only from a trusted
 *   proxy), canonical; and whether it came from that header (then the
 *   client's port is unknown). Without the header nothing is parsed.
 * - `refuseUpgrade`: a refusal as a complete HTTP answer (status, JSON body
 *   naming the reason, Retry-After), then the socket is ended and destroyed
 *   once the answer is written, or after a grace if the client never reads
 *   (one deadline queue for every refused socket, not a timer each).
 * - Decides nothing about limits: admission is the caller's.
 */
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import proxyAddr from '@fastify/proxy-addr';
import { DeadlineQueue, NO_DEADLINE } from '../deadline-queue';
import { COMPAT_PATH, canonicalIp } from '../protocol';

/** Whether `req` asks for the compat WebSocket: GET on its path. */
export function isCompatUpgrade(req: IncomingMessage): boolean {
  if (req.method !== 'GET') return false;
  const url = req.url ?? '';
  const query = url.indexOf('?');
  return (query < 0 ? url : url.slice(0, query)) === COMPAT_PATH;
}

/** Whether a socket address (canonical) is a proxy whose X-Forwarded-For is believed. */
export type TrustProxy = (address: string, hop: number) => boolean;

export interface ClientAddress {
  /** Canonical; may not be an IP if a trusted proxy forwarded garbage (the caller refuses it). */
  ip: string;
  /** The client's port, or 0 when the address was forwarded (Caddy does not forward ports). */
  port: number;
}

export function clientAddress(req: IncomingMessage, trust: TrustProxy): ClientAddress {
  const socket = req.socket;
  if (req.headers['x-forwarded-for'] === undefined) {
    return { ip: canonicalIp(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
  }
  // The chain as fastify's req.ips has it: the socket's address, then the forwarded ones while trusted.
  const chain = proxyAddr.all(req, trust);
  const forwarded = chain.length > 1;
  return { ip: canonicalIp(chain[chain.length - 1] ?? ''), port: forwarded ? 0 : socket.remotePort ?? 0 };
}

/** How long a refused client may take to read its answer before its socket is destroyed. */
const REFUSAL_GRACE_MS = 2_000;

const answers = new Map<string, string>();

/** The whole HTTP answer refusing with `status` for `reason` (built once per pair). */
function refusalAnswer(status: number, reason: string): string {
  const key = `${status} ${reason}`;
  let answer = answers.get(key);
  if (answer === undefined) {
    const body = JSON.stringify({ error: reason });
    answer = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nRetry-After: 5\r\nContent-Type: application/json; charset=utf-8\r\n`
      + `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
    answers.set(key, answer);
  }
  return answer;
}

const GRACE = Symbol('refusalGrace');
type RefusedSocket = Duplex & { [GRACE]?: number };

/** The graces of refused sockets: one timer for all (a storm of refusals is a storm of sockets), as the other deadlines. */
const refusalGraces = new DeadlineQueue<RefusedSocket>(REFUSAL_GRACE_MS, (socket) => socket.destroy());

/**
 * Answers with `status` and `reason`, then closes: ending alone only
 * half-closes, which a client can hold open for ever.
 */
export function refuseUpgrade(socket: Duplex, status: number, reason: string): void {
  if (socket.destroyed) return;
  socket.once('finish', destroySocket);
  (socket as RefusedSocket)[GRACE] = refusalGraces.add(socket); // a client that never reads
  socket.on('close', cancelGrace); // 'close' comes once; `once` would wrap it per socket
  socket.end(refusalAnswer(status, reason));
}

function destroySocket(this: Duplex): void {
  this.destroy();
}

function cancelGrace(this: RefusedSocket): void {
  refusalGraces.cancel(this[GRACE] ?? NO_DEADLINE);
}
