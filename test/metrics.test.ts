/** /metrics in Prometheus text format: every required series exists and moves. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { encodeDiscover, encodeRelay } from '../lib/protocol';
import { makeIdentity } from './helpers/identity';
import { closed, connectPeer, eventually, nextMessage, openCompat, startTestBeacon, UdpClient, type TestBeacon } from './helpers/harness';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
let tb: TestBeacon;

// The one handshake that times out waits it out beside the rest of the test, so the auth timeout
// can be long enough that a loaded machine does not fail the others (1 s once did).
before(async () => { tb = await startTestBeacon([alice, bob], { idleTimeoutMs: 300, authTimeoutMs: 3_000 }); });
after(async () => { await tb.close(); });

async function scrape(): Promise<Map<string, number>> {
  const res = await fetch(`${tb.httpBase}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const series = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    series.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return series;
}

function value(series: Map<string, number>, name: string): number {
  const v = series.get(name);
  assert.ok(v !== undefined, `series ${name} is missing`);
  return v;
}

test('GET /health answers 200 with the peer count', async () => {
  const res = await fetch(`${tb.httpBase}/health`);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: 'ok', peers: 0 });
});

test('every required metric is exported and moves with what happens', async () => {
  const before = await scrape();
  const names = [
    'beacon_wss_upgrades_total{result="ok"}', 'beacon_wss_upgrades_total{result="fail"}',
    'beacon_wss_auth_total{result="ok",reason=""}', 'beacon_wss_auth_total{result="fail",reason="timeout"}',
    'beacon_wss_frames_total{direction="in"}', 'beacon_wss_frames_total{direction="out"}',
    'beacon_wss_idle_disconnects_total', 'beacon_wss_disconnects_total', 'beacon_wss_handshake_turns_deferred_total', 'beacon_wss_peers',
    'beacon_udp_packets_total{type="discover"}', 'beacon_udp_packets_total{type="relay"}',
    'beacon_relay_total{route="wss"}', 'beacon_relay_total{route="udp"}',
    'beacon_relay_total{route="beacon"}', 'beacon_relay_total{route="unknown"}',
    'beacon_dropped_total{reason="unknown_dest"}', 'beacon_dropped_total{reason="spoofed_sender"}',
  ];
  for (const name of names) value(before, name);
  assert.ok([...before.keys()].some((k) => k.startsWith('beacon_build_info{version=')), 'beacon_build_info is missing');
  assert.ok(before.has('beacon_nodejs_eventloop_lag_seconds'), 'process metrics are missing');

  // One handshake that times out: it never answers the challenge.
  const silent = await openCompat(tb.url);
  const silentClosed = closed(silent.ws);
  // Two peers; a relay each way; one to nowhere; one spoofed; a Discover over UDP.
  const a = await connectPeer(tb.url, alice);
  const b = await connectPeer(tb.url, bob, { autoPong: false });
  // Bob answers pings until the relay reached him, then no more, so he is idled out after it
  // (not before it, when the machine is slow for longer than --idle-timeout).
  const pong = () => b.pong();
  b.on('ping', pong);
  const toBob = nextMessage(b);
  a.send(encodeRelay(7777, 8888, Buffer.from('x')));
  await toBob;
  b.off('ping', pong);
  a.send(encodeRelay(7777, 4242, Buffer.from('nowhere')));
  a.send(encodeRelay(8888, 7777, Buffer.from('spoofed')));
  const udp = await UdpClient.open();
  udp.send(encodeDiscover(5555), tb.udpPort);
  await udp.next();
  udp.close();
  assert.equal((await silentClosed).code, 1008);
  await eventually(() => tb.beacon.metrics().stats.idleDisconnects === 1, 3_000, 'Bob to be idled out');
  await eventually(() => tb.beacon.metrics().peers === 1, 3_000, 'the peer gauge');
  await eventually(() => tb.beacon.metrics().stats.peerDisconnects === 1, 3_000, 'Bob\'s connection to end');

  const after = await scrape();
  const moved = (name: string) => value(after, name) - value(before, name);
  assert.equal(moved('beacon_wss_upgrades_total{result="ok"}'), 3);
  assert.equal(moved('beacon_wss_auth_total{result="ok",reason=""}'), 2);
  assert.equal(moved('beacon_wss_auth_total{result="fail",reason="timeout"}'), 1);
  assert.equal(moved('beacon_wss_frames_total{direction="in"}'), 3);
  assert.equal(moved('beacon_wss_frames_total{direction="out"}'), 1);
  assert.equal(moved('beacon_wss_idle_disconnects_total'), 1);
  assert.equal(moved('beacon_wss_disconnects_total'), 1);
  assert.equal(value(after, 'beacon_wss_peers'), 1);
  assert.equal(moved('beacon_udp_packets_total{type="discover"}'), 1);
  assert.equal(moved('beacon_relay_total{route="wss"}'), 1);
  assert.equal(moved('beacon_relay_total{route="unknown"}'), 1);
  assert.equal(moved('beacon_dropped_total{reason="unknown_dest"}'), 1);
  assert.equal(moved('beacon_dropped_total{reason="spoofed_sender"}'), 1);
  assert.equal(value(after, 'beacon_udp_endpoints'), 1);
  a.close();
});
