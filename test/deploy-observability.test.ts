/**
 * deploy/prometheus/alerts.yml, deploy/prometheus/prometheus.yml and
 * deploy/grafana/beacon.json, as shipped: promtool accepts them, each alert
 * fires on the series it is about and nothing fires on a healthy beacon
 * (`promtool test rules`), and every metric they name is one a running
 * beacon exports at /metrics.
 *
 * Needs Debian's prometheus package (for promtool; .ci/install-deps);
 * fails, never skips, without it.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { exportedMetricNames, get, requireTool, run, tempDir } from './helpers/deploy';
import { startTestBeacon, type TestBeacon } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import {
  ALERTS_PATH, DASHBOARD_PATH, PROMETHEUS_CONFIG_PATH, dashboardQueries, metricNamesIn, readAlertRules,
} from './helpers/promql';

/** Series Prometheus makes itself for every target; not the beacon's to export. */
const PROMETHEUS_OWN = new Set(['up']);

/**
 * The cluster metrics of issue 14, named exactly as the issue names them.
 * A beacon exports them only when started with --cluster, so the beacon
 * this test scrapes (a single process) does not: the alerts and the
 * dashboard may name these, and only these, beyond what it exports.
 * That a real instance started with --cluster does export each of them is
 * checked by test/deploy-cluster-e2e.test.ts (a real nats-server).
 */
const CLUSTER_ONLY = new Set([
  'beacon_cluster_connected', 'beacon_cluster_instances', 'beacon_cluster_directory_entries',
  'beacon_cluster_frames_total', 'beacon_cluster_batches_total',
  // Issue 21: instances sharing one address.
  'beacon_cluster_rebalanced_total', 'beacon_cluster_udp_adopted_total',
]);

let tb: TestBeacon;
let exported: Set<string>;

before(async () => {
  tb = await startTestBeacon([makeIdentity(7777)]);
  const res = await get(tb.httpBase, '/metrics');
  assert.equal(res.status, 200);
  exported = exportedMetricNames(res.body);
});
after(async () => { await tb?.close(); });

test('promtool check rules accepts alerts.yml, and check config accepts the example prometheus.yml with it', async () => {
  const promtool = requireTool('promtool');
  const rules = await run(promtool, ['check', 'rules', ALERTS_PATH], { timeoutMs: 30_000 });
  assert.equal(rules.code, 0, `promtool check rules failed:\n${rules.stdout}${rules.stderr}`);
  const count = /SUCCESS: (\d+) rules found/.exec(rules.stdout);
  assert.ok(count, rules.stdout);
  assert.equal(Number(count[1]), readAlertRules().length, 'the test reads every rule promtool finds');

  // Installed as the operator's guide says: alerts.yml becomes beacon-alerts.yml beside the config.
  const etc = tempDir('prometheus');
  copyFileSync(PROMETHEUS_CONFIG_PATH, join(etc, 'prometheus.yml'));
  copyFileSync(ALERTS_PATH, join(etc, 'beacon-alerts.yml'));
  const config = await run(promtool, ['check', 'config', join(etc, 'prometheus.yml')], { timeoutMs: 30_000 });
  assert.equal(config.code, 0, `promtool check config failed:\n${config.stdout}${config.stderr}`);
  assert.match(readFileSync(PROMETHEUS_CONFIG_PATH, 'utf8'), /job_name: beacon\b/, 'the alerts select job="beacon"');
});

test('the alerts cover what an operator needs', () => {
  const rules = readAlertRules();
  const exprOf = (alert: string) => rules.find((r) => r.alert === alert)?.expr ?? assert.fail(`no alert ${alert}`);
  assert.match(exprOf('BeaconDown'), /up\{job="beacon"\} == 0/);
  assert.match(exprOf('BeaconAuthFailureSpike'), /beacon_wss_auth_total\{result="fail"\}/);
  assert.match(exprOf('BeaconRelayDropsHigh'), /beacon_dropped_total/);
  assert.match(exprOf('BeaconPeersNearLimit'), /beacon_wss_peers \/ beacon_wss_max_peers/);
  assert.match(exprOf('BeaconMetricsScrapeFailing'), /up\{job="beacon"\}/);
  assert.match(exprOf('BeaconEventLoopLagHigh'), /beacon_nodejs_eventloop_lag/);
  // Issue 14: NATS disconnected, an instance gone, cross-instance drops.
  assert.match(exprOf('BeaconClusterDisconnected'), /beacon_cluster_connected == 0/);
  assert.match(exprOf('BeaconClusterInstanceGone'), /beacon_cluster_instances < max_over_time\(beacon_cluster_instances\[1h\]\)/);
  assert.match(exprOf('BeaconClusterDropping'), /beacon_dropped_total\{reason="cluster_unavailable"\}/);
  assert.equal(new Set(rules.map((r) => r.alert)).size, rules.length, 'alert names are unique');
});

/** One healthy beacon and one beacon per alert, each with just the series that alert is about (1-minute steps). */
const HEALTHY: Record<string, string> = {
  'up{job="beacon",instance="healthy"}': '1x40',
  'beacon_build_info{job="beacon",instance="healthy",version="0.1.0",node_version="v20"}': '1x40',
  'beacon_process_start_time_seconds{job="beacon",instance="healthy"}': '1000x40',
  'beacon_wss_auth_total{job="beacon",instance="healthy",result="ok",reason=""}': '0+600x40',
  'beacon_wss_auth_total{job="beacon",instance="healthy",result="fail",reason="unknown_node"}': '0+6x40',
  'beacon_registry_lookups_total{job="beacon",instance="healthy",result="error"}': '0x40',
  'beacon_dropped_total{job="beacon",instance="healthy",reason="send_buffer_full"}': '0+6x40',
  'beacon_dropped_total{job="beacon",instance="healthy",reason="malformed"}': '0+6000x40',
  'beacon_wss_frames_total{job="beacon",instance="healthy",direction="in"}': '0+6000x40',
  'beacon_udp_packets_total{job="beacon",instance="healthy",type="relay"}': '0+600x40',
  'beacon_wss_peers{job="beacon",instance="healthy"}': '15000x40',
  'beacon_wss_max_peers{job="beacon",instance="healthy"}': '20000x40',
  'beacon_wss_refused_total{job="beacon",instance="healthy",reason="max_peers"}': '0x40',
  'beacon_wss_refused_total{job="beacon",instance="healthy",reason="max_per_ip"}': '0+1x40',
  'beacon_keys_reloads_total{job="beacon",instance="healthy",result="fail"}': '0x40',
  'beacon_nodejs_eventloop_lag_p99_seconds{job="beacon",instance="healthy"}': '0.02x40',
  'beacon_process_open_fds{job="beacon",instance="healthy"}': '15100x40',
  'beacon_process_max_fds{job="beacon",instance="healthy"}': '65536x40',
  'beacon_process_resident_memory_bytes{job="beacon",instance="healthy"}': '300000000x40',
  // A healthy cluster instance: connected, four instances all along, no cluster drops.
  'beacon_cluster_connected{job="beacon",instance="healthy"}': '1x40',
  'beacon_cluster_instances{job="beacon",instance="healthy"}': '4x40',
  'beacon_dropped_total{job="beacon",instance="healthy",reason="cluster_unavailable"}': '0x40',
};

const FIRING: Record<string, Record<string, string>> = {
  BeaconDown: { 'up{job="beacon",instance="down"}': '0x40' },
  // One scrape in four fails: never down for long, never fine either.
  BeaconMetricsScrapeFailing: { 'up{job="beacon",instance="flaky"}': '1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1' },
  BeaconMetricsNotFromBeacon: { 'up{job="beacon",instance="other"}': '1x40' },
  BeaconRestartLoop: { 'beacon_process_start_time_seconds{job="beacon",instance="looping"}': '0+300x40' },
  BeaconAuthFailureSpike: {
    'beacon_wss_auth_total{job="beacon",instance="authfail",result="fail",reason="bad_signature"}': '0+120x40',
    'beacon_wss_auth_total{job="beacon",instance="authfail",result="ok",reason=""}': '0+10x40',
  },
  BeaconRegistryUnavailable: { 'beacon_wss_auth_total{job="beacon",instance="noregistry",result="fail",reason="registry_unavailable"}': '0+6x40' },
  BeaconRelayDropsHigh: {
    'beacon_dropped_total{job="beacon",instance="dropping",reason="send_buffer_full"}': '0+600x40',
    'beacon_wss_frames_total{job="beacon",instance="dropping",direction="in"}': '0+3000x40',
    'beacon_udp_packets_total{job="beacon",instance="dropping",type="relay"}': '0x40',
  },
  BeaconPeersNearLimit: {
    'beacon_wss_peers{job="beacon",instance="full"}': '19000x40',
    'beacon_wss_max_peers{job="beacon",instance="full"}': '20000x40',
  },
  BeaconRefusingAtCapacity: { 'beacon_wss_refused_total{job="beacon",instance="refusing",reason="max_peers"}': '0+60x40' },
  BeaconPerIpLimitHit: { 'beacon_wss_refused_total{job="beacon",instance="nat",reason="max_per_ip"}': '0+60x40' },
  BeaconKeysReloadFailed: { 'beacon_keys_reloads_total{job="beacon",instance="badkeys",result="fail"}': '0x35 1x5' },
  BeaconEventLoopLagHigh: { 'beacon_nodejs_eventloop_lag_p99_seconds{job="beacon",instance="lagging"}': '0.5x40' },
  BeaconFileDescriptorsNearLimit: {
    'beacon_process_open_fds{job="beacon",instance="fds"}': '60000x40',
    'beacon_process_max_fds{job="beacon",instance="fds"}': '65536x40',
  },
  BeaconMemoryHigh: { 'beacon_process_resident_memory_bytes{job="beacon",instance="fat"}': '3000000000x40' },
  BeaconClusterDisconnected: {
    'beacon_cluster_connected{job="beacon",instance="cutoff"}': '1x10 0x30',
    'beacon_cluster_instances{job="beacon",instance="cutoff"}': '1x40',
  },
  // Four instances, then three for the last 20 minutes.
  BeaconClusterInstanceGone: { 'beacon_cluster_instances{job="beacon",instance="survivor"}': '4x20 3x20' },
  BeaconClusterDropping: { 'beacon_dropped_total{job="beacon",instance="isolated",reason="cluster_unavailable"}': '0+60x40' },
};

/** Alerts that need the absence of every beacon target, tested on their own. */
const FIRING_ALONE: Record<string, Record<string, string>> = {
  BeaconMetricsTargetMissing: { 'up{job="node",instance="elsewhere"}': '1x40' },
};

function instanceOf(series: Record<string, string>): string {
  const match = /instance="([^"]+)"/.exec(Object.keys(series)[0]!);
  return match ? match[1]! : '';
}

function inputSeries(...sets: Record<string, string>[]): { series: string; values: string }[] {
  return sets.flatMap((set) => Object.entries(set).map(([series, values]) => ({ series, values })));
}

test('each alert fires on the series it is about, and none fires on a healthy beacon (promtool test rules)', async () => {
  const promtool = requireTool('promtool');
  const alerts = readAlertRules().map((r) => r.alert);
  const covered = [...Object.keys(FIRING), ...Object.keys(FIRING_ALONE)];
  assert.deepEqual([...covered].sort(), [...alerts].sort(), 'every alert in alerts.yml has a firing case in this test');

  const firingAt40m = Object.entries(FIRING).map(([alertname, series]) => ({
    labels: `{alertname="${alertname}",instance="${instanceOf(series)}"}`, value: 1,
  })).sort((a, b) => a.labels.localeCompare(b.labels));
  const tests = [
    {
      interval: '1m',
      input_series: inputSeries(HEALTHY, ...Object.values(FIRING)),
      promql_expr_test: [{
        expr: 'count by (alertname, instance) (ALERTS{alertstate="firing"})',
        eval_time: '40m',
        exp_samples: firingAt40m,
      }],
    },
    {
      interval: '1m',
      input_series: inputSeries(...Object.values(FIRING_ALONE)),
      promql_expr_test: [{
        expr: 'count by (alertname) (ALERTS{alertstate="firing"})',
        eval_time: '40m',
        exp_samples: Object.keys(FIRING_ALONE).map((alertname) => ({ labels: `{alertname="${alertname}"}`, value: 1 })),
      }],
    },
    {
      // A healthy beacon alone: nothing at all fires.
      interval: '1m',
      input_series: inputSeries(HEALTHY),
      promql_expr_test: [{ expr: 'count(ALERTS) or vector(0)', eval_time: '40m', exp_samples: [{ labels: '{}', value: 0 }] }],
    },
  ];
  const dir = tempDir('promtool');
  const file = join(dir, 'alerts.test.yml');
  // JSON is YAML.
  writeFileSync(file, JSON.stringify({ rule_files: [ALERTS_PATH], evaluation_interval: '1m', tests }, null, 2));
  const result = await run(promtool, ['test', 'rules', file], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `promtool test rules failed:\n${result.stdout}${result.stderr}`);
  assert.match(result.stdout, /SUCCESS/);
});

test('every metric named in the alerts and the dashboard is one the running beacon exports (or a cluster metric of issue 14)', () => {
  assert.ok(exported.has('beacon_wss_peers') && exported.has('beacon_nodejs_eventloop_lag_p99_seconds'),
    `the scrape looks wrong: ${[...exported].slice(0, 10).join(', ')}…`);
  const missing: string[] = [];
  const used = new Set<string>();
  for (const { alert, expr } of readAlertRules()) {
    for (const name of metricNamesIn(expr)) {
      used.add(name);
      if (!exported.has(name) && !PROMETHEUS_OWN.has(name) && !CLUSTER_ONLY.has(name)) missing.push(`${name} (alert ${alert})`);
    }
  }
  const dashboard = JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as unknown;
  for (const { where, expr } of dashboardQueries(dashboard)) {
    const names = metricNamesIn(expr);
    assert.ok(names.size > 0, `${where}: no metric in ${expr}`);
    for (const name of names) {
      used.add(name);
      if (!exported.has(name) && !PROMETHEUS_OWN.has(name) && !CLUSTER_ONLY.has(name)) missing.push(`${name} (dashboard ${where})`);
    }
  }
  assert.deepEqual(missing, [], `not exported by the beacon at /metrics: ${missing.join('; ')}`);
  // Each cluster name is used, and none is exported by a single process (else it belongs in the check above).
  for (const name of CLUSTER_ONLY) {
    assert.ok(used.has(name), `no alert or dashboard query uses ${name}`);
    assert.ok(!exported.has(name), `${name} is exported by a beacon without --cluster: drop it from CLUSTER_ONLY`);
  }
  assert.ok(used.size >= 20, `only ${used.size} metric names found: is the parsing right?`);
});

test('several machines are told apart: every target has a machine label, every aggregation keeps it, every alert and legend names it, every query can filter by it', () => {
  const config = readFileSync(PROMETHEUS_CONFIG_PATH, 'utf8');
  const targets = [...config.matchAll(/^\s*- targets: .*$/gm)].length;
  assert.ok(targets >= 1);
  assert.equal([...config.matchAll(/^\s*labels:\n\s*(?:#.*\n\s*)*machine: \S+$/gm)].length, targets, 'each static_configs entry has a machine label');
  assert.match(config, /targets: \['127\.0\.0\.1:9101', '127\.0\.0\.1:9102'/, 'the instances\' --ops-bind addresses');
  const text = readFileSync(ALERTS_PATH, 'utf8');
  for (const { alert, expr } of readAlertRules(text)) {
    for (const [clause] of expr.matchAll(/\b(?:by|on) \(([^)]*)\)/g)) assert.match(clause, /machine/, `${alert}: ${clause} drops the machine label`);
  }
  const summaries = [...text.matchAll(/summary: "([^"]*)"/g)].map((m) => m[1]!);
  assert.equal(summaries.length, readAlertRules(text).length);
  for (const summary of summaries.filter((s) => s.includes('$labels.instance'))) assert.match(summary, /\$labels\.machine/, summary);
  const dashboard = JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as { templating: { list: { name: string }[] } };
  assert.deepEqual(dashboard.templating.list.map((v) => v.name), ['datasource', 'machine', 'instance']);
  for (const { where, expr } of dashboardQueries(dashboard)) {
    if (!expr.includes('$instance')) continue;
    for (const selector of expr.match(/\{[^}]*\$instance[^}]*\}/g) ?? []) assert.match(selector, /machine=~"\$machine"/, `${where}: ${expr}`);
  }
});

test('the same instance address on two machines: an alert fires for the one in trouble, under its machine, not for both summed', async () => {
  const promtool = requireTool('promtool');
  const instance = '127.0.0.1:9101';
  const series = (machine: string, failing: number) => ({
    [`beacon_wss_auth_total{job="beacon",machine="${machine}",instance="${instance}",result="fail",reason="bad_signature"}`]: `0+${failing}x40`,
    [`beacon_wss_auth_total{job="beacon",machine="${machine}",instance="${instance}",result="ok",reason=""}`]: '0+100x40',
  });
  const tests = [{
    interval: '1m',
    // Machine a fails 120 a minute of 220 (over half), b none: summed over "instance" alone they would be 120 of 320.
    input_series: inputSeries(series('a', 120), series('b', 0)),
    alert_rule_test: [{
      eval_time: '40m', alertname: 'BeaconAuthFailureSpike',
      exp_alerts: [{
        exp_labels: { severity: 'warning', machine: 'a', instance },
        exp_annotations: {
          summary: `Most compat handshakes on a ${instance} fail`,
          description: readAlertDescription('BeaconAuthFailureSpike'),
        },
      }],
    }],
  }];
  const dir = tempDir('promtool-machines');
  const file = join(dir, 'machines.test.yml');
  writeFileSync(file, JSON.stringify({ rule_files: [ALERTS_PATH], evaluation_interval: '1m', tests }, null, 2));
  const result = await run(promtool, ['test', 'rules', file], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `promtool test rules failed:\n${result.stdout}${result.stderr}`);
});

/** An alert's description as Prometheus renders it (alerts.yml writes it as a folded `>-` block without templates). */
function readAlertDescription(alert: string): string {
  const text = readFileSync(ALERTS_PATH, 'utf8');
  const at = text.indexOf(`- alert: ${alert}\n`);
  const block = /description: >-\n((?:\s{12}.*\n)+)/.exec(text.slice(at));
  assert.ok(block, `no description for ${alert}`);
  return block[1]!.split('\n').map((line) => line.trim()).filter(Boolean).join(' ');
}

test('the metric-name reader finds names and nothing else', () => {
  assert.deepEqual([...metricNamesIn('sum by (instance, reason) (rate(beacon_dropped_total{reason!~"a|b"}[5m] offset 1h)) > 0.05 * on (instance) group_left beacon_x / 1e3')].sort(),
    ['beacon_dropped_total', 'beacon_x']);
  assert.deepEqual([...metricNamesIn('up{job="beacon"} == 1 unless on (instance) beacon_build_info')].sort(), ['beacon_build_info', 'up']);
  assert.deepEqual([...metricNamesIn('histogram_quantile(0.99, sum by (le) (rate(beacon_nodejs_gc_duration_seconds_bucket[$__rate_interval])))')],
    ['beacon_nodejs_gc_duration_seconds_bucket']);
  assert.ok(exportedMetricNames('# TYPE h histogram\nh_bucket{le="1"} 0\n').has('h_count'));
});

test('the dashboard covers peers, upgrades, auth, frames, routes, drops, idle disconnects, event-loop lag, memory and the cluster', () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as { uid: string; title: string; panels: { title: string; targets?: { expr: string }[] }[] };
  assert.equal(dashboard.title, 'Beacon');
  assert.ok(dashboard.uid);
  const all = dashboardQueries(dashboard).map((q) => q.expr).join('\n');
  for (const name of ['beacon_wss_peers', 'beacon_wss_upgrades_total', 'beacon_wss_auth_total', 'beacon_wss_frames_total',
    'beacon_relay_total', 'beacon_dropped_total', 'beacon_wss_idle_disconnects_total', 'beacon_nodejs_eventloop_lag_p99_seconds',
    'beacon_process_resident_memory_bytes', 'beacon_nodejs_heap_size_used_bytes',
    'beacon_cluster_connected', 'beacon_cluster_instances', 'beacon_cluster_directory_entries',
    'beacon_cluster_frames_total', 'beacon_cluster_batches_total']) {
    assert.ok(all.includes(name), `no dashboard query uses ${name}`);
  }
  const ids = JSON.stringify(dashboard).match(/"id": ?\d+/g) ?? [];
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
});
