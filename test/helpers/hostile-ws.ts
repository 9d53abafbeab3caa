/**
 * A WebSocket client that behaves as an attacker would, on a bare TCP
 * socket: it upgrades and reads the challenge like any client, may
 * authenticate with a real key, and then writes whatever frames it likes
 * as fast as the beacon takes them. It never answers a close frame (it
 * notes its code) and never stops writing because of one: only the beacon
 * ending the connection stops it.
 */
import { once } from 'node:events';
import net from 'node:net';
import { FrameReader, OPCODE_CLOSE, OPCODE_TEXT, clientFrame } from '../bench/load/raw-ws';
import { authReplyMessage, COMPAT_PATH, COMPAT_SUBPROTOCOL } from '../../lib/protocol';
import { withTimeout } from './harness';
import { sign, type TestIdentity } from './identity';

export { OPCODE_BINARY, OPCODE_PING, OPCODE_TEXT } from '../bench/load/raw-ws';
export const OPCODE_PONG = 0xa;

export interface HostileOptions {
  headers?: Record<string, string>;
  localAddress?: string;
}

export class HostileWs {
  /** The code of the close frame the beacon sent, once it did. */
  closeCode: number | undefined;
  /** Set once the beacon ended or reset the connection. */
  ended = false;
  /** Payloads of the pongs the beacon sent. */
  readonly pongs: Buffer[] = [];
  readonly closedByBeacon: Promise<void>;
  private readonly mask = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
  private texts: string[] = [];
  private wake: (() => void) | undefined;
  private flooding: Buffer | undefined;
  private nonce = '';

  private constructor(readonly socket: net.Socket) {
    this.closedByBeacon = new Promise((resolve) => {
      const ended = () => { this.ended = true; resolve(); };
      socket.on('close', ended);
      socket.on('end', ended);
      socket.on('error', ended);
    });
  }

  /** Upgrades at /v1/compat and waits for the challenge. */
  static async open(port: number, options: HostileOptions = {}): Promise<HostileWs> {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: options.localAddress });
    const client = new HostileWs(socket);
    await withTimeout(once(socket, 'connect'), 3_000, 'the TCP connection');
    const headers = Object.entries(options.headers ?? {}).map(([name, value]) => `${name}: ${value}\r\n`).join('');
    socket.write(`GET ${COMPAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`
      + `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${COMPAT_SUBPROTOCOL}\r\n${headers}\r\n`);
    let head: Buffer | undefined = Buffer.alloc(0);
    const reader = new FrameReader((opcode, buf, start, end) => {
      if (opcode === OPCODE_CLOSE) client.closeCode = end - start >= 2 ? buf.readUInt16BE(start) : 1005;
      else if (opcode === OPCODE_TEXT) client.texts.push(buf.toString('utf8', start, end));
      else if (opcode === OPCODE_PONG) client.pongs.push(Buffer.from(buf.subarray(start, end)));
      client.wake?.();
    });
    const upgraded = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        if (head === undefined) return reader.push(chunk);
        head = Buffer.concat([head, chunk]);
        const endOfHead = head.indexOf('\r\n\r\n');
        if (endOfHead < 0) return;
        const status = head.toString('latin1', 9, 12);
        const rest = head.subarray(endOfHead + 4);
        head = undefined; // frames from here on
        if (status !== '101') return reject(new Error(`upgrade refused with HTTP ${status}`));
        resolve();
        if (rest.length > 0) reader.push(rest);
      });
      socket.once('close', () => reject(new Error('closed during the upgrade')));
    });
    await withTimeout(upgraded, 3_000, 'the upgrade');
    const challenge = JSON.parse(await client.nextText()) as { nonce: string };
    client.nonce = challenge.nonce;
    return client;
  }

  /** The next text message from the beacon. */
  nextText(ms = 3_000): Promise<string> {
    return withTimeout(new Promise<string>((resolve, reject) => {
      const check = () => {
        const text = this.texts.shift();
        if (text !== undefined) { this.wake = undefined; resolve(text); }
        else if (this.ended || this.closeCode !== undefined) { this.wake = undefined; reject(new Error(`closed (${this.closeCode})`)); }
      };
      this.wake = check;
      check();
    }), ms, 'a text message');
  }

  /** Answers the challenge as `id` and waits for auth_ok. */
  async authenticate(id: TestIdentity): Promise<void> {
    this.send(OPCODE_TEXT, Buffer.from(authReplyMessage({
      node_id: id.nodeId, public_key: id.publicKeyB64, sig: sign(id, `compat_auth:${id.nodeId}:${this.nonce}`),
    })));
    const ok = await this.nextText();
    if (ok !== '{"type":"auth_ok"}') throw new Error(`expected auth_ok, got ${ok}`);
  }

  /** One masked frame. */
  frame(opcode: number, payload: Buffer): Buffer {
    return clientFrame(opcode, payload, this.mask);
  }

  send(opcode: number, payload: Buffer): void {
    this.socket.write(this.frame(opcode, payload));
  }

  /** Writes `frames` (whole frames) again and again, as fast as the socket takes them, until stop() or the end. */
  flood(frames: Buffer): void {
    this.flooding = frames;
    const pump = () => {
      while (this.flooding !== undefined && !this.ended) {
        if (!this.socket.write(this.flooding)) return void this.socket.once('drain', pump);
      }
    };
    pump();
  }

  stop(): void {
    this.flooding = undefined;
  }

  destroy(): void {
    this.stop();
    this.socket.destroy();
  }
}

/** `count` copies of `frame`, back to back: one write's worth for flood(). */
export function repeated(frame: Buffer, count: number): Buffer {
  return Buffer.concat(Array.from({ length: count }, () => frame));
}
