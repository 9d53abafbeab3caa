/**
 * A minimal WebSocket client for load generation, on a bare TCP socket.
 *
 * - Why not `ws`: one load core has to feed a beacon core, so a client must
 *   cost far less per frame than the server it measures. This one writes
 *   pre-built frames in batches (one socket write per tick) and parses
 *   server frames with a few byte reads.
 * - Frames it sends are masked with a random, non-zero key per connection,
 *   as RFC 6455 requires of clients: the server unmasks every byte exactly
 *   as it would for a browser or the Go daemon (ws skips unmasking only for
 *   an all-zero key).
 * - The handshake is the real one: HTTP upgrade with subprotocol pilot.v1,
 *   auth_challenge, a real Ed25519 signature, auth_ok.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type { Signer } from '../common/identities';

export const OPCODE_TEXT = 0x1;
export const OPCODE_BINARY = 0x2;
export const OPCODE_CLOSE = 0x8;
export const OPCODE_PING = 0x9;

/** Bytes of a client frame header for a payload of `length` (with the mask key). */
export function clientHeaderBytes(length: number): number {
  return (length < 126 ? 2 : length < 65536 ? 4 : 10) + 4;
}

/** Writes a masked client frame header at `offset`; returns the header size. */
export function writeClientHeader(buf: Buffer, offset: number, opcode: number, length: number, mask: Buffer): number {
  buf[offset] = 0x80 | opcode;
  let at = offset + 2;
  if (length < 126) {
    buf[offset + 1] = 0x80 | length;
  } else if (length < 65536) {
    buf[offset + 1] = 0x80 | 126;
    buf.writeUInt16BE(length, offset + 2);
    at += 2;
  } else {
    buf[offset + 1] = 0x80 | 127;
    buf.writeUInt32BE(0, offset + 2);
    buf.writeUInt32BE(length, offset + 6);
    at += 8;
  }
  mask.copy(buf, at);
  return at + 4 - offset;
}

/** One whole masked client frame carrying `payload`. */
export function clientFrame(opcode: number, payload: Buffer, mask: Buffer): Buffer {
  const header = clientHeaderBytes(payload.length);
  const frame = Buffer.allocUnsafe(header + payload.length);
  writeClientHeader(frame, 0, opcode, payload.length, mask);
  for (let i = 0; i < payload.length; i++) frame[header + i] = payload[i] ^ mask[i & 3];
  return frame;
}

export type FrameHandler = (opcode: number, buf: Buffer, start: number, end: number) => void;

/** Splits the server's byte stream into frames (server frames are never masked). */
export class FrameReader {
  private pending: Buffer | undefined;

  constructor(private readonly onFrame: FrameHandler) {}

  push(chunk: Buffer): void {
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    let off = 0;
    const end = buf.length;
    while (end - off >= 2) {
      let length = buf[off + 1] & 0x7f;
      let header = 2;
      if (length === 126) {
        if (end - off < 4) break;
        length = buf.readUInt16BE(off + 2);
        header = 4;
      } else if (length === 127) {
        if (end - off < 10) break;
        length = buf.readUInt32BE(off + 6);
        header = 10;
      }
      if (end - off < header + length) break;
      this.onFrame(buf[off] & 0x0f, buf, off + header, off + header + length);
      off += header + length;
    }
    if (off < end) this.pending = buf.subarray(off);
  }
}

export interface ConnectOptions {
  port: number;
  path: string;
  signer: Signer;
  localAddress?: string;
  /** Sign the wrong nonce: the beacon must refuse with 1008. */
  badSignature?: boolean;
  timeoutMs: number;
  /** Connect over TLS (through Caddy), trusting this CA. */
  tlsCa?: string;
  /** Called with each binary frame after auth_ok. */
  onBinary: FrameHandler;
  onClose?: (code: number) => void;
}

export class HandshakeError extends Error {
  constructor(message: string, readonly code: string) {
    super(message);
  }
}

/** An authenticated connection. */
export class RawWsClient {
  readonly mask = randomNonZeroMask();
  closeCode = 0;

  constructor(readonly nodeId: number, readonly socket: net.Socket) {}

  sendText(text: string): void {
    this.socket.write(clientFrame(OPCODE_TEXT, Buffer.from(text), this.mask));
  }

  /** Sends a close frame and ends the socket. */
  close(): void {
    if (this.socket.destroyed) return;
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(1000);
    this.socket.end(clientFrame(OPCODE_CLOSE, payload, this.mask));
    const timer = setTimeout(() => this.socket.destroy(), 2_000);
    timer.unref();
  }
}

function randomNonZeroMask(): Buffer {
  for (;;) {
    const mask = randomBytes(4);
    if (mask.readUInt32BE(0) !== 0) return mask;
  }
}

/**
 * Opens a TCP connection, upgrades, answers the challenge and resolves after
 * auth_ok; rejects with a HandshakeError (HTTP status, close code, timeout).
 */
export function connectAndAuthenticate(options: ConnectOptions): Promise<RawWsClient> {
  return new Promise((resolve, reject) => {
    const tcp = net.connect({ host: '127.0.0.1', port: options.port, localAddress: options.localAddress });
    const socket = options.tlsCa === undefined ? tcp : tls.connect({ socket: tcp, host: '127.0.0.1', ca: options.tlsCa });
    socket.setNoDelay(true);
    const client = new RawWsClient(options.signer.nodeId, socket);
    let phase: 'upgrade' | 'challenge' | 'auth_ok' | 'open' = 'upgrade';
    let head: Buffer = Buffer.alloc(0);
    const fail = (message: string, code: string) => {
      if (phase === 'open') return;
      phase = 'open'; // nothing more to report
      clearTimeout(timer);
      socket.destroy();
      reject(new HandshakeError(message, code));
    };
    const timer = setTimeout(() => fail('handshake timed out', 'timeout'), options.timeoutMs);
    const reader = new FrameReader((opcode, buf, start, end) => {
      if (opcode === OPCODE_CLOSE) {
        client.closeCode = end - start >= 2 ? buf.readUInt16BE(start) : 1005;
        if (phase !== 'open') fail(`closed with ${client.closeCode}`, `close_${client.closeCode}`);
        socket.end();
        return;
      }
      if (opcode === OPCODE_PING) {
        socket.write(clientFrame(0xa, buf.subarray(start, end), client.mask));
        return;
      }
      if (phase === 'open') {
        if (opcode === OPCODE_BINARY) options.onBinary(opcode, buf, start, end);
        return;
      }
      if (opcode !== OPCODE_TEXT) return fail('binary frame before auth_ok', 'protocol');
      const text = buf.toString('utf8', start, end);
      if (phase === 'challenge') {
        const nonce = (JSON.parse(text) as { nonce: string }).nonce;
        const sig = options.signer.sign(options.badSignature ? nonce.replace(/^./, nonce[0] === '0' ? '1' : '0') : nonce);
        client.sendText(JSON.stringify({
          type: 'auth_reply', node_id: client.nodeId, public_key: options.signer.publicKeyBase64, sig,
        }));
        phase = 'auth_ok';
      } else if (phase === 'auth_ok') {
        if (text !== '{"type":"auth_ok"}') return fail(`expected auth_ok, got ${text}`, 'protocol');
        phase = 'open';
        clearTimeout(timer);
        resolve(client);
      }
    });
    socket.on('data', (chunk: Buffer) => {
      if (phase !== 'upgrade') return reader.push(chunk);
      head = head.length ? Buffer.concat([head, chunk]) : chunk;
      const endOfHead = head.indexOf('\r\n\r\n');
      if (endOfHead < 0) return;
      const status = head.toString('latin1', 9, 12);
      if (status !== '101') return fail(`upgrade refused with HTTP ${status}`, `http_${status}`);
      phase = 'challenge';
      const rest = head.subarray(endOfHead + 4);
      head = Buffer.alloc(0);
      if (rest.length) reader.push(rest);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => fail(err.message, err.code ?? 'socket_error'));
    socket.on('close', () => {
      fail('closed during the handshake', client.closeCode ? `close_${client.closeCode}` : 'closed');
      options.onClose?.(client.closeCode);
    });
    const key = randomBytes(16).toString('base64');
    socket.write(
      `GET ${options.path} HTTP/1.1\r\nHost: 127.0.0.1:${options.port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
      'Sec-WebSocket-Protocol: pilot.v1\r\n\r\n',
    );
  });
}
