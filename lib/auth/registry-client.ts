/**
 * A client for the Pilot registry's key lookups (docs/protocol.md §4).
 *
 * - Wire: each message is a u32 big-endian length and that many bytes of
 *   JSON (at most 1 MiB); a larger length is a protocol error.
 * - One persistent connection, opened lazily on the first lookup and again on
 *   the next lookup after it closes; requests are pipelined and answers are
 *   matched in order through a FIFO (the registry answers in order).
 * - `lookup` never rejects: found, unknown (an `error` answer), or
 *   unavailable (connect error, timeout, closed connection, bad answer).
 * - Every lookup has the client's own `timeoutMs`, whoever asks: a caller
 *   in a hurry waits less on its side (key-cache.ts), it never shortens the
 *   request. So the first request to time out is always the oldest: the
 *   registry is slow, and the connection is destroyed, so a late answer can
 *   never reach another request.
 * - It does not cache (key-cache.ts does) and does not retry.
 */
import * as net from 'node:net';
import { MAX_NODE_ID, PUBLIC_KEY_BYTES, decodeBase64Exact, type NodeId } from '../protocol';
import { formatHostPort, type HostPort } from '../config';
import type { BeaconStats } from '../metrics/stats';
import { registeredKey, type KeyLookup } from './keys';

/** The registry's own limit on a message; anything larger is not the registry talking. */
export const REGISTRY_MAX_MESSAGE_BYTES = 1024 * 1024;
/**
 * Lookups waiting on the registry at once. Each costs a timer and a few
 * bytes; far more than the beacon's concurrent handshakes need, small enough
 * that a stalled registry cannot make the queue grow without bound.
 */
export const REGISTRY_MAX_PENDING = 1024;
/** How long the registry may take to answer a lookup (--registry-timeout). */
export const REGISTRY_TIMEOUT_MS = 5_000;
const LENGTH_BYTES = 4;

export interface RegistryClientOptions {
  registry: HostPort;
  stats: BeaconStats;
  /** How long each lookup waits for its answer; REGISTRY_TIMEOUT_MS by default. */
  timeoutMs?: number;
  /** Bound on lookups waiting for an answer; beyond it a lookup fails at once. */
  maxPending?: number;
}

interface Pending {
  nodeId: NodeId;
  settled: boolean;
  timer: NodeJS.Timeout | undefined;
  resolve: (result: KeyLookup) => void;
}

export class RegistryClient {
  readonly #registry: HostPort;
  readonly #stats: BeaconStats;
  readonly #maxPending: number;
  readonly #timeoutMs: number;
  #connection: RegistryConnection | undefined;
  #closed = false;

  constructor(options: RegistryClientOptions) {
    this.#registry = options.registry;
    this.#stats = options.stats;
    this.#maxPending = options.maxPending ?? REGISTRY_MAX_PENDING;
    this.#timeoutMs = options.timeoutMs ?? REGISTRY_TIMEOUT_MS;
  }

  /** Resolves within the client's timeout; never rejects. */
  lookup(nodeId: NodeId): Promise<KeyLookup> {
    return new Promise<KeyLookup>((resolve) => {
      const done = (result: KeyLookup): void => {
        this.#count(result);
        resolve(result);
      };
      if (!Number.isInteger(nodeId) || nodeId < 1 || nodeId > MAX_NODE_ID) return done({ status: 'unknown' });
      if (this.#closed) return done(unavailable('registry client is closed'));
      const connection = this.#connect();
      if (connection.pendingCount >= this.#maxPending) {
        return done(unavailable(`${this.#maxPending} registry lookups already waiting`));
      }
      connection.send({ nodeId, settled: false, timer: undefined, resolve: done }, this.#timeoutMs);
    });
  }

  /** Destroys the connection; waiting lookups resolve as unavailable. */
  close(): void {
    this.#closed = true;
    this.#connection?.destroy('registry client closed');
    this.#connection = undefined;
  }

  #connect(): RegistryConnection {
    if (this.#connection && !this.#connection.closed) return this.#connection;
    const connection = new RegistryConnection(this.#registry, () => {
      if (this.#connection === connection) this.#connection = undefined;
    });
    this.#connection = connection;
    return connection;
  }

  #count(result: KeyLookup): void {
    const counts = this.#stats.registryLookups;
    if (result.status === 'found') counts.found++;
    else if (result.status === 'unknown') counts.unknown++;
    else counts.error++;
  }
}

function unavailable(error: string): KeyLookup {
  return { status: 'unavailable', error };
}

/** One TCP connection and the FIFO of requests sent on it. */
class RegistryConnection {
  closed = false;
  readonly #name: string;
  readonly #socket: net.Socket;
  readonly #onClose: () => void;
  /** Requests in the order sent. */
  readonly #fifo: Pending[] = [];
  #buffer: Buffer = Buffer.alloc(0);

  constructor(registry: HostPort, onClose: () => void) {
    this.#name = `registry ${formatHostPort(registry)}`;
    this.#onClose = onClose;
    this.#socket = net.connect({ host: registry.host, port: registry.port });
    this.#socket.setNoDelay(true);
    this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on('error', (err) => this.destroy(`${this.#name}: ${err.message}`));
    this.#socket.on('close', () => this.destroy(`${this.#name} closed the connection`));
  }

  get pendingCount(): number {
    return this.#fifo.length;
  }

  send(request: Pending, timeoutMs: number): void {
    const json = Buffer.from(JSON.stringify({ type: 'lookup', node_id: request.nodeId }));
    const header = Buffer.alloc(LENGTH_BYTES);
    header.writeUInt32BE(json.length);
    this.#fifo.push(request);
    request.timer = setTimeout(() => this.#onTimeout(request, timeoutMs), Math.max(0, timeoutMs));
    this.#socket.ref(); // an answer is awaited
    this.#socket.write(Buffer.concat([header, json]));
  }

  /** Fails every waiting request and closes the socket; idempotent. */
  destroy(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.#socket.destroy();
    for (const request of this.#fifo.splice(0)) settle(request, unavailable(reason));
    this.#onClose();
  }

  /**
   * All requests share one timeout, so the one timing out is the oldest:
   * the registry is slow for all of them. Start fresh; the late answer then
   * cannot reach the next request.
   */
  #onTimeout(_request: Pending, timeoutMs: number): void {
    this.destroy(`${this.#name} did not answer within ${timeoutMs} ms`);
  }

  #onData(chunk: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    while (!this.closed && this.#buffer.length >= LENGTH_BYTES) {
      const length = this.#buffer.readUInt32BE(0);
      if (length > REGISTRY_MAX_MESSAGE_BYTES) {
        this.destroy(`${this.#name} sent a ${length}-byte message (limit ${REGISTRY_MAX_MESSAGE_BYTES}): protocol error`);
        return;
      }
      if (this.#buffer.length < LENGTH_BYTES + length) return;
      const message = this.#buffer.subarray(LENGTH_BYTES, LENGTH_BYTES + length);
      this.#buffer = this.#buffer.subarray(LENGTH_BYTES + length);
      this.#onAnswer(message);
    }
  }

  #onAnswer(message: Buffer): void {
    const request = this.#fifo.shift();
    if (!request) {
      this.destroy(`${this.#name} sent an answer to no request: protocol error`);
      return;
    }
    if (this.#fifo.length === 0) this.#socket.unref(); // idle: never keeps the process alive
    const answer = parseAnswer(request.nodeId, message);
    if ('desync' in answer) {
      // The answers no longer line up with the requests: trust none of them.
      settle(request, unavailable(`${this.#name}: ${answer.desync}`));
      this.destroy(`${this.#name}: ${answer.desync}`);
      return;
    }
    settle(request, answer.status === 'unavailable' ? unavailable(`${this.#name}: ${answer.error}`) : answer);
  }
}

function settle(request: Pending, result: KeyLookup): void {
  clearTimeout(request.timer);
  if (request.settled) return;
  request.settled = true;
  request.resolve(result);
}

/**
 * Reads one answer to a lookup of `nodeId`. `desync` means the stream cannot
 * be trusted any more (not JSON, not an answer, another node's answer).
 */
function parseAnswer(nodeId: NodeId, message: Buffer): KeyLookup | { desync: string } {
  let value: unknown;
  try {
    value = JSON.parse(message.toString('utf8'));
  } catch {
    return { desync: 'answer is not JSON: protocol error' };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { desync: 'answer is not a JSON object: protocol error' };
  }
  const answer = value as Record<string, unknown>;
  if (answer.type === 'error') return { status: 'unknown' };
  if (answer.type !== 'lookup_ok') return { desync: `unexpected answer type ${JSON.stringify(answer.type)}: protocol error` };
  if (answer.node_id !== nodeId) {
    return { desync: `answer for node ${JSON.stringify(answer.node_id)} to a lookup of node ${nodeId}: protocol error` };
  }
  const raw = decodeBase64Exact(answer.public_key, PUBLIC_KEY_BYTES);
  if (!raw) return unavailable(`public key of node ${nodeId} is not base64 of ${PUBLIC_KEY_BYTES} bytes: protocol error`);
  return { status: 'found', key: registeredKey(nodeId, raw, 'registry') };
}
