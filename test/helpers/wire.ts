/**
 * Helpers for the wire and routing tests: a WebSocket peer that knows its
 * own source port and queues every binary message, a free-UDP-port probe,
 * and a reader for the Prometheus text.
 */
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { COMPAT_SUBPROTOCOL, authReplyMessage } from '../../lib/protocol';
import { CONNECT_WAIT_MS, withTimeout } from './harness';
import { sign, type TestIdentity } from './identity';

/** An authenticated WebSocket peer whose binary messages are queued. */
export class WsPeer {
  private readonly queue: Buffer[] = [];
  private waiter: ((msg: Buffer) => void) | undefined;

  private constructor(readonly ws: WebSocket, readonly localPort: number) {
    ws.on('message', (data, isBinary) => {
      if (!isBinary) return;
      const msg = data as Buffer;
      if (this.waiter) { const w = this.waiter; this.waiter = undefined; w(msg); } else this.queue.push(msg);
    });
  }

  /**
   * Connects to `url`, answers the challenge as `id` and resolves after
   * auth_ok. `localPort` is the TCP source port the beacon sees.
   */
  static async connect(url: string, id: TestIdentity, headers: Record<string, string> = {}): Promise<WsPeer> {
    const ws = new WebSocket(url, [COMPAT_SUBPROTOCOL], { headers });
    let localPort = 0;
    ws.once('upgrade', (res: IncomingMessage) => { localPort = res.socket.localPort ?? 0; });
    const texts: string[] = [];
    let wake: (() => void) | undefined;
    const onText = (data: WebSocket.RawData, isBinary: boolean) => {
      if (isBinary) return;
      texts.push(String(data));
      wake?.();
    };
    ws.on('message', onText);
    const nextText = () => withTimeout(new Promise<string>((resolve, reject) => {
      const check = () => {
        const t = texts.shift();
        if (t !== undefined) { wake = undefined; resolve(t); return true; }
        return false;
      };
      if (check()) return;
      wake = () => { check(); };
      ws.once('close', (code) => reject(new Error(`closed with ${code} during the handshake`)));
    }), CONNECT_WAIT_MS, 'a handshake message');
    await withTimeout(once(ws, 'open'), CONNECT_WAIT_MS, 'the upgrade');
    const challenge = JSON.parse(await nextText()) as { type: string; nonce: string };
    if (challenge.type !== 'auth_challenge') throw new Error(`expected auth_challenge, got ${JSON.stringify(challenge)}`);
    const peer = new WsPeer(ws, localPort);
    ws.send(authReplyMessage({
      node_id: id.nodeId,
      public_key: id.publicKeyB64,
      sig: sign(id, `compat_auth:${id.nodeId}:${challenge.nonce}`),
    }));
    const ok = await nextText();
    ws.off('message', onText);
    if (ok !== '{"type":"auth_ok"}') throw new Error(`expected auth_ok, got ${ok}`);
    return peer;
  }

  send(packet: Buffer): void {
    this.ws.send(packet);
  }

  /** The next binary message, or rejects after `ms`. */
  next(ms = 3_000): Promise<Buffer> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    return withTimeout(new Promise<Buffer>((resolve) => { this.waiter = resolve; }), ms, 'a binary WebSocket message')
      .finally(() => { this.waiter = undefined; });
  }

  /** Asserts no binary message arrives within `ms` (only after a positive control). */
  async expectNothing(ms = 200): Promise<void> {
    const msg = await this.next(ms).catch(() => undefined);
    if (msg) throw new Error(`unexpected message ${msg.toString('hex')}`);
  }

  close(): void {
    this.ws.close();
  }
}

/**
 * The value of one series in Prometheus text, e.g.
 * `promValue(text, 'beacon_udp_packets_total', { type: 'discover' })`;
 * undefined when the series is absent.
 */
export function promValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const have = new Map<string, string>();
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(pair[1]!, pair[2]!);
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(match[3]);
  }
  return undefined;
}
