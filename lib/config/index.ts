/**
 * The beacon's configuration: one field per knob, each with a named default.
 *
 * - `cmd/` turns flags and BEACON_* environment variables into a
 *   `BeaconConfig`; tests build one with `makeConfig`.
 * - `validateConfig` rejects a config that cannot work and names the field
 *   and the fix; the beacon never starts half-configured.
 * - Every resource a stranger can hold has a limit here.
 */
import { MAX_MESSAGE_BYTES, MAX_NODE_ID } from '../protocol';
import { UDP_IO_CHOICES, type UdpIoChoice } from './choices';
import { formatHostPort, type HostPort } from './units';

export * from './choices';
export * from './units';

export interface BeaconConfig {
  /** HTTP/WebSocket listener (plain; TLS terminates at Caddy). */
  bind: HostPort;
  /** UDP socket for Discover, PunchRequest, Relay and Sync. */
  udp: HostPort;
  /**
   * Open `bind` and `udp` with SO_REUSEPORT, so the cluster's processes on
   * one machine share both addresses (the kernel spreads connections and
   * flows over them). Cluster mode only; needs the udp-batch addon.
   */
  reusePort: boolean;
  /** /health and /metrics of this process alone, on a listener of its own; undefined: none. */
  opsBind?: HostPort;
  /** JSON keys file (docs/protocol.md §4); undefined when none. */
  keysFile?: string;
  /**
   * The keys file may not exist yet (the CLI's default ./keys.json): start
   * with no keys and load it once it appears. Otherwise a missing file is a
   * start-up error.
   */
  keysFileMayBeMissing?: boolean;
  /** Pilot registry for key lookups; undefined when none. */
  registry?: HostPort;
  /**
   * How long a registry lookup may take, whoever asked (a handshake stops
   * waiting at its own deadline; the lookup runs on and fills the cache).
   */
  registryTimeoutMs: number;
  /** A daemon must complete the handshake within this. */
  authTimeoutMs: number;
  /** A peer silent this long (no data, ping or pong) is disconnected. */
  idleTimeoutMs: number;
  /** Authenticated peers; upgrades beyond it get HTTP 503. */
  maxPeers: number;
  /** Sockets still in the handshake; upgrades beyond it get HTTP 503. */
  maxHandshakes: number;
  /** Concurrent sockets (any state) from one client IP; beyond it HTTP 429. */
  maxPerIp: number;
  /** The per-IP limits count IPv6 clients by this prefix (one subscriber's network). */
  ipv6PrefixBits: number;
  /** Addresses whose X-Forwarded-For is believed (proxy-addr syntax). */
  trustProxy: string[];
  /** Bytes queued to one peer before further frames to it are dropped. */
  sendBufferBytes: number;
  /**
   * Linux: the process's other threads (V8's garbage collector and compiler
   * helpers) run at a nice value this much above the event loop's, so under
   * CPU contention the loop goes first (lib/runtime/helper-threads.ts);
   * 0 to 19, 0 leaves them alone.
   */
  helperThreadNice: number;
  /** Bytes per second one peer may make the beacon read; beyond it its socket is paused. */
  peerRateBytesPerSec: number;
  /** Bytes a peer may send at once above its rate (the token bucket's size). */
  peerBurstBytes: number;
  /**
   * Frames per second a peer sending tiny frames may send: each frame is
   * charged at least peerRateBytesPerSec / peerFrameRate bytes of its budget.
   */
  peerFrameRate: number;
  /** UDP packets per second from one source address; beyond it they are dropped. */
  udpRatePerIp: number;
  /** UDP bytes per second from one source address; beyond it its packets are dropped. */
  udpByteRatePerIp: number;
  /** This beacon's ID in Sync packets; required when `peers` is non-empty. */
  beaconId: number;
  /** Beacon peers: Sync is sent to and accepted from these addresses only. */
  peers: HostPort[];
  syncIntervalMs: number;
  /** Key cache: how long a found key and an unknown node are remembered. */
  keyCacheTtlMs: number;
  keyCacheNegativeTtlMs: number;
  keyCacheMaxEntries: number;
  /** UDP endpoints not refreshed within this are forgotten. */
  udpEndpointTtlMs: number;
  /** Bound on the UDP endpoint table (anyone can send Discover); when full, the stalest entry makes room. */
  maxUdpEndpoints: number;
  /** UDP socket I/O: 'batched' (recvmmsg/sendmmsg addon), 'dgram', or 'auto' (batched where the addon is built). */
  udpIo: UdpIoChoice;
  /** Entries of the UDP endpoint table one source address (IPv6: prefix) may hold. */
  maxUdpEndpointsPerIp: number;
  /** On shutdown, how long peers get to acknowledge the close. */
  shutdownGraceMs: number;
  /** (ours) Sent in the `restarting` notice: when clients should start reconnecting... */
  restartDelayMs: number;
  /** ...and how long they keep trying; first attempts are spread over its first half. */
  restartWindowMs: number;
  logLevel: string;
  /** NATS server URLs (`nats://`, `tls://`); empty: no cluster, and no NATS code is loaded. */
  clusterServers: string[];
  /** A NATS `.creds` file or an nkey seed file; undefined when none. */
  clusterCredsFile?: string;
  /** CA certificate (PEM) that NATS servers' TLS certificates are checked against. */
  clusterTlsCaFile?: string;
  /** Prefix of every subject and bucket, so several clusters share one NATS. */
  clusterName: string;
  /** Unique per process; undefined: the host name and the bound --ops-bind port, else the bound --bind port. */
  instanceId?: string;
  /** An instance silent this long is dead to the others (its routes go, a survivor removes its entries). */
  clusterDeadAfterMs: number;
  /**
   * --reuse-port: peers per second an instance holding more than its share
   * asks to reconnect (lib/cluster/rebalance.ts); 0 turns rebalancing off.
   */
  rebalanceRate: number;
  /** How far above its share an instance may be before it rebalances, as a fraction (0.1: 10 %). */
  rebalanceSlack: number;
  /** No instance may have joined or left the shared address for this long before an instance rebalances. */
  rebalanceDelayMs: number;
}

export const DEFAULTS: Readonly<BeaconConfig> = Object.freeze({
  bind: { host: '127.0.0.1', port: 8443 },
  udp: { host: '127.0.0.1', port: 9001 },
  reusePort: false,
  opsBind: undefined,
  keysFile: undefined,
  registry: undefined,
  // Well under --auth-timeout, so a slow registry shows as
  // registry_unavailable rather than as a client timeout.
  registryTimeoutMs: 5_000,
  authTimeoutMs: 10_000,
  idleTimeoutMs: 90_000,
  maxPeers: 20_000,
  // A handshake costs one verify (~0.1 ms); 1024 in flight is far more than
  // the beacon can verify per auth timeout, so honest storms are not refused.
  maxHandshakes: 1024,
  // Corporate NATs put many daemons behind one address; 64 leaves room for
  // them while keeping one host from holding the beacon's sockets.
  maxPerIp: 64,
  // ISPs hand each subscriber a /64 (or more), and a host can use any
  // address in it: counting whole IPv6 addresses would not bound one host.
  ipv6PrefixBits: 64,
  // Caddy runs on the same host; X-Forwarded-For from anywhere else is a lie.
  trustProxy: ['loopback'],
  // 256 KiB is 16 maximum-size overlay frames, or ~200 typical ones.
  sendBufferBytes: 256 * 1024,
  // In a reconnect storm V8's helpers (marking, sweeping, compiling) take
  // the loop's core a scheduler slice at a time. Ten steps down (about a
  // tenth of the loop's weight) cut the storm's p99 by a third to a half
  // (docs/benchmarks.md), yet keep them a share when the loop waits on one
  // of them on a contended machine. A free core runs them as before.
  helperThreadNice: 10,
  // A peer over budget is paused, never dropped (docs/rate-limits.md): its
  // TCP connection slows down, nothing is lost. 32 MiB/s (~270 Mbit/s) is
  // more than a compat-mode daemon moves through one WebSocket in practice,
  // and about a tenth of what one beacon core relays, so one peer cannot
  // take the core from the others.
  peerRateBytesPerSec: 32 * 1024 * 1024,
  // 4 MiB: a daemon's whole socket send buffer, flushed at once after a
  // stall, passes without a pause.
  peerBurstBytes: 4 * 1024 * 1024,
  // Each frame costs the beacon about as much as 1.3 KB of payload does, so
  // counting bytes alone let 15-byte frames run at a whole core (issue 19).
  // 50,000 frames/s is a tenth of the small frames one core relays (~550k/s),
  // as the byte rate is a tenth of its bytes; a daemon sending 1200-byte
  // frames at its whole byte budget sends ~28,000 a second. By default a
  // frame costs at least 32 MiB / 50,000, rounded up: 672 bytes.
  peerFrameRate: 50_000,
  // A UDP source cannot be paused, only dropped, so the per-address budgets
  // are abuse bounds set above what honest daemons behind one NAT send
  // (docs/rate-limits.md). Go daemons bounce FIN|ACK at ~5,000 packets/s
  // for 10-25 s after every close: 200,000/s is 40 of them at once, more
  // than one beacon core relays (~50k/s dgram, ~175k/s batched).
  udpRatePerIp: 200_000,
  // 128 MiB/s is more than a gigabit uplink: the daemons behind one NAT
  // meet it only if its whole uplink is relayed through this beacon, and
  // it stops one address from making the beacon send 64 KB datagrams at
  // the packet budget (13 GB/s).
  udpByteRatePerIp: 128 * 1024 * 1024,
  beaconId: 0,
  peers: [],
  syncIntervalMs: 10_000,
  keyCacheTtlMs: 5 * 60_000,
  keyCacheNegativeTtlMs: 30_000,
  keyCacheMaxEntries: 100_000,
  udpEndpointTtlMs: 10 * 60_000,
  maxUdpEndpoints: 100_000,
  udpIo: 'auto',
  // 1% of the table: one source cannot fill it, and a NAT keeps room for
  // far more UDP daemons than one address usually hides.
  maxUdpEndpointsPerIp: 1_000,
  shutdownGraceMs: 2_000,
  // A systemd restart is the drain (--shutdown-grace) plus Node's start-up.
  restartDelayMs: 3_000,
  restartWindowMs: 10_000,
  logLevel: 'info',
  clusterServers: [],
  clusterCredsFile: undefined,
  clusterTlsCaFile: undefined,
  clusterName: 'beacon',
  instanceId: undefined,
  // Five heartbeats (one per second): a lost datagram or a GC pause is not a death.
  clusterDeadAfterMs: 5_000,
  // "A few per second": a reconnect costs a daemon about a second of its
  // WebSocket, so ten a second moves a few thousand daemons in minutes.
  rebalanceRate: 10,
  // Kernel placement is random: within 10 % (and MIN_EXCESS peers) of the
  // share is balanced enough, and leaves nothing to chase.
  rebalanceSlack: 0.1,
  // Longer than one step of a rolling restart (drain, start, readiness)
  // and than the restart notice's window (3 s, then up to 5 s), so the
  // daemons of the last restarted instance are back before anyone counts.
  rebalanceDelayMs: 20_000,
});

/** Linux's highest nice value (the lowest priority): the most --helper-thread-nice can add. */
export const MAX_NICE = 19;

/** Cluster names become NATS subject tokens and a KV bucket name. */
export const CLUSTER_NAME_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;
/** Instance IDs appear in KV values and (escaped) in subjects; host names and ports fit. */
export const INSTANCE_ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

/** A full config from defaults and overrides (tests, the library API). */
export function makeConfig(overrides: Partial<BeaconConfig> = {}): BeaconConfig {
  const config = { ...DEFAULTS, trustProxy: [...DEFAULTS.trustProxy], peers: [...DEFAULTS.peers], clusterServers: [...DEFAULTS.clusterServers], ...overrides };
  validateConfig(config);
  return config;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Throws ConfigError naming the first field that cannot work. */
export function validateConfig(config: BeaconConfig): void {
  const positive: (keyof BeaconConfig)[] = [
    'registryTimeoutMs', 'authTimeoutMs', 'idleTimeoutMs', 'maxPeers', 'maxHandshakes', 'maxPerIp', 'sendBufferBytes',
    'peerRateBytesPerSec', 'peerBurstBytes', 'peerFrameRate', 'udpRatePerIp', 'udpByteRatePerIp',
    'syncIntervalMs', 'keyCacheTtlMs', 'keyCacheNegativeTtlMs', 'keyCacheMaxEntries',
    'udpEndpointTtlMs', 'maxUdpEndpoints', 'maxUdpEndpointsPerIp', 'shutdownGraceMs', 'restartDelayMs', 'restartWindowMs',
    'clusterDeadAfterMs', 'rebalanceDelayMs',
  ];
  for (const field of positive) {
    const value = config[field];
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      throw new ConfigError(`${field} must be a positive number, got ${String(value)}`);
    }
  }
  requireIntegerIn(config, 'helperThreadNice', 0, MAX_NICE);
  if (!UDP_IO_CHOICES.includes(config.udpIo)) {
    throw new ConfigError(`udpIo must be one of ${UDP_IO_CHOICES.join(', ')}, got ${String(config.udpIo)}`);
  }
  requireIntegerIn(config, 'ipv6PrefixBits', 1, 128);
  if (config.peerBurstBytes < MAX_MESSAGE_BYTES) {
    throw new ConfigError(`--peer-burst ${config.peerBurstBytes} is smaller than one maximum-size message: use at least 64KiB`);
  }
  if (config.udpByteRatePerIp < MAX_MESSAGE_BYTES) {
    throw new ConfigError(`--udp-byte-rate-per-ip ${config.udpByteRatePerIp} is less than one maximum-size datagram per second: use at least 64KiB/s`);
  }
  if (config.peers.length > 0 && (config.beaconId < 1 || config.beaconId > MAX_NODE_ID)) {
    throw new ConfigError('beacon peers are configured but no beacon ID: set --beacon-id N (1 to 4294967295, unique among your beacons)');
  }
  if (config.opsBind && config.opsBind.port !== 0 && config.opsBind.port === config.bind.port && config.opsBind.host === config.bind.host) {
    throw new ConfigError(`--ops-bind ${formatHostPort(config.opsBind)} is --bind's address: give /health and /metrics an address of their own, e.g. 127.0.0.1:9101`);
  }
  requireIntegerIn(config, 'rebalanceRate', 0, 10_000, ' peers a second');
  if (!Number.isFinite(config.rebalanceSlack) || config.rebalanceSlack < 0 || config.rebalanceSlack > 10) {
    throw new ConfigError(`rebalanceSlack must be a fraction from 0 to 10 (0% to 1000%), got ${String(config.rebalanceSlack)}`);
  }
  validateClusterConfig(config);
}

/** Throws ConfigError unless `config[field]` is an integer from `min` to `max` (`unit` follows the range in the message). */
function requireIntegerIn(config: BeaconConfig, field: 'helperThreadNice' | 'ipv6PrefixBits' | 'rebalanceRate', min: number, max: number, unit = ''): void {
  const value = config[field];
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${field} must be an integer from ${min} to ${max}${unit}, got ${String(value)}`);
  }
}

function validateClusterConfig(config: BeaconConfig): void {
  if (config.clusterServers.length === 0) {
    if (config.reusePort) {
      throw new ConfigError('--reuse-port is set but --cluster is not: processes sharing a port must share one directory of nodes; '
        + 'add --cluster nats://HOST:4222, or remove --reuse-port');
    }
    const stray = config.clusterCredsFile !== undefined ? '--cluster-creds'
      : config.clusterTlsCaFile !== undefined ? '--cluster-tls-ca'
      : config.instanceId !== undefined ? '--instance-id' : undefined;
    if (stray) throw new ConfigError(`${stray} is set but --cluster is not: add --cluster nats://HOST:4222, or remove ${stray}`);
    return;
  }
  if (!CLUSTER_NAME_PATTERN.test(config.clusterName)) {
    throw new ConfigError(`--cluster-name "${config.clusterName}": use 1 to 32 letters, digits, "-" or "_"`);
  }
  if (config.instanceId !== undefined && !INSTANCE_ID_PATTERN.test(config.instanceId)) {
    throw new ConfigError(`--instance-id "${config.instanceId}": use 1 to 64 letters, digits, ".", ":", "-" or "_"`);
  }
}
