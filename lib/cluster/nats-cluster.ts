/**
 * Cluster mode on NATS: the one module that talks to NATS. Loaded only
 * when --cluster is set (lib/beacon.ts imports it lazily).
 *
 * - Connection: the URLs of --cluster (user:password@ in a URL, or
 *   --cluster-creds; --cluster-tls-ca for TLS). Unreachable at start: the
 *   beacon serves its own peers and joins when NATS comes. Credentials or
 *   TLS refused at start: a StartError naming the fix (exit 2).
 * - On joining: subscribe, open the directory bucket, heartbeat, load the
 *   directory into the mirror (a live instance's snapshot, then a watch
 *   from its revision; the first instance watches every key), and write
 *   every attachment of ours. On a reconnect the watch resumes where it
 *   stopped, so the cluster converges without a restart or a reload.
 * - Liveness: a heartbeat every fifth of dead-after; a newcomer's first one
 *   is answered at once by every live instance, so it sees the whole
 *   cluster a round trip after joining. A graceful stop withdraws this
 *   instance's entries and says goodbye, so the others drop it at once.
 * - Liveness (instances.ts), directory (directory.ts), attach notices
 *   (attach-notices.ts), UDP claims (udp-claims.ts) and forwarding
 *   (forwarder.ts) are plain classes; this module feeds them NATS events.
 * - UDP claims are checked before they are taken: a new one only while
 *   this instance's view is complete (connected, its directory current,
 *   every live instance heard for a dead-after since it (re)synced), and
 *   within each source's budget (CLAIMS_PER_SOURCE_PER_SEC); a refused
 *   Discover is still answered, and counted (`cluster_not_ready`,
 *   `cluster_claim_rate`). Until the view is complete for the first time,
 *   UDP relays are dropped too (`cluster_not_ready`): their sender cannot be
 *   checked against the WebSocket nodes of the other instances yet.
 * - With --reuse-port the instances of one machine share an address
 *   (shared-address.ts; its key rides in each heartbeat, with the count of
 *   WebSocket peers): a UDP node another of them claims is sent to from
 *   this instance's socket (`sharedUdpEndpointOf`), and when one of them
 *   dies, the live one with the lowest ID adopts its UDP claims.
 * - Anything on our subjects or bucket that is not ours is counted
 *   (`cluster_malformed`) and dropped; nothing here throws into the beacon.
 *   A line a stranger can cause (an eviction) goes through the
 *   rate-limited log; the metrics count every event.
 * - No home-made consensus: the KV revision orders attachments, NATS
 *   carries heartbeats; a process dies when it stops heartbeating.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  AuthorizationError, NoRespondersError, UserAuthenticationExpiredError, connect, createInbox, credsAuthenticator, headers, nkeyAuthenticator,
  type Authenticator, type Msg, type NatsConnection, type NodeConnectionOptions, type Subscription,
} from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstream } from '@nats-io/jetstream';
import { Kvm, type KV, type KvWatchEntry } from '@nats-io/kv';
import { StartError } from '../start-error';
import { redactUrl } from '../config';
import { RateLimitedLog } from '../log/rate-limited-log';
import { relaySender, type NodeId } from '../protocol/packets';
import type { DropReason } from '../metrics';
import { canonicalIp } from '../protocol';
import { perIpKey } from '../net/client-address';
import type { UdpEndpoint } from '../udp/endpoints';
import { SourceRateLimiter } from '../udp/source-rate-limit';
import { SHARED_ADDRESS_HEADER, SHARED_ADDRESS_KEY } from './shared-address';
import type { BorrowedBytes } from '../udp/transport';
import { ProvisionalRoutes, decodeAttachNotice, encodeAttachNotice } from './attach-notices';
import { Directory } from './directory';
import { Forwarder } from './forwarder';
import { Instances, type Instance } from './instances';
import { CLAIMS_REFRESH_MS, CLAIMS_ROTATE_MS, UdpClaims, decodeClaims } from './udp-claims';
import {
  SnapshotReceiver, SnapshotWriter, chunkEntriesFor, forEachSnapshotEntry, refusedChunk, type ReceiveOutcome,
} from './snapshot';
import type { AddressGroup } from './rebalance';
import type { ClusterDeps, ClusterNode } from './types';
import {
  decodeBatch, decodeHeartbeat, decodeNodeKey, decodePlacement, encodeHeartbeat, natsAddress, subjectsFor, type AttachKind, type Subjects,
} from './wire';

/** A first connection attempt gives up after this; the beacon then starts without NATS and keeps trying. */
const CONNECT_TIMEOUT_MS = 2_000;
/** Between attempts while NATS is unreachable. */
const RETRY_MS = 1_000;
/** How long "is this instance ID taken?" waits for an answer. */
const WHO_TIMEOUT_MS = 500;
/** UDP endpoints expire silently; our claims for them are reconciled this often. */
const UDP_RECONCILE_MS = 5_000;
/**
 * New UDP claims one source address (IPv6: its --per-ip-ipv6-prefix) may
 * make per second, a second's worth at once: each is a message to every
 * instance. A NAT with --max-udp-endpoints-per-ip (1,000) daemons whose
 * mapping changes claims them all again within a Discover interval
 * (~25 s), about 40 a second; a stranger with made-up node IDs gets no more.
 */
export const CLAIMS_PER_SOURCE_PER_SEC = 100;
/** A directory write not acknowledged by then has failed (it is redone on reconnect). */
const KV_TIMEOUT_MS = 5_000;
/**
 * The directory not open after this long is reported at warn level, whatever
 * the reason (JetStream comes up a moment after a restarted server accepts
 * clients, so the first failures are only debug). JetStream off, on the
 * server or for our account, is reported at once.
 */
const DIRECTORY_STUCK_WARN_MS = 10_000;
/** Answers to newcomers' heartbeats go out at most this often (answerNewcomer). */
const ANSWER_SPACING_MS = 50;
/** JetStream API calls (bucket, watch set-up) may take this long. */
const JETSTREAM_TIMEOUT_MS = 30_000;
/** Shutdown waits this long for our entries to be deleted. */
const WITHDRAW_MS = 1_000;
/**
 * Copies of the directory a new bucket gets in a NATS cluster: three
 * survive losing any one server, and JetStream wants an odd number.
 */
const CLUSTER_REPLICAS = 3;
/** JetStream's answers when the cluster has fewer servers (with room) than the replicas asked for. */
const TOO_FEW_PEERS = new Set([10005 /* no suitable peers for placement */, 10023 /* insufficient resources */]);
/** A snapshot with no chunk for this long is given up (a lost chunk, a server gone). */
const SNAPSHOT_STALL_MS = 2_000;
/** Times a newcomer asks for a snapshot (an instance may refuse: loading itself, or busy) before watching every key. */
const SNAPSHOT_ATTEMPTS = 4;
/** A load makes room for at most this many entries up front (beyond, the mirror grows as usual). */
const MAX_RESERVED_ENTRIES = 16_000_000;
/** Old slots a rebuild of the mirror moves per turn before a snapshot walks it. */
const REBUILD_SLICE_SLOTS = 65_536;
/** Snapshots one instance serves at once; more newcomers are refused and ask again. */
const SNAPSHOT_SERVES = 2;
/** The heartbeat header carrying the WebSocket peers an instance holds (rebalancing). */
const PEERS_HEADER = 'Beacon-Peers';
/** The heartbeat header of an instance that is draining (a graceful stop): it leaves the rebalancing group at once. */
const DRAINING_HEADER = 'Beacon-Draining';
/** A dead instance's UDP claims adopted per event-loop turn (100,000 take a few turns, not one long one). */
const ADOPT_PER_TURN = 16_384;

/** A cluster node not yet joined: `reserveInstanceId` (optional, before binding), then `start`. */
export interface ClusterStarter {
  /**
   * Connects and checks that no live process has this instance ID, then
   * answers for it, so a second copy is refused before it binds sockets it
   * would share (--reuse-port). NATS unreachable: nothing is checked now
   * (joining checks later). Throws the StartError of a taken ID or refused credentials.
   */
  reserveInstanceId(): Promise<void>;
  /** Joins (or starts without NATS, and joins when it comes); `sharedAddressKey`: shared-address.ts, from the bound sockets. */
  start(sharedAddressKey: string | undefined): Promise<ClusterNode>;
  close(): Promise<void>;
}

export function createCluster(deps: ClusterDeps): ClusterStarter {
  return new NatsCluster(deps);
}

class NatsCluster implements ClusterNode, ClusterStarter {
  readonly instanceId: string;
  private readonly subjects: Subjects;
  /** Our own attach-notice subject, built once (one publish per attachment). */
  private readonly attachSubject: string;
  private readonly members: Instances;
  private readonly directory: Directory;
  private readonly claims: UdpClaims;
  /** New UDP claims per source address (CLAIMS_PER_SOURCE_PER_SEC). */
  private readonly claimBudget = new SourceRateLimiter({ packetsPerSec: CLAIMS_PER_SOURCE_PER_SEC, bytesPerSec: Infinity });
  private readonly claimsSubject: string;
  private readonly forwarder: Forwarder;
  /** Attachments other instances announced by notice, ahead of their KV entries. */
  private readonly provisional = new ProvisionalRoutes();
  private readonly incarnation = randomBytes(8).toString('hex');
  /**
   * A stranger causes evictions at will (Discovers for one node ID at two
   * instances, by turns), so this line is rate-limited: with a slow log
   * reader, one line each would block the event loop (/health included).
   */
  private readonly evictionLog: RateLimitedLog;
  private readonly options: NodeConnectionOptions;
  private nc: NatsConnection | undefined;
  /** The key of the address shared with other instances (start's argument); undefined when none. */
  private sharedAddressKey: string | undefined;
  /** When an instance last joined or left those sharing this address (or this one joined, or rejoined NATS). */
  private groupChangedAt = 0;
  /** This instance is draining (shutting down): its heartbeats say so. */
  private draining = false;
  /** reserveInstanceId connected and answers for the ID on this connection: joining uses it as it is. */
  private reserved: NatsConnection | undefined;
  private isConnected = false;
  private closed = false;
  private watchStop: (() => void) | undefined;
  /** The mirror reflects the bucket's stream through this revision (its sequence). */
  private appliedRevision = 0;
  /** The stream the mirror was loaded from (its creation time): a recreated one must be loaded anew. */
  private loadedStream: string | undefined;
  /** The mirror is complete up to appliedRevision, so it can be served as a snapshot. */
  private mirrorReady = false;
  private snapshotsServing = 0;
  /** Bumped on every (re)connect and close; stale async work checks it. */
  private epoch = 0;
  /** When the current connection's sync began: before dead-after has passed we have not heard everyone yet. */
  private syncedAt = 0;
  /** The mirror has caught up with the bucket since the last (re)connect. */
  private directoryCurrent = false;
  /** Connected, directory current, every live instance heard: new UDP claims can be checked (see updateView). */
  private viewComplete = false;
  /** Heartbeats go out this often (a fifth of dead-after). */
  private readonly heartbeatMs: number;
  /** When our last heartbeat went out: answers to newcomers are spaced (answerNewcomer). */
  private lastHeartbeatAt = 0;
  private answerTimer: NodeJS.Timeout | undefined;
  /** When the last tick ran: a tick much later than due means this process stalled. */
  private lastTickAt = 0;
  private claimsRefreshTimer: NodeJS.Timeout | undefined;
  private claimsRotateTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: ClusterDeps) {
    const { config } = deps;
    this.instanceId = deps.instanceId;
    this.heartbeatMs = Math.max(50, Math.floor(config.clusterDeadAfterMs / 5));
    this.subjects = subjectsFor(config.clusterName);
    this.attachSubject = this.subjects.attach(deps.instanceId);
    this.evictionLog = new RateLimitedLog(deps.log, 'node attached to another instance; dropping it here');
    this.members = new Instances(deps.instanceId, config.clusterDeadAfterMs, this.subjects.forward);
    this.directory = new Directory({
      self: this.members.self,
      evict: (nodeId, kind) => this.evict(nodeId, kind),
      wssAttachedElsewhere: (nodeId) => this.claims.yieldTo(nodeId),
      onStoreError: (err, op) => deps.log.debug({ err, op }, 'cluster directory write failed; it is redone on reconnect'),
    });
    this.claimsSubject = this.subjects.claims(deps.instanceId);
    this.claims = new UdpClaims({
      self: this.members.self,
      stats: deps.stats,
      publish: (message) => this.isConnected && this.publish(this.claimsSubject, message),
      endpointOf: (nodeId) => deps.udpEndpointOf(nodeId),
      isWssHere: (nodeId) => this.directory.isOwn(nodeId, 'wss'),
      evict: (nodeId) => this.evict(nodeId, 'udp'),
    });
    // A batch's reply subject is our own forward subject: the receiver checks which instance read its relays.
    const fromHere = { reply: this.subjects.forward(deps.instanceId) };
    this.forwarder = new Forwarder(deps.stats, () => this.isConnected, (subject, data) => this.publish(subject, data, fromHere));
    this.options = connectOptions(deps);
  }

  // ---- ClusterNode -----------------------------------------------------------

  instanceOf(nodeId: NodeId): Instance | undefined {
    // A notice is newer than the mirror's entry; asked only while one waits for its KV entry.
    if (this.provisional.size !== 0) {
      const noticed = this.provisional.instanceOf(nodeId);
      if (noticed !== undefined) return noticed;
    }
    // WebSocket placements first: a UDP claim never takes a node from a WebSocket.
    return this.directory.instanceOf(nodeId) ?? this.claims.instanceOf(nodeId);
  }

  sharedUdpEndpointOf(nodeId: NodeId): UdpEndpoint | undefined {
    if (!this.members.self.sharesAddress) return undefined;
    // WebSocket placements first, as instanceOf asks them: a UDP claim never takes a node from a WebSocket.
    if (this.provisional.size !== 0 && this.provisional.instanceOf(nodeId) !== undefined) return undefined;
    if (this.directory.instanceOf(nodeId) !== undefined) return undefined;
    return this.claims.sharedEndpointOf(nodeId);
  }

  addressGroup(): AddressGroup | undefined {
    if (!this.members.self.sharesAddress || !this.isConnected) return undefined;
    const othersPeers: number[] = [];
    let oldestHeartbeatAt = Infinity;
    for (const instance of this.members.live()) {
      if (instance.self || !instance.sharesAddress || instance.draining || instance.peers === undefined) continue;
      othersPeers.push(instance.peers);
      oldestHeartbeatAt = Math.min(oldestHeartbeatAt, instance.lastSeen);
    }
    return { othersPeers, changedAt: this.groupChangedAt, oldestHeartbeatAt };
  }

  forward(instance: Instance, relay: BorrowedBytes): void {
    this.forwarder.forward(instance, relay);
  }

  isWssElsewhere(nodeId: NodeId): boolean {
    return this.directory.isWssElsewhere(nodeId) || this.provisional.isWssElsewhere(nodeId);
  }

  attached(nodeId: NodeId): void {
    const isNew = !this.directory.isOwn(nodeId, 'wss');
    this.directory.attached(nodeId, 'wss');
    this.provisional.forget(nodeId);
    this.claims.withdraw(nodeId); // the WebSocket took its place here (the endpoint is gone)
    // In the same turn as the KV write and the daemon's auth_ok: the others route here at once.
    if (isNew && this.isConnected) {
      this.publish(this.attachSubject, Buffer.from(encodeAttachNotice(nodeId, 'wss', this.instanceId)));
    }
  }

  detached(nodeId: NodeId): void {
    this.directory.detached(nodeId, 'wss');
  }

  admitUdpClaim(address: string): DropReason | undefined {
    if (!this.viewComplete) return 'cluster_not_ready';
    if (this.claimBudget.allow(perIpKey(canonicalIp(address), this.deps.config.ipv6PrefixBits), 0) !== 'ok') return 'cluster_claim_rate';
    return undefined;
  }

  udpEndpointRecorded(nodeId: NodeId, endpoint: UdpEndpoint, isNew: boolean): void {
    this.claims.claim(nodeId, endpoint, isNew);
  }

  directoryProbes(nodeId: NodeId): number {
    // As instanceOf looks: the mirror, then the UDP claims.
    return this.directory.probes(nodeId) + (this.directory.instanceOf(nodeId) !== undefined ? 0 : this.claims.probes(nodeId));
  }

  connected(): number {
    return this.isConnected ? 1 : 0;
  }

  instances(): number {
    return this.members.liveCount;
  }

  directoryEntries(): number {
    return this.directory.size + this.claims.size;
  }

  drain(): void {
    if (this.draining) return;
    this.draining = true;
    if (this.isConnected) this.heartbeat(); // the others hear it now, not at the next tick
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.answerTimer);
    clearInterval(this.reconcileTimer);
    clearInterval(this.claimsRefreshTimer);
    clearInterval(this.claimsRotateTimer);
    this.provisional.clear();
    this.claims.clear();
    this.evictionLog.flush();
    this.forwarder.flushAll();
    if (this.isConnected) {
      await withTimeout(this.directory.withdrawAll(), WITHDRAW_MS);
      // Our entries are gone: the others drop us now, not a dead-after from now.
      this.publish(this.subjects.goodbye(this.instanceId), Buffer.from(encodeHeartbeat(this.instanceId, this.incarnation)));
      await withTimeout(this.nc?.flush() ?? Promise.resolve(), WITHDRAW_MS);
    }
    this.epoch++;
    this.isConnected = false;
    this.watchStop?.();
    const nc = this.nc ?? this.reserved;
    this.nc = undefined;
    this.reserved = undefined;
    await nc?.close().catch(() => undefined);
  }

  // ---- connection ------------------------------------------------------------

  async reserveInstanceId(): Promise<void> {
    let nc: NatsConnection;
    try {
      nc = await connect(this.options);
    } catch (err) {
      const refused = refusal(err);
      if (refused) throw refused;
      return; // unreachable: start() says so, and the ID is checked when NATS comes
    }
    try {
      await this.checkInstanceIdFree(nc);
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
    this.answerForInstanceId(nc);
    this.reserved = nc;
  }

  /** First connection: joins, or starts without NATS when it is unreachable; refused credentials throw. */
  async start(sharedAddressKey: string | undefined): Promise<ClusterNode> {
    this.sharedAddressKey = sharedAddressKey;
    this.members.self.sharesAddress = sharedAddressKey !== undefined;
    this.members.self.cameAt = Date.now();
    this.groupChangedAt = this.members.self.cameAt;
    await this.startJoining();
    return this;
  }

  private async startJoining(): Promise<void> {
    const { log, config } = this.deps;
    this.reconcileTimer = setInterval(() => this.reconcileUdp(), UDP_RECONCILE_MS);
    this.reconcileTimer.unref();
    this.claimsRefreshTimer = setInterval(() => { if (this.viewComplete) this.claims.reannounceAll(); }, CLAIMS_REFRESH_MS);
    this.claimsRefreshTimer.unref();
    this.claimsRotateTimer = setInterval(() => this.claims.rotate(), CLAIMS_ROTATE_MS);
    this.claimsRotateTimer.unref();
    const servers = config.clusterServers.map(redactUrl);
    try {
      await this.connectAndJoin(true);
    } catch (err) {
      if (err instanceof StartError) {
        await this.close();
        throw err;
      }
      log.warn({ servers, err: describe(err) },
        'cluster: NATS unreachable; serving this instance\'s own peers and joining when NATS comes');
      this.retryLater();
    }
  }

  private retryLater(): void {
    if (this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.connectAndJoin(false).catch((err: unknown) => {
        if (err instanceof StartError) this.deps.log.error({ err: err.message }, 'cluster: cannot join');
        else this.deps.log.debug({ err: describe(err) }, 'cluster: NATS still unreachable');
        this.retryLater();
      });
    }, RETRY_MS);
    this.retryTimer.unref();
  }

  private async connectAndJoin(atStart: boolean): Promise<void> {
    let nc = this.reserved;
    this.reserved = undefined;
    if (!nc) {
      try {
        nc = await connect(this.options);
      } catch (err) {
        throw refusal(err) ?? err;
      }
      if (this.closed) {
        await nc.close();
        return;
      }
      try {
        await this.checkInstanceIdFree(nc);
      } catch (err) {
        await nc.close().catch(() => undefined);
        if (!atStart && err instanceof StartError) {
          this.deps.onFatal(err);
          this.closed = true;
          return;
        }
        throw err;
      }
      this.answerForInstanceId(nc);
    }
    this.nc = nc;
    this.subscribe(nc);
    void this.followStatus(nc);
    this.heartbeatTimer = setInterval(() => this.tick(), this.heartbeatMs);
    this.heartbeatTimer.unref();
    // Loading a large directory takes seconds: the beacon serves its own peers meanwhile.
    void this.sync(nc, 'joined');
  }

  /** A second live process with our ID answers on its `who` subject. */
  private async checkInstanceIdFree(nc: NatsConnection): Promise<void> {
    try {
      await nc.request(this.subjects.who(this.instanceId), this.incarnation, { timeout: WHO_TIMEOUT_MS });
    } catch (err) {
      if (err instanceof NoRespondersError || (err as Error & { cause?: unknown }).cause instanceof NoRespondersError) return;
      if ((err as Error).name === 'TimeoutError' || (err as Error).message?.includes('timeout')) return;
      throw err;
    }
    throw new StartError(`--instance-id ${this.instanceId}: another live process in cluster "${this.deps.config.clusterName}" `
      + `already uses this ID; ${this.deps.instanceIdFix}`, 'EINSTANCEID');
  }

  /** From the moment the ID is found free, this process answers for it: a later copy is refused. */
  private answerForInstanceId(nc: NatsConnection): void {
    nc.subscribe(this.subjects.who(this.instanceId), {
      callback: (_err: Error | null, msg: Msg) => { msg.respond(this.incarnation); },
    });
  }

  private subscribe(nc: NatsConnection): void {
    // Kept by the connection; closing it ends them.
    const subscriptions: Subscription[] = [
      nc.subscribe(this.subjects.forward(this.instanceId), {
        callback: (_err: Error | null, msg: Msg) => this.onBatch(msg),
      }),
      nc.subscribe(this.subjects.heartbeats, {
        callback: (_err: Error | null, msg: Msg) => this.onHeartbeat(msg),
      }),
      nc.subscribe(this.subjects.goodbyes, {
        callback: (_err: Error | null, msg: Msg) => this.onGoodbye(msg),
      }),
      nc.subscribe(this.subjects.snapshot, {
        queue: 'snapshot',
        callback: (_err: Error | null, msg: Msg) => this.serveSnapshot(msg),
      }),
      nc.subscribe(this.subjects.attaches, {
        callback: (_err: Error | null, msg: Msg) => this.onAttachNotice(msg),
      }),
      nc.subscribe(this.subjects.allClaims, {
        callback: (_err: Error | null, msg: Msg) => this.onClaims(msg),
      }),
    ];
    this.deps.log.debug({ subjects: subscriptions.map((sub) => sub.getSubject()) }, 'cluster: subscribed');
  }

  /** (Re)joins: bucket, heartbeat, watch, re-announce. Retries until done or cut off again. */
  private async sync(nc: NatsConnection, what: 'joined' | 'rejoined'): Promise<void> {
    const epoch = ++this.epoch;
    const { log } = this.deps;
    const since = Date.now();
    let warned = false;
    for (let attempt = 0; !this.closed && epoch === this.epoch; attempt++) {
      try {
        const kv = await openBucket(nc, this.subjects.bucket, log);
        if (epoch !== this.epoch) return;
        this.isConnected = true;
        this.syncedAt = Date.now();
        this.groupChangedAt = this.syncedAt; // the counts heard before the outage are stale
        this.lastTickAt = 0;
        this.members.graceAll(this.syncedAt);
        this.heartbeat();
        this.directory.store = storeOf(kv);
        await this.loadDirectory(nc, kv, epoch);
        this.directory.announceAll();
        // The mirror may still be loading ('cluster directory loaded' says when it is complete).
        log.info({
          instanceId: this.instanceId, bucket: this.subjects.bucket,
          ...(this.mirrorReady ? { directory: 'loaded', directoryEntries: this.directory.size } : { directory: 'loading' }),
        }, what === 'joined' ? 'cluster joined' : 'cluster rejoined');
        return;
      } catch (err) {
        const missing = jetStreamMissing(err, nc);
        if (!warned && (missing !== undefined || Date.now() - since >= DIRECTORY_STUCK_WARN_MS)) {
          warned = true; // once per (re)connection: the retries go on every 2 s
          log.warn({ server: nc.getServer(), err: describe(err), attempt },
            missing ?? 'cluster: the directory bucket cannot be opened; not in the cluster (beacon_cluster_connected 0) until it can, still trying');
        } else {
          // JetStream comes up a moment after a restarted server accepts clients.
          log.debug({ err: describe(err), attempt }, 'cluster: directory not ready; retrying');
        }
        await delay(Math.min(2_000, 100 * 2 ** attempt));
      }
    }
  }

  private async followStatus(nc: NatsConnection): Promise<void> {
    const { log } = this.deps;
    for await (const status of nc.status()) {
      if (this.closed) return;
      switch (status.type) {
        case 'disconnect':
          if (!this.isConnected) break;
          this.isConnected = false;
          this.epoch++;
          this.directory.store = undefined;
          this.directoryCurrent = false;
          this.updateView();
          this.provisional.clear(); // notices sent meanwhile are missed
          this.watchStop?.();
          log.warn({}, 'cluster: lost NATS; relaying locally, dropping relays for other instances until it is back');
          break;
        case 'reconnect':
          void this.sync(nc, 'rejoined');
          break;
        case 'error':
          log.error({ err: describe(status.error) }, 'cluster: NATS error');
          break;
        default:
          break;
      }
    }
  }

  // ---- directory: load and watch --------------------------------------------

  /**
   * Brings the mirror up to date and keeps it so. After a reconnect to the
   * same stream the watch resumes after the last revision applied (every
   * later change is still in the stream, as the last message of its key).
   * Otherwise the directory is loaded anew: from a live instance's
   * snapshot, then a watch from its revision; or, when no instance can
   * serve one (the first of a cluster), by watching every key.
   */
  private async loadDirectory(nc: NatsConnection, kv: KV, epoch: number): Promise<void> {
    this.watchStop?.();
    const startedAt = Date.now();
    const stream = (await kv.status()).streamInfo;
    if (epoch !== this.epoch) return;
    const streamId = `${stream.config.name} ${stream.created}`;
    if (this.mirrorReady && this.loadedStream === streamId && stream.state.last_seq >= this.appliedRevision) {
      // Current again once the watch has replayed what changed while we were away.
      const caughtUpAt = stream.state.last_seq;
      const upToDate = caughtUpAt <= this.appliedRevision;
      if (upToDate) this.directoryCaughtUp();
      await this.watchFrom(kv, epoch, this.appliedRevision + 1, upToDate ? undefined : () => this.directoryCaughtUp(), caughtUpAt);
      return;
    }
    this.mirrorReady = false;
    this.loadedStream = streamId;
    this.directory.beginLoad();
    const snapshot = await this.fetchSnapshot(nc, epoch);
    if (epoch !== this.epoch) return;
    if (snapshot) {
      this.directory.finishLoad(); // routes use it from now on
      this.appliedRevision = snapshot.fromRevision;
      // Loaded once the watch has replayed what changed since the snapshot began, up to now.
      const lastRevision = (await kv.status()).streamInfo.state.last_seq;
      if (epoch !== this.epoch) return;
      if (lastRevision <= snapshot.fromRevision) this.directoryLoaded(startedAt, 'snapshot');
      await this.watchFrom(kv, epoch, snapshot.fromRevision + 1,
        lastRevision <= snapshot.fromRevision ? undefined : () => this.directoryLoaded(startedAt, 'snapshot'), lastRevision);
      return;
    }
    this.appliedRevision = 0;
    const empty = stream.state.messages === 0;
    this.directory.expectEntries(Math.min(stream.state.messages, MAX_RESERVED_ENTRIES));
    await this.watchFrom(kv, epoch, 0, empty ? undefined : () => this.directoryLoaded(startedAt, 'watch'));
    if (empty && epoch === this.epoch) this.directoryLoaded(startedAt, 'watch');
  }

  private directoryLoaded(startedAt: number, via: 'snapshot' | 'watch'): void {
    this.directory.finishLoad();
    this.mirrorReady = true;
    this.deps.log.info({ entries: this.directory.size, ms: Date.now() - startedAt, via }, 'cluster directory loaded');
    this.directoryCaughtUp();
  }

  private directoryCaughtUp(): void {
    this.directoryCurrent = true;
    this.updateView();
  }

  /**
   * Whether this instance knows enough to check a UDP claim: connected, its
   * mirror caught up with the bucket, and a whole dead-after spent listening
   * since it (re)synced, so every live instance (and so every WebSocket
   * node) is known. A claim taken before could name a node that is on a
   * WebSocket elsewhere.
   */
  private updateView(): void {
    const complete = this.isConnected && this.directoryCurrent && Date.now() - this.syncedAt >= this.deps.config.clusterDeadAfterMs;
    if (complete === this.viewComplete) return;
    this.viewComplete = complete;
    if (!complete) return;
    this.deps.log.info({ directoryEntries: this.directory.size, instances: this.members.liveCount },
      'cluster: directory current and every live instance heard; taking UDP claims');
    this.deps.onViewComplete();
    this.claims.reannounceAll();
  }

  /**
   * Watches the bucket from `revision` (0: every key's last value); resolves once the watch is set up.
   * `onCaughtUp` runs once the entry at `caughtUpAt` (or, without it, the last pending one) has been applied.
   */
  private async watchFrom(kv: KV, epoch: number, revision: number, onCaughtUp: (() => void) | undefined, caughtUpAt?: number): Promise<void> {
    const entries = await kv.watch(revision > 0 ? { resumeFromRevision: revision } : {});
    if (epoch !== this.epoch) {
      entries.stop();
      return;
    }
    this.watchStop = () => entries.stop();
    void (async () => {
      try {
        // Entries are applied as each socket read brings them (microtasks), so
        // reading keeps pace with applying: yielding in between would let the
        // client buffer the whole directory as messages first.
        for await (const entry of entries) {
          this.onDirectoryEntry(entry);
          // delta: messages still pending behind this one; 0 ends the initial load.
          if (onCaughtUp && (caughtUpAt === undefined ? entry.delta === 0 : entry.revision >= caughtUpAt)) {
            onCaughtUp();
            onCaughtUp = undefined;
          }
        }
      } catch (err) {
        this.deps.log.debug({ err: describe(err) }, 'cluster: directory watch ended');
      }
    })();
  }

  /** Loads a live instance's snapshot into the mirror being built; undefined when none could be had. */
  private async fetchSnapshot(nc: NatsConnection, epoch: number): Promise<{ fromRevision: number } | undefined> {
    for (let attempt = 1; attempt <= SNAPSHOT_ATTEMPTS; attempt++) {
      const outcome = await this.requestSnapshot(nc);
      if (epoch !== this.epoch) return undefined;
      if (outcome.kind === 'loaded') return outcome;
      if (outcome.kind === 'none') return undefined;
      this.deps.log.debug({ attempt, outcome }, 'cluster: no directory snapshot this time; asking again');
      this.directory.beginLoad(); // a partial one is discarded
      await delay(100 * attempt);
    }
    return undefined;
  }

  private requestSnapshot(nc: NatsConnection): Promise<ReceiveOutcome | { kind: 'none' }> {
    return new Promise((resolve) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const settle = (outcome: ReceiveOutcome | { kind: 'none' }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sub.unsubscribe();
        resolve(outcome);
      };
      const receiver = new SnapshotReceiver(
        (chunk, from, to) => {
          // Room for every entry at once: the mirror is never rebuilt during the load.
          if (chunk.index === 0 && from === 0) this.directory.expectEntries(Math.min(chunk.total, MAX_RESERVED_ENTRIES));
          return forEachSnapshotEntry(chunk, (id) => this.members.get(id),
            (nodeId, instance, kind, rev) => this.directory.applyPut(nodeId, instance, kind, rev), from, to);
        },
        () => this.deps.stats.drop('cluster_malformed'),
        settle,
      );
      const armStallTimer = () => {
        clearTimeout(timer);
        timer = setTimeout(() => receiver.fail(`no chunk for ${SNAPSHOT_STALL_MS} ms`), SNAPSHOT_STALL_MS);
        timer.unref();
      };
      const sub = nc.subscribe(createInbox(), {
        callback: (_err: Error | null, msg: Msg) => {
          // No instance listens yet: NATS says so at once (no responders).
          if (msg.data.length === 0 && msg.headers?.code === 503) return settle({ kind: 'none' });
          receiver.accept(msg.data);
          if (receiver.receivedAll) clearTimeout(timer);
          else armStallTimer();
        },
      });
      armStallTimer();
      if (!this.publish(this.subjects.snapshot, Buffer.from(this.instanceId), { reply: sub.getSubject() })) receiver.fail('not connected');
    });
  }

  /** Streams our mirror to a newcomer, one chunk per event-loop turn, so relaying goes on meanwhile. */
  private serveSnapshot(msg: Msg): void {
    const reply = msg.reply;
    if (!reply) return this.deps.stats.drop('cluster_malformed');
    const nc = this.nc;
    if (!nc || !this.mirrorReady || this.snapshotsServing >= SNAPSHOT_SERVES) {
      this.publish(reply, refusedChunk());
      return;
    }
    this.snapshotsServing++;
    const epoch = this.epoch;
    const startedAt = Date.now();
    const table = this.directory.placements();
    let writer: SnapshotWriter | undefined;
    const step = () => {
      // Cut off meanwhile: the newcomer stops hearing chunks and asks again.
      if (epoch !== this.epoch || this.closed) {
        this.snapshotsServing--;
        return;
      }
      // A rebuild of the mirror still moving entries is finished first, a slice per turn.
      if (!writer) {
        if (!table.advanceRebuild(REBUILD_SLICE_SLOTS)) return void setImmediate(step);
        writer = new SnapshotWriter(table, this.appliedRevision, chunkEntriesFor(nc.info?.max_payload ?? 1024 * 1024));
      }
      const chunk = writer.next();
      if (writer.invalidated) {
        // The mirror grew and began a rebuild under the walk: the newcomer asks again.
        this.snapshotsServing--;
        this.publish(reply, refusedChunk());
        return;
      }
      if (chunk === undefined) {
        this.snapshotsServing--;
        this.deps.log.info({ to: msg.string(), ms: Date.now() - startedAt }, 'cluster: served the directory to a newcomer');
        return;
      }
      this.publish(reply, chunk);
      setImmediate(step);
    };
    step();
  }

  private onDirectoryEntry(entry: KvWatchEntry): void {
    this.appliedRevision = Math.max(this.appliedRevision, entry.revision);
    const nodeId = decodeNodeKey(entry.key);
    if (nodeId === undefined) return this.deps.stats.drop('cluster_malformed');
    if (entry.operation !== 'PUT') return this.directory.applyDelete(nodeId, entry.revision);
    const placement = decodePlacement(entry.string());
    if (!placement) return this.deps.stats.drop('cluster_malformed');
    const instance = this.members.get(placement.instanceId);
    this.provisional.confirmed(nodeId, instance);
    this.directory.applyPut(nodeId, instance, placement.kind, entry.revision);
  }

  /** A notice from another instance: a provisional route until its KV entry comes (attach-notices.ts). */
  private onAttachNotice(msg: Msg): void {
    const notice = decodeAttachNotice(msg.string());
    if (!notice || msg.subject !== this.subjects.attach(notice.instanceId)) {
      return this.deps.stats.drop('cluster_malformed');
    }
    // From an instance we have not heard a heartbeat from (yet): it is not routed to anyway, and
    // naming it here would let any name grow the instance table. Another process with our ID is reported by its heartbeats.
    const instance = this.members.find(notice.instanceId);
    if (!instance || instance.self) return;
    // UDP notices come from instances of an older version: UDP claims have their own subject, and never shadow a WebSocket.
    if (notice.kind === 'udp') return;
    this.provisional.noted(notice.nodeId, instance, notice.kind, this.directory.instanceOf(notice.nodeId));
  }

  // ---- heartbeats and liveness -----------------------------------------------

  private tick(): void {
    if (!this.isConnected) return;
    const now = Date.now();
    const gap = this.lastTickAt === 0 ? 0 : now - this.lastTickAt;
    this.lastTickAt = now;
    this.heartbeat();
    const deadAfter = this.deps.config.clusterDeadAfterMs;
    if (gap > deadAfter / 2) {
      // This process did not run (a long pause, SIGSTOP): it heard nobody meanwhile, so it takes nobody for dead now.
      this.members.graceAll(now);
      if (gap > deadAfter) {
        // The others may have taken it for dead: it listens a whole dead-after again before it takes a UDP claim or sweeps.
        this.deps.log.warn({ stalledMs: gap }, 'cluster: this instance stalled; listening again before taking UDP claims');
        this.syncedAt = now;
      }
    }
    this.updateView();
    const { log } = this.deps;
    for (const instance of this.members.expire(Date.now())) {
      log.warn({ instance: instance.id, deadAfterMs: this.deps.config.clusterDeadAfterMs }, 'cluster: instance silent; routes to it dropped');
      if (instance.sharesAddress) this.groupChangedAt = Date.now();
      this.adoptClaimsOf(instance);
    }
    // A newcomer has not heard every live instance's heartbeat yet: it must not take them for dead.
    if (Date.now() - this.syncedAt < this.deps.config.clusterDeadAfterMs) return;
    for (const instance of this.members.toSweep()) {
      instance.swept = true;
      const entries = this.directory.entriesOf(instance);
      if (entries.length > 0) log.info({ instance: instance.id, entries: entries.length }, 'cluster: removing a dead instance\'s entries');
      for (const [nodeId, rev] of entries) void this.directory.remove(nodeId, rev);
    }
  }

  private heartbeat(): void {
    this.lastHeartbeatAt = Date.now();
    const message = Buffer.from(encodeHeartbeat(this.instanceId, this.incarnation));
    // Headers, so instances of an older version read the heartbeat as before. A NATS server without
    // headers (before 2.2) refuses them: the heartbeat goes bare there (no sharing, no rebalancing).
    if (this.nc?.info?.headers !== true) {
      this.publish(this.subjects.heartbeat(this.instanceId), message);
      return;
    }
    const h = headers();
    h.set(PEERS_HEADER, String(this.deps.peerCount()));
    if (this.sharedAddressKey !== undefined) h.set(SHARED_ADDRESS_HEADER, this.sharedAddressKey);
    if (this.draining) h.set(DRAINING_HEADER, '1');
    try {
      this.nc.publish(this.subjects.heartbeat(this.instanceId), message, { headers: h });
    } catch {
      // Cut off: the next tick tries again.
    }
  }

  /**
   * A newcomer (or a restarted process) heartbeats: ours goes out now, not
   * at our next tick, so it sees every live instance a round trip after
   * joining. At most one every ANSWER_SPACING_MS, later rather than never:
   * newcomers joining together share one answer, and a newcomer answering
   * the answers costs one more message, which nobody answers.
   */
  private answerNewcomer(): void {
    if (this.answerTimer) return; // the answer on its way is heard by this newcomer too
    const wait = this.lastHeartbeatAt + ANSWER_SPACING_MS - Date.now();
    if (wait <= 0) return this.heartbeat();
    this.answerTimer = setTimeout(() => {
      this.answerTimer = undefined;
      if (this.isConnected && !this.closed) this.heartbeat();
    }, wait);
    this.answerTimer.unref();
  }

  private onGoodbye(msg: Msg): void {
    const bye = decodeHeartbeat(msg.string());
    if (!bye || msg.subject !== this.subjects.goodbye(bye.instanceId)) return this.deps.stats.drop('cluster_malformed');
    const instance = this.members.left(bye.instanceId, bye.incarnation);
    if (!instance) return;
    this.deps.log.info({ instance: instance.id }, 'cluster: instance left (stopped gracefully); routes to it dropped');
    if (instance.sharesAddress) this.groupChangedAt = Date.now();
    // Its UDP nodes' flows come to the instances sharing its address now: one of them adopts the nodes.
    this.adoptClaimsOf(instance);
    this.claims.forgetInstance(instance); // its claims went with it
  }

  private onHeartbeat(msg: Msg): void {
    const beat = decodeHeartbeat(msg.string());
    if (!beat || msg.subject !== this.subjects.heartbeat(beat.instanceId)) return this.deps.stats.drop('cluster_malformed');
    // Older versions send neither header; a value that is not ours makes the heartbeat foreign.
    const peersText = msg.headers?.get(PEERS_HEADER) ?? '';
    const sharedKey = msg.headers?.get(SHARED_ADDRESS_HEADER) ?? '';
    const drainingText = msg.headers?.get(DRAINING_HEADER) ?? '';
    if ((peersText !== '' && !/^\d{1,9}$/.test(peersText)) || (sharedKey !== '' && !SHARED_ADDRESS_KEY.test(sharedKey))
      || (drainingText !== '' && drainingText !== '1')) {
      return this.deps.stats.drop('cluster_malformed');
    }
    if (beat.instanceId === this.instanceId) {
      if (beat.incarnation !== this.incarnation) {
        this.deps.log.error({ instanceId: this.instanceId }, 'cluster: another process heartbeats with this instance ID; give each its own --instance-id');
      }
      return;
    }
    const known = this.members.find(beat.instanceId);
    const restarted = known !== undefined && known.incarnation !== '' && known.incarnation !== beat.incarnation;
    // Whether its former process shared our address: its UDP nodes are adopted if so (a crash restarted within dead-after).
    const formerShared = known?.sharesAddress === true;
    const { instance, cameAlive } = this.members.heartbeat(beat.instanceId, beat.incarnation, Date.now());
    instance.peers = peersText === '' ? undefined : Number(peersText);
    const sharesAddress = sharedKey !== '' && sharedKey === this.sharedAddressKey;
    const draining = drainingText === '1';
    if (sharesAddress !== instance.sharesAddress || (sharesAddress && (cameAlive || draining !== instance.draining))) this.groupChangedAt = Date.now();
    instance.sharesAddress = sharesAddress;
    instance.draining = draining;
    // A restarted process holds none of its former claims: adopted if it shared our address, else forgotten.
    if (restarted) {
      this.adoptClaimsOf(instance, formerShared);
      this.claims.forgetInstance(instance);
    }
    if (cameAlive) {
      this.deps.log.info({ instance: beat.instanceId }, 'cluster: instance live');
      if (this.isConnected) this.answerNewcomer();
      this.reconcileUdp(); // its WebSocket nodes count again
      // It learns our UDP claims now rather than at the next refresh.
      if (this.viewComplete) this.claims.reannounceAll();
    }
  }

  // ---- forwarding ------------------------------------------------------------

  private onBatch(msg: Msg): void {
    const { stats } = this.deps;
    const relays = decodeBatch(msg.data);
    if (!relays) return stats.drop('cluster_malformed');
    // The instance that read these relays names itself in the reply subject; an older version names none.
    const reply = msg.reply;
    const from = reply ? this.subjects.forwardedBy(reply) : undefined;
    if (reply && from === undefined) return stats.drop('cluster_malformed');
    stats.cluster.batchesIn++;
    stats.cluster.framesIn += relays.length;
    for (let i = 0; i < relays.length; i++) {
      const relay = relays[i]!;
      if (from !== undefined && !this.senderMayComeFrom(relaySender(relay), from)) {
        stats.drop('cluster_sender_elsewhere');
        continue;
      }
      this.deps.deliverLocally(relay);
    }
  }

  /**
   * Whether instance `from` can have read a relay from `sender`: a node on
   * a WebSocket sends only through the instance that holds its socket (this
   * one, a notice newer than the mirror, or the mirror, in that order). A
   * UDP node, a beacon peer's node or a node nobody holds may come through
   * any instance.
   */
  private senderMayComeFrom(sender: NodeId, from: string): boolean {
    if (this.directory.isOwn(sender, 'wss')) return false;
    const noticed = this.provisional.size !== 0 ? this.provisional.placementOf(sender) : undefined;
    const holder = noticed !== undefined
      ? (noticed.kind === 'wss' && noticed.instance.live ? noticed.instance : undefined)
      : this.directory.wssHolderOf(sender);
    return holder === undefined || holder.id === from;
  }

  private publish(subject: string, data: Uint8Array, options?: { reply: string }): boolean {
    try {
      this.nc!.publish(subject, data, options);
      return true;
    } catch {
      return false;
    }
  }

  // ---- UDP endpoints ---------------------------------------------------------

  /**
   * Our UDP claims against the endpoint table (endpoints expire silently)
   * and against the WebSocket placements: a node we claim that is on a
   * WebSocket at a live instance (one that came back to life, say) is given up.
   */
  private reconcileUdp(): void {
    for (const nodeId of this.claims.ownNodes()) {
      if (this.deps.udpEndpointOf(nodeId) === undefined) this.claims.withdraw(nodeId);
      else if (this.isWssElsewhere(nodeId)) this.claims.yieldTo(nodeId);
    }
  }

  /**
   * A dead instance that shared this address (silent past dead-after, gone
   * with a goodbye, or restarted: a new process under its ID) leaves UDP
   * nodes whose NAT mappings are for this address too: rather than drop
   * them until each Discovers again, one survivor (the live sharer with the
   * lowest ID, the same on every survivor) records and claims them anew, a
   * slice per turn.
   * Only with a complete view: a claim is never taken before it can be
   * checked against every WebSocket node (nothing is adopted over one).
   */
  private adoptClaimsOf(dead: Instance, sharedAddress = dead.sharesAddress): void {
    // The adopter is the lowest live sharer other than the instance itself (restarted, it is live again, and remembers nothing).
    if (!sharedAddress || !this.viewComplete || this.members.lowestLive((i) => i.sharesAddress && i !== dead) !== this.members.self) return;
    const claims = this.claims.claimsOf(dead);
    if (claims.length === 0) return;
    const epoch = this.epoch;
    let adopted = 0;
    let at = 0;
    const step = () => {
      if (epoch !== this.epoch || this.closed) return;
      for (const end = Math.min(claims.length, at + ADOPT_PER_TURN); at < end; at++) {
        const { nodeId, endpoint } = claims[at]!;
        if (!this.deps.adoptUdpEndpoint(nodeId, endpoint)) continue;
        adopted++;
        this.deps.stats.clusterUdpAdopted++;
      }
      if (at < claims.length) return void setImmediate(step);
      this.deps.log.info({ instance: dead.id, nodes: claims.length, adopted }, 'cluster: adopted a dead instance\'s UDP nodes (it shared this address)');
    };
    step();
  }

  /** A UDP claim from another instance (udp-claims.ts). */
  private onClaims(msg: Msg): void {
    const instanceId = this.subjects.claimedBy(msg.subject);
    const records = instanceId === undefined ? undefined : decodeClaims(msg.data);
    if (instanceId === undefined || records === undefined) return this.deps.stats.drop('cluster_malformed');
    if (instanceId === this.instanceId) return; // another process with our ID: its heartbeats report it
    this.claims.apply(this.members.get(instanceId), records);
  }

  /** Another instance now holds `nodeId`: our attachment of `kind` goes (counted, and logged within the rate limit). */
  private evict(nodeId: NodeId, kind: AttachKind): void {
    this.deps.stats.clusterEvictions[kind]++;
    this.evictionLog.info({ nodeId, kind });
    this.deps.evict(nodeId, kind);
  }
}

/** Connection options from the flags: credentials out of the URLs, creds file, TLS. */
function connectOptions(deps: ClusterDeps): NodeConnectionOptions {
  const { config } = deps;
  const servers: string[] = [];
  let user: string | undefined;
  let pass: string | undefined;
  let token: string | undefined;
  let tls = config.clusterTlsCaFile !== undefined;
  for (const text of config.clusterServers) {
    const url = new URL(text);
    // nats://TOKEN@host is a token, as in NATS's own clients; nats://USER:PASSWORD@host a user.
    if (url.username && /^[a-z]+:\/\/[^:@/]*@/i.test(text)) {
      token = decodeURIComponent(url.username);
    } else if (url.username) {
      user = decodeURIComponent(url.username);
      pass = decodeURIComponent(url.password);
    }
    if (url.protocol === 'tls:') tls = true;
    servers.push(natsAddress(url));
  }
  const options: NodeConnectionOptions = {
    servers,
    name: `beacon ${deps.instanceId}`,
    timeout: CONNECT_TIMEOUT_MS,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    reconnectJitter: 100,
    // Ours come back on our own subscription; never deliver our publishes to ourselves.
    noEcho: true,
    pingInterval: 2_000,
    maxPingOut: 2,
  };
  if (user !== undefined) Object.assign(options, { user, pass });
  if (token !== undefined) options.token = token;
  if (config.clusterCredsFile) options.authenticator = credentials(config.clusterCredsFile);
  if (tls) options.tls = config.clusterTlsCaFile ? { caFile: tlsCaFile(config.clusterTlsCaFile) } : {};
  return options;
}

/** The CA file, checked now: the client would take an unreadable one for an unreachable server and retry forever. */
function tlsCaFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new StartError(`--cluster-tls-ca ${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); `
      + 'name the PEM file of the CA that signed the NATS server\'s certificate', 'ECLUSTERTLS');
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new StartError(`--cluster-tls-ca ${path}: no PEM certificate in it; `
      + 'name the PEM file (-----BEGIN CERTIFICATE-----) of the CA that signed the NATS server\'s certificate', 'ECLUSTERTLS');
  }
  return path;
}

/** A NATS .creds file (JWT and seed) or a bare nkey seed file. */
function credentials(path: string): Authenticator {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // EACCES is the units' dynamic user meeting a root-only file: point at the drop-in, not at chmod.
    const fix = code === 'EACCES'
      ? 'this beacon\'s user may not read it: keep it root-only and let systemd hand it over with '
        + 'deploy/beacon@.service.d/cluster-creds.conf (LoadCredential=) rather than making it readable to all'
      : 'name a NATS .creds file or an nkey seed file';
    throw new StartError(`--cluster-creds ${path}: cannot read (${code ?? (err as Error).message}); ${fix}`, 'ECLUSTERCREDS');
  }
  const isCreds = text.includes('-----BEGIN NATS USER JWT-----');
  const seed = text.trim();
  if (!isCreds && !/^SU[A-Z2-7]{50,}$/.test(seed)) {
    throw new StartError(`--cluster-creds ${path}: neither a NATS .creds file nor an nkey seed (SU...); `
      + 'use the file `nsc generate creds` or `nk -gen user` made', 'ECLUSTERCREDS');
  }
  const authenticator = isCreds ? credsAuthenticator(Buffer.from(text)) : nkeyAuthenticator(Buffer.from(seed));
  try {
    // Sign once now: a damaged file would fail only when connecting, as if NATS were unreachable.
    authenticator('beacon-start-check');
  } catch (err) {
    throw new StartError(`--cluster-creds ${path}: the ${isCreds ? '.creds file' : 'nkey seed'} in it is damaged (${(err as Error).message}); `
      + `copy it again from where ${isCreds ? '`nsc generate creds`' : '`nk -gen user`'} made it`, 'ECLUSTERCREDS');
  }
  return authenticator;
}

/** A StartError when the server refused us (credentials, TLS), undefined when it is just unreachable. */
function refusal(err: unknown): StartError | undefined {
  const message = describe(err);
  if (err instanceof AuthorizationError || err instanceof UserAuthenticationExpiredError || /authoriz|authentic/i.test(message)) {
    return new StartError(`--cluster: NATS refused this beacon's credentials (${message}); `
      + 'check user:password in the --cluster URL or the --cluster-creds file against the NATS server\'s accounts', 'ECLUSTERAUTH');
  }
  if (/does not support 'tls'/i.test(message)) {
    return new StartError(`--cluster: TLS to NATS failed (${message}); `
      + 'the NATS server does not speak TLS: use a nats:// URL without --cluster-tls-ca, or add a tls block to the server\'s configuration', 'ECLUSTERTLS');
  }
  if (/certificate|tls|self.signed|ssl/i.test(message)) {
    // A nats:// URL to a server that requires TLS gets here too: the client follows the server's INFO.
    return new StartError(`--cluster: TLS to NATS failed (${message}); `
      + 'the NATS server\'s certificate is not signed by a CA this beacon trusts: give the CA that signed it with --cluster-tls-ca FILE', 'ECLUSTERTLS');
  }
  return undefined;
}

/**
 * Opens the directory bucket, creating it when missing: with three copies
 * when the server is part of a NATS cluster (fewer if the cluster has fewer
 * servers with room), one on a lone server. An existing bucket is used as
 * it is, so its replicas are never lowered (deploy/nats-directory-bucket
 * changes them).
 */
async function openBucket(nc: NatsConnection, bucket: string, log: ClusterDeps['log']): Promise<KV> {
  // Starting a watch makes the server find the last entry of every key: with
  // a million keys that takes seconds (nats-server 2.9), past the default 5 s.
  const kvm = new Kvm(jetstream(nc, { timeout: JETSTREAM_TIMEOUT_MS }));
  for (let replicas = nc.info?.cluster ? CLUSTER_REPLICAS : 1; ; replicas--) {
    try {
      // One value per key: the directory needs the last writer, not a history.
      return await kvm.create(bucket, { history: 1, replicas, timeout: KV_TIMEOUT_MS });
    } catch (err) {
      if (replicas === 1 || !(err instanceof JetStreamApiError && TOO_FEW_PEERS.has(err.code))) throw err;
      log.warn({ bucket, replicas, err: err.message }, 'cluster: the NATS cluster cannot keep this many copies of the directory; asking for fewer');
    }
  }
}

/**
 * What to tell the operator when JetStream is off where the directory needs
 * it: on the server (its INFO has no `jetstream: true`, so this is no
 * server still starting up), or for our account. Undefined otherwise.
 */
function jetStreamMissing(err: unknown, nc: NatsConnection): string | undefined {
  if (err instanceof Error && err.name === 'JetStreamNotEnabled' && nc.info?.jetstream !== true) {
    return 'cluster: this NATS server runs without JetStream, which holds the cluster\'s directory: this instance stays out of the cluster '
      + '(beacon_cluster_connected 0) until it has it; start nats-server with -js, or a jetstream block in its configuration '
      + '(Debian\'s own nats-server service has none: install deploy/nats/nats-server.conf, docs/cluster-deploy.md 1.2)';
  }
  const cause = err instanceof Error ? (err as Error & { cause?: unknown }).cause : undefined;
  const apiError = err instanceof JetStreamApiError ? err : cause instanceof JetStreamApiError ? cause : undefined;
  if (apiError?.code === JetStreamApiCodes.JetStreamNotEnabledForAccount) {
    return 'cluster: JetStream is not enabled for this NATS account (the --cluster user\'s), and it holds the cluster\'s directory: '
      + 'this instance stays out of the cluster (beacon_cluster_connected 0) until it is; add `jetstream: enabled` to the account '
      + 'in the NATS configuration, as deploy/nats/nats-server.conf does';
  }
  return undefined;
}

function storeOf(kv: KV) {
  return {
    put: (key: string, value: string) => kv.put(key, value, { timeout: KV_TIMEOUT_MS }),
    delete: (key: string, previousRev: number) => kv.delete(key, { previousSeq: previousRev }),
  };
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as Error & { cause?: unknown }).cause;
  return cause instanceof Error && !err.message.includes(cause.message) ? `${err.message}: ${cause.message}` : err.message;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function withTimeout(promise: Promise<unknown>, ms: number): Promise<void> {
  return Promise.race([promise.then(() => undefined, () => undefined), delay(ms)]);
}
