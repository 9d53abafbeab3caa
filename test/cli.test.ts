/**
 * The real `beacon` CLI (dist/cmd/beacon.js) as a child process: flags and
 * environment, one-line usage errors with exit code 2, signals, and the
 * key-management subcommands.
 *
 * Every child runs in its own temporary directory (so no ./keys.json leaks
 * in) with the BEACON_* variables of this process removed, binds port 0, and
 * is waited on by its log lines or its exit, never by sleeping. Every wait
 * is bounded; every child still running at the end is killed by its PID.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import dgram from 'node:dgram';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import WebSocket from 'ws';
import { loadKeysFile } from '../lib/auth/keys-file';
import { DEFAULTS } from '../lib/config';
import { loadIdentity, publicKeyBase64, saveIdentity } from '../lib/identity';
import { CloseCode } from '../lib/protocol';
import { VERSION } from '../lib/version';
import { closed, connectPeer, withTimeout } from './helpers/harness';
import { keysFileJson, makeIdentity } from './helpers/identity';
import {
  FAST, assertRunning, assertUsageError, cleanUpBeaconCli, runCli, sockets, startCli, stopCli, tempDir,
} from './helpers/beacon-cli';

after(cleanUpBeaconCli);

// ---- help, version ----------------------------------------------------------

test('--help exits 0 and shows every default from DEFAULTS and its BEACON_* variable', async () => {
  const { code, stdout, stderr } = await runCli(['--help']);
  assert.equal(code, 0, stderr);
  const help = stdout.replace(/\s+/g, ' ');
  for (const shown of [
    `default: ${DEFAULTS.bind.host}:${DEFAULTS.bind.port}`, 'env: BEACON_BIND',
    `default: ${DEFAULTS.authTimeoutMs / 1000}s`, 'env: BEACON_AUTH_TIMEOUT',
    `default: ${DEFAULTS.sendBufferBytes / 1024}KiB`, 'env: BEACON_SEND_BUFFER',
    `default: ${DEFAULTS.maxPeers}`, 'env: BEACON_PEERS', 'env: BEACON_LOG_LEVEL', 'default: loopback',
    '--key-cache-negative-ttl', '--max-udp-endpoints', '--restart-window', '--udp-io', 'env: BEACON_UDP_IO', 'keygen', 'keys',
    `default: ${DEFAULTS.peerRateBytesPerSec / 2 ** 20}MiB/s`, 'env: BEACON_PEER_RATE', 'env: BEACON_PEER_BURST',
    `default: ${DEFAULTS.peerFrameRate}/s`, 'env: BEACON_PEER_FRAME_RATE',
    `default: ${DEFAULTS.udpRatePerIp}/s`, 'env: BEACON_UDP_RATE_PER_IP',
    `default: ${DEFAULTS.udpByteRatePerIp / 2 ** 20}MiB/s`, 'env: BEACON_UDP_BYTE_RATE_PER_IP',
  ]) {
    assert.ok(help.includes(shown), `--help shows "${shown}"`);
  }
});

test('--version prints the package version and exits 0', async () => {
  const { code, stdout } = await runCli(['--version']);
  assert.equal(code, 0);
  assert.equal(stdout.trim(), VERSION);
});

// ---- running ----------------------------------------------------------------

test('starts, logs the bound addresses and serves /health; SIGTERM exits 0', async () => {
  const { proc, listening, httpBase } = await startCli(FAST);
  assert.match(String(listening.bind), /^127\.0\.0\.1:\d+$/);
  assert.match(String(listening.udp), /^127\.0\.0\.1:\d+$/);
  assert.notEqual(String(listening.bind), '127.0.0.1:0');
  const res = await withTimeout(fetch(`${httpBase}/health`), 3_000, '/health');
  assert.equal(res.status, 200);
  assert.equal(((await res.json()) as { status: string }).status, 'ok');
  await stopCli(proc);
});

test('BEACON_BIND configures --bind', async () => {
  // Without the variable the beacon would bind the default port 8443.
  const { proc, bind } = await startCli(['--udp', '127.0.0.1:0'], { env: { BEACON_BIND: '127.0.0.1:0' } });
  assert.match(bind, /^127\.0\.0\.1:\d+$/);
  assert.notEqual(bind, `127.0.0.1:${DEFAULTS.bind.port}`);
  await stopCli(proc);
});

test('BEACON_UDP_RATE_PER_IP reaches the UDP side: over it, Discovers are dropped and counted', async (t) => {
  const { proc, listening, httpBase } = await startCli(FAST, { env: { BEACON_UDP_RATE_PER_IP: '3/s' } });
  t.after(() => stopCli(proc));
  const udpPort = Number(/:(\d+)$/.exec(String(listening.udp))![1]);
  const client = dgram.createSocket('udp4');
  t.after(() => client.close());
  let replies = 0;
  client.on('message', () => { replies++; });
  const discover = Buffer.from([0x01, 0, 0, 0x22, 0xb8]); // Discover, node 8888
  for (let i = 0; i < 10; i++) client.send(discover, udpPort, '127.0.0.1');
  // The budget (3/s, one second's worth) is spent at once: 3 answered, 7 dropped.
  let dropped = 0;
  const deadline = Date.now() + 5_000;
  while ((dropped < 7 || replies < 3) && Date.now() < deadline) {
    const text = await (await fetch(`${httpBase}/metrics`)).text();
    dropped = Number(/^beacon_dropped_total\{reason="rate_limited"\} (\d+)/m.exec(text)?.[1] ?? 0);
  }
  assert.equal(dropped, 7);
  assert.equal(replies, 3);
});

test('BEACON_UDP_BYTE_RATE_PER_IP reaches the UDP side: over it, datagrams are dropped as byte_rate_limited', async (t) => {
  const { proc, listening, httpBase } = await startCli(FAST, { env: { BEACON_UDP_BYTE_RATE_PER_IP: '64KiB/s' } });
  t.after(() => stopCli(proc));
  const udpPort = Number(/:(\d+)$/.exec(String(listening.udp))![1]);
  const client = dgram.createSocket('udp4');
  t.after(() => client.close());
  let replies = 0;
  client.on('message', () => { replies++; });
  // Discover for node 8888 with 30,000 bytes of padding (ignored): two fit in 64 KiB, two do not.
  const discover = Buffer.concat([Buffer.from([0x01, 0, 0, 0x22, 0xb8]), Buffer.alloc(29_995)]);
  for (let i = 0; i < 4; i++) client.send(discover, udpPort, '127.0.0.1');
  let dropped = 0;
  const deadline = Date.now() + 5_000;
  while ((dropped < 2 || replies < 2) && Date.now() < deadline) {
    const text = await (await fetch(`${httpBase}/metrics`)).text();
    dropped = Number(/^beacon_dropped_total\{reason="byte_rate_limited"\} (\d+)/m.exec(text)?.[1] ?? 0);
  }
  assert.equal(dropped, 2);
  assert.equal(replies, 2);
});

test('a flag beats its environment variable (the variable is not even parsed)', async () => {
  // With BEACON_LOG_LEVEL=silent winning there would be no 'beacon listening' line.
  const { proc, bind } = await startCli([...FAST, '--log-level', 'info'], {
    env: { BEACON_BIND: 'not-an-address', BEACON_LOG_LEVEL: 'silent' },
  });
  assert.match(bind, /^127\.0\.0\.1:\d+$/);
  await stopCli(proc);
  // The other way round: a valid variable does not rescue a bad flag.
  const result = await runCli([...FAST, '--max-peers', 'x'], { env: { BEACON_MAX_PEERS: '5' } });
  assertUsageError(result, "'--max-peers <n>' argument 'x'");
});

test('BEACON_PEERS takes a comma-separated list of beacon peers', async () => {
  const { proc, listening } = await startCli([...FAST, '--beacon-id', '1'], {
    env: { BEACON_PEERS: '127.0.0.1:9901, 127.0.0.1:9902' },
  });
  assert.equal(listening.beaconPeers, 2);
  await stopCli(proc);
});

test('--peer is repeatable', async () => {
  const { proc, listening } = await startCli([...FAST, '--beacon-id', '1', '--peer', '127.0.0.1:9901', '--peer', '127.0.0.1:9902', '--peer', '127.0.0.1:9903']);
  assert.equal(listening.beaconPeers, 3);
  await stopCli(proc);
});

test('--udp-io dgram runs on dgram; by default the beacon runs batched where the addon is built, and says so', async () => {
  const dgramRun = await startCli([...FAST, '--udp-io', 'dgram']);
  assert.equal(dgramRun.listening.udpIo, 'dgram');
  await stopCli(dgramRun.proc);
  const auto = await startCli([...FAST]);
  assert.equal(auto.listening.udpIo, 'batched');
  await stopCli(auto.proc);
});

// ---- bad input: one line, exit 2 --------------------------------------------

const badFlags: [string, string[], Record<string, string>, string[]][] = [
  ['unknown flag', ['--frobnicate'], {}, ['--frobnicate']],
  ['bad duration', ['--auth-timeout', '5x'], {}, ['--auth-timeout', '5x']],
  ['bad address', ['--bind', 'nope'], {}, ['--bind', 'nope']],
  ['bad size', ['--send-buffer', '12XB'], {}, ['--send-buffer']],
  ['bad number', ['--max-peers', '0'], {}, ['--max-peers']],
  ['bad log level', ['--log-level', 'loud'], {}, ['--log-level', 'loud']],
  ['bad UDP I/O', ['--udp-io', 'fast'], {}, ['--udp-io', 'fast', 'batched', 'dgram']],
  ['bad BEACON_UDP_IO', [], { BEACON_UDP_IO: 'fast' }, ['BEACON_UDP_IO', 'fast']],
  ['bad trust proxy', ['--trust-proxy', 'example.com'], {}, ['--trust-proxy']],
  ['--peer without --beacon-id', ['--peer', '127.0.0.1:9901'], {}, ['--beacon-id']],
  ['bad environment variable', [], { BEACON_IDLE_TIMEOUT: 'forever' }, ['BEACON_IDLE_TIMEOUT', 'forever']],
  ['bad peer rate', ['--peer-rate', 'fast'], {}, ['--peer-rate', 'fast', 'MiB/s']],
  ['zero peer rate', ['--peer-rate', '0/s'], {}, ['--peer-rate']],
  ['peer burst under one message', ['--peer-burst', '1KiB'], {}, ['--peer-burst', '64KiB']],
  ['bad UDP rate', ['--udp-rate-per-ip', '0'], {}, ['--udp-rate-per-ip']],
  ['bad peer frame rate', ['--peer-frame-rate', 'fast'], {}, ['--peer-frame-rate', 'fast', 'frames per second']],
  ['zero peer frame rate', ['--peer-frame-rate', '0/s'], {}, ['--peer-frame-rate']],
  ['bad peer frame rate in the environment', [], { BEACON_PEER_FRAME_RATE: 'lots' }, ['BEACON_PEER_FRAME_RATE', 'lots']],
  ['bad UDP rate in the environment', [], { BEACON_UDP_RATE_PER_IP: 'lots' }, ['BEACON_UDP_RATE_PER_IP', 'lots']],
  ['bad UDP byte rate', ['--udp-byte-rate-per-ip', 'fast'], {}, ['--udp-byte-rate-per-ip', 'fast', 'MiB/s']],
  ['UDP byte rate under one datagram per second', ['--udp-byte-rate-per-ip', '1KiB/s'], {}, ['--udp-byte-rate-per-ip', '64KiB/s']],
  ['bad UDP byte rate in the environment', [], { BEACON_UDP_BYTE_RATE_PER_IP: 'lots' }, ['BEACON_UDP_BYTE_RATE_PER_IP', 'lots']],
  ['helper thread nice above 19', ['--helper-thread-nice', '20'], {}, ['--helper-thread-nice', '"20"', '0 to 19']],
  ['bad helper thread nice in the environment', [], { BEACON_HELPER_THREAD_NICE: 'low' }, ['BEACON_HELPER_THREAD_NICE', 'low', '0 to 19']],
];
for (const [name, args, env, needles] of badFlags) {
  test(`${name} -> exit 2 and one line naming it`, async () => {
    assertUsageError(await runCli([...FAST, ...args], { env }), ...needles);
  });
}

test('--bind address in use -> exit 2 and one line naming --bind', async (t) => {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await withTimeout(once(server, 'listening'), 3_000, 'the port to be occupied');
  t.after(() => server.close());
  const { port } = server.address() as AddressInfo;
  const result = await runCli(['--bind', `127.0.0.1:${port}`, '--udp', '127.0.0.1:0']);
  assertUsageError(result, '--bind', `127.0.0.1:${port}`, 'in use');
});

test('invalid keys file -> exit 2 and one line naming the file and the entry', async () => {
  const dir = tempDir();
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, JSON.stringify({ 1: makeIdentity(1).publicKeyB64, 7777: 'not-a-key' }));
  assertUsageError(await runCli([...FAST, '--keys', keys]), keys, '"7777"');
});

test('missing --keys file -> exit 2 and one line naming it', async () => {
  const keys = join(tempDir(), 'missing.json');
  assertUsageError(await runCli([...FAST, '--keys', keys]), keys, 'not found');
});

test('an invalid ./keys.json is not skipped silently -> exit 2', async () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'keys.json'), '{"7777": ');
  assertUsageError(await runCli(FAST, { cwd: dir }), 'keys.json', 'JSON');
});

// ---- keys at start ------------------------------------------------------------

test('no keys file and no registry: a warning says how to add a key', async () => {
  const { proc } = await startCli(FAST);
  const warning = await proc.waitForLog((l) => l.level === 40 && l.msg.includes('beacon keys add --keys keys.json --node-id N --public-key B64'), 'the no-keys warning');
  assert.match(warning.msg, /no daemon can authenticate/);
  await stopCli(proc);
});

test('with --registry there is no no-keys warning', async () => {
  const { proc } = await startCli([...FAST, '--registry', '127.0.0.1:1']);
  await stopCli(proc);
  assert.deepEqual(proc.logs.filter((l) => l.level >= 40), []);
});

test('./keys.json in the working directory is used without --keys', async () => {
  const alice = makeIdentity(4242);
  const dir = tempDir();
  writeFileSync(join(dir, 'keys.json'), keysFileJson([alice]));
  const { proc, url } = await startCli(FAST, { cwd: dir });
  const ws = await connectPeer(url, alice);
  sockets.push(ws);
  const done = closed(ws);
  await stopCli(proc);
  assert.equal((await done).code, CloseCode.GoingAway);
  assert.deepEqual(proc.logs.filter((l) => l.level >= 40), []);
});

// ---- signals ---------------------------------------------------------------------

test('SIGTERM: an authenticated peer is told when to come back, closed with 1001, exit 0', async () => {
  const alice = makeIdentity(7777);
  const dir = tempDir();
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson([alice]));
  const { proc, url } = await startCli([...FAST, '--keys', keys, '--restart-delay', '1234ms', '--restart-window', '5s']);
  const ws = await connectPeer(url, alice);
  sockets.push(ws);
  const texts: string[] = [];
  ws.on('message', (data, isBinary) => { if (!isBinary) texts.push(data.toString()); });
  const done = closed(ws);
  const started = Date.now();
  proc.signal('SIGTERM');
  assert.equal((await done).code, CloseCode.GoingAway);
  assert.deepEqual(await proc.exit(5_000), { code: 0, signal: null });
  assert.ok(Date.now() - started < 5_000);
  assert.deepEqual(texts.map((t) => JSON.parse(t) as unknown), [{ type: 'restarting', reconnect_in_ms: 1234, try_for_ms: 5000 }]);
});

test('a second SIGTERM while closing exits 1 at once', async () => {
  const alice = makeIdentity(7777);
  const keys = join(tempDir(), 'keys.json');
  writeFileSync(keys, keysFileJson([alice]));
  // A long grace and a peer that never reads its close frame keep the beacon closing.
  const { proc, url } = await startCli([...FAST, '--keys', keys, '--shutdown-grace', '30s']);
  const ws = await connectPeer(url, alice);
  sockets.push(ws);
  ws.pause();
  proc.signal('SIGTERM');
  await proc.waitForLog((l) => l.msg === 'shutting down', "'shutting down'");
  proc.signal('SIGTERM');
  assert.deepEqual(await proc.exit(3_000), { code: 1, signal: null });
  ws.terminate();
});

test('SIGHUP reloads the keys file: a peer whose key was removed is closed with 1008', async () => {
  const alice = makeIdentity(7777);
  const bob = makeIdentity(8888);
  // The beacon also watches the keys file's directory and would reload on
  // its own. --keys is a symlink into another directory, so editing the
  // target is invisible to that watch and only SIGHUP can pick it up.
  const real = join(tempDir(), 'keys.json');
  const link = join(tempDir(), 'keys.json');
  writeFileSync(real, keysFileJson([alice, bob]));
  symlinkSync(real, link);
  const { proc, url } = await startCli([...FAST, '--keys', link]);
  const a = await connectPeer(url, alice);
  const b = await connectPeer(url, bob);
  sockets.push(a, b);
  const aliceClosed = closed(a);
  writeFileSync(real, keysFileJson([bob]));
  assert.equal(a.readyState, WebSocket.OPEN);
  proc.signal('SIGHUP');
  assert.equal((await aliceClosed).code, CloseCode.PolicyViolation);
  const reloaded = await proc.waitForLog((l) => l.msg === 'keys file reloaded', "'keys file reloaded'");
  assert.equal(reloaded.revoked, 1);
  assert.equal(b.readyState, WebSocket.OPEN);

  // An invalid file on SIGHUP is logged and the previous keys stay.
  writeFileSync(real, '{"8888": ');
  proc.signal('SIGHUP');
  const failed = await proc.waitForLog((l) => l.msg.startsWith('keys file reload failed'), "'keys file reload failed'");
  assert.equal(failed.level, 50);
  assert.equal(b.readyState, WebSocket.OPEN);
  assertRunning(proc);
  await stopCli(proc);
});

// ---- keygen ------------------------------------------------------------------------

test('keygen writes a 0600 identity that lib/identity loads, prints its key, and refuses to overwrite', async () => {
  const out = join(tempDir(), 'daemon.json');
  const result = await runCli(['keygen', '--out', out]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(statSync(out).mode & 0o777, 0o600);
  const publicKey = publicKeyBase64(loadIdentity(out));
  assert.ok(result.stdout.includes(`public key: ${publicKey}`), result.stdout);
  assert.ok(result.stdout.includes(`beacon keys add --keys keys.json --node-id N --public-key ${publicKey}`), result.stdout);

  const before = readFileSync(out, 'utf8');
  assertUsageError(await runCli(['keygen', '--out', out]), out, 'already exists');
  assert.equal(readFileSync(out, 'utf8'), before);
});

test('keygen without --out -> exit 2', async () => {
  assertUsageError(await runCli(['keygen']), '--out');
});

// ---- keys add --------------------------------------------------------------------------

test('keys add with --identity and with --public-key; the beacon then accepts both nodes', async () => {
  const dir = tempDir();
  const keys = join(dir, 'keys.json');
  const alice = makeIdentity(1001);
  const bob = makeIdentity(1002);
  const identityFile = join(dir, 'alice.json');
  saveIdentity(identityFile, alice);

  const first = await runCli(['keys', 'add', '--keys', keys, '--node-id', '1001', '--identity', identityFile]);
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /added node 1001/);
  assert.match(first.stdout, /SIGHUP/);
  const second = await runCli(['keys', 'add', '--keys', keys, '--node-id', '1002', '--public-key', bob.publicKeyB64]);
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stdout, /added node 1002/);

  const loaded = loadKeysFile(keys);
  assert.deepEqual([...loaded.keys()].sort(), [1001, 1002]);
  assert.equal(loaded.get(1001)?.raw.toString('base64'), alice.publicKeyB64);

  const { proc, url } = await startCli([...FAST, '--keys', keys]);
  const a = await connectPeer(url, alice);
  const b = await connectPeer(url, bob);
  sockets.push(a, b);
  await stopCli(proc);
});

test('keys add refuses to replace a node\'s other key, naming it; with --replace it replaces it', async () => {
  const keys = join(tempDir(), 'keys.json');
  const old = makeIdentity(5);
  const renewed = makeIdentity(5);
  writeFileSync(keys, keysFileJson([old, makeIdentity(6)]));
  const before = readFileSync(keys, 'utf8');
  const refused = await runCli(['keys', 'add', '--keys', keys, '--node-id', '5', '--public-key', renewed.publicKeyB64]);
  assertUsageError(refused, 'node 5 already has another key', old.publicKeyB64, '--replace');
  assert.equal(readFileSync(keys, 'utf8'), before);
  const result = await runCli(['keys', 'add', '--keys', keys, '--node-id', '5', '--public-key', renewed.publicKeyB64, '--replace']);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /replaced the key of node 5/);
  const loaded = loadKeysFile(keys);
  assert.equal(loaded.size, 2);
  assert.equal(loaded.get(5)?.raw.toString('base64'), renewed.publicKeyB64);
});

const goodKey = makeIdentity(1).publicKeyB64;
const badKeysAdd: [string, string[], string[]][] = [
  ['a key that is not base64 of 32 bytes', ['--node-id', '7', '--public-key', 'abc'], ['--public-key', 'abc']],
  ['a 31-byte key', ['--node-id', '7', '--public-key', Buffer.alloc(31, 1).toString('base64')], ['--public-key', '32 bytes']],
  ['node ID 0', ['--node-id', '0', '--public-key', goodKey], ['--node-id', '4294967295']],
  ['node ID 2^32', ['--node-id', '4294967296', '--public-key', goodKey], ['--node-id', '4294967295']],
  ['a node ID that is not a number', ['--node-id', 'seven', '--public-key', goodKey], ['--node-id']],
  ['both --identity and --public-key', ['--node-id', '7', '--identity', 'x.json', '--public-key', goodKey], ['--identity', '--public-key']],
  ['neither --identity nor --public-key', ['--node-id', '7'], ['--identity', '--public-key']],
  ['no --node-id', ['--public-key', goodKey], ['--node-id']],
  ['a missing identity file', ['--node-id', '7', '--identity', 'missing.json'], ['missing.json', 'not found']],
];
for (const [name, args, needles] of badKeysAdd) {
  test(`keys add with ${name} -> exit 2, nothing written`, async () => {
    const dir = tempDir();
    const keys = join(dir, 'keys.json');
    assertUsageError(await runCli(['keys', 'add', '--keys', keys, ...args], { cwd: dir }), ...needles);
    assert.equal(existsSync(keys), false);
  });
}

test('keys add refuses to rewrite an invalid keys file -> exit 2, file unchanged', async () => {
  const dir = tempDir();
  mkdirSync(join(dir, 'etc'));
  const keys = join(dir, 'etc', 'keys.json');
  writeFileSync(keys, '{"12": "short"}');
  assertUsageError(await runCli(['keys', 'add', '--keys', keys, '--node-id', '7', '--public-key', goodKey]), keys, '"12"');
  assert.equal(readFileSync(keys, 'utf8'), '{"12": "short"}');
});
