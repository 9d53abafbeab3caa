/**
 * A real TCP Pilot registry for tests (docs/protocol.md §4), on 127.0.0.1 port 0.
 *
 * - Speaks u32-length-prefixed JSON; answers each connection's requests in
 *   order, one after the other, like the real registry.
 * - Knobs: `keys` (node → base64 key), `delayMs` before each answer,
 *   `neverAnswer`, `replies` (a chosen answer for a node), and
 *   `dropConnections()` to close every client connection from its side.
 * - Counts requests per node (on receipt) and connections accepted.
 * - Not a full registry: only `lookup` is understood. Also here: test keys.
 */
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import nacl from 'tweetnacl';

/** A chosen answer: a JSON value, a raw message body, or raw bytes with no framing. */
export type FakeReply = { json: unknown } | { body: Buffer } | { bytes: Buffer };

export interface FakeRegistry {
  readonly host: string;
  readonly port: number;
  keys: Map<number, string>;
  replies: Map<number, FakeReply>;
  /** Requests received per node ID (counted on receipt, before any delay). */
  readonly requests: Map<number, number>;
  delayMs: number;
  neverAnswer: boolean;
  connections: number;
  requestsFor(nodeId: number): number;
  totalRequests(): number;
  dropConnections(): void;
  stop(): Promise<void>;
}

export function frame(body: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, body]);
}

export async function startFakeRegistry(keys: Map<number, string> = new Map()): Promise<FakeRegistry> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => serve(socket));
  const fake: FakeRegistry = {
    host: '127.0.0.1',
    port: 0,
    keys,
    replies: new Map(),
    requests: new Map(),
    delayMs: 0,
    neverAnswer: false,
    connections: 0,
    requestsFor: (nodeId) => fake.requests.get(nodeId) ?? 0,
    totalRequests: () => [...fake.requests.values()].reduce((a, b) => a + b, 0),
    dropConnections: () => {
      for (const socket of sockets) socket.destroy();
    },
    stop: async () => {
      fake.dropConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };

  function serve(socket: net.Socket): void {
    fake.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffer = Buffer.alloc(0);
    let queue: Promise<void> = Promise.resolve();
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32BE(0)) {
        const body = buffer.subarray(4, 4 + buffer.readUInt32BE(0));
        buffer = buffer.subarray(4 + body.length);
        const request = JSON.parse(body.toString('utf8')) as { type: string; node_id: number };
        fake.requests.set(request.node_id, fake.requestsFor(request.node_id) + 1);
        const delayMs = fake.delayMs;
        const silent = fake.neverAnswer;
        queue = queue.then(async () => {
          if (delayMs > 0) await sleep(delayMs);
          if (!silent && !socket.destroyed) socket.write(answer(request.node_id));
        });
      }
    });
  }

  function answer(nodeId: number): Buffer {
    const reply = fake.replies.get(nodeId);
    if (reply && 'bytes' in reply) return reply.bytes;
    if (reply && 'body' in reply) return frame(reply.body);
    const json = reply ? reply.json : defaultAnswer(nodeId);
    return frame(Buffer.from(JSON.stringify(json)));
  }

  function defaultAnswer(nodeId: number): unknown {
    const key = fake.keys.get(nodeId);
    return key === undefined
      ? { type: 'error', error: `node ${nodeId} not found` }
      : { type: 'lookup_ok', node_id: nodeId, public_key: key, hostname: '' };
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  (fake as { port: number }).port = (server.address() as net.AddressInfo).port;
  return fake;
}

/** A port on 127.0.0.1 with nothing listening (connections are refused). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A fresh Ed25519 public key as standard padded base64 (what the registry and keys file hold).
 * From tweetnacl, as the test identities: Node 20's generateKeyPairSync followed by a JWK
 * export can deadlock the process when a garbage collection runs inside the export (its
 * KeyGenJob's destructor takes the key's mutex, which the export holds). It hung
 * fuzz-registry, and so `npm test`, once in about thirty runs.
 */
export function generatePublicKey(): string {
  return Buffer.from(nacl.sign.keyPair().publicKey).toString('base64');
}
