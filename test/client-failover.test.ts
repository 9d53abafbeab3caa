/**
 * CompatClient and `beacon-client` with several beacon URLs, against real
 * beacons: the first URL first; when its beacon stops, the next one, with
 * the same backoff; round the ring in order; failFast gives up only once
 * every URL failed (at once on a refused key).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CompatClient, PacketType, type CompatClientOptions } from '../lib/client';
import { formatIdentity } from '../lib/identity';
import type { BeaconConfig } from '../lib/config';
import { CliProcess, killSpawnedCli, runCli } from './helpers/client-cli';
import { nextDelivery, nextEvent, record, until } from './helpers/client-events';
import { connectPeer, nextMessage, startTestBeacon } from './helpers/harness';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { decodePacket, encodeRelay } from '../lib/protocol';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const stranger = makeIdentity(4242); // in no keys file
/** A beacon that stops tells its peers to come back soon (tests do not wait 3 s). */
const QUICK_RESTART = { restartDelayMs: 150, restartWindowMs: 200 } as Partial<BeaconConfig>;

const cleanups: Array<() => unknown> = [];
after(async () => {
  killSpawnedCli();
  for (const c of cleanups.reverse()) await c();
});

function client(id: TestIdentity, url: string | string[], extra: Partial<CompatClientOptions> = {}): CompatClient {
  const c = new CompatClient({ url, nodeId: id.nodeId, identity: id, ...extra });
  cleanups.push(() => c.close());
  return c;
}

async function beacon(ids: readonly TestIdentity[] = [alice, bob]) {
  const tb = await startTestBeacon(ids, QUICK_RESTART);
  cleanups.push(() => tb.close());
  return tb;
}

/** A compat URL on a port nothing listens on (bound, then released). */
async function deadUrl(): Promise<string> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as net.AddressInfo;
  await new Promise((resolve) => s.close(resolve));
  return `ws://127.0.0.1:${port}/v1/compat`;
}

test('two beacons: the client attaches to the first; when it stops, the client moves to the second and is reachable there', async () => {
  const first = await beacon();
  const second = await beacon();
  const a = client(alice, [first.url, second.url], { initialDelayMs: 10, maxDelayMs: 80 });
  const connected = nextEvent(a, 'connected');
  await a.connect({ failFast: true, timeoutMs: 3_000 });
  assert.equal((await connected).url, first.url);
  assert.equal(a.url.href, first.url);
  assert.ok(first.beacon.isConnected(alice.nodeId));
  assert.ok(!second.beacon.isConnected(alice.nodeId));

  const bobWs = await connectPeer(second.url, bob);
  cleanups.push(() => bobWs.terminate());
  const reconnecting = nextEvent(a, 'reconnecting');
  const moved = nextEvent(a, 'connected', 5_000, (e) => e.attempt > 1);
  await first.close();

  const retry = await reconnecting;
  assert.equal(retry.url, second.url, 'the retry after the loss goes to the next URL');
  // The stopping beacon's notice: only its jitter is waited, not its reconnect_in_ms (150 ms here).
  assert.equal(retry.cause, 'restarting');
  assert.ok(retry.delayMs <= 100, `waited ${retry.delayMs} ms before trying a beacon that is not restarting`);
  assert.equal((await moved).url, second.url);
  assert.ok(second.beacon.isConnected(alice.nodeId));

  // Reachable on the second beacon, both ways.
  const toBob = nextMessage(bobWs);
  a.relay(bob.nodeId, 'moved');
  const delivered = decodePacket((await toBob).data);
  assert.ok(delivered?.type === PacketType.RelayDeliver);
  assert.equal(delivered.sender, alice.nodeId);
  assert.equal(delivered.payload.toString(), 'moved');
  const toAlice = nextDelivery(a);
  bobWs.send(encodeRelay(bob.nodeId, alice.nodeId, Buffer.from('found you')));
  assert.equal(await toAlice, '8888:found you');
});

test('URLs are tried in order, round the ring, one per attempt, with the usual backoff growing across them', async () => {
  const dead1 = await deadUrl();
  const dead2 = await deadUrl();
  const live = await beacon();
  const a = client(alice, [dead1, dead2, live.url], { initialDelayMs: 10, maxDelayMs: 40, jitter: 'none' });
  const dialed = record(a, 'connecting');
  const retries = record(a, 'reconnecting');
  await a.connect({ timeoutMs: 3_000 });
  assert.deepEqual(dialed.map((d) => d.value.url), [dead1, dead2, live.url]);
  assert.deepEqual(retries.map((r) => [r.value.url, r.value.delayMs, r.value.error?.code]),
    [[dead2, 10, 'ECONNREFUSED'], [live.url, 20, 'ECONNREFUSED']]);

  // The live one goes away: the ring goes on from the start, and the backoff starts over after a good connection.
  dialed.length = 0;
  retries.length = 0;
  await live.close();
  await until(() => dialed.length >= 5, 5_000, 'five more attempts');
  assert.deepEqual(dialed.slice(0, 5).map((d) => d.value.url), [dead1, dead2, live.url, dead1, dead2]);
  assert.deepEqual(retries.slice(1, 5).map((r) => r.value.delayMs), [10, 20, 40, 40], 'backoff after the first (restarting) retry');
});

test('failFast with several URLs gives up only once each failed, with one error naming every URL; a refused key ends it at once', async () => {
  const dead1 = await deadUrl();
  const dead2 = await deadUrl();
  const a = client(alice, [dead1, dead2], { initialDelayMs: 10, maxDelayMs: 40 });
  const err = await a.connect({ failFast: true, timeoutMs: 5_000 }).then(() => assert.fail('connected to nothing'), (e: unknown) => e);
  assert.equal((err as { code?: string }).code, 'ECONNREFUSED');
  const message = (err as Error).message;
  assert.match(message, /^none of the 2 beacons could be reached/);
  assert.ok(message.includes(`${dead1}: nothing accepts connections`) && message.includes(`${dead2}: nothing accepts connections`), message);
  assert.equal(a.connectAttempts, 2);
  assert.equal(a.state, 'closed');

  const live = await beacon();
  const s = client(stranger, [live.url, dead1], { initialDelayMs: 10, maxDelayMs: 40 });
  await assert.rejects(s.connect({ failFast: true, timeoutMs: 5_000 }), { code: 'EAUTHFAILED' });
  assert.equal(s.connectAttempts, 1, 'a refused key is an answer: the other URLs are not tried');
});

test('a bad URL anywhere in the list, or none at all, is refused at construction', () => {
  assert.throws(() => client(alice, []), { code: 'EBADURL', message: /no beacon URL given/ });
  assert.throws(() => client(alice, ['ws://127.0.0.1:1/v1/compat', 'http://127.0.0.1:2/v1/compat']), { code: 'EBADURL', message: /http:\/\/127\.0\.0\.1:2/ });
  const one = client(alice, 'ws://127.0.0.1:1/v1/compat');
  assert.equal(one.urls.length, 1);
  assert.equal(one.url.href, 'ws://127.0.0.1:1/v1/compat');
});

test('beacon-client connect with a dead URL first attaches to the next one; send with only dead URLs names both and exits 1', async () => {
  const live = await beacon();
  const dir = live.dir;
  const files = new Map<number, string>();
  for (const id of [alice, bob]) {
    const file = join(dir, `node-${id.nodeId}.json`);
    writeFileSync(file, formatIdentity(id), { mode: 0o600 });
    files.set(id.nodeId, file);
  }
  const as = (id: TestIdentity) => ['--identity', files.get(id.nodeId)!, '--node-id', String(id.nodeId)];
  const dead = await deadUrl();
  const receiver = new CliProcess(['connect', dead, live.url, ...as(bob)]);
  await receiver.waitFor('stderr', new RegExp(`connected to ${live.url.replace(/[/.]/g, '\\$&')} as node 8888`));
  assert.match(receiver.stderr, /reconnecting to ws:\/\/127\.0\.0\.1:\d+\/v1\/compat in \d+ ms \(attempt 1, failed: nothing accepts connections/);

  const sent = await runCli(['send', dead, live.url, ...as(alice), '--to', '8888', '--data', 'via the second']);
  assert.equal(sent.code, 0, sent.stderr);
  assert.equal(await receiver.waitFor('stdout', /^from 7777:/), 'from 7777: via the second');
  await receiver.stop();

  const dead2 = await deadUrl();
  const failed = await runCli(['send', dead, dead2, ...as(alice), '--to', '8888', '--data', 'x']);
  assert.equal(failed.code, 1, failed.stderr);
  const lines = failed.stderr.trim().split('\n');
  assert.equal(lines.length, 1, failed.stderr);
  assert.match(lines[0]!, /^beacon-client: none of the 2 beacons could be reached/);
  assert.ok(lines[0]!.includes(dead) && lines[0]!.includes(dead2), lines[0]);

  const bad = await runCli(['send', live.url, 'https://x/v1/compat', ...as(alice), '--to', '8888', '--data', 'x']);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /https:\/\/ and a beacon URL must be ws:\/\/ or wss:\/\/|scheme https/);
});
