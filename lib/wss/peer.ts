/**
 * One compat connection, from its upgrade to its close: the handshake
 * first, then the daemon it authenticated as (issue 22: one object per
 * connection; WsConnection below it speaks WebSocket on the TCP socket).
 *
 * - Rarely used parts are their own objects, made when needed: the
 *   handshake's state (dropped at auth_ok), the read pacer (made at the
 *   first read after auth_ok, so an idle peer has none), a send batch
 *   (only while frames wait). An idle attached peer is this object and its
 *   socket.
 * - After auth_ok it holds the authenticated node ID and the raw key it
 *   proved (for revocation on a keys reload), not a verify-ready key.
 * - `send` queues at most `sendBufferBytes`; beyond that the frame is
 *   refused (the caller counts the drop), so a slow reader never grows the
 *   beacon's memory or blocks other peers.
 * - A peer's frames leave in batches, one TCP write and one buffer each,
 *   framed here (binary, unmasked, RFC 6455 §5.2). Frames relayed from a
 *   WebSocket read are written right after that read's callback
 *   (nextTick): a read carries many frames, and a frame never waits for the
 *   rest of a long turn. Frames relayed from datagrams, which arrive one per
 *   callback, wait for the end of the turn (one setImmediate for all peers)
 *   so the turn's datagrams share a write. A batch is written only while
 *   the socket is open, and before a close frame, so frames accepted before
 *   the close go out before it.
 * - Its reading is paced (ReadPacer): its node's budget in bytes per second
 *   and a fair share of each turn of the event loop.
 * - Decides nothing about routing or admission: binary messages go to the
 *   host, and so do the ends of the handshake and of the socket.
 */
import type { Socket } from 'node:net';
import type { KeyDirectory, KeySourceName } from '../auth/keys';
import type { DeadlineQueue } from '../deadline-queue';
import { NO_DEADLINE } from '../deadline-queue';
import type { BeaconStats } from '../metrics';
import type { NodeId } from '../protocol';
import { OPCODE_BINARY, serverHeaderBytes, writeBinaryHeader } from './frames';
import {
  Handshake, acceptUpgrade, chargeHandshakeFrame, chargeHandshakeRead, checkSignature, finish, handshakeMessage, type HandshakeResult,
} from './handshake';
import type { AdmissionClient } from './admission';
import type { HandshakeStep, HandshakeWork } from './handshake-work';
import { ReadPacer, type ReadPacing } from './read-pacer';
import type { WebSocketRequest } from './upgrade';
import { OPEN, WsConnection } from './ws-connection';

/** What every peer of one listener shares: limits, counters, queues, and where events go. */
export interface PeerHost {
  readonly stats: BeaconStats;
  readonly keys: KeyDirectory;
  readonly pacing: ReadPacing;
  readonly work: HandshakeWork;
  readonly authDeadlines: DeadlineQueue<Peer>;
  readonly authTimeoutMs: number;
  readonly sendBufferBytes: number;
  /** A binary message of an attached peer that is still open. */
  onPacket(peer: Peer, packet: Buffer): void;
  handshakeEnded(peer: Peer, result: HandshakeResult): void;
  /** The client broke the protocol; the close with `code` is under way. */
  clientError(peer: Peer, code: number): void;
  /** The socket closed (after handshakeEnded, if the handshake was still running). */
  closed(peer: Peer): void;
}

export class Peer extends WsConnection implements HandshakeStep, AdmissionClient {
  /** The authenticated node; 0 until auth_ok. */
  nodeId: NodeId = 0;
  /** The raw key the node proved, and where it came from (for isCurrent after a reload). */
  keyRaw: Buffer | undefined;
  keySource: KeySourceName | undefined;
  /** Set while attached to the peer map (and so counted and announced). */
  attached = false;
  /** Set by any inbound data, ping or pong; cleared by the idle sweep. */
  active = true;
  /** When the idle sweep last found the peer active (ms since the listener started; `active` holds until the first sweep). */
  quietSince = 0;
  /** Set when a newer connection for the same node took this one's place. */
  replaced = false;
  /** Whether it still holds a handshake slot. */
  inHandshakeSlot = true;
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
  /** A flush is scheduled after the current I/O callback / at the end of the turn. */
  private afterCallbackFlushPending = false;
  private turnEndFlushPending = false;

  constructor(
    socket: Socket,
    private readonly host: PeerHost,
    request: WebSocketRequest,
    head: Buffer,
    readonly clientIp: string,
    /** 0 when the address was forwarded by a proxy (its port is unknown). */
    readonly clientPort: number,
    /** What admission counted it under (lib/wss/admission.ts): its per-IP key, and its IPv6 networks (none for IPv4). */
    readonly ipKey: string,
    readonly networks: readonly string[],
  ) {
    super(socket);
    this.handshake = new Handshake(request, head);
    // Nothing is read until the 101 is out (the accept step).
    socket.pause();
  }

  /** Runs the handshake step that is due: the accept, or the signature check. */
  runStep(): void {
    const hs = this.handshake;
    if (hs === undefined || this.readyState !== OPEN) return;
    if (hs.state === 'accepting') acceptUpgrade(this, hs, this.host);
    else if (hs.state === 'verifying' && hs.key !== undefined) checkSignature(this, hs, this.host);
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
    this.keyRaw = keyRaw;
    this.keySource = keySource;
  }

  /** Before the 101 there is no WebSocket to close: the socket just goes. */
  override close(code?: number, reason?: string): void {
    if (this.handshake?.state === 'accepting') this.terminate();
    else super.close(code, reason);
  }

  /** Reading is paced from now on, by `pacer` (a replacement sharing its predecessor's budget). */
  startPacing(pacer: ReadPacer): void {
    this.pacer = pacer;
  }

  private pacerNow(): ReadPacer {
    return (this.pacer ??= new ReadPacer(this, this.host.pacing, this.nodeId));
  }

  // ---- WsConnection's hooks ---------------------------------------------------

  protected admitRead(bytes: number): boolean {
    const hs = this.handshake;
    return hs === undefined || chargeHandshakeRead(this, hs, this.host, bytes);
  }

  protected onRead(bytes: number): void {
    if (this.handshake === undefined && this.nodeId !== 0) this.pacerNow().onRead(bytes);
  }

  protected onFrame(payloadBytes: number): void {
    const hs = this.handshake;
    if (hs !== undefined) chargeHandshakeFrame(this, hs, this.host);
    else if (this.nodeId !== 0) this.pacerNow().onFrame(payloadBytes);
  }

  protected onMessage(opcode: number, payload: Buffer): void {
    const hs = this.handshake;
    if (hs !== undefined) return handshakeMessage(this, hs, this.host, opcode, payload);
    this.active = true;
    if (opcode !== OPCODE_BINARY) return; // text is reserved for control messages; ignored
    const { stats } = this.host;
    stats.framesIn++;
    // Detached (replaced, revoked, idle) or shutting down: it speaks for nobody now.
    if (this.readyState !== OPEN) return stats.drop('sender_closing');
    this.host.onPacket(this, payload);
  }

  protected onControl(): void {
    this.active = true;
  }

  protected onClientError(code: number): void {
    this.host.clientError(this, code);
  }

  protected onClosed(): void {
    const hs = this.handshake;
    if (hs !== undefined) finish(this, hs, this.host, { ok: false, reason: 'closed' });
    this.batch = undefined;
    this.host.closed(this);
  }

  protected override beforeCloseFrame(): void {
    this.flush();
  }

  /** A pong fits in the send buffer, as a relayed frame must; one that does not is dropped and counted. */
  protected override mayQueue(bytes: number): boolean {
    if (this.socket.writableLength + this.batchBytes + bytes <= this.host.sendBufferBytes) return true;
    this.host.stats.drop('send_buffer_full');
    return false;
  }

  // ---- sending -----------------------------------------------------------------

  /**
   * Queues one binary message; false when the send buffer is full or the
   * socket is closing. `atTurnEnd`: the frame may wait for the end of the
   * turn to share a write (datagram ingress).
   */
  send(frame: Buffer, atTurnEnd = false): boolean {
    if (this.readyState !== OPEN || this.socket.writableLength + this.batchBytes + frame.length > this.host.sendBufferBytes) return false;
    (this.batch ??= []).push(frame);
    this.batchBytes += serverHeaderBytes(frame.length) + frame.length;
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

  /** @internal A scheduled flush has come due. */
  flushDue(which: 'callback' | 'turnEnd'): void {
    if (which === 'callback') this.afterCallbackFlushPending = false;
    else this.turnEndFlushPending = false;
    this.flush();
  }

  /**
   * Writes the waiting frames as one buffer: when a scheduled flush comes
   * due, early when the batch is large, or right before a close frame.
   */
  flush(): void {
    const frames = this.batch;
    const bytes = this.batchBytes;
    this.batch = undefined;
    this.batchBytes = 0;
    // Closing: the close frame may be out already; data must not follow it.
    if (frames === undefined || this.readyState !== OPEN) return;
    const out = Buffer.allocUnsafe(bytes);
    let at = 0;
    for (let i = 0; i < frames.length; i++) {
      const frame = frames[i]!;
      at = writeBinaryHeader(out, at, frame.length);
      at += frame.copy(out, at);
    }
    this.socket.write(out);
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
