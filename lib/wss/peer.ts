/**
 * One daemon attached over the compat WebSocket, after authentication.
 *
 * - Holds the socket, the authenticated node ID and the key it proved.
 * - `send` queues at most `sendBufferBytes`; beyond that the frame is
 *   refused (the caller counts the drop), so a slow reader never grows the
 *   beacon's memory or blocks other peers.
 * - A peer's frames leave in batches, one TCP write and one buffer each:
 *   they are framed here (binary, unmasked, RFC 6455 §5.2). Frames relayed
 *   from a WebSocket read are written right after that read's callback
 *   (nextTick): a read carries many frames, and a frame never waits for the
 *   rest of a long turn (a handshake storm makes turns long). Frames
 *   relayed from datagrams, which arrive one per callback, wait for the end
 *   of the turn (one setImmediate for all peers) so the turn's datagrams
 *   share a write. Per frame that spares ws.send's options, header
 *   allocation and two stream writes, and writev's iovec per chunk.
 *   Everything else (text, ping, close) still goes through ws; a batch is
 *   written only while the socket is open, and the beacon flushes it before
 *   closing a peer, so frames accepted before the close go out before it.
 * - Its reading is paced (ReadPacer): its node's budget in bytes per second
 *   and a fair share of each turn of the event loop.
 */
import type { Socket } from 'node:net';
import type WebSocket from 'ws';
import type { RegisteredKey } from '../auth/keys';
import type { NodeId } from '../protocol';
import { ReadPacer, type ReadPacing } from './read-pacer';

export class Peer {
  /** Set by any inbound data, ping or pong; cleared by the idle sweep. */
  active = true;
  /** When the idle sweep last found the peer active (ms since epoch). */
  quietSince = Date.now();
  /** Set when a newer connection for the same node took this one's place. */
  replaced = false;
  /** Frames sent this turn, not yet written; undefined when none (memory per idle peer). */
  private batch: Buffer[] | undefined;
  /** Wire size of `batch`, headers included. */
  private batchBytes = 0;
  /** A flush is scheduled after the current I/O callback / at the end of the turn. */
  private afterCallbackFlushPending = false;
  private turnEndFlushPending = false;
  /** The TCP socket under ws; undefined if ws ever stops exposing it (then nothing is batched or paced). */
  readonly tcp: Socket | undefined;
  readonly pacer: ReadPacer | undefined;

  constructor(
    readonly nodeId: NodeId,
    readonly ws: WebSocket,
    readonly key: RegisteredKey,
    readonly clientIp: string,
    readonly clientPort: number,
    private readonly sendBufferBytes: number,
    pacing: ReadPacing,
  ) {
    // ws keeps the TCP socket private; the batch is written to it directly.
    this.tcp = (ws as unknown as { _socket?: Socket })._socket;
    this.pacer = this.tcp ? new ReadPacer(ws, pacing, nodeId) : undefined;
  }

  /**
   * Queues one binary message; false when the send buffer is full or the
   * socket is closing. `atTurnEnd`: the frame may wait for the end of the
   * turn to share a write (datagram ingress).
   */
  send(frame: Buffer, atTurnEnd = false): boolean {
    const ws = this.ws;
    if (ws.readyState !== 1 || ws.bufferedAmount + this.batchBytes + frame.length > this.sendBufferBytes) return false;
    if (!this.tcp) {
      ws.send(frame);
      return true;
    }
    (this.batch ??= []).push(frame);
    this.batchBytes += binaryHeaderBytes(frame.length) + frame.length;
    if (this.batchBytes >= EARLY_WRITE_BYTES || this.batchBytes * 2 >= this.sendBufferBytes) {
      // A busy turn can bring a peer more than its send buffer: write early
      // rather than refuse frames a fast reader would take at once.
      this.flush();
    } else if (!atTurnEnd) {
      if (!this.afterCallbackFlushPending) {
        this.afterCallbackFlushPending = true;
        process.nextTick(flushAfterCallback, this);
      }
    } else if (!this.turnEndFlushPending) {
      this.turnEndFlushPending = true;
      scheduleTurnEndFlush(this);
    }
    return true;
  }

  /** @internal A scheduled flush has come due. */
  flushDue(which: 'callback' | 'turnEnd'): void {
    if (which === 'callback') this.afterCallbackFlushPending = false;
    else this.turnEndFlushPending = false;
    this.flush();
  }

  /**
   * Writes the waiting frames as one buffer: when a scheduled flush comes
   * due, early when the batch is large, or right before the beacon closes
   * the socket (so they precede the close).
   */
  flush(): void {
    const frames = this.batch;
    const bytes = this.batchBytes;
    this.batch = undefined;
    this.batchBytes = 0;
    // Closing: ws may already have written its close frame; data must not follow it.
    if (!frames || this.ws.readyState !== 1 || !this.tcp) return;
    const out = Buffer.allocUnsafe(bytes);
    let at = 0;
    for (const frame of frames) {
      at = writeBinaryHeader(out, at, frame.length);
      at += frame.copy(out, at);
    }
    this.tcp.write(out);
  }
}

/** A batch this large is written at once rather than when its flush comes due. */
const EARLY_WRITE_BYTES = 64 * 1024;

function flushAfterCallback(peer: Peer): void {
  peer.flushDue('callback');
}

/** Peers whose frames wait for the end of the turn; written together then. */
const waitingPeers: Peer[] = [];
let turnEndScheduled = false;

function scheduleTurnEndFlush(peer: Peer): void {
  waitingPeers.push(peer);
  if (turnEndScheduled) return;
  turnEndScheduled = true;
  setImmediate(flushWaitingPeers);
}

function flushWaitingPeers(): void {
  turnEndScheduled = false;
  // A peer already flushed (after a callback, early, or before a close) has nothing left to write.
  for (let i = 0; i < waitingPeers.length; i++) waitingPeers[i]!.flushDue('turnEnd');
  waitingPeers.length = 0;
}

/** Size of a server (unmasked) frame header for a payload of `length`. */
function binaryHeaderBytes(length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10;
}

/** Writes a final, unmasked binary frame header at `at`; returns where the payload goes. */
function writeBinaryHeader(out: Buffer, at: number, length: number): number {
  out[at] = 0x82; // FIN, opcode 2 (binary)
  if (length < 126) {
    out[at + 1] = length;
    return at + 2;
  }
  if (length < 65536) {
    out[at + 1] = 126;
    out.writeUInt16BE(length, at + 2);
    return at + 4;
  }
  out[at + 1] = 127;
  out.writeUInt32BE(0, at + 2);
  out.writeUInt32BE(length, at + 6);
  return at + 10;
}
