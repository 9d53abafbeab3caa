/**
 * What the real beacon does not (yet) do, against a scripted stand-in: the
 * `restarting` notice, unknown control messages, pings and a peer that
 * stops answering them, a server without the pilot.v1 subprotocol.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { CompatClient, PacketType, encodeRelay, type CompatClientOptions, type Packet } from '../lib/client';
import { encodeRelayDeliver, restartingMessage } from '../lib/protocol';
import { nextEvent, record, until } from './helpers/client-events';
import { FakeBeacon } from './helpers/client-fake-beacon';
import { makeIdentity } from './helpers/identity';

const alice = makeIdentity(7777);
const keys = new Map([[alice.nodeId, alice.publicKey]]);
const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function fake(options: { autoPong?: boolean; offerSubprotocol?: boolean } = {}): Promise<FakeBeacon> {
  const f = await FakeBeacon.start({ keys, ...options });
  cleanups.push(() => f.close());
  return f;
}

function client(url: string, extra: Partial<CompatClientOptions> = {}): CompatClient {
  const c = new CompatClient({ url, nodeId: alice.nodeId, identity: alice, ...extra });
  cleanups.push(() => c.close());
  return c;
}

test('a restarting notice sets the next wait (plus bounded jitter) instead of the backoff; unknown text is ignored', async () => {
  const beacon = await fake();
  const c = client(beacon.url, { initialDelayMs: 10, maxDelayMs: 80, restartJitterMs: 200 });
  const packets: Packet[] = [];
  c.on('packet', (p) => packets.push(p));
  const firstPeer = beacon.nextPeer();
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  const peer = await firstPeer;

  // Forward compatibility: control messages the client does not know, and non-JSON text, change nothing.
  peer.ws.send(JSON.stringify({ type: 'future_feature', value: 1 }));
  peer.ws.send('not json at all');
  const delivered = nextEvent(c, 'packet');
  peer.ws.send(encodeRelayDeliver(8888, Buffer.from('after the unknown ones')), { binary: true });
  const p = await delivered;
  assert.deepEqual(p.type === PacketType.RelayDeliver && [p.sender, p.payload.toString()], [8888, 'after the unknown ones']);
  assert.equal(c.state, 'connected');
  assert.equal(c.ignoredMessages, 2);

  const noticed = nextEvent(c, 'restarting');
  const reconnecting = nextEvent(c, 'reconnecting');
  const secondPeer = beacon.nextPeer(5_000);
  peer.ws.send(restartingMessage({ reconnect_in_ms: 300, try_for_ms: 2_000 }));
  assert.deepEqual(await noticed, { type: 'restarting', reconnect_in_ms: 300, try_for_ms: 2_000 });
  const closedAt = Date.now();
  peer.ws.close(1001, 'shutting down');
  const r = await reconnecting;
  assert.equal(r.cause, 'restarting');
  assert.ok(r.delayMs >= 300 && r.delayMs <= 500, `waits reconnect_in_ms plus at most restartJitterMs, got ${r.delayMs}`);
  await secondPeer;
  assert.ok(Date.now() - closedAt >= 290, `came back after ${Date.now() - closedAt} ms, before the beacon asked`);
  await until(() => c.state === 'connected', 3_000, 'the client to be connected again');
  assert.equal(packets.length, 1);
});

test('without a notice the same close is retried on the backoff', async () => {
  const beacon = await fake();
  const c = client(beacon.url, { initialDelayMs: 10, maxDelayMs: 80 });
  const firstPeer = beacon.nextPeer();
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  const reconnecting = nextEvent(c, 'reconnecting');
  (await firstPeer).ws.close(1001, 'shutting down');
  const r = await reconnecting;
  assert.equal(r.cause, 'lost');
  assert.ok(r.delayMs >= 5 && r.delayMs <= 10, `got ${r.delayMs}`);
});

test('the jitter on a notice never exceeds half of try_for_ms', async () => {
  const beacon = await fake();
  const c = client(beacon.url, { restartJitterMs: 10_000, random: () => 0.999999 });
  const firstPeer = beacon.nextPeer();
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  const peer = await firstPeer;
  const reconnecting = nextEvent(c, 'reconnecting');
  peer.ws.send(restartingMessage({ reconnect_in_ms: 100, try_for_ms: 400 }));
  peer.ws.close(1001, 'shutting down');
  const r = await reconnecting;
  assert.equal(r.cause, 'restarting');
  assert.equal(r.delayMs, 300);
});

test('a rebalance notice with several URLs: back to the same URL after reconnect_in_ms and jitter; a restart notice moves to the next', async () => {
  const first = await fake();
  const second = await fake();
  const c = new CompatClient({ url: [first.url, second.url], nodeId: alice.nodeId, identity: alice, initialDelayMs: 10, maxDelayMs: 80, restartJitterMs: 100 });
  cleanups.push(() => c.close());
  const firstPeer = first.nextPeer();
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  const peer = await firstPeer;

  const rebalanced = nextEvent(c, 'reconnecting');
  const back = first.nextPeer(5_000);
  peer.ws.send(restartingMessage({ reconnect_in_ms: 150, try_for_ms: 1_000, reason: 'rebalance' }));
  peer.ws.close(1001, 'rebalancing');
  const r = await rebalanced;
  assert.deepEqual([r.cause, r.url], ['restarting', first.url], 'the same URL: the beacon there goes on');
  assert.ok(r.delayMs >= 150 && r.delayMs <= 250, `waits reconnect_in_ms plus at most the jitter, got ${r.delayMs}`);
  const again = await back;
  assert.equal(second.connections, 0);

  const restarted = nextEvent(c, 'reconnecting');
  const moved = second.nextPeer(5_000);
  again.ws.send(restartingMessage({ reconnect_in_ms: 150, try_for_ms: 1_000 }));
  again.ws.close(1001, 'shutting down');
  assert.equal((await restarted).url, second.url, 'a restart: the next URL');
  await moved;
});

test('the client pings on its interval, and drops a connection that stops answering', async () => {
  const answering = await fake();
  const c = client(answering.url, { pingIntervalMs: 30 });
  const peerP = answering.nextPeer();
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  const peer = await peerP;
  await until(() => peer.pings >= 3, 2_000, 'three pings');
  assert.equal(c.state, 'connected', 'a peer that answers pings stays connected');
  await c.close();

  const silent = await fake({ autoPong: false });
  const d = client(silent.url, { pingIntervalMs: 30, initialDelayMs: 10, maxDelayMs: 20 });
  const silentPeer = silent.nextPeer();
  await d.connect({ failFast: true, timeoutMs: 3_000 });
  await silentPeer;
  const lost = await nextEvent(d, 'disconnected', 2_000);
  assert.match(lost.reason, /no answer to ping within 30 ms/);
  await nextEvent(d, 'connected', 3_000);
  assert.ok(silent.connections >= 2, 'and it reconnects');
});

test('binary messages before auth_ok are ignored, and nothing is sent before it', async () => {
  const beacon = await fake();
  beacon.on('connection', (ws) => ws.send(encodeRelayDeliver(1, Buffer.from('too early')), { binary: true }));
  const c = client(beacon.url);
  const packets = record(c, 'packet');
  assert.throws(() => c.send(encodeRelay(7777, 1, Buffer.from('x'))), { code: 'ENOTCONNECTED' });
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  assert.equal(packets.length, 0);
  assert.ok(c.ignoredMessages >= 1);
});

test('a server without the pilot.v1 subprotocol is not taken for a beacon', async () => {
  const beacon = await fake({ offerSubprotocol: false });
  const err = await client(beacon.url).connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.equal((err as { code?: string }).code, 'EPROTOCOL');
  assert.match((err as Error).message, /not a beacon/);
});

test('send never queues without bound: past maxBufferedBytes it throws EBUFFERFULL', async () => {
  const beacon = await fake();
  const c = client(beacon.url, { maxBufferedBytes: 256 * 1024 });
  const peerP = beacon.nextPeer();
  await c.connect({ failFast: true, timeoutMs: 3_000 });
  (await peerP).ws.pause(); // the beacon stops reading; the kernel buffers fill, then ours
  const packet = encodeRelay(7777, 8888, Buffer.alloc(60 * 1024));
  let sent = 0;
  let refused: unknown;
  for (; sent < 5_000; sent++) {
    try {
      c.send(packet);
    } catch (err) {
      refused = err;
      break;
    }
    if (sent % 50 === 49) await new Promise((resolve) => setImmediate(resolve)); // let the socket flush to the kernel
  }
  assert.equal((refused as { code?: string } | undefined)?.code, 'EBUFFERFULL', `sent ${sent} packets without a refusal`);
  assert.equal(c.state, 'connected', 'a full buffer refuses a packet, it does not drop the connection');
});
