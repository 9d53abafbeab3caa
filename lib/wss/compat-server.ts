/**
 * The compat WebSocket listener at /v1/compat (docs/protocol.md §2, §3).
 *
 * - Upgrades are taken off the HTTP server before fastify's routing
 *   (upgrade.ts; fastify keeps /health and /metrics). Admission runs
 *   before any WebSocket work: draining, --max-peers, --max-handshakes
 *   (HTTP 503) and --max-per-ip (HTTP 429), each refusal counted. An
 *   upgrade to any other path (/health, /metrics, ...) is refused with 404
 *   before that.
 * - An upgrade ws rejects (HTTP 400) gives its slots back at once and its
 *   socket is destroyed once the answer is written.
 * - ws enforces the 64 KiB message limit from the first byte
 *   (`maxPayload`), so no socket, authenticated or not, can make the beacon
 *   buffer more; an oversized message closes the socket with 1009.
 * - After the handshake, peers live in a PeerMap (last writer wins); their
 *   binary messages go to `onPacket`, text messages are ignored.
 * - Reading is paced per node (read-pacer.ts): over --peer-rate/--peer-burst
 *   (each frame costing at least --peer-rate / --peer-frame-rate) its socket
 *   is paused, never dropped; each gets a fair share of a turn. A socket
 *   that is closing stays paced, and what it still sends is dropped
 *   (`sender_closing`): a replaced, revoked or idle peer relays nothing more.
 * - Idle: any inbound data, ping or pong is activity; one sweep pings quiet
 *   peers and disconnects those silent past --idle-timeout.
 * - This module never decides where a packet goes: that is the router's.
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import WebSocket, { WebSocketServer } from 'ws';
import type { KeyDirectory } from '../auth/keys';
import { SignatureVerifier } from '../auth/challenge';
import type { BeaconConfig } from '../config';
import type { BeaconStats, RefusalReason } from '../metrics';
import {
  AUTH_OK_MESSAGE, COMPAT_SUBPROTOCOL, CloseCode, CloseReason, MAX_MESSAGE_BYTES, type NodeId,
} from '../protocol';
import { ipv6Networks, perIpKey } from '../net/client-address';
import { RateLimitedLog } from '../log/rate-limited-log';
import { Admission, type AdmissionTicket } from './admission';
import { runHandshake } from './handshake';
import { Peer } from './peer';
import { PeerMap, type PeerMapListener } from './peer-map';
import { ReadPacing, type ReadPacer } from './read-pacer';
import { clientAddress, isCompatUpgrade, refuseUpgrade, type ClientAddress, type TrustProxy } from './upgrade';

/** How long a socket we closed may take to answer the close before it is destroyed. */
const CLOSE_GRACE_MS = 2_000;

export interface CompatServerDeps {
  config: BeaconConfig;
  stats: BeaconStats;
  keys: KeyDirectory;
  log: FastifyBaseLogger;
  /** Called with each binary message of an authenticated peer. */
  onPacket: (peer: Peer, packet: Buffer) => void;
  /** Called once a peer's socket has closed and its teardown ran. */
  onPeerClosed?: (peer: Peer, code: number) => void;
  /** Told when a node's current peer changes (attach, and detach of the current one only). */
  peerListener?: PeerMapListener;
}

/** An authenticated peer's socket carries its Peer, for the shared handlers. */
const PEER = Symbol('peer');
type PeerSocket = WebSocket & { [PEER]: Peer };

function peerOf(ws: WebSocket): Peer {
  return (ws as PeerSocket)[PEER];
}

/**
 * Frames accepted for a peer earlier in this turn are written when the turn
 * ends (Peer batches them); one the beacon closes now gets them first, so
 * they precede the close frame as they did when each frame was its own write.
 * Its reading stays paced: a peer over its budget has its close reply read
 * when the budget allows, or is ended by the close grace.
 */
function prepareClose(ws: WebSocket): void {
  (ws as Partial<PeerSocket>)[PEER]?.flush();
}

/** The TCP socket of a paced peer carries its pacer, for the shared read handler. */
const PACER = Symbol('pacer');
type PacedSocket = Socket & { [PACER]: ReadPacer };

/**
 * Added after ws's own 'data' listener, so it runs once ws has handled the
 * chunk: every byte is charged, and a pause takes effect from the next read.
 */
function chargeRead(this: Socket, chunk: Buffer): void {
  (this as PacedSocket)[PACER].onRead(chunk.length);
}

/** A ping or pong from a peer: activity, and a frame its budget pays for. */
function touchPeer(this: WebSocket, data: Buffer): void {
  const peer = peerOf(this);
  peer.active = true;
  peer.pacer?.onFrame(data.length);
}

/** The HTTP status of each refusal: 503 means the beacon is full, the others are about the client. */
const REFUSAL_STATUS: Record<RefusalReason, number> = {
  max_peers: 503,
  max_handshakes: 503,
  shutting_down: 503,
  max_per_ip: 429,
  max_handshakes_per_prefix: 429,
  bad_forwarded_address: 400,
  not_compat_path: 404,
  invalid_upgrade: 400,
};

export class CompatServer {
  readonly peers: PeerMap;
  private readonly admission: Admission;
  /** Keyed by the upgrade's TCP socket; released when it closes. */
  private readonly tickets = new WeakMap<Socket, AdmissionTicket>();
  /** Completes upgrades admission let through (headers checked, 101 written); no server of its own. */
  private readonly wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_MESSAGE_BYTES,
    perMessageDeflate: false,
    clientTracking: false,
    handleProtocols: (offered) => (offered.has(COMPAT_SUBPROTOCOL) ? COMPAT_SUBPROTOCOL : false),
  });
  private readonly sockets = new Set<WebSocket>();
  private readonly verifier = new SignatureVerifier();
  private readonly pacing: ReadPacing;
  private draining = false;
  /** Lines any stranger (or one key, reconnecting in a loop) can cause, rate-limited (see RateLimitedLog). */
  private readonly refusedLog: RateLimitedLog;
  private readonly authFailedLog: RateLimitedLog;
  private readonly atCapacityLog: RateLimitedLog;
  private readonly connectedLog: RateLimitedLog;
  private readonly disconnectedLog: RateLimitedLog;
  private readonly replacedLog: RateLimitedLog;
  private readonly replacedElsewhereLog: RateLimitedLog;
  private readonly revokedLog: RateLimitedLog;
  private readonly idleLog: RateLimitedLog;
  private readonly rebalancedLog: RateLimitedLog;
  private idleSweep: NodeJS.Timeout | undefined;

  /** Shared by all peers; `this` is the peer's socket. */
  private readonly onPeerMessage: (this: WebSocket, data: WebSocket.RawData, isBinary: boolean) => void;
  private readonly onPeerClose: (this: WebSocket, code: number) => void;
  /** Shared by all sockets; `this` is the socket that failed, or closed. */
  private readonly onWsError: (this: WebSocket, error: Error) => void;
  private readonly forgetSocket: (this: WebSocket) => void;
  /** Shared by all admitted TCP sockets; `this` is the socket that closed. */
  private readonly releaseTicket: (this: Socket) => void;

  constructor(private readonly deps: CompatServerDeps) {
    this.peers = new PeerMap(deps.peerListener);
    this.admission = new Admission(deps.config);
    this.refusedLog = new RateLimitedLog(deps.log, 'upgrade refused');
    this.authFailedLog = new RateLimitedLog(deps.log, 'auth failed');
    this.atCapacityLog = new RateLimitedLog(deps.log, 'peer refused: beacon at capacity');
    this.connectedLog = new RateLimitedLog(deps.log, 'peer connected');
    this.disconnectedLog = new RateLimitedLog(deps.log, 'peer disconnected');
    this.replacedLog = new RateLimitedLog(deps.log, 'peer replaced by a newer connection');
    this.replacedElsewhereLog = new RateLimitedLog(deps.log, 'peer replaced by a newer connection on another instance');
    this.revokedLog = new RateLimitedLog(deps.log, 'peer disconnected: key revoked');
    this.idleLog = new RateLimitedLog(deps.log, 'peer disconnected: idle timeout');
    this.rebalancedLog = new RateLimitedLog(deps.log, 'peer asked to reconnect: this instance holds more than its share');
    this.pacing = new ReadPacing({
      rateBytesPerSec: deps.config.peerRateBytesPerSec, burstBytes: deps.config.peerBurstBytes, frameRate: deps.config.peerFrameRate,
    }, deps.stats);
    const { stats, onPacket } = deps;
    const server = this;
    this.onPeerMessage = function onPeerMessage(data, isBinary) {
      const peer = peerOf(this);
      peer.active = true;
      peer.pacer?.onFrame((data as Buffer).length);
      if (!isBinary) return; // reserved for control messages; ignored
      stats.framesIn++;
      // Detached (replaced, revoked, idle) or shutting down: it speaks for nobody now.
      if (this.readyState !== 1) return stats.drop('sender_closing');
      onPacket(peer, data as Buffer);
    };
    this.onPeerClose = function onPeerClose(code) {
      const peer = peerOf(this);
      peer.pacer?.release();
      if (server.peers.detach(peer)) server.disconnectedLog.info({ nodeId: peer.nodeId, code });
      server.deps.onPeerClosed?.(peer, code);
    };
    this.onWsError = function onWsError(error) {
      server.onSocketError(error, this);
    };
    this.forgetSocket = function forgetSocket() {
      server.sockets.delete(this);
    };
    this.releaseTicket = function releaseTicket() {
      server.tickets.get(this)?.release();
    };
  }

  /** Peers not being read right now because they are over their budget. */
  get peersPaused(): number {
    return this.pacing.paused;
  }

  get handshakesInProgress(): number {
    return this.admission.handshakesInProgress;
  }

  /**
   * Takes every upgrade `server` receives from now on. `trust` says which
   * socket addresses are proxies whose X-Forwarded-For is believed.
   */
  listen(server: Server, trust: TrustProxy): void {
    this.wss.on('wsClientError', (_error: Error, socket: Duplex) => this.refuseInvalidUpgrade(socket));
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(req, socket, head, trust));
  }

  /**
   * Sends one packet to the peer attached as `dest`; false if none or its
   * buffer is full. `atTurnEnd`: see Peer.send (datagram ingress).
   */
  writeFrame(dest: NodeId, packet: Buffer, atTurnEnd = false): boolean {
    const peer = this.peers.get(dest);
    if (!peer) return false;
    return this.sendToPeer(peer, packet, atTurnEnd);
  }

  sendToPeer(peer: Peer, packet: Buffer, atTurnEnd = false): boolean {
    if (!peer.send(packet, atTurnEnd)) {
      this.deps.stats.drop(peer.ws.readyState === 1 ? 'send_buffer_full' : 'peer_closing');
      return false;
    }
    this.deps.stats.framesOut++;
    return true;
  }

  /** Closes peers whose key is no longer the registered one (after a keys file reload). */
  revokeChangedKeys(): number {
    let revoked = 0;
    for (const peer of this.peers.values()) {
      if (this.deps.keys.isCurrent(peer.nodeId, peer.key)) continue;
      revoked++;
      this.deps.stats.revokedPeers++;
      this.peers.detach(peer);
      this.revokedLog.info({ nodeId: peer.nodeId });
      closeWithGrace(peer.ws, CloseCode.PolicyViolation, CloseReason.keyRevoked);
    }
    return revoked;
  }

  /**
   * The node attached anew to another instance of the cluster (a later
   * write in the directory): close ours with 4001, as a newer connection here would.
   */
  evict(nodeId: NodeId): void {
    const peer = this.peers.get(nodeId);
    if (!peer) return;
    peer.replaced = true;
    this.deps.stats.replacedPeers++;
    this.peers.detach(peer);
    this.replacedElsewhereLog.info({ nodeId });
    closeWithGrace(peer.ws, CloseCode.Replaced, CloseReason.replaced);
  }

  /**
   * Asks up to `count` peers, oldest first, to reconnect (rebalancing,
   * lib/cluster/rebalance.ts): `notice`, then close 1001 `rebalancing`.
   * Returns how many were asked; peers already closing are skipped.
   */
  rebalance(count: number, notice: string): number {
    let asked = 0;
    for (const peer of this.peers.values()) {
      if (asked === count) break;
      if (peer.ws.readyState !== 1) continue;
      asked++;
      this.deps.stats.clusterRebalanced++;
      this.rebalancedLog.info({ nodeId: peer.nodeId });
      prepareClose(peer.ws);
      peer.ws.send(notice);
      closeWithGrace(peer.ws, CloseCode.GoingAway, CloseReason.rebalancing);
    }
    return asked;
  }

  startIdleSweep(): void {
    const idleMs = this.deps.config.idleTimeoutMs;
    const intervalMs = Math.max(50, Math.floor(idleMs / 3));
    this.idleSweep = setInterval(() => this.sweepIdle(idleMs, intervalMs), intervalMs);
    this.idleSweep.unref();
  }

  /**
   * Refuses new upgrades, calls `beforeClose` on each socket, closes it with
   * 1001, and waits up to `graceMs` for the closes before destroying the rest.
   */
  async shutdown(graceMs: number, beforeClose?: (ws: WebSocket) => void): Promise<void> {
    this.draining = true;
    clearInterval(this.idleSweep);
    const closing = [...this.sockets].map((ws) => new Promise<void>((resolve) => {
      if (ws.readyState === 3) return resolve();
      ws.once('close', () => resolve());
      prepareClose(ws);
      if (ws.readyState === 1) beforeClose?.(ws);
      ws.close(CloseCode.GoingAway, CloseReason.shuttingDown);
    }));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(closing), new Promise((resolve) => { timer = setTimeout(resolve, graceMs); })]);
    clearTimeout(timer);
    for (const ws of this.sockets) ws.terminate();
  }

  get isDraining(): boolean {
    return this.draining;
  }

  // ---- admission and handshake -------------------------------------------

  private onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer, trust: TrustProxy): void {
    const client = clientAddress(req, trust);
    if (!isCompatUpgrade(req)) return this.refuse(socket, client.ip, 'not_compat_path');
    const ticket = this.admit(socket, client.ip);
    if (!ticket) return;
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, client, ticket));
  }

  /** Takes the slots for an upgrade from `ip`, or refuses it (answered, counted) and returns undefined. */
  private admit(socket: Socket, ip: string): AdmissionTicket | undefined {
    // A trusted proxy can still forward garbage; the address ends up in DiscoverReply.
    if (this.draining || isIP(ip) === 0) {
      this.refuse(socket, ip, this.draining ? 'shutting_down' : 'bad_forwarded_address');
      return undefined;
    }
    const client = { ipKey: perIpKey(ip, this.deps.config.ipv6PrefixBits), networks: ipv6Networks(ip) };
    const refusal = this.admission.check(client, this.peers.size);
    if (refusal) {
      this.refuse(socket, ip, refusal);
      return undefined;
    }
    const ticket = this.admission.admit(client);
    this.tickets.set(socket, ticket);
    socket.on('close', this.releaseTicket); // 'close' comes once; `once` would wrap it per socket
    return ticket;
  }

  private refuse(socket: Duplex, ip: string, refusal: RefusalReason): void {
    const { stats } = this.deps;
    stats.refused[refusal]++;
    stats.upgradesFailed++;
    this.refusedLog.info({ ip, reason: refusal });
    refuseUpgrade(socket, REFUSAL_STATUS[refusal], refusal);
  }

  /**
   * ws found the upgrade request invalid (e.g. no Sec-WebSocket-Key). The
   * slots admission gave it come back now, not when the client closes, and
   * the socket is destroyed once the 400 is written: ending it only
   * half-closes, which a client can hold open for ever.
   */
  private refuseInvalidUpgrade(socket: Duplex): void {
    const { stats } = this.deps;
    stats.refused.invalid_upgrade++;
    stats.upgradesFailed++;
    this.tickets.get(socket as Socket)?.release();
    refuseUpgrade(socket, 400, 'invalid_upgrade');
  }

  private onConnection(ws: WebSocket, client: ClientAddress, ticket: AdmissionTicket): void {
    const { stats, config } = this.deps;
    stats.upgradesOk++;
    // ws emits socket errors on the WebSocket: a listener must be there from the start.
    ws.on('error', this.onWsError);
    this.sockets.add(ws);
    ws.on('close', this.forgetSocket); // shared, not a closure per socket: memory per peer
    const { ip, port } = client;

    runHandshake(ws, { keys: this.deps.keys, verifier: this.verifier, stats, authTimeoutMs: config.authTimeoutMs }, (result) => {
      ticket.endHandshake();
      if (!result.ok) {
        stats.authFailed[result.reason]++;
        this.authFailedLog.info({ ip, reason: result.reason });
        if (result.reason !== 'closed') closeWithGrace(ws, CloseCode.PolicyViolation, CloseReason.authFailed);
        return;
      }
      if (this.draining) return closeWithGrace(ws, CloseCode.GoingAway, CloseReason.shuttingDown);
      if (this.peers.size >= config.maxPeers && !this.peers.has(result.nodeId)) {
        stats.refused.max_peers++;
        this.atCapacityLog.info({ ip, nodeId: result.nodeId });
        return closeWithGrace(ws, CloseCode.TryAgainLater, CloseReason.atCapacity);
      }
      this.attach(new Peer(result.nodeId, ws, result.key, ip, port, config.sendBufferBytes, this.pacing));
    });
  }

  private attach(peer: Peer): void {
    const { stats } = this.deps;
    const { ws } = peer;
    const previous = this.peers.attach(peer);
    if (previous) {
      // One budget per node: the old socket, still closing, and this one share it.
      if (peer.pacer && previous.pacer) peer.pacer.shareBudgetOf(previous.pacer);
      previous.replaced = true;
      stats.replacedPeers++;
      this.replacedLog.info({ nodeId: peer.nodeId });
      closeWithGrace(previous.ws, CloseCode.Replaced, CloseReason.replaced);
    }
    stats.authOk++;
    ws.send(AUTH_OK_MESSAGE);
    // Memory per peer: the handlers are shared by all peers and find theirs
    // on the socket, instead of closures per peer; 'close' fires once, so
    // `on` spares the wrapper `once` would allocate.
    (ws as PeerSocket)[PEER] = peer;
    ws.on('message', this.onPeerMessage);
    ws.on('ping', touchPeer);
    ws.on('pong', touchPeer);
    ws.on('close', this.onPeerClose);
    if (peer.tcp && peer.pacer) {
      (peer.tcp as PacedSocket)[PACER] = peer.pacer;
      peer.tcp.on('data', chargeRead);
    }
    this.connectedLog.info({ nodeId: peer.nodeId, ip: peer.clientIp });
  }

  private sweepIdle(idleMs: number, intervalMs: number): void {
    const now = Date.now();
    this.pacing.forgetRefilled();
    for (const peer of this.peers.values()) {
      // A peer paused for its budget has sent more than we read: busy, not idle.
      if (peer.active || peer.pacer?.isPaused) {
        peer.active = false;
        peer.quietSince = now;
        continue;
      }
      const quietFor = now - peer.quietSince;
      if (quietFor >= idleMs) {
        this.deps.stats.idleDisconnects++;
        this.peers.detach(peer);
        this.idleLog.info({ nodeId: peer.nodeId });
        closeWithGrace(peer.ws, CloseCode.GoingAway, CloseReason.idleTimeout);
      } else if (quietFor >= intervalMs) {
        peer.ws.ping();
      }
    }
  }

  private onSocketError(error: Error & { code?: string }, ws: WebSocket): void {
    if (error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.deps.stats.drop('oversized');
    this.deps.log.debug({ err: error }, 'websocket error');
    // ws has already started the close with the right code; make sure it ends.
    closeWithGrace(ws);
  }
}

/** Closes with a code, and destroys the socket if the other side never answers. */
function closeWithGrace(ws: WebSocket, code?: number, reason?: string): void {
  if (ws.readyState === 3) return;
  if (code !== undefined) {
    prepareClose(ws);
    ws.close(code, reason);
  }
  const timer = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
  timer.unref();
  ws.once('close', () => clearTimeout(timer));
}
