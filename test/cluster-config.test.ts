/**
 * Cluster mode's flags, and the promise that without them nothing changes:
 * no NATS code is loaded and no cluster series are exposed. Bad cluster
 * flags are one-line usage errors with exit code 2.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { makeConfig } from '../lib/config';
import { Instance, FAST, writeKeys } from './helpers/cluster';
import { beaconFor } from './helpers/harness';
import { freeTcpPort } from './helpers/free-ports';

test('without --cluster the beacon loads no NATS code and exposes no cluster series', async (t) => {
  const tb = await beaconFor(t);
  const loaded = Object.keys(require.cache).filter((path) => path.includes('@nats-io') || path.includes('nats-cluster'));
  assert.deepEqual(loaded, []);
  const text = await tb.beacon.metricsText();
  assert.doesNotMatch(text, /beacon_cluster_/);
  // The new route and drop reasons are there, at zero, like the others.
  assert.match(text, /beacon_relay_total\{route="cluster"\} 0/);
  assert.match(text, /beacon_dropped_total\{reason="cluster_unavailable"\} 0/);
});

test('cluster settings have defaults and are checked: name, instance ID, flags that need --cluster', () => {
  const config = makeConfig();
  assert.deepEqual(config.clusterServers, []);
  assert.equal(config.clusterName, 'beacon');
  assert.equal(config.clusterDeadAfterMs, 5_000);
  assert.throws(() => makeConfig({ clusterCredsFile: 'x.creds' }), /--cluster-creds is set but --cluster is not/);
  assert.throws(() => makeConfig({ instanceId: 'a' }), /--instance-id is set but --cluster is not/);
  assert.throws(() => makeConfig({ clusterServers: ['nats://127.0.0.1:4222'], clusterName: 'a.b' }), /--cluster-name "a.b"/);
  assert.throws(() => makeConfig({ clusterServers: ['nats://127.0.0.1:4222'], instanceId: 'a b' }), /--instance-id "a b"/);
});

async function usageError(args: string[], env: Record<string, string> = {}): Promise<string> {
  const proc = new Instance('bad-flags', [...FAST, ...args], env);
  const { code } = await proc.exited;
  assert.equal(code, 2, `exit code; stderr: ${proc.stderr}`);
  const lines = proc.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line: ${proc.stderr}`);
  return lines[0]!;
}

test('bad cluster flags (and their BEACON_* variables) are one line and exit 2', async () => {
  assert.match(await usageError(['--cluster', 'http://127.0.0.1:4222']), /--cluster.*not a NATS server URL: use nats:\/\/HOST:PORT/);
  assert.match(await usageError(['--cluster', 'nats://127.0.0.1:4222', '--cluster-name', 'no.dots']), /--cluster-name.*letters, digits/);
  assert.match(await usageError(['--cluster', 'nats://127.0.0.1:4222', '--instance-id', 'has space']), /--instance-id.*letters, digits/);
  assert.match(await usageError(['--cluster', 'nats://127.0.0.1:4222', '--cluster-dead-after', 'soon']), /--cluster-dead-after.*not a duration/);
  assert.match(await usageError(['--cluster-creds', 'user.creds']), /--cluster-creds is set but --cluster is not/);
  assert.match(await usageError([], { BEACON_CLUSTER: 'redis://127.0.0.1:6379' }), /BEACON_CLUSTER|not a NATS server URL/);
});

test('--cluster-creds naming a missing or foreign file: one line naming the flag and the fix, exit 2', async () => {
  const port = await freeTcpPort();
  const keys = writeKeys([]);
  const missing = await usageError(['--keys', keys, '--cluster', `nats://127.0.0.1:${port}`, '--cluster-creds', '/nonexistent/user.creds']);
  assert.match(missing, /--cluster-creds \/nonexistent\/user.creds: cannot read \(ENOENT\)/);
  const foreign = await usageError(['--keys', keys, '--cluster', `nats://127.0.0.1:${port}`, '--cluster-creds', keys]);
  assert.match(foreign, /neither a NATS .creds file nor an nkey seed/);
});

test('the cluster flags are read from BEACON_* variables', async () => {
  const port = await freeTcpPort(); // nothing listens: the beacon starts anyway
  const keys = writeKeys([]);
  const proc = new Instance('env', [...FAST, '--keys', keys], {
    BEACON_CLUSTER: `nats://127.0.0.1:${port}`, BEACON_INSTANCE_ID: 'from-env', BEACON_CLUSTER_NAME: 'envcluster',
    BEACON_CLUSTER_DEAD_AFTER: '2s',
  });
  try {
    const listening = await proc.waitForLog((l) => l.msg === 'beacon listening', "'beacon listening'");
    assert.equal(listening.instanceId, 'from-env');
    await proc.waitForLog((l) => /NATS unreachable/.test(l.msg), 'the unreachable warning');
  } finally {
    await proc.stop();
  }
});
