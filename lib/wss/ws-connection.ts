/**
 * One upgraded TCP connection speaking WebSocket, the beacon's side
 * (RFC 6455), as the base of Peer (issue 22: one object per connection, in
 * place of ws's WebSocket, Receiver and Sender, two streams among them).
 *
 * - Reading: frames are parsed from each read as it comes, unmasked in
 *   place, and handed over as views into the read (no copy); a frame split
 *   across reads is gathered in a buffer of its own size, known from its
 *   header, so a partial frame never costs a copy of the whole read.
 *   Fragmented messages are joined (up to the 64 KiB message limit).
 * - Client errors close as ws closed them: 1002 (bad header, opcode,
 *   unmasked frame, bad close code), 1007 (text or close reason not
 *   UTF-8), 1009 (a message over 64 KiB, seen from its header: its payload
 *   is never buffered). Nothing more is read from such a socket but EOF.
 * - Pings are answered with a pong of the same payload, unless the socket
 *   holds more than its owner allows (a client that pings and never reads).
 * - Closing: `close` sends a close frame (flushing what the subclass holds
 *   first) and ends the socket once the client's close arrives; a client's
 *   close is answered with its own code and the socket ended. An EOF ends
 *   our side too (HTTP server sockets allow half-open). The reported code
 *   is the client's, 1005 if its close had none, 1006 if there was none.
 *   Ending a socket that never answers is the owner's (a close grace).
 * - The socket's listeners are shared by all connections and find theirs
 *   through a property of the socket: nothing is allocated per connection
 *   for them.
 */
import { isUtf8 } from 'node:buffer';
import type { Socket } from 'node:net';
import {
  ABNORMAL_CLOSURE, INVALID_PAYLOAD, NO_STATUS, OPCODE_BINARY, OPCODE_CONTINUATION, OPCODE_PING, OPCODE_PONG,
  OPCODE_TEXT, PROTOCOL_ERROR, closeFrame, frameHeader, isValidCloseCode, serverFrame, unmask,
} from './frames';

/** ws's readyState values, which the beacon's code and tests speak in. */
export const OPEN = 1;
export const CLOSING = 2;
export const CLOSED = 3;
export type ReadyState = typeof OPEN | typeof CLOSING | typeof CLOSED;

const CONNECTION = Symbol('wsConnection');
type ConnectionSocket = Socket & { [CONNECTION]: WsConnection };

const EMPTY = Buffer.alloc(0);

export abstract class WsConnection {
  readyState: ReadyState = OPEN;
  /** The code of the client's close frame (NO_STATUS if it had none), ABNORMAL_CLOSURE until one arrives. */
  closeCode: number = ABNORMAL_CLOSURE;
  /** Bytes of a frame split across reads, and how many of them are there; undefined when reads end on frame boundaries. */
  private partial: Buffer | undefined;
  private partialBytes = 0;
  /** A fragmented message being joined (rare: daemons send whole messages). */
  private fragments: Buffer[] | undefined;
  private fragmentedOpcode = 0;
  private fragmentedBytes = 0;
  private closeFrameSent = false;
  private closeFrameReceived = false;
  /** After a client error or its close frame: reads are discarded until EOF. */
  private readDone = false;

  constructor(readonly socket: Socket) {
    (socket as ConnectionSocket)[CONNECTION] = this;
    socket.setNoDelay(true);
    socket.on('data', onSocketData);
    socket.on('end', onSocketEnd);
    socket.on('close', onSocketClose);
    socket.on('error', onSocketError);
  }

  // ---- what the subclass does with what arrives -----------------------------

  /** A whole text (1) or binary (2) message; `payload` may be a view into the read, valid for this call. */
  protected abstract onMessage(opcode: number, payload: Buffer): void;
  /** A ping or pong arrived (the pong to a ping is sent already). */
  protected abstract onControl(payload: Buffer): void;
  /** A frame of `payloadBytes` was parsed (any opcode), before it is handled. */
  protected abstract onFrame(payloadBytes: number): void;
  /** A read of `bytes` arrived: false if it must not be parsed (a budget ran out; the subclass closes). */
  protected abstract admitRead(bytes: number): boolean;
  /** A read of `bytes` was handled, every frame in it included. */
  protected abstract onRead(bytes: number): void;
  /** The client broke the protocol; the close with `code` is under way. */
  protected abstract onClientError(code: number): void;
  /** The socket closed; `closeCode` says how. */
  protected abstract onClosed(): void;
  /** Right before a close frame is written: whatever must precede it goes out now. */
  protected beforeCloseFrame(): void {}
  /** Whether `bytes` more may be queued on the socket (a pong): false, and it is not sent, when the client does not read. */
  protected mayQueue(_bytes: number): boolean {
    return true;
  }

  // ---- writing ---------------------------------------------------------------

  /** Sends a text message; nothing once closing. */
  sendText(text: string): void {
    if (this.readyState === OPEN) this.socket.write(serverFrame(OPCODE_TEXT, text));
  }

  /** Writes a whole frame built beforehand (a constant: it must not change after); nothing once closing. */
  writeFrame(frame: Buffer): void {
    if (this.readyState === OPEN) this.socket.write(frame);
  }

  /** Sends an empty ping; nothing once closing. */
  ping(): void {
    this.writeFrame(EMPTY_PING);
  }

  /**
   * Starts the close handshake: a close frame with `code` (none: an empty
   * one), after what the subclass holds; the socket ends once the client's
   * close has arrived (or at once if it has, or the client broke the protocol).
   */
  close(code?: number, reason?: string): void {
    if (this.readyState === CLOSED) return;
    if (this.closeFrameSent) {
      if (this.closeFrameReceived || this.readDone) this.endSocket();
      return;
    }
    this.beforeCloseFrame();
    this.readyState = CLOSING;
    this.closeFrameSent = true;
    if (this.socket.writable) this.socket.write(closeFrame(code, reason));
    if (this.closeFrameReceived || this.readDone) this.endSocket();
  }

  /** Ends our side once: a second end() builds an error object for nothing. */
  private endSocket(): void {
    if (!this.socket.writableEnded) this.socket.end();
  }

  /** Destroys the socket at once (a close grace ran out, or shutdown). */
  terminate(): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSING;
    this.socket.destroy();
  }

  /** Stops reading the socket (read budget, handshake budget); the socket stays open. */
  pause(): void {
    if (this.readyState !== CLOSED) this.socket.pause();
  }

  resume(): void {
    if (this.readyState !== CLOSED) this.socket.resume();
  }

  /** Bytes written and not yet taken by the kernel. */
  get bufferedAmount(): number {
    return this.socket.writableLength;
  }

  // ---- reading ---------------------------------------------------------------

  /** @internal Handles one read (and the upgrade's first bytes). */
  handleRead(chunk: Buffer): void {
    if (this.readDone || !this.admitRead(chunk.length)) return;
    let at = 0;
    if (this.partial !== undefined) {
      at = this.fillPartial(chunk);
      if (at < 0) return;
    }
    if (at < chunk.length) {
      const stop = this.parse(chunk, at, chunk.length);
      if (stop < 0) return;
      if (stop < chunk.length) this.keepPartial(chunk, stop);
    }
    this.onRead(chunk.length);
  }

  /**
   * Parses whole frames of `buf` from `at`; returns where the first
   * incomplete one starts (`end` if none), or -1 once reading is done.
   */
  private parse(buf: Buffer, at: number, end: number): number {
    for (;;) {
      const h = frameHeader(buf, at, end, this.fragments !== undefined, this.fragmentedBytes);
      if (h === undefined) return at;
      if (h.problem !== 0) {
        this.clientError(h.problem);
        return -1;
      }
      const payloadAt = at + h.headerBytes;
      const frameEnd = payloadAt + h.payloadBytes;
      if (frameEnd > end) return at;
      unmask(buf, payloadAt - 4, payloadAt, h.payloadBytes);
      const fin = h.fin;
      const opcode = h.opcode;
      at = frameEnd;
      this.onFrame(frameEnd - payloadAt);
      if (!this.handleFrame(opcode, fin, buf.subarray(payloadAt, frameEnd)) || this.readDone || this.socket.destroyed) return -1;
      if (at === end) return end;
    }
  }

  /** A frame split across reads: keeps its bytes from `at` in a buffer of the frame's size (or of its header's, until that is known). */
  private keepPartial(chunk: Buffer, at: number): void {
    const have = chunk.length - at;
    const h = frameHeader(chunk, at, chunk.length, this.fragments !== undefined, this.fragmentedBytes);
    const size = h === undefined ? 14 : h.headerBytes + h.payloadBytes;
    this.partial = Buffer.allocUnsafe(Math.max(size, have));
    chunk.copy(this.partial, 0, at);
    this.partialBytes = have;
  }

  /**
   * Completes the split frame from the start of `chunk`: returns how many
   * bytes of it were used (all of them while the frame is incomplete), or
   * -1 once reading is done.
   */
  private fillPartial(chunk: Buffer): number {
    let used = 0;
    for (;;) {
      let partial = this.partial!;
      const h = frameHeader(partial, 0, this.partialBytes, this.fragments !== undefined, this.fragmentedBytes);
      let want: number;
      if (h === undefined) {
        // Only as far as the header: bytes past the frame belong to the next one.
        want = this.partialBytes < 2 ? 2 : (partial[1]! & 0x7f) === 126 ? 4 : 10;
      } else {
        if (h.problem !== 0) {
          this.clientError(h.problem);
          return -1;
        }
        want = h.headerBytes + h.payloadBytes;
        if (partial.length < want) {
          const bigger = Buffer.allocUnsafe(want);
          partial.copy(bigger, 0, 0, this.partialBytes);
          this.partial = partial = bigger;
        }
      }
      const take = Math.min(want - this.partialBytes, chunk.length - used);
      chunk.copy(partial, this.partialBytes, used, used + take);
      this.partialBytes += take;
      used += take;
      if (this.partialBytes < want) return chunk.length; // the read ran out first
      if (h === undefined) continue; // the header is whole now: size the frame
      this.partial = undefined;
      this.partialBytes = 0;
      return this.parse(partial, 0, want) < 0 ? -1 : used;
    }
  }

  /** Handles one whole frame; false once nothing more is to be read. */
  private handleFrame(opcode: number, fin: boolean, payload: Buffer): boolean {
    switch (opcode) {
      case OPCODE_TEXT:
      case OPCODE_BINARY:
        if (fin) return this.message(opcode, payload);
        this.fragmentedOpcode = opcode;
        this.fragments = [payload];
        this.fragmentedBytes = payload.length;
        return true;
      case OPCODE_CONTINUATION: {
        this.fragments!.push(payload);
        this.fragmentedBytes += payload.length;
        if (!fin) return true;
        const whole = Buffer.concat(this.fragments!, this.fragmentedBytes);
        const messageOpcode = this.fragmentedOpcode;
        this.fragments = undefined;
        this.fragmentedBytes = 0;
        return this.message(messageOpcode, whole);
      }
      case OPCODE_PING:
        // A client that pings and never reads would grow the socket's buffer with pongs: past the owner's bound they are not sent.
        if (this.readyState === OPEN && this.mayQueue(payload.length + 2)) this.socket.write(serverFrame(OPCODE_PONG, payload));
        this.onControl(payload);
        return true;
      case OPCODE_PONG:
        this.onControl(payload);
        return true;
      default: // OPCODE_CLOSE: frameHeader lets no other opcode through
        return this.closeReceived(payload);
    }
  }

  private message(opcode: number, payload: Buffer): boolean {
    if (opcode === OPCODE_TEXT && !isUtf8(payload)) {
      this.clientError(INVALID_PAYLOAD);
      return false;
    }
    this.onMessage(opcode, payload);
    return true;
  }

  private closeReceived(payload: Buffer): boolean {
    let code = NO_STATUS;
    let reason: Buffer = EMPTY;
    if (payload.length > 0) {
      code = payload.readUInt16BE(0);
      if (!isValidCloseCode(code)) {
        this.clientError(PROTOCOL_ERROR);
        return false;
      }
      reason = payload.subarray(2);
      if (!isUtf8(reason)) {
        this.clientError(INVALID_PAYLOAD);
        return false;
      }
    }
    this.closeFrameReceived = true;
    this.closeCode = code;
    this.stopReading();
    // Echo the client's code, as ws did; an empty close is answered with an empty one.
    if (this.closeFrameSent) this.endSocket();
    else this.close(code === NO_STATUS ? undefined : code, reason.toString('utf8'));
    return false;
  }

  private clientError(code: number): void {
    this.stopReading();
    this.close(code);
    this.onClientError(code);
  }

  /** Nothing more is parsed; the socket is read on (and its bytes dropped) so that its EOF is seen. */
  private stopReading(): void {
    this.readDone = true;
    this.partial = undefined;
    this.fragments = undefined;
    this.socket.resume();
  }

  /** @internal The client ended its side. */
  handleEnd(): void {
    if (this.readyState === OPEN) this.readyState = CLOSING;
    this.readDone = true;
    this.endSocket();
  }

  /** @internal The socket closed. */
  handleClose(): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.partial = undefined;
    this.fragments = undefined;
    if (!this.closeFrameReceived) this.closeCode = ABNORMAL_CLOSURE;
    this.onClosed();
  }
}

const EMPTY_PING = serverFrame(OPCODE_PING, EMPTY);

function onSocketData(this: Socket, chunk: Buffer): void {
  (this as ConnectionSocket)[CONNECTION].handleRead(chunk);
}

function onSocketEnd(this: Socket): void {
  (this as ConnectionSocket)[CONNECTION].handleEnd();
}

function onSocketClose(this: Socket): void {
  (this as ConnectionSocket)[CONNECTION].handleClose();
}

/** A socket error (reset, ...): the socket is destroyed and its close reported as abnormal. */
function onSocketError(this: Socket): void {
  this.destroy();
}
