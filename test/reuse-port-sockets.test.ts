/**
 * The sockets --reuse-port opens, in one process with real sockets on
 * loopback: the udp-batch addon's listening TCP socket handed to Node
 * (`listenTcp` + `server.listen({ fd })`), its UDP socket with SO_REUSEPORT,
 * the bounds the addon checks, and the errors it reports as errno codes.
 * Processes sharing one address are tested in reuse-port.test.ts.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { readdirSync } from 'node:fs';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import { BeaconStats } from '../lib/metrics';
import { BatchTransport } from '../lib/udp/batch-transport';
import { addressBytes, loadUdpBatchAddon, type UdpBatchAddon } from '../lib/native/udp-batch-addon';
import { eventually } from './helpers/harness';

/** Connections (and UDP flows) per check: with two sockets sharing a port, all on one has odds 2^-(N-1). */
const FLOWS = 64;
const BACKLOG = 511;

function addon(): UdpBatchAddon {
  const { addon: loaded, error } = loadUdpBatchAddon();
  if (!loaded) throw new Error(`the udp-batch addon did not load (${error}): run npm rebuild @beacon/udp-batch`);
  return loaded;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

const LOOPBACK4 = addressBytes('127.0.0.1', 4)!;
const LOOPBACK6 = addressBytes('::1', 6)!;

/** A Node server on the addon's descriptor; counts the connections it accepts. */
async function serveOn(t: TestContext, fd: number): Promise<{ server: net.Server; port: number; accepted: () => number }> {
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    socket.end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, resolve);
  });
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { server, port: (server.address() as net.AddressInfo).port, accepted: () => accepted };
}

async function connectAndWaitClose(port: number, host: string): Promise<void> {
  const socket = net.connect(port, host);
  socket.resume();
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('close', () => resolve());
  });
}

test('listenTcp: Node serves on the descriptor; two sockets with reusePort share one port and the kernel spreads connections over both', async (t) => {
  const a = addon();
  const first = await serveOn(t, a.listenTcp(4, LOOPBACK4, 0, BACKLOG, true));
  const second = await serveOn(t, a.listenTcp(4, LOOPBACK4, first.port, BACKLOG, true));
  assert.equal(second.port, first.port);
  for (let i = 0; i < FLOWS; i++) await connectAndWaitClose(first.port, '127.0.0.1');
  assert.equal(first.accepted() + second.accepted(), FLOWS);
  assert.ok(first.accepted() > 0 && second.accepted() > 0, `both accepted some: ${first.accepted()} / ${second.accepted()}`);
});

test('listenTcp: a socket without reusePort on a port held with it, and one with it on a port held without, get EADDRINUSE as their code', async (t) => {
  const a = addon();
  const shared = await serveOn(t, a.listenTcp(4, LOOPBACK4, 0, BACKLOG, true));
  assert.throws(() => a.listenTcp(4, LOOPBACK4, shared.port, BACKLOG, false), { code: 'EADDRINUSE', message: /^bind EADDRINUSE/ });
  const plain = net.createServer();
  await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => plain.close(() => resolve())));
  const plainPort = (plain.address() as net.AddressInfo).port;
  assert.throws(() => a.listenTcp(4, LOOPBACK4, plainPort, BACKLOG, true), { code: 'EADDRINUSE' });
});

test('listenTcp on IPv6: a socket on ::1 that Node serves on', async (t) => {
  const a = addon();
  const served = await serveOn(t, a.listenTcp(6, LOOPBACK6, 0, BACKLOG, true));
  await connectAndWaitClose(served.port, '::1');
  assert.equal(served.accepted(), 1);
  assert.equal((served.server.address() as net.AddressInfo).address, '::1');
});

test('listenTcp checks what it is handed, and reports socket errors by errno code', () => {
  const a = addon();
  assert.throws(() => a.listenTcp(5 as 4, LOOPBACK4, 0, BACKLOG, true), RangeError);
  assert.throws(() => a.listenTcp(4, LOOPBACK4, 65_536, BACKLOG, true), RangeError);
  assert.throws(() => a.listenTcp(4, LOOPBACK4, 0, 0, true), RangeError);
  assert.throws(() => a.listenTcp(4, LOOPBACK4, 0, 65_536, true), RangeError);
  assert.throws(() => a.listenTcp(4, Buffer.from([127, 0, 0, 1]), 0, BACKLOG, true), RangeError);
  assert.throws(() => a.listenTcp(4, LOOPBACK4, 0, BACKLOG, 1 as unknown as boolean), TypeError);
  assert.throws(() => (a.listenTcp as (...args: unknown[]) => number)(4, LOOPBACK4, 0), TypeError);
  // TEST-NET-1: never an address of this host.
  assert.throws(() => a.listenTcp(4, addressBytes('192.0.2.1', 4)!, 0, BACKLOG, true), { code: 'EADDRNOTAVAIL' });
});

test('300 listenTcp sockets served and closed, and 300 refused, leave no file descriptor behind', async () => {
  const a = addon();
  const before = openFds();
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  const taken = (holder.address() as net.AddressInfo).port;
  for (let i = 0; i < 300; i++) {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen({ fd: a.listenTcp(4, LOOPBACK4, 0, BACKLOG, i % 2 === 0) }, resolve));
    await new Promise<void>((resolve) => server.close(() => resolve()));
    assert.throws(() => a.listenTcp(4, LOOPBACK4, taken, BACKLOG, true), { code: 'EADDRINUSE' });
  }
  await new Promise<void>((resolve) => holder.close(() => resolve()));
  assert.equal(openFds(), before);
});

test('UDP with reusePort: two batched sockets share one port and the kernel spreads flows over both; without it, EADDRINUSE', async (t) => {
  const got = [0, 0];
  const transports = [0, 1].map((i) => new BatchTransport(addon(), 'udp4', () => { got[i]!++; }, new BeaconStats()));
  t.after(() => Promise.all(transports.map((tr) => tr.close())));
  const { port } = await transports[0]!.bind('127.0.0.1', 0, true);
  assert.equal((await transports[1]!.bind('127.0.0.1', port, true)).port, port);
  const alone = new BatchTransport(addon(), 'udp4', () => {}, new BeaconStats());
  await assert.rejects(alone.bind('127.0.0.1', port, false), { code: 'EADDRINUSE' });

  // One datagram from each of FLOWS source ports: each source port is a flow of its own.
  const clients: dgram.Socket[] = [];
  t.after(() => { for (const c of clients) c.close(); });
  for (let i = 0; i < FLOWS; i++) {
    const client = dgram.createSocket('udp4');
    clients.push(client);
    await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', resolve));
    client.send(Buffer.from([i]), port, '127.0.0.1');
  }
  await eventually(() => got[0]! + got[1]! === FLOWS, 5_000, `all ${FLOWS} datagrams (got ${got[0]} + ${got[1]})`);
  assert.ok(got[0]! > 0 && got[1]! > 0, `both received some: ${got[0]} / ${got[1]}`);
});
