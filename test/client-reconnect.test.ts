/**
 * CompatClient surviving the network: beacon restarts, replacement by a
 * newer connection, backoff growth and cap, fail-fast sends while
 * reconnecting, and a prompt close() in every state.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, test } from 'node:test';
import { CompatClient, type CompatClientOptions } from '../lib/client';
import { startBeacon } from '../lib/beacon';
import type { BeaconConfig } from '../lib/config';
import { nextDelivery, nextEvent, record, until } from './helpers/client-events';
import { startTestBeacon, testConfig } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

function client(id: TestIdentity, url: string, extra: Partial<CompatClientOptions> = {}): CompatClient {
  const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ...extra });
  cleanups.push(() => c.close());
  return c;
}

/** A port nothing listens on (bound, then released). */
async function deadPort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as net.AddressInfo;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

/** Timers that keep the event loop alive. */
function activeTimers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

test('after the beacon restarts on the same port, the client comes back on its own', async () => {
  // The beacon's restart notice (if this beacon sends one) asks for a short wait in tests.
  const quickRestart: Record<string, unknown> = { restartDelayMs: 150, restartWindowMs: 400 };
  const first = await startTestBeacon([alice, bob], quickRestart as Partial<BeaconConfig>);
  const { port } = first.beacon.httpAddress;
  const a = client(alice, first.url, { initialDelayMs: 10, maxDelayMs: 80 });
  await a.connect({ failFast: true, timeoutMs: 3_000 });
  const reconnects = record(a, 'reconnecting');
  const notices = record(a, 'restarting');
  const disconnected = nextEvent(a, 'disconnected');
  const back = nextEvent(a, 'connected', 8_000, (e) => e.attempt > 1);

  await first.close();
  assert.equal((await disconnected).code, 1001, 'the beacon says it is going away');
  assert.notEqual(a.state, 'connected');

  // Same port, same keys; nothing is done to the client.
  const second = await startBeacon(testConfig({ ...quickRestart, keysFile: first.keysPath, bind: { host: '127.0.0.1', port } }));
  cleanups.push(() => second.close());
  await back;
  assert.equal(a.state, 'connected');
  assert.ok(second.isConnected(7777));
  const firstRetry = reconnects[0]?.value;
  assert.equal(firstRetry?.attempt, 1);
  const notice = notices[0]?.value;
  if (notice) {
    // A beacon that announces its restart is obeyed: its wait, spread over half its window.
    assert.equal(firstRetry?.cause, 'restarting');
    assert.ok(firstRetry.delayMs >= notice.reconnect_in_ms && firstRetry.delayMs <= notice.reconnect_in_ms + notice.try_for_ms / 2,
      `waited ${firstRetry.delayMs} ms for ${JSON.stringify(notice)}`);
  } else {
    assert.equal(firstRetry?.cause, 'lost');
    assert.ok(firstRetry.delayMs <= 10);
  }

  const b = client(bob, first.url);
  await b.connect({ failFast: true, timeoutMs: 3_000 });
  const atBob = nextDelivery(b);
  a.relay(8888, 'still here');
  assert.equal(await atBob, '7777:still here');
  const atAlice = nextDelivery(a);
  b.relay(7777, 'welcome back');
  assert.equal(await atAlice, '8888:welcome back');
});

test('two connections of one node take turns at the cap instead of fighting in a tight loop', async () => {
  const tb = await startTestBeacon([alice]);
  cleanups.push(() => tb.close());
  const maxDelayMs = 200;
  const options = { initialDelayMs: 10, maxDelayMs };
  const one = client(alice, tb.url, options);
  const two = client(alice, tb.url, options);
  await one.connect({ failFast: true, timeoutMs: 3_000 });

  const replacedDelays: number[] = [];
  let replacements = 0;
  for (const c of [one, two]) {
    c.on('disconnected', ({ code }) => { if (code === 4001) replacements++; });
    c.on('reconnecting', (e) => { if (e.cause === 'replaced') replacedDelays.push(e.delayMs); });
  }
  const startedAt = Date.now();
  const attemptsBefore = one.connectAttempts;
  await two.connect({ timeoutMs: 3_000 }); // the newer connection replaces `one`
  await until(() => replacements >= 4, 5_000, 'four replacements');
  const elapsed = Date.now() - startedAt;
  const attempts = one.connectAttempts - attemptsBefore + two.connectAttempts;

  assert.ok(replacedDelays.length >= 4, `${replacedDelays.length} replaced waits`);
  for (const d of replacedDelays) assert.ok(d >= maxDelayMs / 2 && d <= maxDelayMs, `a replaced client waits at the cap, got ${d} ms`);
  // Between two replacements one client always sat out at least half the cap.
  assert.ok(elapsed >= 3 * (maxDelayMs / 2), `four replacements took only ${elapsed} ms: a tight loop`);
  const perSecond = (attempts * 1_000) / elapsed;
  assert.ok(perSecond <= 2 * (1_000 / (maxDelayMs / 2)) + 2, `${attempts} attempts in ${elapsed} ms`);
  assert.ok(tb.beacon.metrics().stats.replacedPeers <= replacements + 1);
});

test('backoff grows from the initial delay and is capped (reported delays, exact with a fixed random source)', async () => {
  const url = `ws://127.0.0.1:${await deadPort()}/v1/compat`;
  const c = client(alice, url, { initialDelayMs: 10, maxDelayMs: 80, random: () => 0.999999 });
  const delays = record(c, 'reconnecting');
  c.start();
  await until(() => delays.length >= 7, 5_000, 'seven reconnect delays');
  await c.close();
  assert.deepEqual(delays.slice(0, 7).map((d) => d.value.delayMs), [10, 20, 40, 80, 80, 80, 80]);
  assert.deepEqual(delays.slice(0, 7).map((d) => d.value.attempt), [1, 2, 3, 4, 5, 6, 7]);
  for (const d of delays) {
    assert.equal(d.value.cause, 'failed');
    assert.equal(d.value.error?.code, 'ECONNREFUSED');
  }
});

test('with real jitter every delay sits between half its ceiling and its ceiling, and never above the cap', async () => {
  const url = `ws://127.0.0.1:${await deadPort()}/v1/compat`;
  const c = client(alice, url, { initialDelayMs: 10, maxDelayMs: 80 });
  const delays = record(c, 'reconnecting');
  c.start();
  await until(() => delays.length >= 8, 5_000, 'eight reconnect delays');
  await c.close();
  delays.slice(0, 8).forEach(({ value }, i) => {
    const ceiling = Math.min(80, 10 * 2 ** i);
    assert.ok(value.delayMs >= ceiling / 2 && value.delayMs <= ceiling, `attempt ${i + 1}: ${value.delayMs} ms not in [${ceiling / 2}, ${ceiling}]`);
  });
  assert.ok(delays.slice(4, 8).every(({ value }) => value.delayMs >= 40), 'late delays sit at the cap');
});

test('send while reconnecting fails at once with ENOTCONNECTED', async () => {
  const tb = await startTestBeacon([alice, bob]);
  const a = client(alice, tb.url, { initialDelayMs: 5_000, maxDelayMs: 5_000 });
  await a.connect({ failFast: true, timeoutMs: 3_000 });
  const reconnecting = nextEvent(a, 'reconnecting');
  await tb.close();
  await reconnecting;
  assert.throws(() => a.relay(8888, 'anyone?'), { code: 'ENOTCONNECTED', name: 'NotConnectedError' });
  // At once: settled before the event loop turns, so no I/O or timer was waited for (a bound in
  // milliseconds failed on a loaded machine: 54 ms for a rejection that waits for nothing).
  const settledFirst = await Promise.race([
    a.discover().then(() => 'resolved', (err: unknown) => err),
    new Promise((resolve) => setImmediate(() => resolve('the loop turned first'))),
  ]);
  assert.equal((settledFirst as { code?: string }).code, 'ENOTCONNECTED', String(settledFirst));
});

test('close() during a backoff sleep returns promptly and no attempt follows', async () => {
  const url = `ws://127.0.0.1:${await deadPort()}/v1/compat`;
  const options = { initialDelayMs: 400, maxDelayMs: 400, jitter: 'none' as const };
  const c = client(alice, url, options);
  const waiting = nextEvent(c, 'reconnecting');
  c.start();
  assert.equal((await waiting).delayMs, 400);
  // A witness with the same timing, started now: its second attempt comes when c's would have.
  const witness = client(alice, url, options);
  const witnessRetry = nextEvent(witness, 'connecting', 3_000, (e) => e.attempt === 2);
  witness.start();

  const started = Date.now();
  const closed = nextEvent(c, 'closed');
  const timersBefore = activeTimers();
  const closing = c.close();
  assert.equal(activeTimers(), timersBefore - 1, 'the backoff timer is cleared, so it holds no process open');
  await closing;
  await closed;
  assert.ok(Date.now() - started < 50, `close took ${Date.now() - started} ms during a 400 ms backoff`);
  assert.equal(c.state, 'closed');
  await c.close(); // idempotent

  await witnessRetry;
  assert.equal(c.connectAttempts, 1, 'the cleared backoff never dialed again');
});

test('close() is prompt while connecting to a server that never answers, and while connected', async () => {
  const silent = net.createServer((s) => { cleanups.push(() => s.destroy()); });
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  cleanups.push(() => new Promise((resolve) => silent.close(resolve)));
  const c = client(alice, `ws://127.0.0.1:${(silent.address() as net.AddressInfo).port}/v1/compat`, { connectTimeoutMs: 10_000 });
  const connecting = nextEvent(c, 'connecting');
  c.start();
  await connecting;
  let started = Date.now();
  await c.close();
  assert.ok(Date.now() - started < 200, `close while connecting took ${Date.now() - started} ms`);

  const tb = await startTestBeacon([alice]);
  cleanups.push(() => tb.close());
  const d = client(alice, tb.url);
  await d.connect({ failFast: true, timeoutMs: 3_000 });
  started = Date.now();
  await d.close();
  assert.ok(Date.now() - started < 1_000, `close while connected took ${Date.now() - started} ms`);
  await until(() => !tb.beacon.isConnected(7777), 2_000, 'the beacon to see the close');
});
