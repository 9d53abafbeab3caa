/**
 * deploy/beacon@.service, deploy/cluster.env and deploy/beacon-instance, as
 * shipped: `systemd-analyze verify` and the offline security review pass
 * for an instance; the template keeps every setting of beacon.service but
 * the few that make it a template; cluster.env holds only variables of the
 * cluster flags, sharing the address (--reuse-port) with a base --ops-bind;
 * beacon-instance gives each instance its --ops-bind (and, without
 * --reuse-port, ports of its own) and refuses what it cannot use; the
 * unit's own ExecStart runs two instances side by side on the one address,
 * each on its own --ops-bind and sending READY=1 from its own process, and
 * the wait-ready drop-in (for builds without the addon) verifies and waits
 * for each on its own --ops-bind.
 *
 * Needs Debian's systemd (for systemd-analyze; .ci/install-deps); fails,
 * never skips, without it.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { get, REPO_ROOT, requireTool, run, tempDir } from './helpers/deploy';
import { freeConsecutiveTcpPorts, freeTcpPort, freeUdpPort } from './helpers/free-ports';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { FakeNotifySocket } from './helpers/notify-socket';
import { Child, parseEnvFile, parseUnit, setting, unitCommand, UNIT_PATH, type Unit } from './helpers/systemd';

const TEMPLATE_PATH = join(REPO_ROOT, 'deploy', 'beacon@.service');
const CLUSTER_ENV_PATH = join(REPO_ROOT, 'deploy', 'cluster.env');
const INSTANCE = join(REPO_ROOT, 'deploy', 'beacon-instance');

/**
 * The cluster flags' variables, from issue 14's flag list. The test reads
 * the CLI's own list from --help too: once the cluster flags are on main
 * each of these must be among them (see the test below).
 */
const CLUSTER_VARIABLES = [
  'BEACON_CLUSTER', 'BEACON_CLUSTER_CREDS', 'BEACON_CLUSTER_TLS_CA', 'BEACON_CLUSTER_NAME',
  'BEACON_INSTANCE_ID', 'BEACON_CLUSTER_DEAD_AFTER',
  // Issue 21: one address for every instance, /health and /metrics of each on its own, rebalancing.
  'BEACON_REUSE_PORT', 'BEACON_OPS_BIND', 'BEACON_REBALANCE_RATE', 'BEACON_REBALANCE_SLACK', 'BEACON_REBALANCE_DELAY',
];

const template = parseUnit(readFileSync(TEMPLATE_PATH, 'utf8'));
const DROP_IN_PATH = join(REPO_ROOT, 'deploy', 'beacon@.service.d', 'wait-ready.conf');
const dropIn = parseUnit(readFileSync(DROP_IN_PATH, 'utf8'));
const singleDropIn = parseUnit(readFileSync(join(REPO_ROOT, 'deploy', 'beacon.service.d', 'wait-ready.conf'), 'utf8'));
const single = parseUnit(readFileSync(UNIT_PATH, 'utf8'));
const clusterEnv = parseEnvFile(readFileSync(CLUSTER_ENV_PATH, 'utf8'));
const children: Child[] = [];
after(async () => { for (const child of children) await child.stop(2_000); });

function spawnChild(argv: string[], env: NodeJS.ProcessEnv, cwd?: string): Child {
  const child = new Child(argv, env, cwd);
  children.push(child);
  return child;
}

function active(entries: ReturnType<typeof parseEnvFile>): Record<string, string> {
  return Object.fromEntries(entries.filter((e) => !e.commented).map((e) => [e.name, e.value]));
}

/** Every key of a section as `key=values`, for comparing two units. */
function flatten(unit: Unit, section: string): Map<string, string> {
  return new Map([...(unit.get(section) ?? new Map<string, string[]>())].map(([k, v]) => [k, v.join('\n')]));
}

/** The template in a fresh directory, with the wait-ready drop-in in beacon@.service.d/ when asked. */
function installedTemplate(withDropIn: boolean): string {
  const dir = tempDir('template');
  copyFileSync(TEMPLATE_PATH, join(dir, 'beacon@.service'));
  if (withDropIn) {
    mkdirSync(join(dir, 'beacon@.service.d'));
    copyFileSync(DROP_IN_PATH, join(dir, 'beacon@.service.d', 'wait-ready.conf'));
  }
  return dir;
}

test('systemd-analyze verify passes on an instance of the template, alone and with the wait-ready drop-in, with no warnings, and catches a broken copy', async () => {
  const analyze = requireTool('systemd-analyze');
  for (const withDropIn of [false, true]) {
    const verify = await run(analyze, ['verify', join(installedTemplate(withDropIn), 'beacon@1.service')], { timeoutMs: 30_000 });
    const diagnostics = `${verify.stdout}${verify.stderr}`.split('\n').filter((line) => line.includes('beacon@') || line.includes('wait-ready'));
    assert.equal(verify.code, 0, `systemd-analyze verify failed (exit ${verify.code}):\n${verify.stdout}${verify.stderr}`);
    assert.deepEqual(diagnostics, [], `systemd-analyze verify warned about the template${withDropIn ? ' with the drop-in' : ''}`);
  }
  const dir = tempDir('template');

  const broken = join(dir, 'broken');
  mkdirSync(broken);
  writeFileSync(join(broken, 'beacon@.service'), readFileSync(TEMPLATE_PATH, 'utf8').replace(/^ExecStart=\/usr\/bin\/node /m, 'ExecStart=/nonexistent/node '));
  const bad = await run(analyze, ['verify', join(broken, 'beacon@1.service')], { timeoutMs: 30_000 });
  assert.notEqual(bad.code, 0, 'systemd-analyze verify accepted an instance whose ExecStart does not exist');
});

test('the offline security review rates an instance OK (exposure at most 2.0), like beacon.service, with the drop-in too', async () => {
  const analyze = requireTool('systemd-analyze');
  for (const withDropIn of [false, true]) {
    const review = await run(analyze, ['security', '--offline=yes', '--no-pager', join(installedTemplate(withDropIn), 'beacon@2.service')], { timeoutMs: 30_000 });
    const match = /Overall exposure level for beacon@2\.service: (\d+(?:\.\d+)?)/.exec(review.stdout + review.stderr);
    assert.ok(match, `no exposure level in systemd-analyze security's output:\n${review.stdout}${review.stderr}`);
    assert.ok(Number(match[1]) <= 2.0, `exposure ${match[1]} > 2.0:\n${review.stdout}`);
  }
});

test('the template is beacon.service but for its instance: same hardening, limits, restarts, reload and stop', () => {
  // What makes it a template, and nothing else, may differ.
  const differs: Record<string, string[]> = {
    Unit: ['Description', 'After', 'Conflicts'],
    Service: ['EnvironmentFile', 'ExecStart'],
  };
  for (const section of ['Unit', 'Service', 'Install']) {
    const mine = flatten(template, section);
    const theirs = flatten(single, section);
    for (const key of new Set([...mine.keys(), ...theirs.keys()])) {
      if (differs[section]?.includes(key)) continue;
      assert.equal(mine.get(key), theirs.get(key), `[${section}] ${key}= differs between beacon@.service and beacon.service`);
    }
  }
  const s = (key: string) => setting(template, 'Service', key);
  assert.deepEqual(template.get('Service')!.get('EnvironmentFile'), ['/etc/beacon/beacon.env', '/etc/beacon/cluster.env'],
    'the shared flags first, then the cluster\'s');
  assert.deepEqual(unitCommand(s('ExecStart')).slice(2), ['%i', join(REPO_ROOT, 'dist', 'cmd', 'beacon.js')]);
  assert.equal(unitCommand(s('ExecStart'))[1], INSTANCE, 'ExecStart runs beacon-instance');
  assert.equal(s('Type'), 'notify');
  // The drop-in for builds without the addon: beacon.service's, but for the instance's port.
  const post = unitCommand(setting(dropIn, 'Service', 'ExecStartPost'));
  assert.equal(post[1], INSTANCE, 'the drop-in\'s ExecStartPost runs beacon-instance');
  assert.deepEqual(post.slice(2), ['%i', join(REPO_ROOT, 'deploy', 'wait-ready'), '30']);
  for (const key of new Set([...flatten(dropIn, 'Service').keys(), ...flatten(singleDropIn, 'Service').keys()])) {
    if (key === 'ExecStartPost') continue;
    assert.equal(flatten(dropIn, 'Service').get(key), flatten(singleDropIn, 'Service').get(key), `${key}= differs between the two wait-ready drop-ins`);
  }
  assert.match(setting(template, 'Unit', 'Description'), /%i/);
  assert.equal(setting(template, 'Unit', 'Conflicts'), 'beacon.service', 'instance 1 takes the single beacon\'s ports');
});

test('cluster.env sets only the cluster flags\' variables (each one the CLI reads once the cluster is on main), BEACON_CLUSTER among them', async () => {
  const help = await run(process.execPath, [join(REPO_ROOT, 'dist', 'cmd', 'beacon.js'), '--help'], { timeoutMs: 10_000 });
  assert.equal(help.code, 0, help.stderr);
  const known = new Set([...help.stdout.replace(/\s+/g, ' ').matchAll(/env: (BEACON_[A-Z0-9_]+)/g)].map((m) => m[1]!));
  const cliHasCluster = known.has('BEACON_CLUSTER');
  for (const entry of clusterEnv) {
    assert.ok(CLUSTER_VARIABLES.includes(entry.name), `cluster.env:${entry.line}: ${entry.name} is not a cluster flag (those go in beacon.env)`);
    if (cliHasCluster) assert.ok(known.has(entry.name), `cluster.env:${entry.line}: ${entry.name} is not read by the CLI`);
  }
  const vars = active(clusterEnv);
  assert.match(vars.BEACON_CLUSTER ?? '', /^nats:\/\/[^@]+@127\.0\.0\.1:4222$/, 'one machine: its own NATS, with the beacon user');
  for (const shared of ['BEACON_BIND', 'BEACON_UDP']) assert.ok(!(shared in vars), `${shared} is beacon.env's, the one address of every instance`);
  assert.ok(!('BEACON_INSTANCE_ID' in vars), 'the default ID (host name and --ops-bind port) differs per instance already');
  assert.equal(vars.BEACON_REUSE_PORT, '1', 'the instances share beacon.env\'s address');
  assert.equal(vars.BEACON_OPS_BIND, '127.0.0.1:9101', 'the base --ops-bind, on loopback');
});

/** Runs beacon-instance with a script that prints what it was given. */
async function derive(instance: string, env: Record<string, string>) {
  const dir = tempDir('instance');
  const script = join(dir, 'show.js');
  writeFileSync(script, 'process.stdout.write(JSON.stringify({ argv: process.argv.slice(2), bind: process.env.BEACON_BIND, udp: process.env.BEACON_UDP, '
    + 'ops: process.env.BEACON_OPS_BIND, id: process.env.BEACON_INSTANCE_ID }));\n');
  const result = await run(process.execPath, [INSTANCE, instance, script, 'a', '--b'], { env: { PATH: process.env.PATH, ...env }, timeoutMs: 10_000 });
  return { ...result, shown: result.code === 0 ? JSON.parse(result.stdout) as { argv: string[]; bind?: string; udp?: string; ops: string; id?: string } : undefined };
}

test('beacon-instance: instance N shares the address and gets the --ops-bind port plus N - 1 (its default ID follows), and runs the script with its arguments', async () => {
  const base = { BEACON_CLUSTER: 'nats://127.0.0.1:4222', BEACON_BIND: '127.0.0.1:8443', BEACON_UDP: '0.0.0.0:9001', BEACON_REUSE_PORT: '1', BEACON_OPS_BIND: '127.0.0.1:9101' };
  const third = await derive('3', base);
  assert.equal(third.code, 0, third.stderr);
  assert.deepEqual(third.shown, { argv: ['a', '--b'], bind: '127.0.0.1:8443', udp: '0.0.0.0:9001', ops: '127.0.0.1:9103' },
    'the same address for all; no ID set: the beacon\'s default, host name and --ops-bind port');
  const first = await derive('1', { ...base, BEACON_INSTANCE_ID: 'relay-eu', BEACON_REUSE_PORT: 'yes' });
  assert.deepEqual(first.shown, { argv: ['a', '--b'], bind: '127.0.0.1:8443', udp: '0.0.0.0:9001', ops: '127.0.0.1:9101', id: 'relay-eu-1' });
  // Defaults (the beacon's own, and the shipped base --ops-bind) when the env files leave them out; port 0 stays "any free port".
  const bare = await derive('2', { BEACON_CLUSTER: 'nats://127.0.0.1:4222', BEACON_REUSE_PORT: 'true', BEACON_UDP: '127.0.0.1:0' });
  assert.deepEqual(bare.shown, { argv: ['a', '--b'], udp: '127.0.0.1:0', ops: '127.0.0.1:9102' });
});

test('beacon-instance without --reuse-port (a build without the addon): instance N also takes the ports of beacon.env plus N - 1', async () => {
  const base = { BEACON_CLUSTER: 'nats://127.0.0.1:4222', BEACON_BIND: '127.0.0.1:8443', BEACON_UDP: '[::]:9001', BEACON_OPS_BIND: '127.0.0.1:9101' };
  for (const off of [{ BEACON_REUSE_PORT: '0' }, { BEACON_REUSE_PORT: 'no' }, {}] as Array<Record<string, string>>) {
    const third = await derive('3', { ...base, ...off });
    assert.deepEqual(third.shown, { argv: ['a', '--b'], bind: '127.0.0.1:8445', udp: '[::]:9003', ops: '127.0.0.1:9103' }, JSON.stringify(off));
  }
});

test('beacon-instance refuses, with exit 2 and one line naming the fix: no BEACON_CLUSTER, a bad instance number, a port past 65535', async () => {
  const base = { BEACON_CLUSTER: 'nats://127.0.0.1:4222', BEACON_BIND: '127.0.0.1:8443', BEACON_UDP: '0.0.0.0:9001' };
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['1', { ...base, BEACON_CLUSTER: '' }, /BEACON_CLUSTER is not set: put the NATS URL in \/etc\/beacon\/cluster\.env .*beacon\.service/],
    ['0', base, /"0" is not an instance number from 1 to 64/],
    ['65', base, /"65" is not an instance number from 1 to 64/],
    ['x', base, /"x" is not an instance number/],
    ['2', { ...base, BEACON_BIND: '127.0.0.1:65535' }, /BEACON_BIND="127\.0\.0\.1:65535": instance 2 would listen on port 65536/],
    ['2', { ...base, BEACON_UDP: 'localhost' }, /BEACON_UDP="localhost" is not HOST:PORT/],
    ['2', { ...base, BEACON_REUSE_PORT: '1', BEACON_OPS_BIND: '127.0.0.1:65535' }, /BEACON_OPS_BIND="127\.0\.0\.1:65535": instance 2 would listen on port 65536/],
    ['2', { ...base, BEACON_REUSE_PORT: '1', BEACON_OPS_BIND: '9101' }, /BEACON_OPS_BIND="9101" is not HOST:PORT/],
  ];
  for (const [instance, env, message] of cases) {
    const result = await derive(instance, env);
    assert.equal(result.code, 2, `instance ${instance} ${JSON.stringify(env)}: exit ${result.code}\n${result.stdout}${result.stderr}`);
    const lines = result.stderr.trim().split('\n');
    assert.equal(lines.length, 1, result.stderr);
    assert.match(lines[0]!, /^beacon-instance: /);
    assert.match(lines[0]!, message);
  }
});

test('the unit\'s ExecStart runs instances 1 and 2 side by side on the one address, each on its own --ops-bind and sending READY=1 itself, and the drop-in\'s ExecStartPost waits for each there', async (t) => {
  const dir = tempDir('instances');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson([makeIdentity(7777)]));
  const [bindPort, opsBase] = [await freeTcpPort(), await freeConsecutiveTcpPorts()];
  const shared = {
    PATH: process.env.PATH,
    ...active(parseEnvFile()),
    ...active(clusterEnv),
    BEACON_BIND: `127.0.0.1:${bindPort}`,
    BEACON_UDP: '127.0.0.1:0',
    BEACON_OPS_BIND: `127.0.0.1:${opsBase}`,
    BEACON_KEYS: keys,
    // No NATS listens here: an instance starts anyway (issue 14, "NATS unreachable at start").
    BEACON_CLUSTER: `nats://127.0.0.1:${await freeTcpPort()}`,
    BEACON_LOG_LEVEL: 'info',
  };
  // Port 0 for --udp would give each instance a port of its own: one fixed port, as in production.
  shared.BEACON_UDP = `127.0.0.1:${await freeUdpPort()}`;
  const command = (unit: Unit, key: 'ExecStart' | 'ExecStartPost', n: number) =>
    unitCommand(setting(unit, 'Service', key).replace(/%i/g, String(n)));
  for (const n of [1, 2]) {
    const ops = opsBase + n - 1;
    const wait = command(dropIn, 'ExecStartPost', n);
    wait[wait.length - 1] = '20';
    const waiting = spawnChild(wait, shared);
    const notify = await FakeNotifySocket.start();
    t.after(() => notify.close());
    const beacon = spawnChild(command(template, 'ExecStart', n), { ...shared, NOTIFY_SOCKET: notify.address }, dir);
    const listening = await beacon.waitForLog('beacon listening', 15_000);
    assert.deepEqual([listening.bind, listening.udp, listening.opsBind], [shared.BEACON_BIND, shared.BEACON_UDP, `127.0.0.1:${ops}`],
      `instance ${n}: the shared address, and the base --ops-bind port + ${n - 1}`);
    assert.equal(listening.instanceId, `${hostname()}:${ops}`, 'the default ID: host name and --ops-bind port');
    const ready = await notify.waitFor((m) => m.fields.READY === '1', `READY=1 from instance ${n}`);
    assert.equal(ready.pid, beacon.pid, 'MAINPID is the beacon itself: beacon-instance runs it in its own process');
    assert.match(ready.fields.STATUS ?? '', new RegExp(`^serving on 127\\.0\\.0\\.1:${bindPort} `));
    assert.deepEqual(await waiting.exit, { code: 0, signal: null }, `wait-ready for instance ${n}: ${waiting.output}`);
    assert.equal((await get(`http://127.0.0.1:${ops}`, '/health')).status, 200);
  }
  for (const child of children.splice(0)) {
    const exit = await child.stop(10_000);
    assert.ok(exit.code === 0, `an instance or wait exited ${JSON.stringify(exit)}: ${child.output}`);
  }
});
