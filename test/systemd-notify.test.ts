/**
 * systemd's notification protocol, against the real `beacon` CLI and a fake
 * notification socket (test/helpers/notify-socket.ts: a Unix datagram
 * socket, bound by python3, that reports each datagram with the sender's
 * PID as the kernel gives it): READY=1 once the beacon serves, WATCHDOG=1
 * every half of $WATCHDOG_USEC while the event loop runs and none while it
 * is blocked, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on SIGTERM;
 * $NOTIFY_SOCKET the beacon cannot use is refused at start (exit 2). The
 * addon's sdNotify refuses addresses and messages out of bounds.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { decodePacket, encodeDiscover, PacketType } from '../lib/protocol';
import { systemdNotifierFromEnv, watchdogIntervalMs, type NotifySend } from '../lib/systemd/notify';
import { loadUdpBatchAddon } from '../lib/native/udp-batch-addon';
import {
  assertUsageError, BeaconProcess, cleanUpBeaconCli, FAST, runCli, startCli, tempDir, type LogLine, type SpawnOptions,
} from './helpers/beacon-cli';
import { get } from './helpers/deploy';
import { closed, connectPeer, UdpClient } from './helpers/harness';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { FakeNotifySocket, type Notification } from './helpers/notify-socket';
import { promValue } from './helpers/wire';

after(cleanUpBeaconCli);
const sockets: FakeNotifySocket[] = [];
after(async () => { for (const socket of sockets) await socket.close(); });

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const PRELOAD_BLOCK_LOOP = join(__dirname, 'helpers', 'preload-block-loop.js');
const PRELOAD_NO_ADDON = join(__dirname, 'helpers', 'preload-no-addon.js');
/** A shell that gives node its own PID as WATCHDOG_PID, as systemd does for the main process. */
const WITH_OWN_WATCHDOG_PID = ['/bin/sh', '-c', 'WATCHDOG_PID=$$ exec "$@"', 'sh'];

async function notifySocket(address?: string): Promise<FakeNotifySocket> {
  const socket = await FakeNotifySocket.start(address);
  sockets.push(socket);
  return socket;
}

/** A keys file with `ids`, in a fresh directory. */
function keysFile(ids = [alice, bob]): string {
  const file = join(tempDir(), 'keys.json');
  writeFileSync(file, keysFileJson(ids));
  return file;
}

function startNotified(socket: FakeNotifySocket, keys: string, env: Record<string, string> = {}, options: SpawnOptions = {}) {
  return startCli([...FAST, '--keys', keys], { ...options, env: { NOTIFY_SOCKET: socket.address, ...env, ...options.env } });
}

function isReady(n: Notification): boolean {
  return n.fields.READY === '1';
}

function log(proc: BeaconProcess, msg: string): LogLine[] {
  return proc.logs.filter((line) => line.msg === msg);
}

test('READY=1 comes from the main PID once the beacon serves: /health answers 200, UDP answers, the keys are loaded', async () => {
  const socket = await notifySocket();
  const keys = keysFile();
  const proc = new BeaconProcess([...FAST, '--keys', keys], { env: { NOTIFY_SOCKET: socket.address } });
  const ready = await socket.waitFor(isReady, 'READY=1');
  assert.equal(ready.pid, proc.child.pid, 'NotifyAccess=main accepts only the main process');
  // STATUS names the ports bound (port 0 was asked for): READY went out after both sockets listened.
  const status = /^serving on (127\.0\.0\.1:(\d+)) \(HTTP, WebSocket\) and 127\.0\.0\.1:(\d+) \(UDP\); started$/.exec(ready.fields.STATUS ?? '');
  assert.ok(status, `STATUS=${ready.fields.STATUS}`);
  const [, bind, , udpPort] = status;
  assert.notEqual(Number(status[2]), 0);
  const health = await get(`http://${bind}`, '/health');
  assert.equal(health.status, 200);
  const metrics = await get(`http://${bind}`, '/metrics');
  assert.equal(promValue(metrics.body, 'beacon_keys_loaded'), 2);
  const udp = await UdpClient.open();
  try {
    udp.send(encodeDiscover(alice.nodeId), Number(udpPort));
    assert.equal(decodePacket(await udp.next())?.type, PacketType.DiscoverReply);
  } finally {
    udp.close();
  }
  assert.equal(socket.messages.filter(isReady).length, 1, 'one READY=1 at start');
  assert.deepEqual(log(proc, 'systemd notifications on').map((l) => [l.notifySocket, l.watchdogIntervalMs]), [[socket.address, null]]);
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('WATCHDOG=1 from the main PID every half of WATCHDOG_USEC, never faster, never a full period apart', async () => {
  const socket = await notifySocket();
  const usec = 1_000_000;
  const { proc } = await startNotified(socket, keysFile(), { WATCHDOG_USEC: String(usec) }, { through: WITH_OWN_WATCHDOG_PID });
  assert.equal(log(proc, 'systemd notifications on')[0]?.watchdogIntervalMs, usec / 2_000);
  const start = socket.messages.length;
  await socket.waitFor(() => socket.with('WATCHDOG').length >= 6, 'six WATCHDOG=1 pings', 15_000, start);
  const pings = socket.with('WATCHDOG');
  for (const ping of pings) {
    assert.equal(ping.fields.WATCHDOG, '1');
    assert.equal(ping.pid, proc.child.pid);
  }
  const gaps = pings.slice(1).map((ping, i) => ping.usec - pings[i]!.usec);
  // Timers never fire early (a little slack for the receiver's own scheduling); a gap of a
  // whole WATCHDOG_USEC is what makes systemd kill the service.
  assert.ok(Math.min(...gaps) >= usec * 0.45, `pings ${gaps.join(', ')} us apart: faster than every half of WATCHDOG_USEC`);
  assert.ok(Math.max(...gaps) < usec, `pings ${gaps.join(', ')} us apart: a full WATCHDOG_USEC passed without one`);
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('a blocked event loop stops the WATCHDOG=1 pings; they resume when it runs again', async () => {
  const socket = await notifySocket();
  const usec = 400_000;
  const blockMs = 2_000;
  const { proc } = await startNotified(socket, keysFile(), {
    WATCHDOG_USEC: String(usec), NODE_OPTIONS: `--require ${PRELOAD_BLOCK_LOOP}`, BEACON_TEST_BLOCK_MS: String(blockMs),
  });
  await socket.waitFor(() => socket.with('WATCHDOG').length >= 3, 'three pings before the block');
  proc.signal('SIGUSR2');
  const unblockedAt = Number((await proc.waitForStderr(/loop unblocked at (\d+)/, 'the end of the block'))[1]);
  const blockedAt = Number(/loop blocked at (\d+)/.exec(proc.stderr)![1]);
  assert.ok(unblockedAt - blockedAt >= blockMs * 1_000 * 0.9, 'the loop was blocked for the whole block');
  const resumed = await socket.waitFor((n) => n.fields.WATCHDOG === '1' && n.usec > unblockedAt, 'a ping after the block');
  const during = socket.with('WATCHDOG').filter((n) => n.usec > blockedAt + 50_000 && n.usec < unblockedAt);
  assert.deepEqual(during.map((n) => n.usec - blockedAt), [], 'no ping while the loop was blocked');
  const before = socket.with('WATCHDOG').filter((n) => n.usec <= blockedAt + 50_000).at(-1)!;
  assert.ok(resumed.usec - before.usec > usec, 'the silence outlasted WATCHDOG_USEC: systemd would have restarted this beacon');
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('no pings when WATCHDOG_PID names another process', async () => {
  const socket = await notifySocket();
  // 10 ms pings, were they ours: dozens would come before the reload's READY=1 below.
  const { proc } = await startNotified(socket, keysFile(), { WATCHDOG_USEC: '20000', WATCHDOG_PID: '1' });
  assert.equal(log(proc, 'systemd notifications on')[0]?.watchdogIntervalMs, null);
  const ready = await socket.waitFor(isReady, 'READY=1');
  const from = socket.messages.indexOf(ready) + 1;
  proc.signal('SIGHUP');
  await socket.waitFor(isReady, 'READY=1 after the reload', 15_000, from);
  assert.deepEqual(socket.with('WATCHDOG'), []);
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 once the keys file is re-read', async () => {
  const socket = await notifySocket();
  const keys = keysFile([alice, bob]);
  const { proc, url } = await startNotified(socket, keys);
  const first = await socket.waitFor(isReady, 'READY=1');
  const ws = await connectPeer(url, alice);
  const revoked = closed(ws);
  writeFileSync(keys, keysFileJson([bob]));
  const from = socket.messages.indexOf(first) + 1;
  const signalledAt = Number(process.hrtime.bigint() / 1_000n); // CLOCK_MONOTONIC, as the beacon's and the socket's
  proc.signal('SIGHUP');
  const reloading = await socket.waitFor((n) => n.fields.RELOADING === '1', 'RELOADING=1', 15_000, from);
  const sentAt = Number(reloading.fields.MONOTONIC_USEC);
  assert.ok(sentAt >= signalledAt && sentAt <= reloading.usec, `MONOTONIC_USEC=${reloading.fields.MONOTONIC_USEC} is not between the signal (${signalledAt}) and its receipt (${reloading.usec})`);
  assert.match(reloading.fields.STATUS ?? '', /^reloading .*keys\.json$/);
  const ready = await socket.waitFor(isReady, 'READY=1 after RELOADING=1', 15_000, socket.messages.indexOf(reloading) + 1);
  assert.match(ready.fields.STATUS ?? '', /keys\.json reloaded$/);
  assert.equal(ready.pid, proc.child.pid);
  assert.equal((await revoked).code, 1008, 'the reload READY=1 announced had revoked alice');
  // A reload that fails keeps the old keys and still ends with READY=1 (the beacon serves on).
  writeFileSync(keys, '{ not json');
  const from2 = socket.messages.indexOf(ready) + 1;
  proc.signal('SIGHUP');
  const again = await socket.waitFor(isReady, 'READY=1 after a failed reload', 15_000, from2);
  assert.match(again.fields.STATUS ?? '', /not reloaded, previous keys kept$/);
  assert.ok(socket.messages.slice(from2, socket.messages.indexOf(again)).some((n) => n.fields.RELOADING === '1'));
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('SIGTERM: STOPPING=1 as the drain begins, then exit 0', async () => {
  const socket = await notifySocket();
  const { proc, url } = await startNotified(socket, keysFile());
  await socket.waitFor(isReady, 'READY=1');
  const ws = await connectPeer(url, alice);
  const gone = closed(ws);
  proc.signal('SIGTERM');
  const stopping = await socket.waitFor((n) => n.fields.STOPPING === '1', 'STOPPING=1');
  assert.equal(stopping.pid, proc.child.pid);
  // Counted when the stop began: the peer was still there.
  assert.equal(stopping.fields.STATUS, 'SIGTERM: draining 1 peers, then stopping');
  assert.equal((await gone).code, 1001);
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
  assert.equal(socket.messages.filter((n) => n.fields.STOPPING === '1').length, 1);
});

test('an abstract notification socket (@name) works as a path does', async () => {
  const socket = await notifySocket(`@beacon-test-notify-${process.pid}-${Date.now()}`);
  const { proc } = await startNotified(socket, keysFile());
  const ready = await socket.waitFor(isReady, 'READY=1 on the abstract socket');
  assert.equal(ready.pid, proc.child.pid);
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('a notification socket that goes away costs one warning, and its return one line', async () => {
  const first = await notifySocket();
  const { proc } = await startNotified(first, keysFile(), { WATCHDOG_USEC: '40000' }); // a ping every 20 ms
  await first.waitFor((n) => n.fields.WATCHDOG === '1', 'a ping');
  await first.close();
  const warned = await proc.waitForLog((l) => l.msg.startsWith('cannot send to systemd\'s notification socket'), 'the warning');
  assert.equal(warned.code, 'ECONNREFUSED');
  const again = await notifySocket(first.address); // bound anew at the same path
  await again.waitFor((n) => n.fields.WATCHDOG === '1', 'a ping to the new socket');
  await proc.waitForLog((l) => l.msg === 'systemd notification socket reachable again', 'the recovery line');
  assert.equal(proc.logs.filter((l) => l.msg.startsWith('cannot send to systemd\'s notification socket')).length, 1,
    'one warning for the whole outage, not one per ping');
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('NOTIFY_SOCKET without the addon: exit 2, one line naming the addon and the wait-ready drop-in', async () => {
  const socket = await notifySocket();
  const result = await runCli([...FAST, '--keys', keysFile()], { env: { NOTIFY_SOCKET: socket.address, NODE_OPTIONS: `--require ${PRELOAD_NO_ADDON}` } });
  assertUsageError(result, 'NOTIFY_SOCKET', 'udp-batch addon', 'npm rebuild @beacon/udp-batch', 'wait-ready.conf');
  assert.deepEqual(socket.messages, []);
  // Without NOTIFY_SOCKET the same beacon runs (on dgram): the addon is optional.
  const { proc } = await startCli([...FAST, '--keys', keysFile()], { env: { NODE_OPTIONS: `--require ${PRELOAD_NO_ADDON}` } });
  assert.equal(log(proc, 'beacon listening')[0]?.udpIo, 'dgram');
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(), { code: 0, signal: null });
});

test('NOTIFY_SOCKET of a kind the beacon cannot send to (vsock) -> exit 2 and one line', async () => {
  const result = await runCli([...FAST, '--keys', keysFile()], { env: { NOTIFY_SOCKET: 'vsock:2:9999' } });
  assertUsageError(result, 'NOTIFY_SOCKET="vsock:2:9999"', 'neither a path nor an abstract socket name');
});

test('watchdogIntervalMs: half of WATCHDOG_USEC, only for our PID, nothing for junk', () => {
  assert.equal(watchdogIntervalMs('20000000', undefined, 42), 10_000);
  assert.equal(watchdogIntervalMs('20000000', '42', 42), 10_000);
  assert.equal(watchdogIntervalMs('20000000', '', 42), 10_000);
  assert.equal(watchdogIntervalMs('20000000', '43', 42), undefined);
  assert.equal(watchdogIntervalMs('1000', undefined, 42), 1, 'at least 1 ms');
  for (const junk of [undefined, '', '0', '-5', '1e6', '10s', ' 100', '99999999999999999999']) {
    assert.equal(watchdogIntervalMs(junk, undefined, 42), undefined, String(junk));
  }
});

test('systemdNotifierFromEnv takes the variables out of the environment and says when it cannot send', () => {
  const quiet = { warn() {}, info() {} } as unknown as Parameters<typeof systemdNotifierFromEnv>[1]['log'];
  const sent: string[] = [];
  const send: NotifySend = (address, message) => { sent.push(`${address} ${message.toString()}`); };
  const env: Record<string, string> = { NOTIFY_SOCKET: '/run/notify', WATCHDOG_USEC: '2000000', WATCHDOG_PID: '7', OTHER: 'x' };
  const setup = systemdNotifierFromEnv(env, { pid: 7, send, log: quiet });
  assert.equal(setup.kind, 'ready');
  assert.deepEqual(env, { OTHER: 'x' }, 'no child process inherits them');
  if (setup.kind !== 'ready') return;
  assert.equal(setup.notifier.watchdogIntervalMs, 1_000);
  setup.notifier.stopping('a\nb');
  assert.deepEqual(sent, ['/run/notify STOPPING=1\nSTATUS=a b\n'], 'STATUS stays one assignment');
  assert.deepEqual(systemdNotifierFromEnv({}, { pid: 7, send, log: quiet }), { kind: 'none' });
  assert.deepEqual(systemdNotifierFromEnv({ NOTIFY_SOCKET: '' }, { pid: 7, send, log: quiet }), { kind: 'none' });
  const missing = systemdNotifierFromEnv({ NOTIFY_SOCKET: '/run/notify' }, { pid: 7, send: { unavailable: 'not built' }, log: quiet });
  assert.equal(missing.kind, 'unusable');
  const relative = systemdNotifierFromEnv({ NOTIFY_SOCKET: 'run/notify' }, { pid: 7, send, log: quiet });
  assert.equal(relative.kind, 'unusable');
});

test('the addon\'s sdNotify refuses addresses and messages out of bounds, and reports errno codes', async () => {
  const { addon, error } = loadUdpBatchAddon();
  assert.ok(addon, `the udp-batch addon did not load (${error}): run npm rebuild @beacon/udp-batch`);
  const socket = await notifySocket();
  const message = Buffer.from('READY=1\n');
  const refuses = (address: unknown, msg: unknown, code: string) =>
    assert.throws(() => (addon.sdNotify as (a: unknown, m: unknown) => void)(address, msg), { code }, `${String(address).slice(0, 20)}`);
  refuses('relative/path', message, 'ENOTIFYARG');
  refuses('/', message, 'ENOTIFYARG');
  refuses('@', message, 'ENOTIFYARG');
  refuses(`/${'x'.repeat(107)}`, message, 'ENOTIFYARG'); // 108 bytes: no room for sun_path's NUL
  refuses(`@${'x'.repeat(108)}`, message, 'ENOTIFYARG'); // 109 bytes
  refuses(`/tmp/a\0b`, message, 'ENOTIFYARG');
  refuses(socket.address, Buffer.alloc(0), 'ENOTIFYARG');
  refuses(socket.address, Buffer.alloc(4097, 0x41), 'ENOTIFYARG');
  refuses(socket.address, 'READY=1', 'ENOTIFYARG');
  refuses(42, message, 'ENOTIFYARG');
  refuses(join(tempDir(), 'nothing-here.sock'), message, 'ENOENT');
  // The largest message arrives whole.
  const largest = Buffer.alloc(4096, 0x41);
  largest.write('STATUS=');
  addon.sdNotify(socket.address, largest);
  const got = await socket.waitFor((n) => n.text.length === 4096, 'the 4096-byte message');
  assert.equal(got.text, largest.toString());
  assert.equal(got.pid, process.pid);
});
