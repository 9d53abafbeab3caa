/** The beacon-client CLI as an operator runs it, against the real beacon. */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CompatClient, PacketType, UdpNode } from '../lib/client';
import { formatIdentity } from '../lib/identity';
import { nextEvent } from './helpers/client-events';
import { CliProcess, killSpawnedCli, runCli } from './helpers/client-cli';
import { startTestBeacon, type TestBeacon } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const carol = makeIdentity(9999);
const stranger = makeIdentity(4242); // not in the keys file
let tb: TestBeacon;
const files = new Map<number, string>();
const cleanups: Array<() => unknown> = [];

before(async () => {
  tb = await startTestBeacon([alice, bob, carol]);
  for (const id of [alice, bob, carol, stranger]) {
    const file = join(tb.dir, `node-${id.nodeId}.json`);
    writeFileSync(file, formatIdentity(id), { mode: 0o600 });
    files.set(id.nodeId, file);
  }
});
after(async () => {
  killSpawnedCli();
  for (const c of cleanups.reverse()) await c();
  await tb.close();
});

const as = (id: TestIdentity) => ['--identity', files.get(id.nodeId) as string, '--node-id', String(id.nodeId)];

function oneLine(stderr: string): string {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got: ${stderr}`);
  return lines[0];
}

test('send from one CLI is printed by a connected CLI; stdin lines of connect are relayed to --to', async () => {
  const receiver = new CliProcess(['connect', tb.url, ...as(bob), '--to', '9999']);
  await receiver.waitFor('stderr', /connected to ws:\/\/127\.0\.0\.1:\d+\/v1\/compat as node 8888/);

  const sent = await runCli(['send', tb.url, ...as(alice), '--to', '8888', '--data', 'hello bob']);
  assert.equal(sent.code, 0, sent.stderr);
  assert.match(sent.stderr, /sent 9 bytes to node 8888/);
  assert.equal(await receiver.waitFor('stdout', /^from 7777:/), 'from 7777: hello bob');

  // Bytes that are not text come out as hex.
  const c = new CompatClient({ url: tb.url, nodeId: 9999, identity: carol });
  cleanups.push(() => c.close());
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  c.relay(8888, Buffer.from([0, 1, 0x1b, 0xff]));
  assert.equal(await receiver.waitFor('stdout', /^from 9999:/), 'from 9999: 0x00011bff');

  const atCarol = nextEvent(c, 'packet', 3_000, (p) => p.type === PacketType.RelayDeliver);
  receiver.child.stdin.write('typed by bob\n');
  const p = await atCarol;
  assert.deepEqual(p.type === PacketType.RelayDeliver && [p.sender, p.payload.toString()], [8888, 'typed by bob']);

  const stopped = await receiver.stop();
  assert.equal(stopped.code, 0, stopped.stderr);
});

test('send --wait prints the reply from --to', async () => {
  const echo = new CompatClient({ url: tb.url, nodeId: 8888, identity: bob });
  cleanups.push(() => echo.close());
  echo.on('packet', (p) => { if (p.type === PacketType.RelayDeliver) echo.relay(p.sender, `echo: ${p.payload.toString()}`); });
  await echo.connect({ failFast: true, timeoutMs: 3_000 });
  const result = await runCli(['send', tb.url, ...as(alice), '--to', '8888', '--data', 'ping', '--wait', '3s']);
  assert.equal(result.code, 0, JSON.stringify(result));
  assert.equal(result.stdout, 'from 8888: echo: ping\n');
  await echo.close();

  const nobody = await runCli(['send', tb.url, ...as(alice), '--to', '8888', '--data', 'ping', '--wait', '200ms']);
  assert.equal(nobody.code, 1, JSON.stringify(nobody));
  assert.match(nobody.stderr, /no reply from node 8888 within 200 ms/);
});

test('discover over UDP prints the endpoint the beacon sees', async () => {
  const before = tb.beacon.metrics().udpEndpoints;
  const result = await runCli(['discover', `127.0.0.1:${tb.udpPort}`, '--node-id', '7777']);
  assert.equal(result.code, 0, result.stderr);
  const match = /^127\.0\.0\.1:(\d+)\n$/.exec(result.stdout);
  assert.ok(match, `stdout: ${JSON.stringify(result.stdout)}`);
  const port = Number(match[1]);
  assert.ok(port > 0 && port !== tb.udpPort);
  assert.equal(tb.beacon.metrics().udpEndpoints, before + 1, 'the beacon recorded the endpoint');
});

test('discover --listen --to attaches over UDP: relays cross between the UDP side and a WebSocket side', async () => {
  const udpSide = new CliProcess(['discover', `127.0.0.1:${tb.udpPort}`, '--node-id', '7777', '--to', '9999']);
  await udpSide.waitFor('stdout', /^127\.0\.0\.1:\d+$/);
  await udpSide.waitFor('stderr', /attached to 127\.0\.0\.1:\d+ over UDP as node 7777/);

  const ws = new CompatClient({ url: tb.url, nodeId: 9999, identity: carol });
  cleanups.push(() => ws.close());
  await ws.connect({ failFast: true, timeoutMs: 3_000 });
  ws.relay(7777, 'to the udp side');
  assert.equal(await udpSide.waitFor('stdout', /^from 9999:/), 'from 9999: to the udp side');

  const atCarol = nextEvent(ws, 'packet', 3_000, (p) => p.type === PacketType.RelayDeliver);
  udpSide.child.stdin.write('from the udp side\n');
  const p = await atCarol;
  assert.deepEqual(p.type === PacketType.RelayDeliver && [p.sender, p.payload.toString()], [7777, 'from the udp side']);
  assert.equal((await udpSide.stop()).code, 0);
  await ws.close();
});

test('discover without --node-id only asks (Discover for node 0): prints the endpoint, the beacon records nothing', async () => {
  const before = tb.beacon.metrics();
  const result = await runCli(['discover', `127.0.0.1:${tb.udpPort}`]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /^127\.0\.0\.1:\d+\n$/);
  const after = tb.beacon.metrics();
  assert.equal(after.stats.addressQueries.udp, before.stats.addressQueries.udp + 1);
  assert.equal(after.udpEndpoints, before.udpEndpoints, 'no endpoint recorded');
});

test('UdpNode as node 0 asks for its address, sends no keepalive and refuses to relay', async () => {
  const node = await UdpNode.open({ host: '127.0.0.1', port: tb.udpPort, nodeId: 0, keepaliveMs: 10 });
  cleanups.push(() => node.close());
  const before = tb.beacon.metrics().stats.addressQueries.udp;
  assert.deepEqual(await node.discover(3_000, 60_000), { ip: '127.0.0.1', port: node.localPort }); // no resend
  assert.throws(() => node.relay(8888, 'x'), { name: 'RangeError', message: /node 0 only asks for its address/ });
  // No keepalive went out although one was asked for every 10 ms: one query, the one discover() sent.
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(tb.beacon.metrics().stats.addressQueries.udp, before + 1);
  node.close();
});

test('discover --listen or --to without --node-id -> exit 2 and one line', async () => {
  for (const extra of [['--listen'], ['--to', '9999']]) {
    const result = await runCli(['discover', `127.0.0.1:${tb.udpPort}`, ...extra]);
    assert.equal(result.code, 2, JSON.stringify(result));
    assert.match(oneLine(result.stderr), new RegExp(`^beacon-client: ${extra[0]} needs --node-id`));
  }
});

test('discover at a UDP port where nothing listens fails with a clear line', async () => {
  const result = await runCli(['discover', '127.0.0.1:1', '--node-id', '7777', '--timeout', '1s']);
  assert.equal(result.code, 1);
  assert.match(oneLine(result.stderr), /^beacon-client: (nothing listens on UDP 127\.0\.0\.1:1|no DiscoverReply from 127\.0\.0\.1:1 within 1000 ms)/);
});

test('a wrong URL scheme is refused with a clear line and exit 2', async () => {
  for (const url of ['http://127.0.0.1:8443/v1/compat', 'https://beacon.example.com/v1/compat']) {
    const result = await runCli(['send', url, ...as(alice), '--to', '8888', '--data', 'x']);
    assert.equal(result.code, 2);
    assert.match(oneLine(result.stderr), /a beacon URL must be ws:\/\/ or wss:\/\//);
  }
  const bad = await runCli(['connect', 'ws://127.0.0.1:1/v1/compat', ...as(alice), '--to', 'zero']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--to <dest>.*"zero" is not a whole number/);
});

test('auth failure first says to check --node-id against the identity\'s public key, then how to register, and exits 1', async () => {
  const result = await runCli(['send', tb.url, ...as(stranger), '--to', '8888', '--data', 'x']);
  assert.equal(result.code, 1);
  const line = oneLine(result.stderr);
  assert.match(line, /auth failed for node 4242/);
  const check = line.indexOf(`First check that node 4242 is this identity's: its public key is ${stranger.publicKeyB64}`);
  const register = line.indexOf(`beacon keys add --keys FILE --node-id 4242 --public-key ${stranger.publicKeyB64}`);
  assert.ok(check > 0 && register > check, line);
  const connect = await runCli(['connect', tb.url, ...as(stranger)]);
  assert.equal(connect.code, 1);
  assert.match(connect.stderr, /First check that node 4242 is this identity's/);
});

test('503 at capacity and a silent server are reported as such', async () => {
  const full = await startTestBeacon([alice, bob], { maxPeers: 1 });
  cleanups.push(() => full.close());
  const holder = new CompatClient({ url: full.url, nodeId: 8888, identity: bob });
  cleanups.push(() => holder.close());
  await holder.connect({ failFast: true, timeoutMs: 3_000 });
  const refused = await runCli(['send', full.url, ...as(alice), '--to', '8888', '--data', 'x']);
  assert.equal(refused.code, 1);
  assert.match(oneLine(refused.stderr), /refused the connection with HTTP 503 \(max_peers\): it is at capacity/);

  const silent = net.createServer((s) => { cleanups.push(() => s.destroy()); });
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  cleanups.push(() => new Promise((resolve) => silent.close(resolve)));
  const url = `ws://127.0.0.1:${(silent.address() as net.AddressInfo).port}/v1/compat`;
  const timedOut = await runCli(['send', url, ...as(alice), '--to', '8888', '--data', 'x', '--timeout', '300ms']);
  assert.equal(timedOut.code, 1);
  assert.match(oneLine(timedOut.stderr), /timed out after 300 ms connecting to 127\.0\.0\.1:\d+/);
});

test('a missing identity file names the file and how to make one (exit 2)', async () => {
  const result = await runCli(['send', tb.url, '--identity', join(tb.dir, 'nope.json'), '--node-id', '7777', '--to', '8888', '--data', 'x']);
  assert.equal(result.code, 2);
  assert.match(oneLine(result.stderr), /identity file .*nope\.json: not found \(create one with: beacon keygen --out FILE\)/);
});
