/**
 * The flags of `beacon [options]`: one per BeaconConfig field.
 *
 * - Defaults come from DEFAULTS in lib/config (the one source of truth) and
 *   are formatted back into the operator's units for --help.
 * - Every flag is also read from BEACON_<FLAG_IN_UPPER_SNAKE> (BEACON_PEERS
 *   for --peer, comma-separated); a flag on the command line wins. A
 *   boolean flag's variable says 1/true/yes or 0/false/no.
 * - Values are parsed at the boundary with lib/config's parsers; a bad one
 *   is a usage error that names the flag (or the variable) and the form.
 * - Cross-field checks (--peer needs --beacon-id) are validateConfig's job.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import ipaddr from 'ipaddr.js';
import {
  CLUSTER_NAME_PATTERN, ConfigError, DEFAULTS, INSTANCE_ID_PATTERN, MAX_NICE, formatHostPort, parseByteRate, parseClusterUrls, parseDuration, parseHostPort,
  parseFrameRate, parsePacketRate, parsePeerRate, parsePercent, parsePositiveInt, parseSize, parseWholeNumber,
  type BeaconConfig, type HostPort,
} from '../lib/config';
import { MAX_NODE_ID } from '../lib/protocol';
import { LOG_LEVELS, UDP_IO_CHOICES, type UdpIoChoice } from '../lib/config/choices';
import { UsageError } from './errors';

/** proxy-addr's names for address ranges, accepted by --trust-proxy. */
const TRUST_PROXY_KEYWORDS = ['loopback', 'linklocal', 'uniquelocal'];

/** The keys file used when --keys is not given, if it exists in the working directory. */
export const DEFAULT_KEYS_FILE = 'keys.json';

/** The parsed values of the run flags, as commander's opts() holds them. */
export interface RunFlags {
  bind: HostPort;
  udp: HostPort;
  reusePort?: boolean;
  opsBind?: HostPort;
  keys?: string;
  registry?: HostPort;
  registryTimeout: number;
  authTimeout: number;
  idleTimeout: number;
  maxPeers: number;
  maxHandshakes: number;
  maxPerIp: number;
  perIpIpv6Prefix: number;
  trustProxy: string[];
  sendBuffer: number;
  helperThreadNice: number;
  peerRate: number;
  peerBurst: number;
  peerFrameRate: number;
  udpRatePerIp: number;
  udpByteRatePerIp: number;
  beaconId: number;
  peer: HostPort[];
  syncInterval: number;
  keyCacheTtl: number;
  keyCacheNegativeTtl: number;
  keyCacheSize: number;
  udpEndpointTtl: number;
  maxUdpEndpoints: number;
  udpIo: UdpIoChoice;
  maxUdpEndpointsPerIp: number;
  shutdownGrace: number;
  restartDelay: number;
  restartWindow: number;
  logLevel: string;
  cluster?: string[];
  clusterCreds?: string;
  clusterTlsCa?: string;
  clusterName: string;
  instanceId?: string;
  clusterDeadAfter: number;
  /** The rebalancing flags have no commander default, so that one given without --reuse-port can be refused. */
  rebalanceRate?: number;
  rebalanceSlack?: number;
  rebalanceDelay?: number;
}

/** The run flags, in --help order. */
export function runOptions(): Option[] {
  const d = DEFAULTS;
  return [
    flag('--bind <host:port>', 'HTTP/WebSocket listener: /v1/compat, /health, /metrics (plain HTTP; TLS terminates at the reverse proxy)',
      (text) => parseHostPort(text), d.bind, formatHostPort(d.bind)),
    flag('--udp <host:port>', 'UDP socket for Discover, PunchRequest, Relay and Sync', (text) => parseHostPort(text, '0.0.0.0:9001'), d.udp, formatHostPort(d.udp)),
    new Option('--reuse-port', 'cluster mode: open --bind and --udp with SO_REUSEPORT, so the processes of one machine share them '
      + '(the kernel spreads new connections and UDP flows over the live ones); needs the udp-batch addon; '
      + `the variable takes ${BOOLEAN_FORMS}`).env(envName('--reuse-port')),
    flag('--ops-bind <host:port>', '/health and /metrics of this process alone, on an address of its own (one per process, e.g. 127.0.0.1:9101); none by default',
      (text) => parseHostPort(text, '127.0.0.1:9101')),
    flag('--keys <file>', `JSON keys file {"<node id>": "<base64 public key>"}, reloaded on change and on SIGHUP; without it, ./${DEFAULT_KEYS_FILE}, picked up whenever it appears`,
      (text) => text),
    flag('--registry <host:port>', 'Pilot registry to look up keys not in the keys file; none by default', (text) => parseHostPort(text)),
    flag('--registry-timeout <duration>', 'how long a registry lookup may take, whoever asked; an answer after a handshake gave up still fills the key cache',
      parseDuration, d.registryTimeoutMs, formatDuration(d.registryTimeoutMs)),
    flag('--auth-timeout <duration>', 'a daemon must complete the handshake within this', parseDuration, d.authTimeoutMs, formatDuration(d.authTimeoutMs)),
    flag('--idle-timeout <duration>', 'a peer silent this long (no data, ping or pong) is disconnected', parseDuration, d.idleTimeoutMs, formatDuration(d.idleTimeoutMs)),
    flag('--max-peers <n>', 'authenticated peers; upgrades beyond it get HTTP 503', positiveInt, d.maxPeers, String(d.maxPeers)),
    flag('--max-handshakes <n>', 'sockets still in the handshake; upgrades beyond it get HTTP 503', positiveInt, d.maxHandshakes, String(d.maxHandshakes)),
    flag('--max-per-ip <n>', 'sockets from one client IP (any state); upgrades beyond it get HTTP 429', positiveInt, d.maxPerIp, String(d.maxPerIp)),
    flag('--per-ip-ipv6-prefix <bits>', 'the per-IP limits count IPv6 clients by this prefix length (1 to 128)',
      (text) => parsePositiveInt(text, 128), d.ipv6PrefixBits, String(d.ipv6PrefixBits)),
    flag('--trust-proxy <list>', 'comma-separated addresses, CIDRs or loopback/linklocal/uniquelocal whose X-Forwarded-For is believed; "none" for nobody',
      parseTrustProxy, d.trustProxy, formatTrustProxy(d.trustProxy)),
    flag('--send-buffer <size>', 'bytes queued to one peer before further frames to it are dropped', parseSize, d.sendBufferBytes, formatSize(d.sendBufferBytes)),
    flag('--helper-thread-nice <n>', 'Linux: the process\'s other threads (V8\'s garbage collector and compiler helpers) run at this much lower priority (nice) '
      + `than the event loop, so on a busy core the loop goes first; 0 to ${MAX_NICE}, 0 leaves them alone`,
      (text) => parseWholeNumber(text, 0, MAX_NICE), d.helperThreadNice, String(d.helperThreadNice)),
    flag('--peer-rate <size/s>', 'bytes per second one peer may send; beyond it the beacon stops reading its socket until the budget refills (TCP slows the sender; nothing is dropped)',
      parseByteRate, d.peerRateBytesPerSec, `${formatSize(d.peerRateBytesPerSec)}/s`),
    flag('--peer-burst <size>', 'bytes a peer may send at once above --peer-rate (at least 64KiB)', parseSize, d.peerBurstBytes, formatSize(d.peerBurstBytes)),
    flag('--peer-frame-rate <n/s>', 'frames per second a peer sending tiny frames may send: each frame counts as at least --peer-rate / this many bytes against its budget',
      parseFrameRate, d.peerFrameRate, `${d.peerFrameRate}/s`),
    flag('--udp-rate-per-ip <n/s>', 'UDP packets per second from one source address (burst: one second\'s worth); beyond it they are dropped and counted (rate_limited); beacon peers are exempt',
      parsePacketRate, d.udpRatePerIp, `${d.udpRatePerIp}/s`),
    flag('--udp-byte-rate-per-ip <size/s>', 'UDP bytes per second from one source address (burst: one second\'s worth, at least 64KiB/s); beyond it packets are dropped and counted (byte_rate_limited); beacon peers are exempt',
      parseByteRate, d.udpByteRatePerIp, `${formatSize(d.udpByteRatePerIp)}/s`),
    flag('--beacon-id <n>', `this beacon's ID in Sync packets (1 to ${MAX_NODE_ID}); required with --peer`,
      (text) => parsePositiveInt(text, MAX_NODE_ID), d.beaconId, d.beaconId === 0 ? 'none' : String(d.beaconId)),
    flag('--peer <host:port>', 'a beacon peer to Sync with (repeatable, or comma-separated)', parsePeers, d.peers,
      d.peers.length === 0 ? 'none' : d.peers.map(formatHostPort).join(','), 'BEACON_PEERS'),
    flag('--sync-interval <duration>', 'how often the attached node IDs are sent to beacon peers', parseDuration, d.syncIntervalMs, formatDuration(d.syncIntervalMs)),
    flag('--key-cache-ttl <duration>', 'how long a key found in the registry is remembered', parseDuration, d.keyCacheTtlMs, formatDuration(d.keyCacheTtlMs)),
    flag('--key-cache-negative-ttl <duration>', 'how long a node unknown to the registry is remembered', parseDuration, d.keyCacheNegativeTtlMs, formatDuration(d.keyCacheNegativeTtlMs)),
    flag('--key-cache-size <n>', 'registry answers kept in the key cache', positiveInt, d.keyCacheMaxEntries, String(d.keyCacheMaxEntries)),
    flag('--udp-endpoint-ttl <duration>', 'UDP endpoints not refreshed within this are forgotten', parseDuration, d.udpEndpointTtlMs, formatDuration(d.udpEndpointTtlMs)),
    flag('--max-udp-endpoints <n>', 'bound on the UDP endpoint table; when full, the least recently refreshed entry makes room', positiveInt, d.maxUdpEndpoints, String(d.maxUdpEndpoints)),
    flag('--max-udp-endpoints-per-ip <n>', 'UDP endpoint table entries one source address (IPv6: prefix) may hold', positiveInt, d.maxUdpEndpointsPerIp, String(d.maxUdpEndpointsPerIp)),
    new Option('--udp-io <mode>', 'UDP socket I/O: batched (recvmmsg/sendmmsg addon, Linux), dgram (Node\'s dgram), or auto: batched where the addon is built, else dgram')
      .choices(UDP_IO_CHOICES).default(d.udpIo).env(envName('--udp-io')),
    flag('--shutdown-grace <duration>', 'on shutdown, how long peers get to acknowledge the close', parseDuration, d.shutdownGraceMs, formatDuration(d.shutdownGraceMs)),
    flag('--restart-delay <duration>', 'on shutdown, peers are told to start reconnecting after this', parseDuration, d.restartDelayMs, formatDuration(d.restartDelayMs)),
    flag('--restart-window <duration>', 'on shutdown, peers are told to keep trying this long after the delay (first attempts spread over its first half)', parseDuration, d.restartWindowMs, formatDuration(d.restartWindowMs)),
    new Option('--log-level <level>', 'JSON logs on stdout at this level and above')
      .choices(LOG_LEVELS).default(d.logLevel).env(envName('--log-level')),
    flag('--cluster <urls>', 'cluster mode: NATS server URLs, comma-separated (nats://HOST:PORT or tls://..., user:password@ optional); several beacon processes then act as one; off by default',
      parseClusterUrls),
    flag('--cluster-creds <file>', 'a NATS .creds file or an nkey seed file to authenticate to NATS with', (text) => text),
    flag('--cluster-tls-ca <file>', 'CA certificate (PEM) for TLS to NATS', (text) => text),
    flag('--cluster-name <name>', 'prefix of every NATS subject and bucket of this cluster, so several clusters share one NATS',
      (text) => matching(text, CLUSTER_NAME_PATTERN, '1 to 32 letters, digits, "-" or "_"'), d.clusterName, d.clusterName),
    flag('--instance-id <id>', 'this process\'s ID in the cluster, unique among live processes; default: the host name and the --ops-bind port, or without --ops-bind the --bind port',
      (text) => matching(text, INSTANCE_ID_PATTERN, '1 to 64 letters, digits, ".", ":", "-" or "_"')),
    flag('--cluster-dead-after <duration>', 'an instance silent this long is dead for the others: routes to it stop, its entries are removed',
      parseDuration, d.clusterDeadAfterMs, formatDuration(d.clusterDeadAfterMs)),
    flag('--rebalance-rate <n/s>', '--reuse-port: peers per second an instance holding clearly more than its share of the instances sharing '
      + `its address asks to reconnect (the restarting notice); 0 turns rebalancing off (default: ${d.rebalanceRate}/s)`, parsePeerRate),
    flag('--rebalance-slack <percent>', '--reuse-port: how far above its share (peers / instances sharing the address) an instance may be '
      + `before it rebalances (default: ${Math.round(d.rebalanceSlack * 100)}%)`, parsePercent),
    flag('--rebalance-delay <duration>', '--reuse-port: an instance rebalances only once no instance has joined or left the shared address '
      + `for this long (default: ${formatDuration(d.rebalanceDelayMs)})`, parseDuration),
  ];
}

/** The BeaconConfig the flags describe (not yet validated; a rebalancing flag without --reuse-port throws ConfigError). */
export function configFromFlags(flags: RunFlags, keysFile: string | undefined): BeaconConfig {
  const rebalancing = flags.rebalanceRate !== undefined ? '--rebalance-rate'
    : flags.rebalanceSlack !== undefined ? '--rebalance-slack'
    : flags.rebalanceDelay !== undefined ? '--rebalance-delay' : undefined;
  if (rebalancing !== undefined && flags.reusePort !== true) {
    throw new ConfigError(`${rebalancing} is set but --reuse-port is not: rebalancing evens out the processes that share one address; `
      + `add --reuse-port, or remove ${rebalancing} (with a port per process, Caddy or DNS chooses where a daemon reconnects)`);
  }
  return {
    bind: flags.bind,
    udp: flags.udp,
    reusePort: flags.reusePort === true,
    opsBind: flags.opsBind,
    keysFile,
    registry: flags.registry,
    registryTimeoutMs: flags.registryTimeout,
    authTimeoutMs: flags.authTimeout,
    idleTimeoutMs: flags.idleTimeout,
    maxPeers: flags.maxPeers,
    maxHandshakes: flags.maxHandshakes,
    maxPerIp: flags.maxPerIp,
    ipv6PrefixBits: flags.perIpIpv6Prefix,
    trustProxy: [...flags.trustProxy],
    sendBufferBytes: flags.sendBuffer,
    helperThreadNice: flags.helperThreadNice,
    peerRateBytesPerSec: flags.peerRate,
    peerBurstBytes: flags.peerBurst,
    peerFrameRate: flags.peerFrameRate,
    udpRatePerIp: flags.udpRatePerIp,
    udpByteRatePerIp: flags.udpByteRatePerIp,
    beaconId: flags.beaconId,
    peers: [...flags.peer],
    syncIntervalMs: flags.syncInterval,
    keyCacheTtlMs: flags.keyCacheTtl,
    keyCacheNegativeTtlMs: flags.keyCacheNegativeTtl,
    keyCacheMaxEntries: flags.keyCacheSize,
    udpEndpointTtlMs: flags.udpEndpointTtl,
    maxUdpEndpoints: flags.maxUdpEndpoints,
    udpIo: flags.udpIo,
    maxUdpEndpointsPerIp: flags.maxUdpEndpointsPerIp,
    shutdownGraceMs: flags.shutdownGrace,
    restartDelayMs: flags.restartDelay,
    restartWindowMs: flags.restartWindow,
    logLevel: flags.logLevel,
    clusterServers: [...(flags.cluster ?? [])],
    clusterCredsFile: flags.clusterCreds,
    clusterTlsCaFile: flags.clusterTlsCa,
    clusterName: flags.clusterName,
    instanceId: flags.instanceId,
    clusterDeadAfterMs: flags.clusterDeadAfter,
    rebalanceRate: flags.rebalanceRate ?? DEFAULTS.rebalanceRate,
    rebalanceSlack: flags.rebalanceSlack ?? DEFAULTS.rebalanceSlack,
    rebalanceDelayMs: flags.rebalanceDelay ?? DEFAULTS.rebalanceDelayMs,
  };
}

/** What a boolean flag's variable may say. */
const BOOLEAN_FORMS = '1, true or yes (on) and 0, false or no (off)';
const BOOLEAN_VALUES: Readonly<Record<string, boolean>> = { 1: true, true: true, yes: true, 0: false, false: false, no: false };

/**
 * Commander turns a boolean flag on whenever its variable is set, whatever
 * it says (BEACON_REUSE_PORT=false would turn it on): read the value for it,
 * refusing anything else. Called once on the program after runOptions().
 */
export function readBooleanVariables(program: Command): void {
  for (const option of program.options) {
    if (!option.isBoolean() || option.negate || !option.envVar) continue;
    const variable = option.envVar;
    program.on(`optionEnv:${option.name()}`, () => {
      const text = (process.env[variable] ?? '').trim().toLowerCase();
      const value = BOOLEAN_VALUES[text];
      if (value === undefined) throw new UsageError(`${variable}=${process.env[variable]}: use ${BOOLEAN_FORMS}`);
      program.setOptionValueWithSource(option.attributeName(), value, 'env');
    });
  }
}

function matching(text: string, pattern: RegExp, form: string): string {
  if (!pattern.test(text)) throw new Error(`"${text}": use ${form}`);
  return text;
}

/** `--auth-timeout` -> `BEACON_AUTH_TIMEOUT`. */
export function envName(longFlag: string): string {
  return `BEACON_${longFlag.replace(/^--/, '').replace(/-/g, '_').toUpperCase()}`;
}

/** A flag with its parser, its BEACON_* variable and, when it has one, its default as shown in --help. */
function flag<T>(
  flags: string, description: string, parse: (text: string, previous: T) => T,
  defaultValue?: T, shownDefault?: string, env?: string,
): Option {
  const longFlag = flags.split(' ')[0];
  const option = new Option(flags, description).env(env ?? envName(longFlag)).argParser(usageParser(parse));
  if (defaultValue !== undefined) option.default(defaultValue, shownDefault);
  return option;
}

/** Turns a parser's Error into commander's InvalidArgumentError (a usage error naming the flag). */
export function usageParser<T>(parse: (text: string, previous: T) => T): (text: string, previous: T) => T {
  return (text, previous) => {
    try {
      return parse(text, previous);
    } catch (err) {
      throw new InvalidArgumentError(err instanceof Error ? err.message : String(err));
    }
  };
}

function positiveInt(text: string): number {
  return parsePositiveInt(text);
}

/** Repeated --peer flags accumulate; one value (or BEACON_PEERS) may hold several, comma-separated. */
function parsePeers(text: string, previous: HostPort[]): HostPort[] {
  const added = text.split(',').map((part) => part.trim()).filter(Boolean).map((part) => parseHostPort(part, '10.0.0.2:9001'));
  if (added.length === 0) throw new Error(`"${text}" names no beacon peer: use HOST:PORT, e.g. 10.0.0.2:9001`);
  return [...previous, ...added];
}

export function parseTrustProxy(text: string): string[] {
  if (text.trim() === 'none') return [];
  const entries = text.split(',').map((part) => part.trim()).filter(Boolean);
  if (entries.length === 0) throw new Error(`"${text}" is empty: use addresses, CIDRs or loopback, or "none"`);
  for (const entry of entries) {
    if (!isTrustProxyEntry(entry)) {
      throw new Error(`"${entry}" is not an IP address, CIDR (10.0.0.0/8) or one of ${TRUST_PROXY_KEYWORDS.join(', ')}; use "none" to trust no proxy`);
    }
  }
  return entries;
}

function isTrustProxyEntry(entry: string): boolean {
  if (TRUST_PROXY_KEYWORDS.includes(entry) || ipaddr.isValid(entry) || ipaddr.isValidCIDR(entry)) return true;
  // proxy-addr also takes ADDRESS/NETMASK, e.g. 10.0.0.0/255.0.0.0.
  const [address, mask, extra] = entry.split('/');
  return extra === undefined && mask !== undefined
    && ipaddr.IPv4.isValidFourPartDecimal(address) && ipaddr.IPv4.isValidFourPartDecimal(mask);
}

function formatTrustProxy(list: readonly string[]): string {
  return list.length === 0 ? 'none' : list.join(',');
}

/** The largest unit parseDuration reads back exactly: 90000 -> 90s, 300000 -> 5m. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** 262144 -> 256KiB, as parseSize reads it back. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}
