/**
 * Counters of everything the beacon does, as plain numbers.
 *
 * - The hot path only does `stats.x++`: no label hashing, no allocation.
 * - `snapshot()` is the library's metrics API (tests read it).
 * - `lib/metrics/prometheus.ts` exposes the same numbers to Prometheus at
 *   scrape time; one name for one thing in both.
 */

/** Every reason a packet or frame is dropped; each is a metric label. */
export const DROP_REASONS = [
  /** Too short for its type, unknown type, or a zero node ID (other than a Discover's: an address query). */
  'malformed',
  /** A type the sender may not send (e.g. RelayDeliver to the beacon). */
  'unexpected_type',
  /** Over WebSocket, a sender/node_id/requester other than the peer's own. */
  'spoofed_sender',
  /** Over UDP, a packet speaking for a node attached over WebSocket. */
  'wss_node_over_udp',
  /** Sync from an address that is not a configured beacon peer. */
  'stranger_sync',
  /** Relay to a node attached nowhere we know of. */
  'unknown_dest',
  /** A PunchRequest that cannot be coordinated: a side has no UDP endpoint. */
  'punch_unavailable',
  /** The destination peer's send buffer was full (slow reader). */
  'send_buffer_full',
  /** The destination peer's socket was already closing. */
  'peer_closing',
  /** A frame from a peer whose socket is closing (replaced, revoked, idle, shutting down): it speaks for nobody now. */
  'sender_closing',
  /** An inbound WebSocket message over 64 KiB (the peer is disconnected). */
  'oversized',
  /** A message before the handshake finished. */
  'unauthenticated',
  /** A Discover or PunchRequest from a source that holds its share of the UDP endpoint table (--max-udp-endpoints-per-ip). */
  'endpoint_source_full',
  /** The UDP socket refused a send. */
  'udp_send_error',
  /** The UDP socket's send buffer was full (batched I/O drops rather than queue; dgram queues). */
  'udp_send_full',
  /** A datagram larger than the receive slot (batched I/O); cut by the kernel, so not relayed. */
  'udp_truncated',
  /** A Sync listed more nodes than fit in one datagram. */
  'sync_truncated',
  /** A relay for a node on another instance while this instance is cut off from NATS. */
  'cluster_unavailable',
  /** A message on the cluster's subjects or bucket that is not ours (garbage, foreign, wrong version). */
  'cluster_malformed',
  /** A relay forwarded by another instance for a node no longer attached here (it moved or left meanwhile). */
  'cluster_moved',
  /**
   * A relay another instance forwarded whose sender is attached over
   * WebSocket to a different instance (or to this one): only the instance
   * holding a node's socket reads its relays.
   */
  'cluster_sender_elsewhere',
  /**
   * Cluster mode: a Discover or PunchRequest that would make a new UDP
   * claim, or a UDP relay, while this instance cannot yet check it against
   * the WebSocket nodes of the others (starting, or cut off from NATS for
   * claims): the Discover is answered, nothing is recorded or announced.
   */
  'cluster_not_ready',
  /** Cluster mode: a new UDP claim from a source over its budget of claims (each is announced to every instance). */
  'cluster_claim_rate',
  /** Cluster mode: another instance's UDP claim while this one holds as many as it keeps (MAX_REMOTE_CLAIMS). */
  'cluster_claims_full',
  /** A UDP packet from a source address over --udp-rate-per-ip. */
  'rate_limited',
  /** A UDP packet from a source address over --udp-byte-rate-per-ip. */
  'byte_rate_limited',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** Why a handshake failed; each is a `reason` label of beacon_wss_auth_total. */
export const AUTH_FAILURE_REASONS = [
  'timeout',
  'bad_json',
  'bad_type',
  'bad_node_id',
  'bad_signature_encoding',
  'binary_message',
  'unknown_node',
  'bad_signature',
  'registry_unavailable',
  /** The keys file changed the node's key (or removed it) while the signature was being checked. */
  'key_revoked',
  /** More bytes or frames before auth_ok than a handshake needs (HANDSHAKE_MAX_BYTES, HANDSHAKE_MAX_FRAMES). */
  'handshake_budget',
  'closed',
] as const;
export type AuthFailureReason = (typeof AUTH_FAILURE_REASONS)[number];

/** Why an upgrade was refused before any WebSocket work. */
export const REFUSAL_REASONS = [
  'max_peers', 'max_handshakes', 'max_per_ip', 'shutting_down',
  /** An IPv6 /48 or /56 holds its share of the handshake slots already (HTTP 429). */
  'max_handshakes_per_prefix',
  /** A trusted proxy forwarded a client address that is not an IP. */
  'bad_forwarded_address',
  /** An upgrade to a path other than /v1/compat (HTTP 404). */
  'not_compat_path',
  /** ws found the upgrade request invalid, e.g. no Sec-WebSocket-Key (HTTP 400). */
  'invalid_upgrade',
] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/** Why the beacon closed a TCP connection before reading a request from it. */
export const CONNECTION_CLOSE_REASONS = [
  /** More connections from one client address than --max-per-ip allows (plus a little room). */
  'max_per_ip',
  /** No complete request headers within --auth-timeout of connecting. */
  'headers_timeout',
] as const;
export type ConnectionCloseReason = (typeof CONNECTION_CLOSE_REASONS)[number];
export const UDP_PACKET_TYPES = ['discover', 'punch_request', 'relay', 'sync', 'other'] as const;
export type UdpPacketType = (typeof UDP_PACKET_TYPES)[number];

/**
 * `udp_shared`: a UDP node that another instance sharing this address
 * (--reuse-port) claims, sent to from this instance's socket (no NATS hop).
 */
export const RELAY_ROUTES = ['wss', 'udp', 'udp_shared', 'cluster', 'beacon', 'unknown'] as const;
export type RelayRoute = (typeof RELAY_ROUTES)[number];

/** Where an address query (a Discover for node 0) came from. */
export const ADDRESS_QUERY_TRANSPORTS = ['udp', 'wss'] as const;
export type AddressQueryTransport = (typeof ADDRESS_QUERY_TRANSPORTS)[number];

function zeroes<K extends string>(keys: readonly K[]): Record<K, number> {
  return Object.fromEntries(keys.map((k) => [k, 0])) as Record<K, number>;
}

export class BeaconStats {
  upgradesOk = 0;
  upgradesFailed = 0;
  refused = zeroes(REFUSAL_REASONS);
  connectionsClosed = zeroes(CONNECTION_CLOSE_REASONS);
  authOk = 0;
  authFailed = zeroes(AUTH_FAILURE_REASONS);
  framesIn = 0;
  framesOut = 0;
  idleDisconnects = 0;
  /** Attached peers whose connection closed, whatever the reason (replaced, revoked and idle ones too). */
  peerDisconnects = 0;
  /** Turns of the event loop that ended with handshake work still waiting: a storm held back so attached peers' frames go first. */
  handshakeTurnsDeferred = 0;
  replacedPeers = 0;
  revokedPeers = 0;
  /** Times a peer's socket stopped being read because it was over its budget (--peer-rate). */
  peerReadPauses = 0;
  /** Milliseconds peers spent paused for their budget, summed (added when each pause ends). */
  peerReadPausedMs = 0;
  /** Times a peer gave up the rest of a turn of the event loop after reading its fair share. */
  peerReadYields = 0;
  udpPackets = zeroes(UDP_PACKET_TYPES);
  udpSent = 0;
  /** Entries the full UDP endpoint table dropped (least recently refreshed) to make room. */
  udpEndpointsEvicted = 0;
  /** Discovers for node 0 answered (a daemon asking its address before it registers); nothing recorded. */
  addressQueries = zeroes(ADDRESS_QUERY_TRANSPORTS);
  relay = zeroes(RELAY_ROUTES);
  dropped = zeroes(DROP_REASONS);
  syncsSent = 0;
  syncsReceived = 0;
  keysReloadsOk = 0;
  keysReloadsFailed = 0;
  registryLookups = { found: 0, unknown: 0, error: 0 };
  keyCacheHits = 0;
  keyCacheMisses = 0;
  /** Relays forwarded to other instances / received from them, and the NATS messages that carried them. */
  cluster = { framesOut: 0, framesIn: 0, batchesOut: 0, batchesIn: 0 };
  /** Attachments dropped here because another instance now holds the node (close 4001, or the UDP endpoint forgotten). */
  clusterEvictions = { wss: 0, udp: 0 };
  /** New UDP claims this instance announced (out: each a write a source caused), claims heard from others (in: new or announced again). */
  clusterUdpClaims = { out: 0, in: 0 };
  /** UDP nodes of a dead instance that shared this address, taken over here (claimed anew) rather than dropped. */
  clusterUdpAdopted = 0;
  /** Peers asked to reconnect (the `restarting` notice) because this instance held more than its share (--rebalance-rate). */
  clusterRebalanced = 0;

  drop(reason: DropReason): void {
    this.dropped[reason]++;
  }
}

/** What the library reports: the counters plus the live gauges. */
export interface MetricsSnapshot {
  peers: number;
  peersPaused: number;
  handshakes: number;
  udpEndpoints: number;
  beaconRoutes: number;
  /** The UDP I/O in use (--udp-io). */
  udpIo: string;
  stats: BeaconStats;
}

/** Gauges read from live state at snapshot/scrape time. */
export interface LiveGauges {
  peers(): number;
  /** Peers whose socket is not read right now because they are over budget. */
  peersPaused(): number;
  /** The configured peer limit, so alerts can compare against it. */
  maxPeers(): number;
  handshakes(): number;
  udpEndpoints(): number;
  beaconRoutes(): number;
  keysLoaded(): number;
  /** 'batched' or 'dgram'. */
  udpIo(): string;
  /** Source addresses --udp-rate-per-ip keeps a budget for. */
  udpRateSources(): number;
}

/** Gauges of cluster mode, read at scrape time; exposed only when --cluster is set. */
export interface ClusterGauges {
  /** 1 while connected to NATS, else 0. */
  connected(): number;
  /** Live instances, this one included. */
  instances(): number;
  /** Entries in this instance's mirror of the directory. */
  directoryEntries(): number;
}

export function snapshot(stats: BeaconStats, gauges: LiveGauges): MetricsSnapshot {
  return {
    peers: gauges.peers(),
    peersPaused: gauges.peersPaused(),
    handshakes: gauges.handshakes(),
    udpEndpoints: gauges.udpEndpoints(),
    beaconRoutes: gauges.beaconRoutes(),
    udpIo: gauges.udpIo(),
    stats: structuredClone(stats),
  };
}
