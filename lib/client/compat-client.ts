/**
 * CompatClient: a daemon's one long-lived compat WebSocket to a beacon
 * (docs/protocol.md §2), with the handshake, keepalive and reconnects done right.
 *
 * - Dials ws:// or wss:// (a private CA through `ca`) with subprotocol
 *   pilot.v1 and a 64 KiB message limit; waits for auth_challenge, signs
 *   `compat_auth:<node_id>:<nonce>` with tweetnacl, and is connected at
 *   auth_ok. Everything from dialing to auth_ok is bounded by
 *   `connectTimeoutMs`.
 * - Connected: each binary message is decoded by lib/protocol (the
 *   project's one codec) and emitted as `packet` with its raw bytes. Text
 *   messages it does not understand are ignored; it understands the
 *   `restarting` notice. A ping every `pingIntervalMs` keeps proxies from
 *   culling the socket; a socket that answered nothing between two pings
 *   is dead and is dropped.
 * - Lost or failed: reconnects on its own with exponential backoff
 *   (`initialDelayMs` doubling to `maxDelayMs`, with jitter), each wait
 *   reported in `reconnecting`. Three closes are special:
 *     1008 (auth failed or key revoked): `authFailed` is emitted and the
 *       next try waits the cap, not the backoff: keys can be added later,
 *       so the client keeps trying, slowly.
 *     4001 (replaced by a newer connection of the same node): the next try
 *       waits the cap, so two processes with one identity take turns every
 *       `maxDelayMs` instead of fighting in a loop.
 *     a `restarting` notice before the close: the next try waits
 *       `reconnect_in_ms` plus jitter spread over the first half of
 *       `try_for_ms` (so thousands of daemons do not come back in the same
 *       millisecond, and a failed first try still has half the window to
 *       retry in), and the backoff starts over.
 * - `send` never queues: while not connected it throws NotConnectedError
 *   (ENOTCONNECTED) at once; past `maxBufferedBytes` of unsent data it
 *   throws EBUFFERFULL. The caller's own retries decide.
 * - `close()` is final and idempotent, and returns promptly in any state:
 *   it clears a pending reconnect and closes (or, after
 *   `closeTimeoutMs`, destroys) the socket.
 * - Several beacon URLs (a cluster's instances, or beacons on several
 *   machines): the first attempt dials the first URL, and every reconnect,
 *   whatever its cause, dials the next one in the list, round the ring,
 *   after the same backoff as with one URL. A working connection is kept:
 *   there is no moving back to an earlier URL (in a cluster every instance
 *   reaches every node). A `restarting` notice is about the beacon that
 *   sent it, so with several URLs the next try goes to the next URL after
 *   only the notice's jitter, not its reconnect_in_ms; a notice with
 *   reason "rebalance" (one process of a shared address holds more than
 *   its share) sends it back to the same URL. `connect({ failFast
 *   })` gives up only once every URL failed in a row (or at once on an
 *   auth failure: that beacon answered and refused the key).
 * - The client does not do UDP (see udp-discover.ts) and does not decide
 *   anything about routes: it sends what it is given.
 */
import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import {
  COMPAT_SUBPROTOCOL, CloseCode, MAX_MESSAGE_BYTES, PacketType,
  authReplyMessage, authSignedMessage, decodePacket, encodeDiscover, encodePunchRequest, encodeRelay,
  isValidNodeId, parseBeaconControl,
  type Endpoint, type NodeId, type Packet, type RestartingNotice,
} from '../protocol';
import { publicKeyBase64, signDetached, type Identity } from '../identity';
import { backoffDelay, jittered, type BackoffPolicy, type Jitter } from './backoff';
import {
  connectTimeout, fromCloseBeforeAuth, fromHttpResponse, fromSocketError, parseBeaconUrl,
  type HandshakePhase,
} from './connect-errors';
import {
  AuthFailedError, ClientClosedError, ClientError, ConnectError, NotConnectedError,
} from './errors';

export interface CompatClientOptions {
  /**
   * ws://HOST:PORT/v1/compat or wss://HOST/v1/compat; or several, tried in
   * order and in turn on every reconnect (see the module comment).
   */
  url: string | readonly string[];
  /** The node this client authenticates as. */
  nodeId: NodeId;
  /** Its key pair (lib/identity: loadIdentity, generateIdentity). */
  identity: Identity;
  /** PEM CA certificate(s) to trust for wss:// (a private or self-signed CA). Default: the system's CAs. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Extra headers on the upgrade request. */
  headers?: Record<string, string>;
  /** From dialing to auth_ok. Default 10 s (the beacon's own auth timeout). */
  connectTimeoutMs?: number;
  /** Ping period while connected. Default 30 s: under the 60 s idle cut of common proxies and the beacon's 90 s. */
  pingIntervalMs?: number;
  /** Ceiling of the first reconnect wait. Default 250 ms. */
  initialDelayMs?: number;
  /** Cap of every reconnect wait; also the wait after 1008 and 4001. Default 30 s. */
  maxDelayMs?: number;
  /** Default 'equal': each wait is between half its ceiling and its ceiling. */
  jitter?: Jitter;
  /** Uniform in [0, 1); injectable for tests. Default Math.random. */
  random?: () => number;
  /**
   * Most jitter added to a `restarting` notice's reconnect_in_ms. The jitter
   * is spread over the first half of the notice's try_for_ms window (the
   * second half leaves room for a retry); this caps it further. Default: no
   * further cap.
   */
  restartJitterMs?: number;
  /** Unsent bytes beyond which `send` throws EBUFFERFULL. Default 1 MiB (64 maximum-size packets). */
  maxBufferedBytes?: number;
  /** How long `close()` waits for the beacon to answer the close before destroying the socket. Default 1 s. */
  closeTimeoutMs?: number;
  /** Default timeout of `discover()`. Default 5 s. */
  discoverTimeoutMs?: number;
}

export const CLIENT_DEFAULTS = Object.freeze({
  connectTimeoutMs: 10_000,
  pingIntervalMs: 30_000,
  initialDelayMs: 250,
  maxDelayMs: 30_000,
  jitter: 'equal' as Jitter,
  restartJitterMs: Infinity,
  maxBufferedBytes: 1024 * 1024,
  closeTimeoutMs: 1_000,
  discoverTimeoutMs: 5_000,
});

/**
 * idle: constructed, not started. connecting: an attempt is under way.
 * connected: authenticated. waiting: backing off before the next attempt.
 * closed: final.
 */
export type ClientState = 'idle' | 'connecting' | 'connected' | 'waiting' | 'closed';

/**
 * Why the client is about to reconnect: `lost` (a connection that was up
 * ended), `failed` (an attempt failed before auth_ok), `auth_failed` (1008),
 * `replaced` (4001), `restarting` (the beacon announced a restart).
 */
export type ReconnectCause = 'lost' | 'failed' | 'auth_failed' | 'replaced' | 'restarting';

export interface ConnectingEvent { attempt: number; url: string }
export interface ConnectedEvent { attempt: number; url: string; nodeId: NodeId }
export interface DisconnectedEvent { code: number; reason: string }
export interface ReconnectingEvent {
  /** 1 for the first retry after a loss or a good connection, then 2, 3, ... */
  attempt: number;
  /** How long the client waits before dialing again. */
  delayMs: number;
  cause: ReconnectCause;
  /** What the failed attempt ran into (cause `failed` or `auth_failed`). */
  error?: ConnectError;
  /** The URL the next attempt dials (the next one in the list when there are several). */
  url: string;
}

export interface CompatClientEvents {
  connecting: [event: ConnectingEvent];
  connected: [event: ConnectedEvent];
  /** A decoded beacon packet and the message it came in (a view, valid until the listener returns unless copied). */
  packet: [packet: Packet, raw: Buffer];
  disconnected: [event: DisconnectedEvent];
  reconnecting: [event: ReconnectingEvent];
  authFailed: [error: AuthFailedError];
  /** The beacon announced a restart; the next reconnect honours it. */
  restarting: [notice: RestartingNotice];
  /**
   * Each failed attempt's ConnectError. Emitted only when someone listens:
   * the client reconnects on its own, so an unheard failure must not crash
   * the process the way an unhandled 'error' event would.
   */
  error: [error: Error];
  /** After close(). */
  closed: [];
}

export interface ConnectOptions {
  /**
   * Reject with the first failed attempt's ConnectError, and close the
   * client, instead of retrying. With several URLs: once each of them has
   * failed in a row, with one error naming every URL's failure (an auth
   * failure still ends it at once: that beacon answered and refused the key).
   */
  failFast?: boolean;
  /** Reject with ETIMEDOUT if not connected within this (the client keeps trying unless failFast). */
  timeoutMs?: number;
}

interface Settings extends Required<Omit<CompatClientOptions, 'ca' | 'headers' | 'url' | 'nodeId' | 'identity'>> {
  ca?: CompatClientOptions['ca'];
  headers?: Record<string, string>;
}

export class CompatClient extends EventEmitter<CompatClientEvents> {
  /** Every beacon URL, in the order they are tried. */
  readonly urls: readonly URL[];
  readonly nodeId: NodeId;
  private readonly identity: Identity;
  private readonly publicKeyB64: string;
  private readonly settings: Settings;
  private readonly policy: BackoffPolicy;

  private currentState: ClientState = 'idle';
  /** Index in `urls` of the URL being (or last) dialed. */
  private urlIndex = 0;
  private ws: WebSocket | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  /** Consecutive reconnects since the last good connection. */
  private failures = 0;
  private attempts = 0;
  private ignored = 0;
  private restartNotice: RestartingNotice | undefined;
  private closePromise: Promise<void> | undefined;
  private readonly failureHooks = new Set<(err: ConnectError) => void>();
  private discoverWaiters: Array<{ resolve: (e: Endpoint) => void; reject: (err: Error) => void; timer: NodeJS.Timeout }> = [];
  private lastFailure: ConnectError | undefined;
  /** Set by any inbound traffic; the ping timer drops a socket that stayed silent a whole period. */
  private alive = false;

  /** Throws ConnectError EBADURL for a URL that is not ws:// or wss:// (or no URL), TypeError for other bad options. */
  constructor(options: CompatClientOptions) {
    super();
    this.urls = parseBeaconUrls(options.url);
    if (!isValidNodeId(options.nodeId)) throw new TypeError(`nodeId must be a node ID (1 to 4294967295), got ${String(options.nodeId)}`);
    if (!options.identity || options.identity.secretKey?.length !== 64 || options.identity.publicKey?.length !== 32) {
      throw new TypeError('identity must be an Ed25519 key pair (lib/identity: loadIdentity or generateIdentity)');
    }
    this.nodeId = options.nodeId;
    this.identity = options.identity;
    this.publicKeyB64 = publicKeyBase64(options.identity);
    const { url: _url, nodeId: _nodeId, identity: _identity, ...rest } = options;
    const defined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
    const settings: Settings = { ...CLIENT_DEFAULTS, random: Math.random, ...defined } as Settings;
    for (const key of ['connectTimeoutMs', 'pingIntervalMs', 'initialDelayMs', 'maxDelayMs', 'maxBufferedBytes', 'closeTimeoutMs', 'discoverTimeoutMs'] as const) {
      const v = settings[key];
      if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new TypeError(`${key} must be a positive number, got ${String(v)}`);
    }
    if (!['equal', 'full', 'none'].includes(settings.jitter)) throw new TypeError(`jitter must be 'equal', 'full' or 'none', got ${String(settings.jitter)}`);
    if (!(settings.restartJitterMs >= 0)) throw new TypeError(`restartJitterMs must be 0 or more, got ${String(settings.restartJitterMs)}`);
    if (settings.initialDelayMs > settings.maxDelayMs) {
      throw new TypeError(`initialDelayMs (${settings.initialDelayMs}) must not exceed maxDelayMs (${settings.maxDelayMs})`);
    }
    this.settings = settings;
    this.policy = { initialDelayMs: settings.initialDelayMs, maxDelayMs: settings.maxDelayMs, jitter: settings.jitter, random: settings.random };
  }

  /** The URL being dialed, connected to, or dialed next. */
  get url(): URL {
    return this.urls[this.urlIndex]!;
  }

  get state(): ClientState {
    return this.currentState;
  }

  get isConnected(): boolean {
    return this.currentState === 'connected';
  }

  /** Connection attempts made so far (each dial counts). */
  get connectAttempts(): number {
    return this.attempts;
  }

  /** Messages ignored: unknown text messages, undecodable or early binary ones. */
  get ignoredMessages(): number {
    return this.ignored;
  }

  /** The most recent failed attempt's error, if any. */
  get lastError(): ConnectError | undefined {
    return this.lastFailure;
  }

  /** Starts connecting (and reconnecting) in the background; events tell the rest. */
  start(): this {
    if (this.currentState === 'closed') throw new ClientClosedError();
    if (this.currentState === 'idle') this.dial();
    return this;
  }

  /** Starts if needed and resolves once authenticated. */
  connect(options: ConnectOptions = {}): Promise<void> {
    if (this.currentState === 'closed') return Promise.reject(new ClientClosedError());
    if (this.currentState === 'connected') return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        this.off('connected', onConnected);
        this.off('closed', onClosed);
        this.failureHooks.delete(onFailure);
        clearTimeout(timer);
      };
      const onConnected = () => { cleanup(); resolve(); };
      const onClosed = () => { cleanup(); reject(new ClientClosedError()); };
      const failures: Array<{ url: URL; error: ConnectError }> = [];
      const onFailure = (error: ConnectError) => {
        failures.push({ url: this.url, error });
        // A refused key is an answer, not an unreachable beacon: no use trying the others.
        if (failures.length < this.urls.length && !(error instanceof AuthFailedError)) return;
        cleanup();
        reject(failures.length === 1 || error instanceof AuthFailedError ? error : everyUrlFailed(failures));
        void this.close();
      };
      this.on('connected', onConnected);
      this.on('closed', onClosed);
      if (options.failFast) this.failureHooks.add(onFailure);
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          const last = this.lastFailure ? ` (last attempt: ${this.lastFailure.message})` : '';
          const where = this.urls.map((u) => u.host).join(' or ');
          const err = new ConnectError(`not connected to ${where} within ${options.timeoutMs} ms${last}`, 'ETIMEDOUT');
          reject(err);
          if (options.failFast) void this.close();
        }, options.timeoutMs);
      }
      this.start();
    });
  }

  /** Sends one beacon packet. Throws NotConnectedError at once when not connected; never queues. */
  send(packet: Uint8Array): void {
    const ws = this.ws;
    if (this.currentState !== 'connected' || !ws || ws.readyState !== WebSocket.OPEN) {
      throw new NotConnectedError(this.currentState);
    }
    if (packet.length > MAX_MESSAGE_BYTES) {
      throw new ClientError(`a packet of ${packet.length} bytes exceeds the beacon's ${MAX_MESSAGE_BYTES}-byte message limit`, 'ETOOBIG');
    }
    if (ws.bufferedAmount + packet.length > this.settings.maxBufferedBytes) {
      throw new ClientError(`${ws.bufferedAmount} bytes are still unsent to the beacon (limit ${this.settings.maxBufferedBytes}); the packet was not sent`, 'EBUFFERFULL');
    }
    ws.send(packet, { binary: true });
  }

  /** Relays `payload` to node `dest` through the beacon (a Relay packet from this node). */
  relay(dest: NodeId, payload: Uint8Array | string): void {
    if (!isValidNodeId(dest)) throw new RangeError(`dest must be a node ID (1 to 4294967295), got ${String(dest)}`);
    this.send(encodeRelay(this.nodeId, dest, typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload));
  }

  /** Asks the beacon for a hole punch with `target` (the beacon does not coordinate it for WebSocket peers). */
  punch(target: NodeId): void {
    if (!isValidNodeId(target)) throw new RangeError(`target must be a node ID (1 to 4294967295), got ${String(target)}`);
    this.send(encodePunchRequest(this.nodeId, target));
  }

  /**
   * Sends Discover and resolves with the endpoint the beacon sees for this
   * connection. Rejects at once when not connected, and on timeout or loss.
   */
  discover(timeoutMs = this.settings.discoverTimeoutMs): Promise<Endpoint> {
    try {
      this.send(encodeDiscover(this.nodeId));
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<Endpoint>((resolve, reject) => {
      const waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.discoverWaiters = this.discoverWaiters.filter((w) => w !== waiter);
          reject(new ConnectError(`no DiscoverReply from ${this.url.host} within ${timeoutMs} ms`, 'ETIMEDOUT'));
        }, timeoutMs),
      };
      this.discoverWaiters.push(waiter);
    });
  }

  /** Final: stops reconnecting and closes the socket. Idempotent; resolves once the socket is gone. */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    const wasConnected = this.currentState === 'connected';
    this.currentState = 'closed';
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    const ws = this.ws;
    this.ws = undefined;
    this.failDiscoverWaiters(new ClientClosedError());
    this.closePromise = ws ? closeSocket(ws, this.settings.closeTimeoutMs) : Promise.resolve();
    if (wasConnected) this.emit('disconnected', { code: 1000, reason: 'closed by the client' });
    this.emit('closed');
    return this.closePromise;
  }

  // ---- one connection attempt ---------------------------------------------

  private dial(): void {
    const attempt = ++this.attempts;
    const { settings, url } = this;
    this.currentState = 'connecting';
    let ws: WebSocket;
    try {
      ws = new WebSocket(url, [COMPAT_SUBPROTOCOL], {
        maxPayload: MAX_MESSAGE_BYTES,
        perMessageDeflate: false,
        followRedirects: false,
        ca: settings.ca,
        headers: settings.headers,
      });
    } catch (err) {
      // Bad headers and the like: an attempt that fails, reported like any other.
      this.emit('connecting', { attempt, url: url.href });
      const error = new ConnectError(`cannot open a WebSocket to ${url.host}: ${(err as Error).message}`, 'ENETWORK');
      process.nextTick(() => { if (this.currentState === 'connecting') this.onAttemptFailed(error); });
      return;
    }
    this.ws = ws;
    let phase: HandshakePhase | 'open' = 'upgrade';
    let failure: ConnectError | undefined;
    let lostReason: string | undefined;
    const timer = setTimeout(() => {
      if (phase === 'open') return;
      failure ??= connectTimeout(phase, settings.connectTimeoutMs, url);
      ws.terminate();
    }, settings.connectTimeoutMs);

    ws.on('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        const retryAfter = res.headers['retry-after'];
        failure ??= fromHttpResponse(res.statusCode ?? 0, Array.isArray(retryAfter) ? retryAfter[0] : retryAfter,
          Buffer.concat(chunks).toString('utf8'), url);
        res.destroy();
        ws.terminate();
      };
      res.on('data', (chunk: Buffer) => {
        if (size < 1024) chunks.push(chunk);
        size += chunk.length;
        if (size >= 1024) finish();
      });
      res.once('end', finish);
      res.once('error', finish);
      res.once('close', finish);
    });
    // Never removed: ws emits 'error' on abort and after close() too.
    ws.on('error', (err: Error & { code?: string }) => {
      if (phase === 'open') lostReason ??= err.message;
      else failure ??= fromSocketError(err, url);
    });
    ws.on('open', () => { phase = 'challenge'; });
    const touch = () => { if (this.ws === ws) this.alive = true; };
    ws.on('ping', touch);
    ws.on('pong', touch);
    ws.on('message', (data, isBinary) => {
      if (this.ws !== ws) return;
      this.alive = true;
      if (isBinary) {
        if (phase !== 'open') { this.ignored++; return; }
        this.onBinary(toBuffer(data));
        return;
      }
      const control = parseBeaconControl(toBuffer(data).toString('utf8'));
      switch (control?.type) {
        case 'auth_challenge': {
          if (phase !== 'challenge') { this.ignored++; return; }
          const sig = signDetached(this.identity, authSignedMessage(this.nodeId, control.nonce));
          ws.send(authReplyMessage({ node_id: this.nodeId, public_key: this.publicKeyB64, sig: Buffer.from(sig).toString('base64') }));
          phase = 'auth_ok';
          return;
        }
        case 'auth_ok':
          if (phase !== 'auth_ok') { this.ignored++; return; }
          phase = 'open';
          clearTimeout(timer);
          this.onConnected(ws, attempt, (why) => { lostReason = why; });
          return;
        case 'restarting':
          this.restartNotice = control;
          this.emit('restarting', control);
          return;
        default:
          // Reserved for future control messages: ignored, as the Go daemons do.
          this.ignored++;
      }
    });
    ws.on('close', (code, reasonBuf) => {
      clearTimeout(timer);
      if (this.ws !== ws) return; // closed by close(), nothing more to do
      this.ws = undefined;
      const reason = reasonBuf.toString('utf8');
      if (phase === 'open') {
        this.onLost(code, lostReason ?? reason);
        return;
      }
      const error = code === CloseCode.PolicyViolation
        ? new AuthFailedError(this.nodeId, this.publicKeyB64, code, reason)
        : failure ?? fromCloseBeforeAuth(code, reason, url);
      this.onAttemptFailed(error);
    });
    this.emit('connecting', { attempt, url: url.href });
  }

  private onConnected(ws: WebSocket, attempt: number, setLostReason: (why: string) => void): void {
    this.currentState = 'connected';
    this.failures = 0;
    this.lastFailure = undefined;
    this.restartNotice = undefined;
    this.alive = true;
    const period = this.settings.pingIntervalMs;
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws) return;
      if (!this.alive) {
        setLostReason(`no answer to ping within ${period} ms`);
        ws.terminate();
        return;
      }
      this.alive = false;
      ws.ping();
    }, period);
    this.emit('connected', { attempt, url: this.url.href, nodeId: this.nodeId });
  }

  private onBinary(raw: Buffer): void {
    const packet = decodePacket(raw);
    if (!packet) { this.ignored++; return; }
    if (packet.type === PacketType.DiscoverReply) {
      const waiters = this.discoverWaiters;
      this.discoverWaiters = [];
      for (const w of waiters) { clearTimeout(w.timer); w.resolve(packet.endpoint); }
    }
    this.emit('packet', packet, raw);
  }

  private onLost(code: number, reason: string): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    this.currentState = 'waiting';
    this.failDiscoverWaiters(new NotConnectedError(`connection lost: close ${code}`));
    this.emit('disconnected', { code, reason });
    if (this.isClosed()) return;
    if (code === CloseCode.PolicyViolation) {
      const error = new AuthFailedError(this.nodeId, this.publicKeyB64, code, reason);
      this.lastFailure = error;
      this.emit('authFailed', error);
      if (this.isClosed()) return;
      this.scheduleReconnect('auth_failed', error);
    } else if (code === CloseCode.Replaced) {
      this.scheduleReconnect('replaced');
    } else {
      this.scheduleReconnect(this.restartNotice ? 'restarting' : 'lost');
    }
  }

  private onAttemptFailed(error: ConnectError): void {
    this.currentState = 'waiting';
    this.lastFailure = error;
    if (error instanceof AuthFailedError) this.emit('authFailed', error);
    if (this.isClosed()) return;
    if (this.listenerCount('error') > 0) this.emit('error', error);
    for (const hook of [...this.failureHooks]) hook(error);
    if (this.isClosed()) return;
    this.scheduleReconnect(error instanceof AuthFailedError ? 'auth_failed' : this.restartNotice ? 'restarting' : 'failed', error);
  }

  private scheduleReconnect(cause: ReconnectCause, error?: ConnectError): void {
    const { settings, policy } = this;
    let attempt: number;
    let delayMs: number;
    const notice = this.restartNotice;
    const failover = this.urls.length > 1;
    // Every reconnect dials the next URL (a no-op with one).
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    if (cause === 'restarting' && notice) {
      // The beacon said when to come back: wait that long, spread by jitter,
      // and start the backoff over for the tries after it. Another beacon
      // is not restarting: only the spread is kept for it. A rebalance is
      // about one process behind this URL, which goes on: back to the same one.
      this.restartNotice = undefined;
      this.failures = 0;
      attempt = 1;
      const rebalance = notice.reason === 'rebalance';
      if (rebalance) this.urlIndex = (this.urlIndex + this.urls.length - 1) % this.urls.length;
      const window = Math.min(settings.restartJitterMs, notice.try_for_ms / 2);
      delayMs = Math.round((failover && !rebalance ? 0 : notice.reconnect_in_ms) + window * unit(settings.random()));
    } else {
      attempt = ++this.failures;
      if (cause === 'auth_failed' || cause === 'replaced') {
        delayMs = jittered(settings.maxDelayMs, policy);
      } else {
        delayMs = backoffDelay(attempt, policy);
        const retryAfter = error?.details.retryAfterMs;
        if (retryAfter !== undefined) delayMs = Math.max(delayMs, Math.min(retryAfter, settings.maxDelayMs));
      }
    }
    this.currentState = 'waiting';
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.currentState === 'waiting') this.dial();
    }, delayMs);
    this.emit('reconnecting', { attempt, delayMs, cause, error, url: this.url.href });
  }

  private failDiscoverWaiters(err: Error): void {
    const waiters = this.discoverWaiters;
    this.discoverWaiters = [];
    for (const w of waiters) { clearTimeout(w.timer); w.reject(err); }
  }

  /** A listener may have called close(); TypeScript cannot see that through `emit`. */
  private isClosed(): boolean {
    return this.currentState === 'closed';
  }
}

/** Closes `ws` with 1000 (or aborts it while connecting); destroys it if the close is not answered in time. */
function closeSocket(ws: WebSocket, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve();
    const timer = setTimeout(() => ws.terminate(), timeoutMs);
    ws.once('close', () => { clearTimeout(timer); resolve(); });
    if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
    else if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'client closing');
  });
}

/** One URL or several, each a beacon URL; at least one. */
function parseBeaconUrls(given: string | readonly string[]): URL[] {
  const texts = typeof given === 'string' ? [given] : [...given];
  if (texts.length === 0) throw new ConnectError('no beacon URL given: pass at least one ws://HOST:PORT/v1/compat or wss://HOST/v1/compat', 'EBADURL');
  return texts.map(parseBeaconUrl);
}

/** failFast over several URLs: one error naming what each URL ran into; the last one's code. */
function everyUrlFailed(failures: Array<{ url: URL; error: ConnectError }>): ConnectError {
  const last = failures[failures.length - 1]!.error;
  const each = failures.map(({ url, error }) => `${url.href}: ${error.message}`).join('; ');
  return new ConnectError(`none of the ${failures.length} beacons could be reached (${each})`, last.code, last.details);
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function unit(r: number): number {
  return Number.isFinite(r) && r > 0 ? Math.min(r, 1) : 0;
}
