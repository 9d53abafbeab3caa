/**
 * One compat connection, from its upgrade to its close: the handshake
 * first, then the daemon it authenticated as (issue 22: one object per
 * connection). ws's WebSocket speaks the protocol on its TCP socket; the
 * Peer holds it from the moment ws has answered the upgrade.
 *
 * - Rarely used parts are their own objects, made when needed: the
 *   handshake's state (dropped at auth_ok), the read pacer (made at the
 *   first read after auth_ok, so an idle peer has none), a send batch
 *   (only while frames wait).
 * - After auth_ok it holds the authenticated node ID and the raw key it
 *   proved as a 32-byte latin1 string (for revocation on a keys reload),
 *   not a verify-ready KeyObject (~1.6 KB of native memory each).
 * - Its WebSocket's events go to handlers shared by every peer (this
 *   module's functions), with no listener stored per connection: ws makes
 *   each accepted WebSocket as a PeerWebSocket, whose `emit` calls them
 *   with its Peer.
 * - `send` queues at most `sendBufferBytes`; beyond that the frame is
 *   refused (the caller counts the drop), so a slow reader never grows the
 *   beacon's memory or blocks other peers. Pongs are bounded the same way
 *   (ws's own answering is off): a client that pings and never reads gets
 *   its pongs dropped and counted, not queued without end.
 * - A peer's binary frames leave in batches, one TCP write and one buffer
 *   each: their headers are written here (binary, unmasked, RFC 6455 §5.2).
 *   Frames relayed from a WebSocket read are written right after that
 *   read's callback (nextTick): a read carries many frames, and a frame
 *   never waits for the rest of a long turn. Frames relayed from
 *   datagrams, which arrive one per callback, wait for the end of the turn
 *   (one setImmediate for all peers) so the turn's datagrams share a
 *   write. Everything else (text, ping, pong, close) goes through ws; a
 *   batch is written only while the socket is open, and the beacon flushes
 *   it before closing a peer, so frames accepted before the close go out
 *   before it.
 * - Its reading is paced (ReadPacer): its node's budget in bytes per second
 *   and a fair share of each turn of the event loop.
 * - Decides nothing about routing or admission: binary messages go to the
 *   host, and so do the ends of the handshake and of the socket.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import WebSocket, { type RawData } from 'ws';
import type { KeyDirectory, KeySourceName } from '../auth/keys';
import type { DeadlineQueue } from '../deadline-queue';
import { NO_DEADLINE } from '../deadline-queue';
import type { BeaconStats } from '../metrics';
import type { NodeId } from '../protocol';
import type { AdmissionClient } from './admission';
import {
  Handshake, chargeHandshakeFrame, chargeHandshakeRead, checkSignature, finish, handshakeMessage, type HandshakeResult,
} from './handshake';
import type { HandshakeStep, HandshakeWork } from './handshake-work';
import { ReadPacer, type ReadPacing } from './read-pacer';

/** What every peer of one listener shares: limits, counters, queues, and where events go. */
export interface PeerHost {
  readonly stats: BeaconStats;
  readonly keys: KeyDirectory;
  readonly pacing: ReadPacing;
  readonly work: HandshakeWork;
  readonly authDeadlines: DeadlineQueue<Peer>;
  readonly authTimeoutMs: number;
  readonly sendBufferBytes: number;
  /** The accept step: ws answers the upgrade, and the peer gets its WebSocket (or the upgrade is refused). */
  accept(peer: Peer, hs: Handshake): void;
  /** A binary message of an attached peer that is still open. */
  onPacket(peer: Peer, packet: Buffer): void;
  handshakeEnded(peer: Peer, result: HandshakeResult): void;
  /** ws reported an error (a client's protocol error: ws has started the close with its code; or the socket's). */
  socketError(peer: Peer, error: Error & { code?: string }): void;
  /** The connection is over (after handshakeEnded, if the handshake was still running): its WebSocket closed, or its socket closed before ws took it. */
  closed(peer: Peer, code: number): void;
}

const OPEN = WebSocket.OPEN;

/** EventEmitter's own field for its listeners (undefined is its state before the first one). */
interface EmitterStore {
  _events: object | undefined;
}

/** A peer's TCP socket carries the Peer, for the shared socket handlers. */
const PEER = Symbol('peer');
type PeerSocket = Socket & { [PEER]: Peer };

/**
 * The class ws makes each accepted WebSocket with (its documented
 * `WebSocket` server option). It exists for the bytes per idle peer
 * (issue 22): with the shared handlers as five listeners, each
 * WebSocket's `_events` held ~280 bytes; here `emit` calls them directly
 * once the Peer is set. Other events, and listeners anyone else adds,
 * still go through EventEmitter (after the handlers).
 */
export class PeerWebSocket extends WebSocket {
  /** Set in the accept step, right after ws made it. */
  peer: Peer | undefined = undefined;

  /** As ws makes it (its server passes null, undefined and its options). */
  constructor(...args: unknown[]) {
    super(...(args as ConstructorParameters<typeof WebSocket>));
    // EventEmitter gave it an empty listener store (~180 bytes, kept for the
    // connection's life). No one listens here unless someone adds a listener,
    // and EventEmitter makes the store again at the first one.
    (this as unknown as EmitterStore)._events = undefined;
  }

  override emit(event: string | symbol, ...args: unknown[]): boolean {
    const peer = this.peer;
    if (peer === undefined) return super.emit(event, ...args);
    switch (event) {
      case 'message': onWsMessage(this, peer, args[0] as RawData, args[1] as boolean); break;
      case 'ping': onWsPing(peer, args[0] as Buffer); break;
      case 'pong': onWsPong(peer, args[0] as Buffer); break;
      case 'error': onWsError(peer, args[0] as Error); break;
      case 'close': onWsClose(peer, args[0] as number); break;
      default: return super.emit(event, ...args);
    }
    if (this.listenerCount(event) > 0) super.emit(event, ...args);
    return true;
  }
}

/** The Peer's booleans, one bit each of `flags` (issue 22: one field rather than seven). */
const ATTACHED = 1;
const ACTIVE = 2;
const REPLACED = 4;
const IN_HANDSHAKE_SLOT = 8;
const IN_SOCKET_SLOT = 16;
const FLUSH_AFTER_CALLBACK_PENDING = 32;
const FLUSH_AT_TURN_END_PENDING = 64;

export class Peer implements HandshakeStep, AdmissionClient {
  /** Set once ws has answered the upgrade (the accept step). */
  ws: WebSocket | undefined;
  /** The authenticated node; 0 until auth_ok. */
  nodeId: NodeId = 0;
  /**
   * The raw key the node proved, as a latin1 string (48 bytes of heap; a
   * Buffer is 96 and pins a slab), and where it came from: for isCurrent
   * after a reload.
   */
  keyLatin1: string | undefined;
  keySource: KeySourceName | undefined;
  /** The booleans below (ATTACHED, ACTIVE, ...), in one field: bytes per idle peer. */
  private flags = ACTIVE | IN_HANDSHAKE_SLOT | IN_SOCKET_SLOT;
  /** When the idle sweep last found the peer active (ms since the listener started; `active` holds until the first sweep). */
  quietSince = 0;
  /** The close grace's ticket once the beacon closes it. */
  closeGrace = NO_DEADLINE;
  /** The handshake's state; undefined from auth_ok on. */
  handshake: Handshake | undefined;
  /** Made at the first read after auth_ok. */
  pacer: ReadPacer | undefined;
  /** Frames sent this turn, not yet written; undefined when none. */
  private batch: Buffer[] | undefined;
  /** Wire size of `batch`, headers included. */
  private batchBytes = 0;

  /** Set while attached to the peer map (and so counted and announced). */
  get attached(): boolean { return (this.flags & ATTACHED) !== 0; }
  set attached(on: boolean) { this.setFlag(ATTACHED, on); }
  /** Set by any inbound data, ping or pong; cleared by the idle sweep. */
  get active(): boolean { return (this.flags & ACTIVE) !== 0; }
  set active(on: boolean) { this.setFlag(ACTIVE, on); }
  /** Set when a newer connection for the same node took this one's place. */
  get replaced(): boolean { return (this.flags & REPLACED) !== 0; }
  set replaced(on: boolean) { this.setFlag(REPLACED, on); }
  /** Whether it still holds a handshake slot / a socket slot (admission). */
  get inHandshakeSlot(): boolean { return (this.flags & IN_HANDSHAKE_SLOT) !== 0; }
  set inHandshakeSlot(on: boolean) { this.setFlag(IN_HANDSHAKE_SLOT, on); }
  get inSocketSlot(): boolean { return (this.flags & IN_SOCKET_SLOT) !== 0; }
  set inSocketSlot(on: boolean) { this.setFlag(IN_SOCKET_SLOT, on); }
  /** A flush is scheduled after the current I/O callback / at the end of the turn. */
  private get afterCallbackFlushPending(): boolean { return (this.flags & FLUSH_AFTER_CALLBACK_PENDING) !== 0; }
  private set afterCallbackFlushPending(on: boolean) { this.setFlag(FLUSH_AFTER_CALLBACK_PENDING, on); }
  private get turnEndFlushPending(): boolean { return (this.flags & FLUSH_AT_TURN_END_PENDING) !== 0; }
  private set turnEndFlushPending(on: boolean) { this.setFlag(FLUSH_AT_TURN_END_PENDING, on); }

  private setFlag(bit: number, on: boolean): void {
    this.flags = on ? this.flags | bit : this.flags & ~bit;
  }

  constructor(
    /** The upgraded TCP socket (ws writes on it too; the batch goes to it directly). */
    readonly socket: Socket,
    readonly host: PeerHost,
    request: IncomingMessage,
    head: Buffer,
    readonly clientIp: string,
    /** 0 when the address was forwarded by a proxy (its port is unknown). */
    readonly clientPort: number,
    /** What admission counted it under (lib/wss/admission.ts): its per-IP key, and its IPv6 networks (none for IPv4). */
    readonly ipKey: string,
    readonly networks: readonly string[],
  ) {
    this.handshake = new Handshake(request, head);
    // Nothing is read until ws has the socket (the accept step).
    socket.pause();
    (socket as PeerSocket)[PEER] = this;
    socket.on('close', onSocketClosedBeforeAccept);
    // The HTTP server's error listener went with the upgrade; until ws has the socket, an error just ends it.
    socket.on('error', onSocketErrorBeforeAccept);
  }

  /** Whether its WebSocket is open (not closing, not closed, and not still waiting for the accept). */
  get isOpen(): boolean {
    return this.ws !== undefined && this.ws.readyState === OPEN;
  }

  /** Whether the connection is over (its WebSocket, or before that its socket, has closed). */
  get isClosed(): boolean {
    return this.ws !== undefined ? this.ws.readyState === WebSocket.CLOSED : this.socket.destroyed;
  }

  /** Runs the handshake step that is due: the accept, or the signature check. */
  runStep(): void {
    const hs = this.handshake;
    if (hs === undefined) return;
    if (hs.state === 'accepting') {
      if (!this.socket.destroyed) this.host.accept(this, hs);
    } else if (hs.state === 'verifying' && hs.key !== undefined && this.isOpen) {
      checkSignature(this, hs, this.host);
    }
  }

  /**
   * Right before ws takes the socket: the listeners of the wait leave
   * first, so that ws's own ('close', 'error') do not grow the socket's
   * listener arrays (an array that grew keeps its capacity after a
   * removal). Nothing can slip between: a socket's events are emitted from
   * later ticks, and ws adds its listeners within the same synchronous
   * `handleUpgrade`. Given back by `notAccepted` if ws refuses the upgrade.
   */
  beforeAccept(): void {
    this.socket.off('close', onSocketClosedBeforeAccept);
    this.socket.off('error', onSocketErrorBeforeAccept);
  }

  /** ws refused the upgrade (it is ending or destroying the socket): the socket's close still ends the connection. */
  notAccepted(): void {
    this.socket.on('close', onSocketClosedBeforeAccept);
    this.socket.on('error', onSocketErrorBeforeAccept);
  }

  /** ws answered the upgrade: the peer's WebSocket from now on (its events dispatched by PeerWebSocket), and reading starts. */
  accepted(ws: PeerWebSocket): void {
    this.ws = ws;
    // ws emits socket errors on the WebSocket: its Peer must be set before any can come.
    ws.peer = this;
    // After ws's own 'data' listener: a read is charged once ws has parsed it.
    this.socket.on('data', onSocketData);
    this.socket.resume();
  }

  /** The auth deadline passed. */
  authTimedOut(): void {
    const hs = this.handshake;
    if (hs !== undefined) finish(this, hs, this.host, { ok: false, reason: 'timeout' });
  }

  /** auth_ok: the handshake's state goes; from now on it is the node's peer. */
  authenticated(nodeId: NodeId, keyRaw: Buffer, keySource: KeySourceName): void {
    this.handshake = undefined;
    this.nodeId = nodeId;
    this.keyLatin1 = keyRaw.toString('latin1');
    this.keySource = keySource;
  }

  /** Reading is paced from now on, by `pacer` (a replacement sharing its predecessor's budget). */
  startPacing(pacer: ReadPacer): void {
    this.pacer = pacer;
  }

  pacerNow(): ReadPacer {
    return (this.pacer ??= new ReadPacer(this.ws!, this.host.pacing, this.nodeId));
  }

  /**
   * Closes with `code` (after the frames waiting in its batch). Before ws
   * has answered the upgrade there is no WebSocket to close: the socket
   * just goes.
   */
  close(code: number, reason: string): void {
    const ws = this.ws;
    if (ws === undefined) {
      this.socket.destroy();
      return;
    }
    this.flush();
    ws.close(code, reason);
  }

  /** Destroys the socket now (the close grace ran out, or shutdown's did). */
  terminate(): void {
    if (this.ws !== undefined) this.ws.terminate();
    else this.socket.destroy();
  }

  /** A text message (rebalancing and restart notices), after the frames waiting in its batch. */
  sendText(text: string): void {
    if (!this.isOpen) return;
    this.flush();
    this.ws!.send(text);
  }

  /** An idle peer's ping. */
  ping(): void {
    if (this.isOpen) this.ws!.ping();
  }

  // ---- sending -----------------------------------------------------------------

  /**
   * Queues one binary message; false when the send buffer is full or the
   * socket is closing. `atTurnEnd`: the frame may wait for the end of the
   * turn to share a write (datagram ingress).
   */
  send(frame: Buffer, atTurnEnd = false): boolean {
    const ws = this.ws;
    if (ws === undefined || ws.readyState !== OPEN || ws.bufferedAmount + this.batchBytes + frame.length > this.host.sendBufferBytes) return false;
    (this.batch ??= []).push(frame);
    this.batchBytes += binaryHeaderBytes(frame.length) + frame.length;
    if (this.batchBytes >= EARLY_WRITE_BYTES || this.batchBytes * 2 >= this.host.sendBufferBytes) {
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

  /** A ping's pong, if it fits in the send buffer as a relayed frame must; one that does not is dropped and counted. */
  answerPing(payload: Buffer): void {
    const ws = this.ws!;
    if (ws.readyState !== OPEN) return;
    if (ws.bufferedAmount + this.batchBytes + payload.length + 2 > this.host.sendBufferBytes) {
      this.host.stats.drop('send_buffer_full');
      return;
    }
    ws.pong(payload);
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
   * the socket or sends a text message (so they precede it).
   */
  flush(): void {
    const frames = this.batch;
    const bytes = this.batchBytes;
    this.batch = undefined;
    this.batchBytes = 0;
    // Closing: ws may already have written its close frame; data must not follow it.
    if (frames === undefined || !this.isOpen) return;
    const out = Buffer.allocUnsafe(bytes);
    let at = 0;
    for (let i = 0; i < frames.length; i++) {
      const frame = frames[i]!;
      at = writeBinaryHeader(out, at, frame.length);
      at += frame.copy(out, at);
    }
    this.socket.write(out);
  }

  /** @internal The connection is over: nothing waits to be written any more. */
  dropBatch(): void {
    this.batch = undefined;
    this.batchBytes = 0;
  }
}

// ---- the shared handlers (the socket's `this` is its TCP socket; PeerWebSocket passes its Peer) ----

/** The socket closed while its accept step still waited: the connection is over without a WebSocket. */
function onSocketClosedBeforeAccept(this: Socket): void {
  const peer = (this as PeerSocket)[PEER];
  const hs = peer.handshake;
  if (hs !== undefined) finish(peer, hs, peer.host, { ok: false, reason: 'closed' });
  peer.host.closed(peer, 1006);
}

function onSocketErrorBeforeAccept(this: Socket): void {
  this.destroy();
}

/** Every read, once ws has parsed it: the handshake's budget, then the node's (its pacer made at the first read). */
function onSocketData(this: Socket, chunk: Buffer): void {
  const peer = (this as PeerSocket)[PEER];
  const hs = peer.handshake;
  if (hs !== undefined) chargeHandshakeRead(peer, hs, peer.host, chunk.length);
  else peer.pacerNow().onRead(chunk.length);
}

/** A frame: before auth_ok it counts against the handshake's budget (false once spent); after, it is activity its node's budget pays for. */
function chargeFrame(peer: Peer, payloadBytes: number): boolean {
  const hs = peer.handshake;
  if (hs !== undefined) return chargeHandshakeFrame(peer, hs, peer.host);
  peer.active = true;
  peer.pacerNow().onFrame(payloadBytes);
  return true;
}

function onWsMessage(ws: WebSocket, peer: Peer, data: RawData, isBinary: boolean): void {
  const payload = data as Buffer;
  if (!chargeFrame(peer, payload.length)) return;
  const hs = peer.handshake;
  if (hs !== undefined) return handshakeMessage(peer, hs, peer.host, payload, isBinary);
  if (!isBinary) return; // text is reserved for control messages; ignored
  const { stats } = peer.host;
  stats.framesIn++;
  // Detached (replaced, revoked, idle) or shutting down: it speaks for nobody now.
  if (ws.readyState !== OPEN) return stats.drop('sender_closing');
  peer.host.onPacket(peer, payload);
}

function onWsPing(peer: Peer, payload: Buffer): void {
  if (chargeFrame(peer, payload.length)) peer.answerPing(payload);
}

function onWsPong(peer: Peer, payload: Buffer): void {
  chargeFrame(peer, payload.length);
}

function onWsError(peer: Peer, error: Error): void {
  peer.host.socketError(peer, error);
}

function onWsClose(peer: Peer, code: number): void {
  const hs = peer.handshake;
  if (hs !== undefined) finish(peer, hs, peer.host, { ok: false, reason: 'closed' });
  peer.dropBatch();
  peer.host.closed(peer, code);
}

// ---- batched binary frames ----------------------------------------------------------

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
