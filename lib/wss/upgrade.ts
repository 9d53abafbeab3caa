/**
 * The HTTP side of a WebSocket upgrade, taken off the server before any
 * routing (issue 22): every upgrade the listener gets comes here, not to
 * fastify, which keeps /health and /metrics.
 *
 * - `upgradeTarget`: whether the request is for the compat path (GET
 *   /v1/compat, query ignored, as fastify's route matched it); anything
 *   else is refused as `not_compat_path`.
 * - `upgradeHeaders` reads the few headers an upgrade needs from the raw
 *   list; `clientAddress`: the client's address as fastify's `req.ip` gave
 *   it (@fastify/proxy-addr: X-Forwarded-For believed only from a trusted
 *   proxy), canonical; and whether it came from that header (then the
 *   client's port is unknown). Without the header nothing is parsed.
 * - `webSocketRequest` checks the WebSocket headers as ws did (a bad one is
 *   refused as `invalid_upgrade`, 400); `switchingProtocols` is the 101
 *   that accepts it, with pilot.v1 when the client offered it.
 * - `refuseUpgrade`: a refusal as a complete HTTP answer (status, JSON body
 *   naming the reason, Retry-After), then the socket is ended and destroyed
 *   once the answer is written, or after a grace if the client never reads.
 * - Decides nothing about limits: admission is the caller's.
 */
import { createHash } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import proxyAddr from '@fastify/proxy-addr';
import { COMPAT_PATH, COMPAT_SUBPROTOCOL, canonicalIp } from '../protocol';

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

export function clientAddress(req: IncomingMessage, headers: UpgradeHeaders, trust: TrustProxy): ClientAddress {
  const socket = req.socket;
  if (!headers.forwarded) return { ip: canonicalIp(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
  // The chain as fastify's req.ips has it: the socket's address, then the forwarded ones while trusted.
  const chain = proxyAddr.all(req, trust);
  const forwarded = chain.length > 1;
  return { ip: canonicalIp(chain[chain.length - 1] ?? ''), port: forwarded ? 0 : socket.remotePort ?? 0 };
}

/**
 * The headers an upgrade is decided on, read from `rawHeaders`: Node builds
 * `req.headers` (every header lowercased, known ones merged) only when it
 * is asked for, and that costs more than this scan. A header given twice
 * is joined with ", ", as `req.headers` has it.
 */
export interface UpgradeHeaders {
  upgrade: string | undefined;
  key: string | undefined;
  version: string | undefined;
  protocol: string | undefined;
  /** X-Forwarded-For is there (then proxy-addr reads it, from req.headers). */
  forwarded: boolean;
}

export function upgradeHeaders(req: IncomingMessage): UpgradeHeaders {
  const raw = req.rawHeaders;
  const found: UpgradeHeaders = { upgrade: undefined, key: undefined, version: undefined, protocol: undefined, forwarded: false };
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    // Only names of a wanted length are lowercased.
    switch (name.length) {
      case 7:
        if (name.toLowerCase() === 'upgrade') found.upgrade = join(found.upgrade, value);
        break;
      case 15:
        if (name.toLowerCase() === 'x-forwarded-for') found.forwarded = true;
        break;
      case 17:
        if (name.toLowerCase() === 'sec-websocket-key') found.key = join(found.key, value);
        break;
      case 21:
        if (name.toLowerCase() === 'sec-websocket-version') found.version = join(found.version, value);
        break;
      case 22:
        if (name.toLowerCase() === 'sec-websocket-protocol') found.protocol = join(found.protocol, value);
        break;
    }
  }
  return found;
}

function join(before: string | undefined, value: string): string {
  return before === undefined ? value : `${before}, ${value}`;
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

/**
 * Answers with `status` and `reason`, then closes: ending alone only
 * half-closes, which a client can hold open for ever.
 */
export function refuseUpgrade(socket: Duplex, status: number, reason: string): void {
  if (socket.destroyed) return;
  socket.once('finish', destroySocket);
  const timer = setTimeout(destroySocket.bind(socket), REFUSAL_GRACE_MS); // a client that never reads
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.end(refusalAnswer(status, reason));
}

function destroySocket(this: Duplex): void {
  this.destroy();
}

/** RFC 6455 §4.2.2: the GUID the accept key is derived with. */
const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** A base64 16-byte nonce, as ws accepted it. */
const KEY_PATTERN = /^[+/0-9A-Za-z]{22}==$/;
/** An RFC 7230 token: one offered subprotocol. */
const TOKEN_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** What a valid upgrade asked for: its key, and the subprotocol the beacon picks (pilot.v1 if offered). */
export interface WebSocketRequest {
  key: string;
  protocol: string | undefined;
}

/**
 * The WebSocket headers of an upgrade, checked as ws checked them
 * (Upgrade: websocket, a 16-byte Sec-WebSocket-Key, version 13 or 8, a
 * well-formed subprotocol list without repeats); undefined if any is wrong.
 */
export function webSocketRequest(headers: UpgradeHeaders): WebSocketRequest | undefined {
  const { upgrade, key, protocol } = headers;
  if (upgrade === undefined || upgrade.toLowerCase() !== 'websocket') return undefined;
  if (key === undefined || !KEY_PATTERN.test(key)) return undefined;
  const version = Number(headers.version);
  if (version !== 13 && version !== 8) return undefined;
  if (protocol === undefined) return { key, protocol: undefined };
  const seen: string[] = [];
  for (const offer of protocol.split(',')) {
    const name = offer.trim();
    if (!TOKEN_PATTERN.test(name) || seen.includes(name)) return undefined;
    seen.push(name);
  }
  return { key, protocol: seen.includes(COMPAT_SUBPROTOCOL) ? COMPAT_SUBPROTOCOL : undefined };
}

/** The 101 answer accepting `request`, as bytes to write before the first frame. */
export function switchingProtocols(request: WebSocketRequest): string {
  const accept = createHash('sha1').update(request.key + WEBSOCKET_GUID).digest('base64');
  return `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n`
    + (request.protocol === undefined ? '\r\n' : `Sec-WebSocket-Protocol: ${request.protocol}\r\n\r\n`);
}
