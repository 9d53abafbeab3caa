/**
 * A scriptable stand-in for a beacon, built on `ws`, for what the real
 * beacon does not do (yet) or should never do: send a `restarting` notice,
 * unknown control messages, stay silent to pings, skip the subprotocol.
 * It runs the real handshake and verifies signatures with tweetnacl against
 * the keys it is given, then hands each authenticated socket to the test.
 */
import { EventEmitter, once } from 'node:events';
import type { AddressInfo } from 'node:net';
import nacl from 'tweetnacl';
import WebSocket, { WebSocketServer } from 'ws';
import {
  AUTH_OK_MESSAGE, COMPAT_PATH, COMPAT_SUBPROTOCOL, CloseCode, CloseReason, authChallengeMessage, authSignedMessage,
  parseAuthReply,
} from '../../lib/protocol';

export interface FakeBeaconOptions {
  /** node ID -> public key; a reply from anyone else is refused with 1008. */
  keys: Map<number, Uint8Array>;
  /** Answer pings (default true). */
  autoPong?: boolean;
  /** Select pilot.v1 when offered (default true). */
  offerSubprotocol?: boolean;
}

export interface FakePeer {
  ws: WebSocket;
  nodeId: number;
  pings: number;
}

export class FakeBeacon extends EventEmitter<{ peer: [FakePeer]; connection: [WebSocket] }> {
  readonly peers: FakePeer[] = [];
  connections = 0;
  private constructor(private readonly wss: WebSocketServer) {
    super();
  }

  static async start(options: FakeBeaconOptions): Promise<FakeBeacon> {
    const wss = new WebSocketServer({
      host: '127.0.0.1',
      port: 0,
      path: COMPAT_PATH,
      autoPong: options.autoPong ?? true,
      handleProtocols: (offered) => ((options.offerSubprotocol ?? true) && offered.has(COMPAT_SUBPROTOCOL) ? COMPAT_SUBPROTOCOL : false),
    });
    await once(wss, 'listening');
    const fake = new FakeBeacon(wss);
    wss.on('connection', (ws) => fake.handshake(ws, options.keys));
    return fake;
  }

  get port(): number {
    return (this.wss.address() as AddressInfo).port;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}${COMPAT_PATH}`;
  }

  private handshake(ws: WebSocket, keys: Map<number, Uint8Array>): void {
    this.connections++;
    this.emit('connection', ws);
    const nonce = Buffer.from(nacl.randomBytes(32)).toString('hex');
    ws.once('message', (data, isBinary) => {
      const parsed = isBinary ? undefined : parseAuthReply(String(data));
      const key = parsed?.ok ? keys.get(parsed.reply.node_id) : undefined;
      if (!parsed?.ok || !key || !nacl.sign.detached.verify(authSignedMessage(parsed.reply.node_id, nonce), parsed.sig, key)) {
        ws.close(CloseCode.PolicyViolation, CloseReason.authFailed);
        return;
      }
      const peer: FakePeer = { ws, nodeId: parsed.reply.node_id, pings: 0 };
      ws.on('ping', () => { peer.pings++; });
      this.peers.push(peer);
      ws.send(AUTH_OK_MESSAGE);
      this.emit('peer', peer);
    });
    ws.send(authChallengeMessage(nonce));
  }

  /** Resolves with the next authenticated peer; rejects after `ms`. */
  async nextPeer(ms = 3_000): Promise<FakePeer> {
    const timer = AbortSignal.timeout(ms);
    const [peer] = await once(this, 'peer', { signal: timer }).catch((err: Error) => {
      throw new Error(`timed out after ${ms} ms waiting for a peer on the fake beacon (${err.message})`);
    });
    return peer as FakePeer;
  }

  async close(): Promise<void> {
    for (const client of this.wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}
