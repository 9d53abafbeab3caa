/**
 * Starts a real beacon on 127.0.0.1 port 0 with a real keys file, and
 * gives tests real WebSocket and UDP clients for it.
 */
import { once } from 'node:events';
import type { TestContext } from 'node:test';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dgram from 'node:dgram';
import WebSocket from 'ws';
import { startBeacon, type Beacon, type BeaconOptions } from '../../lib/beacon';
import { makeConfig, type BeaconConfig } from '../../lib/config';
import { COMPAT_PATH, COMPAT_SUBPROTOCOL, authReplyMessage, type NodeId } from '../../lib/protocol';
import { keysFileJson, sign, type TestIdentity } from './identity';

export interface TestBeacon {
  beacon: Beacon;
  url: string;
  httpBase: string;
  udpPort: number;
  keysPath: string;
  dir: string;
  close(): Promise<void>;
}

/** Fast timeouts so tests never wait on production defaults. */
export function testConfig(overrides: Partial<BeaconConfig> = {}): BeaconConfig {
  return makeConfig({
    bind: { host: '127.0.0.1', port: 0 },
    udp: { host: '127.0.0.1', port: 0 },
    authTimeoutMs: 2_000,
    shutdownGraceMs: 500,
    ...overrides,
  });
}

export async function startTestBeacon(
  ids: readonly TestIdentity[], overrides: Partial<BeaconConfig> = {}, options: BeaconOptions = {},
): Promise<TestBeacon> {
  const dir = mkdtempSync(join(tmpdir(), 'beacon-test-'));
  const keysPath = join(dir, 'keys.json');
  writeFileSync(keysPath, keysFileJson(ids));
  const beacon = await startBeacon(testConfig({ keysFile: keysPath, ...overrides }), options);
  const { port } = beacon.httpAddress;
  return {
    beacon,
    url: `ws://127.0.0.1:${port}${COMPAT_PATH}`,
    httpBase: `http://127.0.0.1:${port}`,
    udpPort: beacon.udpAddress.port,
    keysPath,
    dir,
    close: () => beacon.close(),
  };
}

/** Resolves with the next message, or rejects after `ms`. */
export function nextMessage(ws: WebSocket, ms = 3_000): Promise<{ data: Buffer; isBinary: boolean }> {
  return withTimeout(new Promise((resolve, reject) => {
    const onMessage = (data: WebSocket.RawData, isBinary: boolean) => { cleanup(); resolve({ data: data as Buffer, isBinary }); };
    const onClose = (code: number) => { cleanup(); reject(new Error(`closed with ${code} while waiting for a message`)); };
    const cleanup = () => { ws.off('message', onMessage); ws.off('close', onClose); };
    ws.on('message', onMessage);
    ws.on('close', onClose);
  }), ms, 'a WebSocket message');
}

/** Resolves with the close code and reason. */
export function closed(ws: WebSocket, ms = 5_000): Promise<{ code: number; reason: string }> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.reject(new Error('already closed'));
  return withTimeout(
    once(ws, 'close').then(([code, reason]) => ({ code: code as number, reason: String(reason) })),
    ms, 'the socket to close');
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * How long a test waits for a connection's upgrade and first message: they
 * come in milliseconds, but a loaded machine (npm test beside other work on
 * 2 cores) once took over 3 s while 300 peers connected. Only a broken
 * test waits this long.
 */
export const CONNECT_WAIT_MS = 10_000;

/** Opens a WebSocket to the beacon and waits for the auth challenge. */
export async function openCompat(url: string, options: WebSocket.ClientOptions & { headers?: Record<string, string> } = {}): Promise<{ ws: WebSocket; nonce: string }> {
  const ws = new WebSocket(url, [COMPAT_SUBPROTOCOL], options);
  const first = nextMessage(ws, CONNECT_WAIT_MS);
  first.catch(() => {}); // an upgrade failure is reported by `open` below
  await withTimeout(once(ws, 'open'), CONNECT_WAIT_MS, 'the upgrade');
  const { data, isBinary } = await first;
  if (isBinary) throw new Error('challenge was binary');
  const challenge = JSON.parse(data.toString()) as { type: string; nonce: string };
  if (challenge.type !== 'auth_challenge') throw new Error(`expected auth_challenge, got ${data.toString()}`);
  return { ws, nonce: challenge.nonce };
}

/** Connects and authenticates as `id`; resolves once auth_ok arrived. */
export async function connectPeer(url: string, id: TestIdentity, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const { ws, nonce } = await openCompat(url, options);
  ws.send(authReplyMessage({
    node_id: id.nodeId,
    public_key: id.publicKeyB64,
    sig: sign(id, `compat_auth:${id.nodeId}:${nonce}`),
  }));
  const { data } = await nextMessage(ws);
  if (data.toString() !== '{"type":"auth_ok"}') throw new Error(`expected auth_ok, got ${data.toString()}`);
  return ws;
}

/** A real UDP socket on 127.0.0.1 with a queue of received datagrams. */
export class UdpClient {
  readonly socket = dgram.createSocket('udp4');
  private readonly queue: Array<{ msg: Buffer; from: dgram.RemoteInfo }> = [];
  private waiter: ((got: { msg: Buffer; from: dgram.RemoteInfo }) => void) | undefined;

  static async open(): Promise<UdpClient> {
    const client = new UdpClient();
    await new Promise<void>((resolve) => client.socket.bind(0, '127.0.0.1', resolve));
    client.socket.on('message', (msg, from) => {
      if (client.waiter) { const w = client.waiter; client.waiter = undefined; w({ msg, from }); } else client.queue.push({ msg, from });
    });
    return client;
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(packet: Buffer, port: number): void {
    this.socket.send(packet, port, '127.0.0.1');
  }

  async next(ms = 3_000): Promise<Buffer> {
    return (await this.nextFrom(ms)).msg;
  }

  /** The next datagram and where it came from. */
  nextFrom(ms = 3_000): Promise<{ msg: Buffer; from: dgram.RemoteInfo }> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    return withTimeout(new Promise<{ msg: Buffer; from: dgram.RemoteInfo }>((resolve) => { this.waiter = resolve; }), ms, 'a datagram');
  }

  /** Asserts nothing arrives within `ms` (for negative cases only). */
  async expectNothing(ms = 200): Promise<void> {
    const got = await this.nextFrom(ms).catch(() => undefined);
    this.waiter = undefined;
    if (got) throw new Error(`unexpected datagram ${got.msg.toString('hex')}`);
  }

  close(): void {
    this.socket.close();
  }
}

/** Polls `predicate` on each turn of the event loop until true, or rejects after `ms`. */
export async function eventually(predicate: () => boolean, ms = 3_000, what = 'a condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export type { NodeId };

/** startTestBeacon, closed when the test `t` ends. */
export async function beaconFor(
  t: TestContext, ids: readonly TestIdentity[] = [], overrides: Partial<BeaconConfig> = {}, options: BeaconOptions = {},
): Promise<TestBeacon> {
  const tb = await startTestBeacon(ids, overrides, options);
  t.after(() => tb.close());
  return tb;
}

/** A UdpClient, closed when the test `t` ends. */
export async function udpClientFor(t: TestContext): Promise<UdpClient> {
  const client = await UdpClient.open();
  t.after(() => client.close());
  return client;
}
