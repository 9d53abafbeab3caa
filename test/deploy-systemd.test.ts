/**
 * deploy/beacon.service, deploy/beacon.env, the drop-in
 * deploy/beacon.service.d/wait-ready.conf and deploy/wait-ready, as shipped:
 * `systemd-analyze verify` and an offline security review pass, with and
 * without the drop-in; the unit has the settings the operator's guide
 * promises (Type=notify, NotifyAccess=main, WatchdogSec=); every variable of
 * the env file is one the CLI reads; the unit's own ExecStart, run with a
 * notification socket as systemd gives it, sends READY=1, WATCHDOG=1,
 * RELOADING=1/READY=1 on its ExecReload and STOPPING=1 on SIGTERM; the
 * drop-in's readiness wait succeeds once the beacon answers and fails,
 * bounded, when it does not.
 *
 * Needs Debian's systemd (for systemd-analyze; .ci/install-deps); fails,
 * never skips, without it.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { closed, connectPeer } from './helpers/harness';
import { get, REPO_ROOT, requireTool, run, tempDir } from './helpers/deploy';
import { freeTcpPort } from './helpers/free-ports';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { FakeNotifySocket } from './helpers/notify-socket';
import {
  Child, ENV_PATH, INSTALL_DIR, UNIT_PATH, parseEnvFile, parseTimespanMs, parseUnit, setting, unitCommand,
} from './helpers/systemd';

const unit = parseUnit();
const DROP_IN_PATH = join(REPO_ROOT, 'deploy', 'beacon.service.d', 'wait-ready.conf');
const dropIn = parseUnit(readFileSync(DROP_IN_PATH, 'utf8'));
const GUIDE = readFileSync(join(REPO_ROOT, 'docs', 'operators-guide.md'), 'utf8');
const env = parseEnvFile();
const children: Child[] = [];
after(async () => { for (const child of children) await child.stop(2_000); });

function spawnChild(argv: string[], childEnv: NodeJS.ProcessEnv, cwd?: string): Child {
  const child = new Child(argv, childEnv, cwd);
  children.push(child);
  return child;
}

/** The active variables of the env file, as systemd's EnvironmentFile= passes them. */
function envFileVariables(): Record<string, string> {
  return Object.fromEntries(env.filter((e) => !e.commented).map((e) => [e.name, e.value]));
}

/** A keys file with `ids` in a fresh temp dir. */
function keysFileFor(ids: ReturnType<typeof makeIdentity>[]): { dir: string; keys: string } {
  const dir = tempDir('systemd');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson(ids));
  return { dir, keys };
}

/** The unit's ExecStart, run here as systemd would: the env file's variables, then `overrides`. */
function startBeaconLikeTheUnit(overrides: Record<string, string>, cwd: string): Child {
  return spawnChild(unitCommand(setting(unit, 'Service', 'ExecStart')),
    { PATH: process.env.PATH, ...envFileVariables(), ...overrides }, cwd);
}

/** The drop-in's ExecStartPost (the readiness wait) with its timeout replaced by `seconds`. */
function waitReadyCommand(seconds: number): string[] {
  const argv = unitCommand(setting(dropIn, 'Service', 'ExecStartPost'));
  assert.match(argv[argv.length - 1]!, /^\d+$/, 'ExecStartPost should end with the wait-ready timeout in seconds');
  return [...argv.slice(0, -1), String(seconds)];
}

/** The unit in a fresh directory, with the drop-in beside it in beacon.service.d/ when given (as systemd finds it). */
function installedUnit(dropInText?: string): string {
  const dir = tempDir('unit');
  const copy = join(dir, 'beacon.service');
  copyFileSync(UNIT_PATH, copy);
  if (dropInText !== undefined) {
    mkdirSync(join(dir, 'beacon.service.d'));
    writeFileSync(join(dir, 'beacon.service.d', 'wait-ready.conf'), dropInText);
  }
  return copy;
}

/** systemd-analyze verify's exit code and its lines about the unit or the drop-in. */
async function verify(path: string): Promise<{ code: number | null; diagnostics: string[]; all: string }> {
  const result = await run(requireTool('systemd-analyze'), ['verify', path], { timeoutMs: 30_000 });
  const all = `${result.stdout}${result.stderr}`;
  return { code: result.code, diagnostics: all.split('\n').filter((line) => /beacon\.service|wait-ready\.conf/.test(line)), all };
}

test('systemd-analyze verify passes on the shipped unit, alone and with the wait-ready drop-in, with no warnings, and catches broken copies', async () => {
  for (const copy of [installedUnit(), installedUnit(readFileSync(DROP_IN_PATH, 'utf8'))]) {
    const result = await verify(copy);
    assert.equal(result.code, 0, `systemd-analyze verify failed (exit ${result.code}); if it cannot run here, that is the failure:\n${result.all}`);
    assert.deepEqual(result.diagnostics, [], 'systemd-analyze verify warned about the unit or the drop-in');
  }

  // Controls: verify does reject a unit, or a drop-in, whose command does not exist (so it reads the drop-in).
  const broken = tempDir('unit');
  writeFileSync(join(broken, 'beacon.service'), readFileSync(UNIT_PATH, 'utf8').replace(/^ExecStart=\/usr\/bin\/node /m, 'ExecStart=/nonexistent/node '));
  assert.notEqual((await verify(join(broken, 'beacon.service'))).code, 0, 'systemd-analyze verify accepted a unit whose ExecStart does not exist');
  const brokenDropIn = installedUnit(readFileSync(DROP_IN_PATH, 'utf8').replace(/^ExecStartPost=\/usr\/bin\/node /m, 'ExecStartPost=/nonexistent/node '));
  assert.notEqual((await verify(brokenDropIn)).code, 0, 'systemd-analyze verify accepted a drop-in whose ExecStartPost does not exist');
});

test('the offline security review rates the unit OK (exposure at most 2.0), with the drop-in too', async () => {
  const analyze = requireTool('systemd-analyze');
  for (const copy of [installedUnit(), installedUnit(readFileSync(DROP_IN_PATH, 'utf8'))]) {
    const review = await run(analyze, ['security', '--offline=yes', '--no-pager', copy], { timeoutMs: 30_000 });
    const match = /Overall exposure level for beacon\.service: (\d+(?:\.\d+)?)/.exec(review.stdout + review.stderr);
    assert.ok(match, `no exposure level in systemd-analyze security's output:\n${review.stdout}${review.stderr}`);
    assert.ok(Number(match[1]) <= 2.0, `exposure ${match[1]} > 2.0:\n${review.stdout}`);
  }
});

test('the unit: dynamic user, hardening, fd limit, restarts, SIGHUP reload, stop timeout above the drain, Type=notify with a watchdog', () => {
  const s = (key: string) => setting(unit, 'Service', key);
  assert.equal(s('Type'), 'notify');
  assert.equal(s('NotifyAccess'), 'main', 'only the beacon itself may say it is ready');
  assert.equal(s('EnvironmentFile'), '/etc/beacon/beacon.env');
  assert.equal(s('DynamicUser'), 'yes');
  assert.equal(s('ConfigurationDirectory'), 'beacon');
  for (const key of ['NoNewPrivileges', 'PrivateTmp', 'PrivateDevices', 'ProtectHome', 'ProtectKernelTunables',
    'ProtectKernelModules', 'ProtectControlGroups', 'RestrictNamespaces', 'RestrictSUIDSGID', 'LockPersonality']) {
    assert.equal(s(key), 'yes', `${key}=yes`);
  }
  assert.equal(s('ProtectSystem'), 'strict');
  // AF_UNIX carries the notifications (and the journal).
  assert.deepEqual(s('RestrictAddressFamilies').split(/\s+/).sort(), ['AF_INET', 'AF_INET6', 'AF_UNIX']);
  assert.equal(s('MemoryDenyWriteExecute'), 'no', 'V8\'s JIT needs writable+executable pages');
  assert.equal(s('CapabilityBoundingSet'), '');
  assert.equal(s('Restart'), 'on-failure', 'a watchdog timeout is a failure: restarted');
  assert.equal(s('ExecReload'), '/bin/kill -HUP $MAINPID');
  assert.equal(unit.get('Service')?.get('ExecStartPost'), undefined, 'READY=1 replaces the /health poll');

  const vars = envFileVariables();
  const maxPeers = Number(vars.BEACON_MAX_PEERS ?? 20_000);
  assert.ok(Number(s('LimitNOFILE')) >= Math.max(65_536, maxPeers + 1_024), `LimitNOFILE=${s('LimitNOFILE')} leaves no room for ${maxPeers} peers`);

  const graceMs = parseTimespanMs(vars.BEACON_SHUTDOWN_GRACE ?? '2s');
  const stopMs = parseTimespanMs(s('TimeoutStopSec'));
  assert.ok(stopMs >= graceMs + 5_000, `TimeoutStopSec (${stopMs} ms) should leave headroom over --shutdown-grace (${graceMs} ms)`);

  // The watchdog: pings every half of it; a stall of half of it is needed for a false restart, and the
  // operator's guide gives the value with its reason.
  const watchdogMs = parseTimespanMs(s('WatchdogSec'));
  assert.ok(watchdogMs >= 10_000 && watchdogMs <= 60_000, `WatchdogSec=${s('WatchdogSec')}: between 10 s (no false restarts) and 60 s (a stuck beacon goes quickly)`);
  assert.match(GUIDE.replace(/\s+/g, ' '), new RegExp(`WatchdogSec=${s('WatchdogSec')}\\b[^|]*?pings? every ${watchdogMs / 2_000} s`),
    'the operator\'s guide justifies the unit\'s WatchdogSec');

  // The drop-in for a build without the addon: back to Type=exec and the /health poll, no watchdog.
  const d = (key: string) => setting(dropIn, 'Service', key);
  assert.equal(d('Type'), 'exec');
  assert.equal(d('NotifyAccess'), 'none', 'no NOTIFY_SOCKET: the beacon would refuse it without the addon');
  assert.equal(d('WatchdogSec'), '0');
  const waitSeconds = Number(unitCommand(d('ExecStartPost')).at(-1));
  assert.ok(waitSeconds > 0, 'ExecStartPost should end with the wait-ready timeout in seconds');
  assert.ok(parseTimespanMs(s('TimeoutStartSec')) > waitSeconds * 1000, 'TimeoutStartSec should exceed the readiness wait');

  // The commands point into this project's layout under /opt/beacon.
  for (const [name, argv] of [['ExecStart', unitCommand(s('ExecStart'))], ['the drop-in\'s ExecStartPost', unitCommand(d('ExecStartPost'))]] as const) {
    assert.equal(argv[0], '/usr/bin/node', `${name} runs Debian's node`);
    assert.ok(existsSync(argv[1]!), `${name}: ${argv[1]} (${INSTALL_DIR} mapped to ${REPO_ROOT}) does not exist; build first`);
  }
});

test('every variable in beacon.env is one the CLI reads, and the file agrees with the Caddyfile', async () => {
  const help = await run(process.execPath, [join(REPO_ROOT, 'dist', 'cmd', 'beacon.js'), '--help'], { timeoutMs: 10_000 });
  assert.equal(help.code, 0, help.stderr);
  const known = new Set([...help.stdout.replace(/\s+/g, ' ').matchAll(/env: (BEACON_[A-Z0-9_]+)/g)].map((m) => m[1]!));
  assert.ok(known.has('BEACON_BIND') && known.size > 10, `could not read the variables from --help:\n${help.stdout}`);
  const names = env.map((e) => e.name);
  assert.ok(names.length > 0);
  for (const entry of env) {
    assert.ok(known.has(entry.name), `${ENV_PATH}:${entry.line}: ${entry.name} is not read by the CLI (it reads ${[...known].join(', ')})`);
  }
  const active = env.filter((e) => !e.commented).map((e) => e.name);
  assert.equal(new Set(active).size, active.length, 'a variable is set twice');
  for (const required of ['BEACON_BIND', 'BEACON_UDP', 'BEACON_KEYS']) assert.ok(active.includes(required), `${required} is not set`);

  const vars = envFileVariables();
  assert.match(readFileSync(join(REPO_ROOT, 'Caddyfile'), 'utf8'), new RegExp(`reverse_proxy ${vars.BEACON_BIND!.replace(/\./g, '\\.')}\\b`),
    'the Caddyfile should proxy to the BEACON_BIND of beacon.env');
  assert.ok(vars.BEACON_KEYS!.startsWith('/etc/beacon/'), 'keys live in the unit\'s ConfigurationDirectory, /etc/beacon');
  assert.ok((vars.BEACON_TRUST_PROXY ?? 'loopback').split(',').includes('loopback'), 'Caddy connects from loopback');
});

test('the unit\'s ExecStart with beacon.env and a notification socket as systemd gives it (bind, udp and keys moved to a temp dir): READY=1, WATCHDOG=1, ExecReload -> RELOADING=1/READY=1, SIGTERM -> STOPPING=1 and exit within TimeoutStopSec', async (t) => {
  const alice = makeIdentity(7777);
  const { dir, keys } = keysFileFor([alice]);
  const notify = await FakeNotifySocket.start();
  t.after(() => notify.close());
  // systemd sets WATCHDOG_USEC to WatchdogSec; a short one here, so pings come within the test.
  const beacon = startBeaconLikeTheUnit({
    BEACON_BIND: '127.0.0.1:0', BEACON_UDP: '127.0.0.1:0', BEACON_KEYS: keys, NOTIFY_SOCKET: notify.address, WATCHDOG_USEC: '300000',
  }, dir);
  const ready = await notify.waitFor((n) => n.fields.READY === '1', 'READY=1');
  assert.equal(ready.pid, beacon.pid, 'sent by the main process (NotifyAccess=main)');
  const listening = await beacon.waitForLog('beacon listening');
  const starting = await beacon.waitForLog('beacon starting');
  assert.equal(starting.keysFile, keys);
  const base = `http://${String(listening.bind)}`;
  assert.equal((await get(base, '/health')).status, 200);
  await notify.waitFor(() => notify.with('WATCHDOG').length >= 2, 'WATCHDOG=1 pings');
  const ws = await connectPeer(`ws://${String(listening.bind)}/v1/compat`, alice);

  // ExecReload, with $MAINPID as systemd fills it in.
  const from = notify.messages.length;
  const reload = setting(unit, 'Service', 'ExecReload').replace('$MAINPID', String(beacon.pid)).split(/\s+/);
  const sent = await run(reload[0]!, reload.slice(1), { timeoutMs: 5_000 });
  assert.equal(sent.code, 0, sent.stderr);
  const reloading = await notify.waitFor((n) => n.fields.RELOADING === '1', 'RELOADING=1', 5_000, from);
  assert.match(reloading.fields.MONOTONIC_USEC ?? '', /^\d+$/);
  await notify.waitFor((n) => n.fields.READY === '1', 'READY=1 after the reload', 5_000, notify.messages.indexOf(reloading) + 1);
  await beacon.waitForLog('reloading keys file', 5_000);
  assert.ok(beacon.running, 'SIGHUP must not stop the beacon');
  assert.equal((await get(base, '/health')).status, 200);

  const stopMs = parseTimespanMs(setting(unit, 'Service', 'TimeoutStopSec'));
  const started = Date.now();
  const peerClosed = closed(ws, stopMs);
  const exit = beacon.stop(stopMs);
  await notify.waitFor((n) => n.fields.STOPPING === '1', 'STOPPING=1', stopMs);
  assert.deepEqual(await exit, { code: 0, signal: null }, `the beacon should exit 0 on SIGTERM; output:\n${beacon.output}`);
  const tookMs = Date.now() - started;
  assert.ok(tookMs < stopMs, `stopping took ${tookMs} ms, over TimeoutStopSec ${stopMs} ms`);
  assert.equal((await peerClosed).code, 1001);
});

test('the drop-in\'s wait-ready (ExecStartPost) returns 0 once the beacon answers /health, and not before', async () => {
  const alice = makeIdentity(7777);
  const { dir, keys } = keysFileFor([alice]);
  const port = await freeTcpPort();
  const bind = `127.0.0.1:${port}`;
  const wait = spawnChild(waitReadyCommand(20), { PATH: process.env.PATH, BEACON_BIND: bind });
  await new Promise((resolve) => setTimeout(resolve, 700));
  assert.ok(wait.running, `wait-ready returned before anything listened: ${wait.output}`);
  const beacon = startBeaconLikeTheUnit({ BEACON_BIND: bind, BEACON_UDP: '127.0.0.1:0', BEACON_KEYS: keys }, dir);
  const exit = await wait.exit;
  assert.deepEqual(exit, { code: 0, signal: null }, `wait-ready failed: ${wait.output}\nbeacon: ${beacon.output}`);
  assert.match(beacon.output, /"msg":"beacon listening"/, 'wait-ready returned before the beacon listened');
  assert.equal((await get(`http://${bind}`, '/health')).status, 200);
  await beacon.stop();
});

test('wait-ready fails, bounded, when nothing listens or /health is not 200, and rejects a bad BEACON_BIND', async () => {
  const nothing = await freeTcpPort();
  const started = Date.now();
  const idle = await run(waitReadyCommand(1)[0]!, waitReadyCommand(1).slice(1),
    { env: { PATH: process.env.PATH, BEACON_BIND: `127.0.0.1:${nothing}` }, timeoutMs: 10_000 });
  assert.equal(idle.code, 1, `exit ${idle.code}: ${idle.stderr}`);
  assert.ok(Date.now() - started < 5_000, 'wait-ready 1 should give up within about a second');
  assert.match(idle.stderr, new RegExp(`did not answer 200 at http://127\\.0\\.0\\.1:${nothing}/health within 1 s \\(last: ECONNREFUSED\\)`));

  // A beacon that is shutting down answers 503: not ready.
  const draining = http.createServer((_req, res) => { res.statusCode = 503; res.end('{"status":"shutting down"}'); });
  await new Promise<void>((resolve) => draining.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = draining.address() as import('node:net').AddressInfo;
    const busy = await run(waitReadyCommand(1)[0]!, waitReadyCommand(1).slice(1),
      { env: { PATH: process.env.PATH, BEACON_BIND: `127.0.0.1:${port}` }, timeoutMs: 10_000 });
    assert.equal(busy.code, 1, busy.stderr);
    assert.match(busy.stderr, /last: answered 503/);
  } finally {
    draining.closeAllConnections();
    await new Promise((resolve) => draining.close(resolve));
  }

  const bad = await run(waitReadyCommand(1)[0]!, waitReadyCommand(1).slice(1),
    { env: { PATH: process.env.PATH, BEACON_BIND: 'localhost' }, timeoutMs: 10_000 });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /BEACON_BIND="localhost" is not HOST:PORT/);
});
