/**
 * The tests' port picker (test/helpers/free-ports.ts): a port handed to a
 * server started as another process is never handed out twice, in one test
 * process or across the ones running side by side, and never one the
 * kernel could give to a bind of port 0 or a client's source port. The
 * kernel does give a just-closed number to the next bind of port 0 (7
 * repeats in 300 picks here), and a nats-server given one number for two
 * of its ports exited with "address already in use" in CI.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  CLAIMS_DIR, claimNumber, ephemeralRange, freeConsecutiveTcpPorts, freeTcpPort, freeTcpUdpPort, freeUdpPort, isFree, pickRange, ROOM,
} from './helpers/free-ports';

const PICKS = 300;

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

function canBindUdp(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', () => { socket.close(); resolve(false); });
    socket.bind(port, '127.0.0.1', () => socket.close(() => resolve(true)));
  });
}

test(`${PICKS} TCP picks in a row are all different, and each can be listened on`, async () => {
  const ports: number[] = [];
  for (let i = 0; i < PICKS; i++) ports.push(await freeTcpPort());
  assert.equal(new Set(ports).size, PICKS, 'a TCP port was handed out twice');
  assert.ok(await canListen(ports[PICKS - 1]!));
});

test(`${PICKS} UDP picks in a row are all different, and each can be bound`, async () => {
  const ports: number[] = [];
  for (let i = 0; i < PICKS; i++) ports.push(await freeUdpPort());
  assert.equal(new Set(ports).size, PICKS, 'a UDP port was handed out twice');
  assert.ok(await canBindUdp(ports[PICKS - 1]!));
});

test('a consecutive pair and a TCP+UDP port are free as asked, and no later pick hands out any of them', async () => {
  const base = await freeConsecutiveTcpPorts();
  assert.ok(await canListen(base) && await canListen(base + 1), 'the pair was not free');
  const both = await freeTcpUdpPort();
  assert.ok(await canListen(both) && await canBindUdp(both), 'the TCP+UDP port was not free for both');
  const taken = new Set([base, base + 1, both]);
  for (let i = 0; i < PICKS; i++) {
    const port = await freeTcpPort();
    assert.ok(!taken.has(port), `TCP port ${port} was handed out again`);
  }
  for (let i = 0; i < 50; i++) assert.notEqual(await freeUdpPort(), both, 'the TCP+UDP port was handed out again for UDP');
});

test('picks come from outside the kernel\'s ephemeral range, where binds of port 0 and source ports never land', async () => {
  const ephemeral = ephemeralRange();
  const range = pickRange();
  const room = Math.max(ephemeral.low - 20_000, 65_535 - ephemeral.high);
  if (room >= ROOM) {
    assert.ok(range.high < ephemeral.low || range.low > ephemeral.high, `pick range ${range.low}-${range.high} overlaps ${ephemeral.low}-${ephemeral.high}`);
  } else {
    // No room outside it on this machine: the whole of 20000-65535, kept apart by claims alone.
    assert.deepEqual(range, { low: 20_000, high: 65_535 });
  }
  for (let i = 0; i < 50; i++) {
    const port = await freeTcpPort();
    assert.ok(port >= range.low && port <= range.high, `${port} is outside ${range.low}-${range.high}`);
  }
  // And a bind of port 0 lands in the ephemeral range, which is why picks stay out of it.
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const zero = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  assert.ok(zero >= ephemeral.low && zero <= ephemeral.high, `port 0 gave ${zero}, outside ${ephemeral.low}-${ephemeral.high}`);
});

/** A number in the pick range that no process has claimed. */
function unclaimedNumber(): number {
  const range = pickRange();
  for (;;) {
    const port = range.low + Math.floor(Math.random() * (range.high - range.low + 1));
    if (!existsSync(join(CLAIMS_DIR, String(port)))) return port;
  }
}

test('a number another live test process claimed is not handed out; once that process is gone, its claim is taken over', async () => {
  const other = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    const port = unclaimedNumber();
    writeFileSync(join(CLAIMS_DIR, String(port)), String(other.pid));
    assert.equal(claimNumber(port), false, 'a live process\'s claim was taken');
    other.kill('SIGKILL');
    await once(other, 'exit');
    assert.equal(claimNumber(port), true, 'a dead process\'s claim was not taken over');
    assert.equal(readFileSync(join(CLAIMS_DIR, String(port)), 'utf8'), String(process.pid));
    assert.equal(claimNumber(port), false, 'a number was claimed twice by one process');
  } finally {
    other.kill('SIGKILL');
  }
});

test('a process\'s claims are freed when it exits', () => {
  const helper = require.resolve('./helpers/free-ports');
  const out = execFileSync(process.execPath, ['-e', `require(${JSON.stringify(helper)}).freeTcpPort().then((p) => console.log(p))`], { encoding: 'utf8' });
  const port = Number(out.trim());
  assert.ok(Number.isInteger(port) && port > 0, `the child printed ${JSON.stringify(out)}`);
  assert.equal(existsSync(join(CLAIMS_DIR, String(port))), false, 'the exited process\'s claim file is still there');
});

test('a number that something holds is not free', async () => {
  const port = await freeTcpUdpPort();
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  try {
    assert.equal(await isFree(port, ['tcp'], '127.0.0.1'), false, 'a listened-on port was found free for TCP');
    assert.equal(await isFree(port, ['tcp', 'udp'], '127.0.0.1'), false, 'a listened-on port was found free for TCP+UDP');
    assert.equal(await isFree(port, ['udp'], '127.0.0.1'), true, 'its UDP twin, unbound, was not found free');
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});
