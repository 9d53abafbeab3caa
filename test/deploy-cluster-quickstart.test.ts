/**
 * The quick start of docs/cluster.md, run as written
 * (test/helpers/cluster-quickstart.ts): its commands are read from the
 * page, so it cannot drift from what the tools do. It builds on the README
 * walkthrough's identities and keys, next to a single beacon on 8443 and
 * 9001, as the page says a reader's machine may have.
 *
 * It binds fixed ports. As root with `unshare` and `ip` (CI, via
 * .ci/install-deps), it runs in a network namespace of its own, so nothing
 * else on the machine can collide with it; otherwise it runs on the host's
 * loopback, one walkthrough at a time (flock), and fails clearly if
 * something else holds the ports. Needs Debian's nats-server.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { runGuide } from './helpers/guide-run';
import { commands, promised, readSteps, step } from './helpers/walkthrough';

const ROOT = join(__dirname, '..', '..');
const README = join(ROOT, 'README.md');
const CLUSTER = join(ROOT, 'docs', 'cluster.md');
const RUNNER = join(__dirname, 'helpers', 'cluster-quickstart.js');
/** The whole run: three beacons, a nats-server, two instances' dead-after, slow Node starts on a loaded machine. */
const RUN_DEADLINE_MS = 150_000;

test('the quick start has its steps 1-6: a throwaway NATS store off Debian\'s port, instances clear of a single beacon\'s ports, with --keys', () => {
  const steps = readSteps(readFileSync(CLUSTER, 'utf8'), 'Quick start on one machine');
  assert.deepEqual(steps.map((s) => s.number), [1, 2, 3, 4, 5, 6]);
  const [nats] = commands(step(steps, 1));
  assert.match(nats!, /^nats-server -a 127\.0\.0\.1 -p 4333 -js -sd "\$\(mktemp -d\)"$/, 'a throwaway store, never /var/lib/nats as root; not Debian\'s 4222');
  const instances = commands(step(steps, 2));
  assert.equal(instances.length, 2);
  for (const command of instances) {
    assert.match(command, /^beacon --keys keys\.json /, 'the walkthrough\'s keys file');
    assert.match(command, / --bind 127\.0\.0\.1:8543 --udp 127\.0\.0\.1:9501 --reuse-port --ops-bind 127\.0\.0\.1:960\d /);
    assert.doesNotMatch(command, /:8443|:9001\b/, 'clear of a single beacon\'s ports');
  }
  assert.deepEqual(promised(step(steps, 3)), ['beacon_cluster_connected 1', 'beacon_cluster_instances 2']);
  assert.deepEqual(promised(step(steps, 4)), ['from 7777: hello bob']);
});

test('the quick start runs as written: NATS, two instances on one address beside a single beacon, the promised metrics, a message across, UDP both ways', async (t) => {
  const { code, output } = await runGuide(t, 'beacon-cluster-quickstart-', RUNNER, [README, CLUSTER], RUN_DEADLINE_MS);
  assert.equal(code, 0, `the quick start failed:\n${output}`);
  assert.match(output, /stdout: from 7777: hello bob\n/);
  assert.match(output, /stdout: from 8888: back over wss\n/);
});
