/**
 * Attacks on the admission path (issue 10), each reproduced against the
 * real beacon: refused upgrades holding slots, silent TCP connections,
 * upgrades on the ops routes, and the per-IP cap over IPv6 prefixes.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http, { type IncomingMessage } from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import WebSocket from 'ws';
import { COMPAT_SUBPROTOCOL } from '../lib/protocol';
import { makeIdentity } from './helpers/identity';
import { perIpKey } from '../lib/net/client-address';
import { beaconFor, closed, connectPeer, eventually, openCompat, withTimeout } from './helpers/harness';
import { promValue } from './helpers/wire';

const alice = makeIdentity(7777);

/** A raw TCP connection from `localAddress`; it keeps its side open after the beacon's FIN, as an attacker would. */
async function rawConnection(port: number, localAddress = '127.0.0.1'): Promise<RawConnection> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress, allowHalfOpen: true });
  await withTimeout(once(socket, 'connect'), 3_000, 'the TCP connection');
  return new RawConnection(socket);
}

class RawConnection {
  received = '';
  /** Set once the beacon ended or reset the connection. */
  endedByBeacon = false;
  constructor(readonly socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => { this.received += text; });
    socket.on('end', () => { this.endedByBeacon = true; });
    socket.on('close', () => { this.endedByBeacon = true; });
    socket.on('error', () => { this.endedByBeacon = true; });
  }
}

function upgradeRequest(path: string, { key = true, upgrade = 'websocket', version = '13' } = {}): string {
  return [
    `GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: Upgrade', `Upgrade: ${upgrade}`, `Sec-WebSocket-Version: ${version}`,
    ...(key ? ['Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='] : []), '', '',
  ].join('\r\n');
}

/** GET `path` from `localAddress`; resolves with the status. */
async function httpStatus(port: number, path: string, localAddress: string): Promise<number> {
  const req = http.get({ host: '127.0.0.1', port, path, localAddress, agent: false });
  const [res] = (await withTimeout(once(req, 'response'), 3_000, `GET ${path}`)) as [IncomingMessage];
  res.resume();
  return res.statusCode ?? 0;
}

/** The status of an upgrade that was not accepted; rejects if it was. */
async function refusedUpgrade(url: string, headers: Record<string, string> = {}): Promise<number> {
  const ws = new WebSocket(url, [COMPAT_SUBPROTOCOL], { headers });
  ws.on('error', () => {});
  const opened = once(ws, 'open').then(() => { ws.terminate(); throw new Error(`${url} was upgraded`); });
  const refused = once(ws, 'unexpected-response').then(([, res]) => { (res as IncomingMessage).resume(); return (res as IncomingMessage).statusCode ?? 0; });
  return withTimeout(Promise.race([opened, refused]), 3_000, `the answer to an upgrade at ${url}`);
}

test('an upgrade ws refuses (no Sec-WebSocket-Key) gives its slots back at once and is closed, even if the client holds its side open', async (t) => {
  const attackers: RawConnection[] = [];
  t.after(() => { for (const a of attackers) a.socket.destroy(); }); // before the beacon's close, which they could hold up
  const tb = await beaconFor(t, [alice], { maxHandshakes: 2 });
  const port = tb.beacon.httpAddress.port;
  attackers.push(...await Promise.all([rawConnection(port), rawConnection(port)]));
  for (const a of attackers) a.socket.write(upgradeRequest('/v1/compat', { key: false }));
  await eventually(() => attackers.every((a) => a.received.startsWith('HTTP/1.1 400')), 3_000, 'both 400 answers');

  // The attackers still hold their side open; a real daemon gets in anyway.
  assert.equal(tb.beacon.metrics().handshakes, 0);
  (await connectPeer(tb.url, alice)).close();
  await eventually(() => attackers.every((a) => a.endedByBeacon), 3_000, 'the beacon to close the refused sockets');
  assert.equal(tb.beacon.metrics().stats.refused.invalid_upgrade, 2);
});

test('an upgrade ws refuses leaves nothing behind: its socket is closed, the gauges and its per-IP slot are back, and shutdown does not wait for it', async (t) => {
  // The Peer's own socket listeners leave right before ws takes the socket
  // (peer.ts, beforeAccept) and must come back when ws refuses: without
  // them the refused connection's close is heard by nobody, and it stays
  // in the listener's connections (memory a stranger could grow at will,
  // and a shutdown that waits out its whole grace). No test for a close
  // between their leaving and ws's listeners: ws adds those within the same
  // synchronous handleUpgrade, and a socket's events come on later ticks.
  const attackers: RawConnection[] = [];
  t.after(() => { for (const a of attackers) a.socket.destroy(); });
  const tb = await beaconFor(t, [alice], { maxPerIp: 1, maxHandshakes: 1, shutdownGraceMs: 60_000 });
  const port = tb.beacon.httpAddress.port;
  const refusals = [
    { what: 'no Sec-WebSocket-Key', request: upgradeRequest('/v1/compat', { key: false }) },
    { what: 'Sec-WebSocket-Version 12', request: upgradeRequest('/v1/compat', { version: '12' }) },
    { what: 'Upgrade: h2c', request: upgradeRequest('/v1/compat', { upgrade: 'h2c' }) },
  ];
  for (const { what, request } of refusals) {
    const a = await rawConnection(port);
    attackers.push(a);
    a.socket.write(request);
    // One at a time: with --max-per-ip 1 and --max-handshakes 1, each gets the 400 only if the one before gave its slots back.
    await eventually(() => a.received.startsWith('HTTP/1.1 400') && a.endedByBeacon, 3_000, `the 400 and the close for ${what}`);
    const metrics = await (await fetch(`${tb.httpBase}/metrics`)).text();
    assert.equal(promValue(metrics, 'beacon_wss_handshakes'), 0, what);
    assert.equal(promValue(metrics, 'beacon_wss_peers'), 0, what);
  }
  assert.equal(tb.beacon.metrics().stats.refused.invalid_upgrade, 3);
  // The per-IP socket slot is free: a daemon from the same address gets in.
  const daemon = await connectPeer(tb.url, alice);
  daemon.close();
  await closed(daemon);
  await eventually(() => tb.beacon.peerCount() === 0, 3_000, 'the daemon to be gone');
  // Shutdown waits (up to its 60 s grace) for every connection it still knows; the refused ones must not be among them.
  await withTimeout(tb.close(), 10_000, 'the shutdown, which must not wait for the refused connections');
});

test('a connection that sends no request headers within the auth timeout is closed and counted', async (t) => {
  const held: RawConnection[] = [];
  t.after(() => { for (const c of held) c.socket.destroy(); });
  const tb = await beaconFor(t, [alice], { authTimeoutMs: 300 });
  const port = tb.beacon.httpAddress.port;
  const silent = await rawConnection(port);
  const dripping = await rawConnection(port);
  held.push(silent, dripping);
  dripping.socket.write('GET /health HT'); // a slow loris: a first byte, never the end of the headers
  // A prompt request on a third connection is answered, and not counted.
  assert.equal(await httpStatus(port, '/health', '127.0.0.1'), 200);
  await eventually(() => silent.endedByBeacon && dripping.endedByBeacon, 3_000, 'the beacon to close both connections');
  assert.equal(tb.beacon.metrics().stats.connectionsClosed.headers_timeout, 2);
  assert.equal(silent.received, '');
});

test('raw connections from one address are capped too: silent ones cannot crowd out daemons and /health', async (t) => {
  // trustProxy none: 127.0.0.1 is a client here, not the proxy. The cap on
  // raw connections is --max-per-ip plus a little room for refusals.
  const held: RawConnection[] = [];
  t.after(() => { for (const c of held) c.socket.destroy(); });
  const tb = await beaconFor(t, [alice], { maxPerIp: 2, maxPeers: 4, maxHandshakes: 4, trustProxy: [], authTimeoutMs: 5_000 });
  const port = tb.beacon.httpAddress.port;
  for (let i = 0; i < 30; i++) held.push(await rawConnection(port, '127.0.0.1'));
  const stillOpen = () => held.filter((c) => !c.endedByBeacon).length;
  await eventually(() => stillOpen() <= 2 + 8, 3_000, 'the beacon to close the connections past the cap');
  assert.equal(tb.beacon.metrics().stats.connectionsClosed.max_per_ip, 30 - (2 + 8));
  // Other addresses are served: /health, and a daemon.
  assert.equal(await httpStatus(port, '/health', '127.0.0.2'), 200);
  const url = tb.url;
  const ws = await connectPeer(url, alice, { localAddress: '127.0.0.3' });
  assert.equal(tb.beacon.isConnected(7777), true);
  ws.close();
});

test('upgrades to /health, /metrics and unknown paths are refused with 404 before any WebSocket work, and counted', async (t) => {
  const tb = await beaconFor(t, [alice], { maxPerIp: 2 });
  for (const path of ['/health', '/metrics', '/nowhere', '/health', '/metrics']) {
    assert.equal(await refusedUpgrade(`${tb.httpBase.replace('http', 'ws')}${path}`), 404, path);
  }
  assert.equal(tb.beacon.metrics().stats.refused.not_compat_path, 5);
  assert.equal(tb.beacon.metrics().handshakes, 0);
  // They held no per-IP slot: /v1/compat still admits.
  (await connectPeer(tb.url, alice)).close();
});

test('the per-IP cap counts IPv6 clients by /64 (--per-ip-ipv6-prefix), so one subscriber cannot pose as many', async (t) => {
  const tb = await beaconFor(t, [alice], { maxPerIp: 3 });
  const open: WebSocket[] = [];
  t.after(() => { for (const ws of open) ws.terminate(); });
  const from = async (ip: string) => {
    const { ws } = await openCompat(tb.url, { headers: { 'x-forwarded-for': ip } });
    open.push(ws);
  };
  for (let i = 1; i <= 3; i++) await from(`2001:db8:1:2::${i.toString(16)}`);
  assert.equal(await refusedUpgrade(tb.url, { 'x-forwarded-for': '2001:db8:1:2:ffff::9' }), 429);
  assert.equal(tb.beacon.metrics().stats.refused.max_per_ip, 1);
  await from('2001:db8:1:3::1'); // the next /64 is someone else

  // With the prefix at 128, every address counts alone again.
  const wide = await beaconFor(t, [alice], { maxPerIp: 1, ipv6PrefixBits: 128 });
  for (let i = 1; i <= 3; i++) open.push((await openCompat(wide.url, { headers: { 'x-forwarded-for': `2001:db8::${i}` } })).ws);
  assert.equal(wide.beacon.metrics().stats.refused.max_per_ip, 0);
});

test('perIpKey: IPv4 as is, IPv6 by prefix', () => {
  assert.equal(perIpKey('198.51.100.7', 64), '198.51.100.7');
  assert.equal(perIpKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd', 64), '2001:db8:1:2::/64');
  assert.equal(perIpKey('2001:db8:1:2:aaaa::1', 48), '2001:db8:1::/48');
  assert.equal(perIpKey('2001:db8::1', 128), '2001:db8::1');
});

test('one IPv6 /56 cannot take every handshake slot: a /56 holds an eighth of them, a /48 a quarter; the rest get 429, counted', async (t) => {
  // 64 handshake slots: 8 for one /56, 16 for one /48; --max-per-ip per /64 is no bound here.
  const tb = await beaconFor(t, [alice], { maxHandshakes: 64, maxPerIp: 64 });
  const open: WebSocket[] = [];
  t.after(() => { for (const ws of open) ws.terminate(); });
  /** Silent upgrades through the trusted proxy from `addresses`, until one is refused with 429; how many were admitted. */
  const admitted = async (addresses: (i: number) => string): Promise<number> => {
    for (let i = 0; i < 64; i++) {
      const ws = new WebSocket(tb.url, [COMPAT_SUBPROTOCOL], { headers: { 'x-forwarded-for': addresses(i) } });
      ws.on('error', () => {});
      const answer = await withTimeout(new Promise<number>((resolve) => {
        ws.once('open', () => resolve(101));
        ws.once('unexpected-response', (_req, res: IncomingMessage) => { res.resume(); resolve(res.statusCode ?? 0); });
      }), 3_000, 'the answer to an upgrade');
      if (answer === 429) return i;
      assert.equal(answer, 101);
      open.push(ws);
    }
    throw new Error('64 upgrades admitted');
  };
  // Sixteen /64s of one /56, four sockets each: eight admitted in all.
  assert.equal(await admitted((i) => `2001:db8:0:${(0x100 + (i % 16)).toString(16)}::${Math.floor(i / 16) + 1}`), 8);
  assert.equal(tb.beacon.metrics().stats.refused.max_handshakes_per_prefix, 1);
  // Other /56s of the same /48 bring it to its quarter.
  assert.equal(await admitted((i) => `2001:db8:0:${(0x200 + 0x100 * (i % 8)).toString(16)}::1`), 8);
  // A daemon elsewhere still gets in; another /48 has its own quarter.
  (await connectPeer(tb.url, alice)).close();
  assert.equal(await admitted((i) => `2001:db8:7:${i.toString(16)}00::1`), 16);
  assert.equal(tb.beacon.metrics().stats.refused.max_handshakes_per_prefix, 3);
  // The shares come back as the handshakes end.
  for (const ws of open.splice(0)) ws.terminate();
  await eventually(() => tb.beacon.metrics().handshakes === 0, 3_000, 'the handshakes to end');
  open.push((await openCompat(tb.url, { headers: { 'x-forwarded-for': '2001:db8:0:101::9' } })).ws);
});
