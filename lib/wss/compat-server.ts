/**
 * The compat WebSocket listener at /v1/compat (docs/protocol.md §2, §3).
 *
 * - Upgrades are taken off the HTTP server before fastify's routing
 *   (upgrade.ts; fastify keeps /health and /metrics). Admission runs
 *   before any WebSocket work: draining, --max-peers, --max-handshakes
 *   (HTTP 503) and --max-per-ip (HTTP 429), each refusal counted. An
 *   upgrade to any other path (/health, /metrics, ...) is refused with 404
 *   before that. ws checks the WebSocket headers when it answers the
 *   upgrade; one it finds invalid is refused with 400 (its slots given back
 *   at once).
 * - Each admitted upgrade is one Peer (peer.ts) from then on: the
 *   handshake (handshake.ts), then the node it authenticated as. The
 *   handshakes' own work (ws answering the upgrade and the challenge, the
 *   signature check) runs a bounded amount per turn of the event loop
 *   (handshake-work.ts), so a reconnect storm does not starve the frames of
 *   attached peers.
 * - ws speaks WebSocket (framing, the upgrade's 101, client errors closed
 *   with 1002/1007/1009). It enforces the 64 KiB message limit from a
 *   frame's header (`maxPayload`), so no socket, authenticated or not, can
 *   make the beacon buffer more; an oversized message closes the socket
 *   with 1009, and is counted.
 * - After the handshake, peers live in a PeerMap (last writer wins); their
 *   binary messages go to `onPacket`, text messages are ignored.
 * - Reading is paced per node (read-pacer.ts): over --peer-rate/--peer-burst
 *   (each frame costing at least --peer-rate / --peer-frame-rate) its socket
 *   is paused, never dropped; each gets a fair share of a turn. A socket
 *   that is closing stays paced, and what it still sends is dropped
 *   (`sender_closing`): a replaced, revoked or idle peer relays nothing more.
 * - Idle: any inbound data, ping or pong is activity; one sweep pings quiet
 *   peers and disconnects those silent past --idle-timeout.
 * - Deadlines (auth, close grace) are queues of one timer each
 *   (lib/deadline-queue.ts), not a timer per socket.
 * - This module never decides where a packet goes: that is the router's.
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import { WebSocketServer } from 'ws';
import type { KeyDirectory } from '../auth/keys';
import type { BeaconConfig } from '../config';
import { DeadlineQueue, NO_DEADLINE } from '../deadline-queue';
import type { BeaconStats, RefusalReason } from '../metrics';
import { AUTH_OK_MESSAGE, COMPAT_SUBPROTOCOL, CloseCode, CloseReason, MAX_MESSAGE_BYTES, type NodeId } from '../protocol';
import { ipv6Networks, perIpKey } from '../net/client-address';
import { RateLimitedLog } from '../log/rate-limited-log';
import { Admission } from './admission';
import { sendChallenge, type Handshake, type HandshakeResult } from './handshake';
import { HandshakeWork } from './handshake-work';
import { Peer, PeerWebSocket, type PeerHost } from './peer';
import { PeerMap, type PeerMapListener } from './peer-map';
import { ReadPacer, ReadPacing } from './read-pacer';
import { clientAddress, isCompatUpgrade, refuseUpgrade, type TrustProxy } from './upgrade';

/** How long a socket we closed may take to answer the close before it is destroyed. */
const CLOSE_GRACE_MS = 2_000;

/**
 * The handshakes' own work per turn of the event loop: about five
 * signature checks (0.1-0.2 ms each) or a few accepts. The frames of
 * attached peers are read between turns, so this is about what a storm
 * adds to their latency; a turn with nothing else to do is over at once
 * and the next one takes the next steps, so a storm still has the core.
 */
const HANDSHAKE_WORK_PER_TURN_MS = 1;

export interface CompatServerDeps {
  config: BeaconConfig;
  stats: BeaconStats;
  keys: KeyDirectory;
  log: FastifyBaseLogger;
  /** Called with each binary message of an authenticated peer. */
  onPacket: (peer: Peer, packet: Buffer) => void;
  /** Called once an attached peer's socket has closed and its teardown ran. */
  onPeerClosed?: (peer: Peer, code: number) => void;
  /** Told when a node's current peer changes (attach, and detach of the current one only). */
  peerListener?: PeerMapListener;
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

export class CompatServer implements PeerHost {
  readonly peers: PeerMap;
  readonly stats: BeaconStats;
  readonly keys: KeyDirectory;
  readonly pacing: ReadPacing;
  readonly work: HandshakeWork;
  readonly authDeadlines: DeadlineQueue<Peer>;
  readonly authTimeoutMs: number;
  readonly sendBufferBytes: number;
  private readonly closeGraces = new DeadlineQueue<Peer>(CLOSE_GRACE_MS, (peer) => peer.terminate());
  private readonly admission: Admission;
  /**
   * Answers upgrades admission let through (headers checked, 101 written,
   * the WebSocket made, as a PeerWebSocket); no server of its own. Pings
   * are answered by the Peer, within its send buffer.
   */
  private readonly wss = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    perMessageDeflate: false,
    maxPayload: MAX_MESSAGE_BYTES,
    autoPong: false,
    WebSocket: PeerWebSocket,
    handleProtocols: (offered) => (offered.has(COMPAT_SUBPROTOCOL) ? COMPAT_SUBPROTOCOL : false),
  });
  /** Every admitted connection until its socket closes (shutdown closes them all). */
  private readonly connections = new Set<Peer>();
  /** Resolves shutdown's wait once the last connection has closed. */
  private allClosed: (() => void) | undefined;
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
  private readonly startedAt = Date.now();

  constructor(private readonly deps: CompatServerDeps) {
    const { config, log } = deps;
    this.stats = deps.stats;
    this.keys = deps.keys;
    this.authTimeoutMs = config.authTimeoutMs;
    this.sendBufferBytes = config.sendBufferBytes;
    this.authDeadlines = new DeadlineQueue<Peer>(config.authTimeoutMs, (peer) => peer.authTimedOut());
    this.work = new HandshakeWork(HANDSHAKE_WORK_PER_TURN_MS, deps.stats);
    this.peers = new PeerMap(deps.peerListener);
    this.admission = new Admission(config);
    this.refusedLog = new RateLimitedLog(log, 'upgrade refused');
    this.authFailedLog = new RateLimitedLog(log, 'auth failed');
    this.atCapacityLog = new RateLimitedLog(log, 'peer refused: beacon at capacity');
    this.connectedLog = new RateLimitedLog(log, 'peer connected');
    this.disconnectedLog = new RateLimitedLog(log, 'peer disconnected');
    this.replacedLog = new RateLimitedLog(log, 'peer replaced by a newer connection');
    this.replacedElsewhereLog = new RateLimitedLog(log, 'peer replaced by a newer connection on another instance');
    this.revokedLog = new RateLimitedLog(log, 'peer disconnected: key revoked');
    this.idleLog = new RateLimitedLog(log, 'peer disconnected: idle timeout');
    this.rebalancedLog = new RateLimitedLog(log, 'peer asked to reconnect: this instance holds more than its share');
    this.pacing = new ReadPacing({
      rateBytesPerSec: config.peerRateBytesPerSec, burstBytes: config.peerBurstBytes, frameRate: config.peerFrameRate,
    }, deps.stats);
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
    this.wss.on('wsClientError', (_error: Error, socket: Socket) => this.refuseInvalidUpgrade(socket));
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
      this.stats.drop(peer.isOpen ? 'send_buffer_full' : 'peer_closing');
      return false;
    }
    this.stats.framesOut++;
    return true;
  }

  /** Closes peers whose key is no longer the registered one (after a keys file reload). */
  revokeChangedKeys(): number {
    let revoked = 0;
    for (const peer of this.peers.values()) {
      if (this.keys.isCurrent(peer.nodeId, Buffer.from(peer.keyLatin1!, 'latin1'), peer.keySource!)) continue;
      revoked++;
      this.stats.revokedPeers++;
      this.detach(peer);
      this.revokedLog.info({ nodeId: peer.nodeId });
      this.closeWithGrace(peer, CloseCode.PolicyViolation, CloseReason.keyRevoked);
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
    this.stats.replacedPeers++;
    this.detach(peer);
    this.replacedElsewhereLog.info({ nodeId });
    this.closeWithGrace(peer, CloseCode.Replaced, CloseReason.replaced);
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
      if (!peer.isOpen) continue;
      asked++;
      this.stats.clusterRebalanced++;
      this.rebalancedLog.info({ nodeId: peer.nodeId });
      peer.sendText(notice);
      this.closeWithGrace(peer, CloseCode.GoingAway, CloseReason.rebalancing);
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
   * Refuses new upgrades, calls `beforeClose` on each open connection,
   * closes each with 1001, and waits up to `graceMs` for the closes before
   * destroying the rest.
   */
  async shutdown(graceMs: number, beforeClose?: (peer: Peer) => void): Promise<void> {
    this.draining = true;
    clearInterval(this.idleSweep);
    const closing = new Promise<void>((resolve) => {
      this.allClosed = resolve;
      if (this.connections.size === 0) resolve();
    });
    for (const peer of this.connections) {
      if (peer.isOpen) {
        peer.flush();
        beforeClose?.(peer);
      }
      peer.close(CloseCode.GoingAway, CloseReason.shuttingDown);
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closing, new Promise((resolve) => { timer = setTimeout(resolve, graceMs); })]);
    clearTimeout(timer);
    for (const peer of this.connections) peer.terminate();
    this.authDeadlines.clear();
    this.closeGraces.clear();
  }

  get isDraining(): boolean {
    return this.draining;
  }

  // ---- admission ------------------------------------------------------------------

  private onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer, trust: TrustProxy): void {
    const { ip, port } = clientAddress(req, trust);
    if (!isCompatUpgrade(req)) return this.refuse(socket, ip, 'not_compat_path');
    // A trusted proxy can still forward garbage; the address ends up in DiscoverReply.
    if (this.draining || isIP(ip) === 0) return this.refuse(socket, ip, this.draining ? 'shutting_down' : 'bad_forwarded_address');
    const client = { ipKey: perIpKey(ip, this.deps.config.ipv6PrefixBits), networks: ipv6Networks(ip) };
    const refusal = this.admission.check(client, this.peers.size);
    if (refusal) return this.refuse(socket, ip, refusal);
    if (socket.destroyed) return;
    this.admission.admit(client);
    const peer = new Peer(socket, this, req, head, ip, port, client.ipKey, client.networks);
    this.connections.add(peer);
    this.work.add(peer);
  }

  /**
   * ws found the upgrade request invalid (e.g. no Sec-WebSocket-Key). The
   * slots admission gave it come back now, not when the client closes, and
   * the socket is destroyed once the 400 is written: ending it only
   * half-closes, which a client can hold open for ever.
   */
  private refuseInvalidUpgrade(socket: Socket): void {
    const { stats } = this;
    stats.refused.invalid_upgrade++;
    stats.upgradesFailed++;
    const peer = this.acceptingNow;
    if (peer !== undefined && peer.socket === socket) {
      const hs = peer.handshake;
      if (hs !== undefined) hs.state = 'finished'; // not a handshake that failed: an upgrade refused
      this.releaseSlots(peer);
    }
    refuseUpgrade(socket, 400, 'invalid_upgrade');
  }

  private refuse(socket: Socket, ip: string, refusal: RefusalReason): void {
    const { stats } = this;
    stats.refused[refusal]++;
    stats.upgradesFailed++;
    this.refusedLog.info({ ip, reason: refusal });
    refuseUpgrade(socket, REFUSAL_STATUS[refusal], refusal);
  }

  // ---- PeerHost ---------------------------------------------------------------------

  /** The peer whose upgrade ws is answering right now (ws's refusal names only the socket). */
  private acceptingNow: Peer | undefined;

  accept(peer: Peer, hs: Handshake): void {
    const { request, head } = hs;
    hs.request = undefined;
    hs.head = undefined;
    if (request === undefined || head === undefined) return;
    const socket = peer.socket;
    this.acceptingNow = peer;
    // The 101 and the challenge leave in one write.
    socket.cork();
    peer.beforeAccept();
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      this.stats.upgradesOk++;
      peer.accepted(ws as PeerWebSocket);
      sendChallenge(peer, hs, this);
    });
    // Refused (a 400, or a socket ws found half-closed and destroyed): its close must still end the connection.
    if (peer.ws === undefined) peer.notAccepted();
    socket.uncork();
    this.acceptingNow = undefined;
  }

  onPacket(peer: Peer, packet: Buffer): void {
    this.deps.onPacket(peer, packet);
  }

  handshakeEnded(peer: Peer, result: HandshakeResult): void {
    const { stats, config } = this.deps;
    this.releaseHandshakeSlot(peer);
    if (!result.ok) {
      stats.authFailed[result.reason]++;
      this.authFailedLog.info({ ip: peer.clientIp, reason: result.reason });
      if (result.reason !== 'closed') this.closeWithGrace(peer, CloseCode.PolicyViolation, CloseReason.authFailed);
      return;
    }
    if (this.draining) return this.closeWithGrace(peer, CloseCode.GoingAway, CloseReason.shuttingDown);
    if (this.peers.size >= config.maxPeers && !this.peers.has(result.nodeId)) {
      stats.refused.max_peers++;
      this.atCapacityLog.info({ ip: peer.clientIp, nodeId: result.nodeId });
      return this.closeWithGrace(peer, CloseCode.TryAgainLater, CloseReason.atCapacity);
    }
    peer.authenticated(result.nodeId, result.key.raw, result.key.source);
    this.attach(peer);
  }

  socketError(peer: Peer, error: Error & { code?: string }): void {
    if (error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.stats.drop('oversized');
    this.deps.log.debug({ nodeId: peer.nodeId, err: error }, 'websocket error');
    // ws has started the close with the right code (or the socket is gone); make sure it ends.
    this.startCloseGrace(peer);
  }

  closed(peer: Peer, code: number): void {
    this.connections.delete(peer);
    this.releaseSlots(peer);
    this.closeGraces.cancel(peer.closeGrace);
    peer.closeGrace = NO_DEADLINE;
    peer.pacer?.release();
    if (peer.attached) {
      peer.attached = false;
      this.stats.peerDisconnects++;
      if (this.peers.detach(peer)) this.disconnectedLog.info({ nodeId: peer.nodeId, code });
      this.deps.onPeerClosed?.(peer, code);
    }
    if (this.connections.size === 0) this.allClosed?.();
  }

  private releaseHandshakeSlot(peer: Peer): void {
    if (!peer.inHandshakeSlot) return;
    peer.inHandshakeSlot = false;
    this.admission.handshakeEnded(peer);
  }

  /** Both of a connection's admission slots, each once. */
  private releaseSlots(peer: Peer): void {
    this.releaseHandshakeSlot(peer);
    if (!peer.inSocketSlot) return;
    peer.inSocketSlot = false;
    this.admission.socketClosed(peer);
  }

  // ---- peers ---------------------------------------------------------------------------

  private attach(peer: Peer): void {
    const { stats } = this;
    const previous = this.peers.attach(peer);
    peer.attached = true;
    if (previous) {
      // One budget per node: the old socket, still closing, and this one share it.
      if (previous.pacer) {
        const pacer = new ReadPacer(peer.ws!, this.pacing, peer.nodeId);
        pacer.shareBudgetOf(previous.pacer);
        peer.startPacing(pacer);
      }
      previous.replaced = true;
      stats.replacedPeers++;
      this.replacedLog.info({ nodeId: peer.nodeId });
      this.closeWithGrace(previous, CloseCode.Replaced, CloseReason.replaced);
    }
    stats.authOk++;
    peer.ws!.send(AUTH_OK_MESSAGE);
    this.connectedLog.info({ nodeId: peer.nodeId, ip: peer.clientIp });
  }

  /** Out of the peer map (it stays `attached` for its close to be reported). */
  private detach(peer: Peer): void {
    this.peers.detach(peer);
  }

  private sweepIdle(idleMs: number, intervalMs: number): void {
    // Milliseconds since the listener started: a small integer a peer holds without a boxed number.
    const now = Date.now() - this.startedAt;
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
        this.stats.idleDisconnects++;
        this.detach(peer);
        this.idleLog.info({ nodeId: peer.nodeId });
        this.closeWithGrace(peer, CloseCode.GoingAway, CloseReason.idleTimeout);
      } else if (quietFor >= intervalMs) {
        peer.ping();
      }
    }
  }

  /** Closes with a code, and destroys the socket if the other side never answers. */
  private closeWithGrace(peer: Peer, code: number, reason: string): void {
    if (peer.isClosed) return;
    peer.close(code, reason);
    this.startCloseGrace(peer);
  }

  private startCloseGrace(peer: Peer): void {
    if (!peer.isClosed && peer.closeGrace === NO_DEADLINE) peer.closeGrace = this.closeGraces.add(peer);
  }
}
