/**
 * The composition root: builds a beacon from a BeaconConfig and wires its
 * parts. `cmd/beacon.ts` and the tests use this and nothing below it.
 *
 * - Parts: key sources (lib/auth), the compat WebSocket listener
 *   (lib/wss), the UDP side (lib/udp), the relay router and beacon peers
 *   (lib/relay), metrics (lib/metrics) and the ops routes (lib/http).
 * - Data flows one way: socket -> decode -> route -> encode -> socket.
 * - `startBeacon` resolves once the sockets listen (the ops address, if
 *   any, first); the bound addresses are on the Beacon, so tests can bind
 *   port 0. With --reuse-port, --bind and --udp are shared with the other
 *   processes of the machine (lib/reuse-port.ts, lib/http/listener.ts).
 * - `close()` drains: /health turns 503, upgrades are refused (a shared
 *   listener stops accepting), every socket is closed with 1001, then the
 *   cluster, UDP and the listener close, and the ops listener last.
 * - Cluster mode (lib/cluster) is wired here only when --cluster is set; its
 *   NATS code is imported then and never otherwise, so the single-process
 *   beacon loads none of it. With --reuse-port its instance ID is checked
 *   before any socket is bound, UDP nodes of the instances sharing the
 *   address are sent to from this socket, and a Rebalancer evens out the
 *   WebSocket peers among them.
 */
import { StartError } from './start-error';
import { EventEmitter } from 'node:events';
import { lookup } from 'node:dns/promises';
import type { AddressInfo } from 'node:net';
import proxyAddr from '@fastify/proxy-addr';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { KeysFile, createKeyDirectory, type KeyDirectory } from './auth';
import { formatHostPort, validateConfig, type BeaconConfig, type HostPort } from './config';
import { ConnectionGuard } from './http/connection-guard';
import { listenHttp } from './http/listener';
import { registerOpsRoutes, type OpsState } from './http/ops-routes';
import { listenOps } from './http/ops-server';
import { BeaconStats, createPrometheusRegistry, snapshot, type LiveGauges, type MetricsSnapshot } from './metrics';
import { restartingMessage, type NodeId } from './protocol';
import { REBALANCE_TRY_FOR_MS, Rebalancer } from './cluster/rebalance';
import { BeaconPeers, SYNC_ROUTE_LIFETIME_INTERVALS } from './relay/beacon-peers';
import { RelayRouter } from './relay/router';
import { udpEndpoint } from './udp/endpoints';
import { UdpServer } from './udp/udp-server';
import { loadUdpBatchAddon, type UdpBatchAddon } from './native/udp-batch-addon';
import { chooseUdpIo, type UdpIoDecision } from './udp/choose-io';
import { reusePortProblem } from './reuse-port';
import { chooseInstanceId, instanceIdFromFlags, type InstanceIdChoice } from './cluster/instance-id';
import { sharedAddressKey } from './cluster/shared-address';
import { CompatServer } from './wss/compat-server';
import { VERSION } from './version';
import type { ClusterNode } from './cluster/types';
import type { ClusterStarter } from './cluster/nats-cluster';
import { createPeerPacketHandler } from './wss/peer-packets';
import { lowerHelperThreads } from './runtime/helper-threads';


export interface BeaconOptions {
  /** A pino logger; silent when omitted. */
  logger?: FastifyBaseLogger;
}

/** Connections beyond peers and handshakes kept for /health and /metrics. */
const HTTP_ROOM = 64;
/**
 * Raw connections from one address may exceed --max-per-ip by this much,
 * so an upgrade past the limit still gets its HTTP 429 (and /health its
 * answer) instead of a reset; silent connections stay bounded.
 */
const PER_IP_HTTP_ROOM = 8;

export { StartError };

export class Beacon extends EventEmitter {
  readonly stats = new BeaconStats();
  httpAddress!: AddressInfo;
  udpAddress!: AddressInfo;
  /** The --ops-bind listener's address; undefined without --ops-bind. */
  opsAddress: AddressInfo | undefined;
  readonly log: FastifyBaseLogger;
  private readonly app: FastifyInstance;
  private readonly compat: CompatServer;
  private readonly udp: UdpServer;
  private readonly udpIo: UdpIoDecision;
  private readonly router: RelayRouter;
  private readonly registry: Registry;
  private readonly keys: KeyDirectory;
  private readonly gauges: LiveGauges;
  private readonly opsState: OpsState;
  /** The --ops-bind listener, once it listens. */
  private ops: FastifyInstance | undefined;
  private beaconPeers = new BeaconPeers([]);
  private syncTimer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  /** Set once start() joined (or started joining) the cluster; undefined without --cluster. */
  private cluster: ClusterNode | undefined;
  /** The cluster node being started (its ID reserved, or joining); closed if the start fails. */
  private clusterStarter: ClusterStarter | undefined;
  /** --reuse-port with --rebalance-rate above 0: evens out the peers of the instances sharing the address. */
  private rebalancer: Rebalancer | undefined;

  /** Use startBeacon(). */
  constructor(readonly config: BeaconConfig, private readonly keysFile: KeysFile | undefined, options: BeaconOptions) {
    super();
    this.app = options.logger
      ? Fastify({ loggerInstance: options.logger, ...this.httpOptions() })
      : Fastify({ logger: false, ...this.httpOptions() });
    this.log = this.app.log;
    const { stats } = this;
    this.keys = createKeyDirectory({ keysFile, registry: config.registry, config, stats });
    this.router = new RelayRouter({
      isAttachedOverWss: (id) => this.compat.peers.has(id),
      writeFrame: (id, packet, atTurnEnd) => this.compat.writeFrame(id, packet, atTurnEnd),
      udpEndpointOf: (id) => this.udp.endpoints.get(id),
      sharedUdpEndpointOf: (id) => this.cluster?.sharedUdpEndpointOf(id),
      beaconFor: (id) => this.beaconPeers.routeOf(id),
      sendDatagram: (packet, to) => this.udp.send(packet, to),
      instanceOf: (id) => this.cluster?.instanceOf(id),
      forwardToInstance: (instance, relay) => this.cluster?.forward(instance, relay),
    }, stats);
    this.compat = new CompatServer({
      config, stats, keys: this.keys, log: this.log,
      onPacket: createPeerPacketHandler(stats, this.router, (peer, packet) => this.compat.sendToPeer(peer, packet)),
      onPeerClosed: (peer, code) => this.emit('peerClosed', { nodeId: peer.nodeId, replaced: peer.replaced, code }),
      peerListener: {
        attached: (peer) => {
          // The authenticated attachment is the newer, stronger claim: a UDP
          // endpoint recorded for the node before (by anyone) must not
          // outlive it and take its traffic once it leaves.
          this.udp.endpoints.delete(peer.nodeId);
          this.cluster?.attached(peer.nodeId);
        },
        detached: (peer) => this.cluster?.detached(peer.nodeId),
      },
    });
    this.udpIo = chooseUdpIo(config.udpIo);
    this.udp = new UdpServer({
      config, stats, log: this.log, router: this.router,
      beaconPeers: () => this.beaconPeers,
      // docs/protocol.md §3 across instances: UDP cannot speak for a node on a WebSocket anywhere in the cluster.
      isAttachedOverWss: (id) => this.compat.peers.has(id) || (this.cluster?.isWssElsewhere(id) ?? false),
      // Cluster mode: a new UDP claim only once the instance can check it, within its source's budget (lib/cluster).
      admitNewEndpoint: config.clusterServers.length === 0 ? undefined
        : (_id, address) => (this.cluster ? this.cluster.admitUdpClaim(address) : 'cluster_not_ready'),
      onEndpointRecorded: (id, endpoint, isNew) => this.cluster?.udpEndpointRecorded(id, endpoint, isNew),
      sharedEndpointOf: (id) => this.cluster?.sharedUdpEndpointOf(id),
      io: this.udpIo.io, addon: this.udpIo.addon,
    });
    // Until the cluster's nodes are known, a UDP relay's sender cannot be checked (ClusterDeps.onViewComplete).
    if (config.clusterServers.length > 0) this.udp.sendersCheckable = false;
    const gauges: LiveGauges = {
      peers: () => this.compat.peers.size,
      peersPaused: () => this.compat.peersPaused,
      maxPeers: () => config.maxPeers,
      handshakes: () => this.compat.handshakesInProgress,
      udpEndpoints: () => this.udp.endpoints.size,
      beaconRoutes: () => this.beaconPeers.routeCount,
      keysLoaded: () => this.keysFile?.size ?? 0,
      udpIo: () => this.udpIo.io,
      udpRateSources: () => this.udp.sourceLimit.size,
    };
    const clusterGauges = config.clusterServers.length === 0 ? undefined : {
      connected: () => this.cluster?.connected() ?? 0,
      instances: () => this.cluster?.instances() ?? 1,
      directoryEntries: () => this.cluster?.directoryEntries() ?? 0,
    };
    this.registry = createPrometheusRegistry(stats, gauges, VERSION, clusterGauges);
    this.gauges = gauges;
    this.opsState = {
      draining: () => this.compat.isDraining,
      peers: () => this.compat.peers.size,
    };
  }

  private httpOptions() {
    return {
      trustProxy: this.config.trustProxy.length > 0 ? this.config.trustProxy : false,
      // Connects, disconnects and refusals are logged by the beacon; nothing per request.
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: 1024,
      // A request must be complete within the auth timeout. (Before its
      // first byte, ConnectionGuard's deadline applies: Node's timeouts
      // start only with the first byte.)
      requestTimeout: this.config.authTimeoutMs,
      forceCloseConnections: true,
    };
  }

  /** @internal Binds both sockets and wires reloads and Sync. */
  async start(): Promise<void> {
    const { config } = this;
    if (config.udpIo === 'batched' && this.udpIo.io !== 'batched') {
      throw new StartError(`--udp-io batched: the udp-batch addon is not available (${this.udpIo.addonError}); `
        + 'on Linux, install g++, make and python3 and run `npm ci` again (or `npm rebuild @beacon/udp-batch`), or use --udp-io dgram', 'EUDPIO');
    }
    let reuse: { addon: UdpBatchAddon } | undefined;
    if (config.reusePort) {
      const { addon, error } = loadUdpBatchAddon();
      const problem = reusePortProblem(error, this.udpIo.io);
      if (problem !== undefined || !addon) throw new StartError(problem ?? '--reuse-port: the udp-batch addon did not load', 'EREUSEPORT');
      reuse = { addon };
    }
    const trusted = proxyAddr.compile(config.trustProxy);
    // Upgrades never reach fastify's routing; it serves /health and /metrics.
    this.compat.listen(this.app.server, trusted);
    registerOpsRoutes(this.app, this.registry, this.opsState);
    new ConnectionGuard({
      headersDeadlineMs: config.authTimeoutMs,
      maxPerIp: config.maxPerIp + PER_IP_HTTP_ROOM,
      ipv6PrefixBits: config.ipv6PrefixBits,
      isTrustedProxy: (ip) => trusted(ip, 0),
      stats: this.stats,
    }).attach(this.app.server);
    // A process whose instance ID is live elsewhere must not take a share of the shared sockets (or the
    // --ops-bind of the copy it is) while NATS tells it so: with --reuse-port the ID is checked first.
    const earlyId = config.clusterServers.length > 0 && config.reusePort ? instanceIdFromFlags(config) : undefined;
    if (earlyId) await (await this.createCluster(earlyId)).reserveInstanceId();
    // The ops address next: a process that cannot have it must not take a share of a shared --bind meanwhile.
    if (config.opsBind) {
      try {
        this.ops = await listenOps(config.opsBind, this.registry, this.opsState, this.log);
      } catch (err) {
        throw listenError(err, config.opsBind, '--ops-bind');
      }
      this.opsAddress = this.ops.server.address() as AddressInfo;
    }
    try {
      await listenHttp(this.app, config.bind, reuse);
    } catch (err) {
      throw listenError(err, config.bind, '--bind', config.reusePort);
    }
    const server = this.app.server;
    server.headersTimeout = Math.min(config.authTimeoutMs, 60_000);
    // Bound raw TCP sockets too, before any headers are read: peers, sockets
    // in the handshake, and a little room for /health and /metrics.
    server.maxConnections = config.maxPeers + config.maxHandshakes + HTTP_ROOM;
    this.httpAddress = this.app.server.address() as AddressInfo;
    try {
      this.udpAddress = await this.udp.start();
    } catch (err) {
      throw listenError(err, config.udp, '--udp', config.reusePort);
    }
    this.beaconPeers = new BeaconPeers(await Promise.all(config.peers.map((p) => this.resolvePeer(p))));
    if (config.clusterServers.length > 0) {
      await this.joinCluster();
    }
    this.compat.startIdleSweep();
    if (this.keysFile) {
      this.keysFile.on('reload', (keys) => {
        this.stats.keysReloadsOk++;
        const revoked = this.compat.revokeChangedKeys();
        this.log.info({ keys: keys.size, revoked }, 'keys file reloaded');
        this.emit('keysReloaded', revoked);
      });
      this.keysFile.on('reloadError', (err: Error) => {
        this.stats.keysReloadsFailed++;
        this.log.error({ err: err.message }, 'keys file reload failed; keeping the previous keys');
        this.emit('keysReloadFailed', err);
      });
      this.keysFile.watch();
    }
    if (config.peers.length > 0) {
      this.sendSync();
      this.syncTimer = setInterval(() => this.sendSync(), config.syncIntervalMs);
      this.syncTimer.unref();
    }
    const helpers = lowerHelperThreads(config.helperThreadNice);
    this.log.info({
      bind: formatHostPort({ host: this.httpAddress.address, port: this.httpAddress.port }),
      udp: formatHostPort({ host: this.udpAddress.address, port: this.udpAddress.port }),
      opsBind: this.opsAddress ? formatHostPort({ host: this.opsAddress.address, port: this.opsAddress.port }) : undefined,
      reusePort: config.reusePort,
      beaconPeers: config.peers.length,
      instanceId: this.cluster?.instanceId,
      udpIo: this.udpIo.io,
      helperThreads: helpers.moved > 0 ? { moved: helpers.moved, nice: helpers.nice } : undefined,
    }, 'beacon listening');
    if (this.udpIo.addonError !== undefined) {
      this.log.info({ reason: this.udpIo.addonError }, 'udp-batch addon not available: UDP runs on dgram (one system call per datagram)');
    }
  }

  /** Joins the cluster (its node made first unless the ID was reserved before binding). */
  private async joinCluster(): Promise<void> {
    const starter = this.clusterStarter
      ?? await this.createCluster(chooseInstanceId(this.config, this.httpAddress.port, this.opsAddress?.port));
    this.cluster = await starter.start(sharedAddressKey(this.config.reusePort, this.httpAddress, this.udpAddress));
    // Daemons that authenticated while the cluster was starting are announced now.
    for (const nodeId of this.compat.peers.nodeIds()) this.cluster.attached(nodeId);
    if (this.config.reusePort && this.config.rebalanceRate > 0) this.startRebalancing(this.cluster);
  }

  private startRebalancing(cluster: ClusterNode): void {
    // Come back at once, to the same address: the kernel hands the connection to any process sharing it.
    const notice = restartingMessage({ reconnect_in_ms: 0, try_for_ms: REBALANCE_TRY_FOR_MS, reason: 'rebalance' });
    this.rebalancer = new Rebalancer({
      settings: { ratePerSec: this.config.rebalanceRate, slack: this.config.rebalanceSlack, delayMs: this.config.rebalanceDelayMs },
      group: () => cluster.addressGroup(),
      ownPeers: () => this.compat.peers.size,
      shed: (count) => this.compat.rebalance(count, notice),
    });
    this.rebalancer.start();
  }

  /** Loads the NATS side only now, so a beacon without --cluster never loads it. */
  private async createCluster(instanceId: InstanceIdChoice): Promise<ClusterStarter> {
    const { createCluster } = await import('./cluster/nats-cluster');
    this.clusterStarter = createCluster({
      config: this.config,
      instanceId: instanceId.id,
      instanceIdFix: instanceId.fix,
      stats: this.stats,
      log: this.log,
      deliverLocally: (relay) => this.router.route(relay, 'cluster'),
      evict: (nodeId, kind) => (kind === 'wss' ? this.compat.evict(nodeId) : this.udp.endpoints.delete(nodeId)),
      udpEndpointOf: (nodeId) => this.udp.endpoints.get(nodeId),
      peerCount: () => this.compat.peers.size,
      adoptUdpEndpoint: (nodeId, endpoint) => this.udp.adoptEndpoint(nodeId, endpoint.address, endpoint.port),
      onViewComplete: () => { this.udp.sendersCheckable = true; },
      onFatal: (err) => this.emit('fatal', err),
    });
    return this.clusterStarter;
  }

  /**
   * @internal Undoes a start() that failed part way (a socket bound, a
   * timer or watcher started), so a failed start leaves nothing open.
   */
  async abandonStart(): Promise<void> {
    clearInterval(this.syncTimer);
    this.rebalancer?.stop();
    await this.compat.shutdown(0);
    await this.clusterStarter?.close();
    await this.udp.close();
    this.keysFile?.close();
    this.keys.close();
    await this.app.close();
    await this.ops?.close();
  }

  /** Sends one binary packet to the peer attached over WebSocket as `dest`. */
  writeFrame(dest: NodeId, packet: Buffer): boolean {
    return this.compat.writeFrame(dest, packet);
  }

  isConnected(nodeId: NodeId): boolean {
    return this.compat.peers.has(nodeId);
  }

  peerCount(): number {
    return this.compat.peers.size;
  }

  /**
   * @internal Slots looked at to find `nodeId` in the tables strangers fill
   * (the UDP endpoint table; the cluster directory's mirror, with --cluster):
   * tests bound it for node IDs chosen to collide.
   */
  tableProbes(nodeId: NodeId): { udpEndpoints: number; clusterDirectory: number | undefined } {
    return { udpEndpoints: this.udp.endpoints.probes(nodeId), clusterDirectory: this.cluster?.directoryProbes(nodeId) };
  }

  metrics(): MetricsSnapshot {
    return snapshot(this.stats, this.gauges);
  }

  /** Prometheus text, as served at /metrics. */
  metricsText(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * Re-reads the keys file (SIGHUP) off the event loop; resolves true once
   * the new keys are in and changed peers revoked, false if it was invalid
   * and the old keys were kept.
   */
  reloadKeys(): Promise<boolean> {
    return this.keysFile?.reload() ?? Promise.resolve(false);
  }

  /** Graceful shutdown; idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.log.info({ peers: this.compat.peers.size }, 'shutting down');
    clearInterval(this.syncTimer);
    this.rebalancer?.stop();
    // The others stop counting on this instance's daemons while they move to them.
    this.cluster?.drain();
    // A shared listener stops accepting at once: the kernel gives new daemons to
    // the other processes on the port rather than to us, to be refused.
    if (this.config.reusePort) this.app.server.close();
    // Tell daemons when to come back, so a restart is not a reconnect storm
    // (Go daemons ignore unknown text messages, so this is safe for them).
    const notice = restartingMessage({ reconnect_in_ms: this.config.restartDelayMs, try_for_ms: this.config.restartWindowMs });
    await this.compat.shutdown(this.config.shutdownGraceMs, (peer) => peer.sendText(notice));
    await this.cluster?.close();
    await this.udp.close();
    this.keysFile?.close();
    this.keys.close();
    await this.app.close();
    // Last: /health there says 503 through the whole drain.
    await this.ops?.close();
    this.emit('closed');
  }

  private sendSync(): void {
    // Routes from a beacon peer that stopped sending Sync go (it may be dead).
    this.beaconPeers.expire(SYNC_ROUTE_LIFETIME_INTERVALS * this.config.syncIntervalMs);
    // Authenticated peers first, then UDP nodes most recently refreshed
    // first: if they do not all fit, the stalest (likeliest junk) are left out.
    const local = new Set<NodeId>(this.compat.peers.nodeIds());
    for (const id of [...this.udp.endpoints.nodeIds()].reverse()) local.add(id);
    const { packet, truncated } = this.beaconPeers.syncPacket(this.config.beaconId, [...local]);
    if (truncated) this.stats.drop('sync_truncated');
    for (const peer of this.beaconPeers.peers) {
      this.stats.syncsSent++;
      this.udp.send(packet, peer);
    }
  }

  private async resolvePeer(peer: HostPort) {
    try {
      const { address } = await lookup(peer.host, { family: this.udp.family === 'udp4' ? 4 : 0 });
      return udpEndpoint(this.udp.wireAddress(address), peer.port);
    } catch {
      throw new StartError(`--peer ${formatHostPort(peer)}: cannot resolve "${peer.host}"; use an IP address or a name this host can resolve`, 'EPEERRESOLVE');
    }
  }
}

/** `shared`: the socket was opened with --reuse-port (--bind and --udp). */
function listenError(err: unknown, at: HostPort, flag: string, shared?: boolean): StartError {
  const code = (err as NodeJS.ErrnoException).code ?? 'ELISTEN';
  const where = formatHostPort(at);
  switch (code) {
    case 'EADDRINUSE':
      if (shared) {
        return new StartError(`${flag} ${where}: address already in use by a process without --reuse-port (or of another user); `
          + `start every beacon sharing it with --reuse-port, as one user, or choose another ${flag}`, code);
      }
      if (shared === false) {
        return new StartError(`${flag} ${where}: address already in use; stop the other process or choose another ${flag} `
          + '(beacons that share one address must all run with --reuse-port)', code);
      }
      return new StartError(`${flag} ${where}: address already in use; stop the other process or choose another ${flag}`, code);
    case 'EACCES':
      return new StartError(`${flag} ${where}: permission denied; use a port above 1023 or grant CAP_NET_BIND_SERVICE`, code);
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
      return new StartError(`${flag} ${where}: no such local address; use an address of this host, e.g. 127.0.0.1`, code);
    default:
      return new StartError(`${flag} ${where}: cannot listen (${(err as Error).message})`, code);
  }
}

/**
 * Starts a beacon. Throws StartError (address in use, ...) or KeysFileError
 * (the keys file is invalid, or missing without keysFileMayBeMissing) with
 * a message naming the fix.
 */
export async function startBeacon(config: BeaconConfig, options: BeaconOptions = {}): Promise<Beacon> {
  validateConfig(config);
  const keysFile = config.keysFile
    // The daemons that can reconnect are at most the ones it takes: their keys may stay cached.
    ? KeysFile.open(config.keysFile, { mayBeMissing: config.keysFileMayBeMissing === true, returningKeys: config.maxPeers })
    : undefined;
  const beacon = new Beacon(config, keysFile, options);
  try {
    await beacon.start();
  } catch (err) {
    await beacon.abandonStart();
    throw err;
  }
  return beacon;
}
