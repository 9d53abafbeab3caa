/**
 * The soak's clients: a compat WebSocket daemon that reports how its
 * handshake ended, and a UDP node. Real sockets to 127.0.0.1 only.
 */
import dgram from 'node:dgram';
import WebSocket from 'ws';
import { COMPAT_SUBPROTOCOL, authReplyMessage } from '../../lib/protocol';
import { sign, type TestIdentity } from '../helpers/identity';

/** How a connection's handshake ended. */
export type HandshakeEnd =
  | { ok: true }
  | { ok: false; code: number; reason: string };

/** What a handshake answer is made of; the soak's bad clients change one part. */
export type ReplyStyle = 'valid' | 'wrong_key' | 'wrong_nonce' | 'binary' | 'garbage' | 'oversized' | 'silent';

export interface CompatConnection {
  ws: WebSocket;
  /** Resolves once: auth_ok, or the close that ended the handshake. */
  handshake: Promise<HandshakeEnd>;
  /** Resolves with the close code whenever the socket closes. */
  closed: Promise<number>;
  /** Set when the soak gave up on it (its backstop closed it). */
  expired?: boolean;
  /** When the upgrade completed, and when the reply to the challenge left (ms since epoch). */
  openedAt?: number;
  repliedAt?: number;
}

/**
 * Opens /v1/compat and answers the challenge as `id` in the given style.
 * Binary messages after auth_ok go to `onBinary`.
 */
export function connectCompat(
  url: string, id: TestIdentity, style: ReplyStyle, onBinary?: (data: Buffer) => void, other?: TestIdentity,
): CompatConnection {
  const ws = new WebSocket(url, [COMPAT_SUBPROTOCOL], { perMessageDeflate: false });
  // eslint-disable-next-line prefer-const
  let conn: CompatConnection;
  let authed = false;
  let settle: (end: HandshakeEnd) => void = () => {};
  const handshake = new Promise<HandshakeEnd>((resolve) => { settle = resolve; });
  const closed = new Promise<number>((resolve) => {
    ws.on('close', (code, reason) => {
      settle({ ok: false, code, reason: String(reason) });
      resolve(code);
    });
  });
  ws.on('error', () => {}); // resets end in 'close'
  ws.on('unexpected-response', (_req, res) => {
    // A refused upgrade: say which status; terminate() aborts the request and 'close' follows.
    settle({ ok: false, code: 1006, reason: `HTTP ${res.statusCode ?? '?'}` });
    ws.terminate();
  });
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      if (authed) onBinary?.(data as Buffer);
      return;
    }
    const msg = JSON.parse(String(data)) as { type: string; nonce?: string };
    if (msg.type === 'auth_challenge' && msg.nonce) {
      answer(ws, id, msg.nonce, style, other);
      conn.repliedAt = Date.now();
    } else if (msg.type === 'auth_ok') {
      authed = true;
      settle({ ok: true });
    }
  });
  conn = { ws, handshake, closed };
  ws.once('open', () => { conn.openedAt = Date.now(); });
  return conn;
}

function answer(ws: WebSocket, id: TestIdentity, nonce: string, style: ReplyStyle, other?: TestIdentity): void {
  const reply = (signer: TestIdentity, signedNonce: string) => authReplyMessage({
    node_id: id.nodeId,
    public_key: id.publicKeyB64,
    sig: sign(signer, `compat_auth:${id.nodeId}:${signedNonce}`),
  });
  switch (style) {
    case 'valid': return ws.send(reply(id, nonce));
    case 'wrong_key': return ws.send(reply(other ?? id, nonce));
    case 'wrong_nonce': return ws.send(reply(id, nonce.replace(/^./, (c) => (c === '0' ? '1' : '0'))));
    case 'binary': return ws.send(Buffer.from([1, 0, 0, 0, 1]));
    case 'garbage': return ws.send('{"type":"auth_reply","node_id":');
    case 'oversized': return ws.send(Buffer.alloc(70 * 1024, 7));
    case 'silent': return;
  }
}

/** A UDP node on 127.0.0.1 with a large receive buffer (the soak counts every relay). */
export async function openUdp(onMessage: (msg: Buffer) => void): Promise<dgram.Socket> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  try {
    socket.setRecvBufferSize(4 * 1024 * 1024);
  } catch {
    // the system default then
  }
  socket.on('message', onMessage);
  return socket;
}
