/**
 * Prometheus exposition of BeaconStats (prom-client).
 *
 * - One Registry per beacon, so several beacons in one process (tests) never
 *   share series.
 * - Values are copied from the plain counters in `collect()` at scrape time,
 *   so the hot path never touches prom-client.
 * - Process metrics (event-loop lag, heap, fds) come from prom-client's
 *   defaults, prefixed `beacon_`.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import {
  ADDRESS_QUERY_TRANSPORTS, AUTH_FAILURE_REASONS, CONNECTION_CLOSE_REASONS, DROP_REASONS, REFUSAL_REASONS, RELAY_ROUTES, UDP_PACKET_TYPES,
  type BeaconStats, type ClusterGauges, type LiveGauges,
} from './stats';

/** A counter whose per-label values are read from `read()` at scrape time. */
function mirroredCounter<L extends string>(
  registry: Registry, name: string, help: string, labelNames: readonly L[],
  read: () => Array<[Partial<Record<L, string>>, number]>,
): void {
  new Counter({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.inc(labels, value);
    },
  });
}

function mirroredGauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
}

function byKey<K extends string>(label: string, values: Record<K, number>, keys: readonly K[]) {
  return keys.map((k): [Record<string, string>, number] => [{ [label]: k }, values[k]]);
}

export function createPrometheusRegistry(
  stats: BeaconStats, gauges: LiveGauges, version: string, cluster?: ClusterGauges,
): Registry {
  const r = new Registry();
  collectDefaultMetrics({ register: r, prefix: 'beacon_' });

  new Gauge({ name: 'beacon_build_info', help: 'Build information; always 1.', labelNames: ['version', 'node_version'], registers: [r] })
    .set({ version, node_version: process.version }, 1);

  mirroredCounter(r, 'beacon_wss_upgrades_total', 'WebSocket upgrade attempts at /v1/compat by result.', ['result'],
    () => [[{ result: 'ok' }, stats.upgradesOk], [{ result: 'fail' }, stats.upgradesFailed]]);
  mirroredCounter(r, 'beacon_wss_refused_total', 'Upgrades refused before the WebSocket handshake, by limit.', ['reason'],
    () => byKey('reason', stats.refused, REFUSAL_REASONS));
  mirroredCounter(r, 'beacon_http_connections_closed_total', 'TCP connections closed before a request was read from them, by reason.', ['reason'],
    () => byKey('reason', stats.connectionsClosed, CONNECTION_CLOSE_REASONS));
  mirroredCounter(r, 'beacon_wss_auth_total', 'Compat handshakes by result, with the reason of failures.', ['result', 'reason'],
    () => [[{ result: 'ok', reason: '' }, stats.authOk],
      ...AUTH_FAILURE_REASONS.map((reason): [Record<string, string>, number] => [{ result: 'fail', reason }, stats.authFailed[reason]])]);
  mirroredCounter(r, 'beacon_wss_frames_total', 'Binary WebSocket frames by direction.', ['direction'],
    () => [[{ direction: 'in' }, stats.framesIn], [{ direction: 'out' }, stats.framesOut]]);
  mirroredCounter(r, 'beacon_wss_idle_disconnects_total', 'Peers disconnected for silence past the idle timeout.', [],
    () => [[{}, stats.idleDisconnects]]);
  mirroredCounter(r, 'beacon_wss_disconnects_total', 'Authenticated peers whose connection closed, for any reason.', [],
    () => [[{}, stats.peerDisconnects]]);
  mirroredCounter(r, 'beacon_wss_handshake_turns_deferred_total', 'Event-loop turns that ended with handshake work (upgrades to answer, signatures to check) left for the next: a storm held back so attached peers\' frames go first.', [],
    () => [[{}, stats.handshakeTurnsDeferred]]);
  mirroredCounter(r, 'beacon_wss_replaced_total', 'Peers closed because a newer connection authenticated as the same node.', [],
    () => [[{}, stats.replacedPeers]]);
  mirroredCounter(r, 'beacon_wss_revoked_total', 'Peers closed because their key was removed or changed.', [],
    () => [[{}, stats.revokedPeers]]);
  mirroredGauge(r, 'beacon_wss_peers', 'Authenticated peers attached over WebSocket.', () => gauges.peers());
  mirroredCounter(r, 'beacon_wss_read_pauses_total', 'Times a peer\'s socket stopped being read because it sent more than --peer-rate/--peer-burst allow.', [],
    () => [[{}, stats.peerReadPauses]]);
  mirroredCounter(r, 'beacon_wss_read_paused_seconds_total', 'Seconds peers spent paused for their read budget, summed over peers (counted when each pause ends).', [],
    () => [[{}, stats.peerReadPausedMs / 1000]]);
  mirroredCounter(r, 'beacon_wss_read_yields_total', 'Times a peer yielded the rest of an event-loop turn to the others after reading its fair share.', [],
    () => [[{}, stats.peerReadYields]]);
  mirroredGauge(r, 'beacon_wss_peers_paused', 'Peers whose socket is not being read right now because they are over budget.', () => gauges.peersPaused());
  mirroredGauge(r, 'beacon_wss_max_peers', 'The peer limit (--max-peers); upgrades beyond it get HTTP 503.', () => gauges.maxPeers());
  mirroredGauge(r, 'beacon_wss_handshakes', 'WebSocket connections still in the handshake.', () => gauges.handshakes());

  mirroredCounter(r, 'beacon_udp_packets_total', 'UDP packets received, by packet type.', ['type'],
    () => byKey('type', stats.udpPackets, UDP_PACKET_TYPES));
  mirroredCounter(r, 'beacon_udp_sent_total', 'UDP packets sent.', [], () => [[{}, stats.udpSent]]);
  new Gauge({
    name: 'beacon_udp_io', help: 'The UDP I/O in use (--udp-io): batched (recvmmsg/sendmmsg addon) or dgram; always 1.',
    labelNames: ['io'], registers: [r],
    collect() {
      this.reset();
      this.set({ io: gauges.udpIo() }, 1);
    },
  });
  mirroredGauge(r, 'beacon_udp_endpoints', 'Nodes with a known UDP endpoint.', () => gauges.udpEndpoints());
  mirroredCounter(r, 'beacon_udp_endpoints_evicted_total', 'UDP endpoints dropped, least recently refreshed first, to make room in a full table.', [],
    () => [[{}, stats.udpEndpointsEvicted]]);
  mirroredGauge(r, 'beacon_udp_rate_limit_sources', 'Source addresses with a budget (--udp-rate-per-ip, --udp-byte-rate-per-ip); bounded.',
    () => gauges.udpRateSources());
  mirroredCounter(r, 'beacon_address_queries_total', 'Discovers for node 0 (a daemon asking its address before it registers), answered; nothing is recorded for them.',
    ['transport'], () => byKey('transport', stats.addressQueries, ADDRESS_QUERY_TRANSPORTS));

  mirroredCounter(r, 'beacon_relay_total', 'Relays by the route the router chose.', ['route'],
    () => byKey('route', stats.relay, RELAY_ROUTES));
  mirroredCounter(r, 'beacon_dropped_total', 'Packets and frames dropped, by reason.', ['reason'],
    () => byKey('reason', stats.dropped, DROP_REASONS));

  mirroredCounter(r, 'beacon_sync_total', 'Sync packets by direction.', ['direction'],
    () => [[{ direction: 'sent' }, stats.syncsSent], [{ direction: 'received' }, stats.syncsReceived]]);
  mirroredGauge(r, 'beacon_beacon_routes', 'Nodes reachable through a beacon peer.', () => gauges.beaconRoutes());

  mirroredCounter(r, 'beacon_keys_reloads_total', 'Keys file reloads by result.', ['result'],
    () => [[{ result: 'ok' }, stats.keysReloadsOk], [{ result: 'fail' }, stats.keysReloadsFailed]]);
  mirroredGauge(r, 'beacon_keys_loaded', 'Public keys in the keys file.', () => gauges.keysLoaded());
  mirroredCounter(r, 'beacon_registry_lookups_total', 'Registry lookups by result.', ['result'],
    () => [[{ result: 'found' }, stats.registryLookups.found], [{ result: 'unknown' }, stats.registryLookups.unknown],
      [{ result: 'error' }, stats.registryLookups.error]]);
  mirroredCounter(r, 'beacon_key_cache_total', 'Registry key cache lookups by result.', ['result'],
    () => [[{ result: 'hit' }, stats.keyCacheHits], [{ result: 'miss' }, stats.keyCacheMisses]]);
  if (cluster) registerClusterMetrics(r, stats, cluster);
  return r;
}

/** Only on instances started with --cluster, so single-process beacons never raise cluster alerts. */
function registerClusterMetrics(r: Registry, stats: BeaconStats, cluster: ClusterGauges): void {
  mirroredGauge(r, 'beacon_cluster_connected', '1 while this instance is connected to NATS, else 0.', () => cluster.connected());
  mirroredGauge(r, 'beacon_cluster_instances', 'Live instances of the cluster, this one included.', () => cluster.instances());
  mirroredGauge(r, 'beacon_cluster_directory_entries', 'Nodes in this instance\'s mirror of the cluster directory.',
    () => cluster.directoryEntries());
  mirroredCounter(r, 'beacon_cluster_frames_total', 'Relays forwarded to (out) or received from (in) other instances.', ['direction'],
    () => [[{ direction: 'out' }, stats.cluster.framesOut], [{ direction: 'in' }, stats.cluster.framesIn]]);
  mirroredCounter(r, 'beacon_cluster_batches_total', 'NATS messages carrying forwarded relays, by direction.', ['direction'],
    () => [[{ direction: 'out' }, stats.cluster.batchesOut], [{ direction: 'in' }, stats.cluster.batchesIn]]);
  mirroredCounter(r, 'beacon_cluster_evictions_total',
    'Attachments dropped here because another instance now holds the node: a WebSocket closed with 4001 (wss), a UDP endpoint forgotten (udp).',
    ['kind'], () => [[{ kind: 'wss' }, stats.clusterEvictions.wss], [{ kind: 'udp' }, stats.clusterEvictions.udp]]);
  mirroredCounter(r, 'beacon_cluster_udp_claims_total',
    'New UDP claims this instance announced to the others (out), and claims heard from them, new or announced again (in); never stored in NATS.',
    ['direction'], () => [[{ direction: 'out' }, stats.clusterUdpClaims.out], [{ direction: 'in' }, stats.clusterUdpClaims.in]]);
  mirroredCounter(r, 'beacon_cluster_udp_adopted_total',
    'UDP nodes of a dead instance that shared this address (--reuse-port), taken over by this one rather than dropped.',
    [], () => [[{}, stats.clusterUdpAdopted]]);
  mirroredCounter(r, 'beacon_cluster_rebalanced_total',
    'Peers this instance asked to reconnect (restarting notice) because it held more than its share of the instances sharing its address.',
    [], () => [[{}, stats.clusterRebalanced]]);
}
