/**
 * Lines a stranger (or one key, reconnecting in a loop) can cause are
 * rate-limited: with a synchronous logger and a slow log reader, a flood of
 * them would stall the event loop (measured: test/bench/log-flood.ts).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import pino from 'pino';
import WebSocket from 'ws';
import { STRANGER_LOG_LIMIT, RateLimitedLog } from '../lib/log/rate-limited-log';
import { COMPAT_SUBPROTOCOL } from '../lib/protocol';
import { makeIdentity } from './helpers/identity';
import { beaconFor, connectPeer, eventually, openCompat, withTimeout } from './helpers/harness';

/** A real pino logger writing JSON lines into `lines`. */
function capturingLogger(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

test('RateLimitedLog: the first lines of a window are written, the rest counted in one summary line', async () => {
  const { log, lines } = capturingLogger();
  const limited = new RateLimitedLog(log, 'upgrade refused', { burst: 3, windowMs: 200 });
  for (let i = 0; i < 10; i++) limited.info({ i });
  await eventually(() => lines.length === 4, 3_000, 'the summary line');
  assert.deepEqual(lines.slice(0, 3).map((l) => [l.msg, l.i]), [['upgrade refused', 0], ['upgrade refused', 1], ['upgrade refused', 2]]);
  assert.equal(lines[3]!.leftOut, 7);
  assert.match(String(lines[3]!.msg), /^upgrade refused: more lines left out/);
  // A new window writes again.
  limited.info({ i: 10 });
  assert.equal(lines.length, 5);
  assert.equal(lines[4]!.i, 10);
});

test('a flood of refused upgrades writes at most the burst of log lines; the metrics count every refusal', async (t) => {
  const { log, lines } = capturingLogger();
  const tb = await beaconFor(t, [makeIdentity(7777)], { maxHandshakes: 1 }, { logger: log });
  const held = await openCompat(tb.url); // the one handshake slot
  t.after(() => held.ws.terminate());
  const flood = STRANGER_LOG_LIMIT.burst + 30;
  for (let i = 0; i < flood; i++) {
    const ws = new WebSocket(tb.url, [COMPAT_SUBPROTOCOL]);
    ws.on('error', () => {});
    const [, res] = (await withTimeout(once(ws, 'unexpected-response'), 3_000, 'the refusal')) as [unknown, IncomingMessage];
    res.resume();
    assert.equal(res.statusCode, 503);
  }
  assert.equal(tb.beacon.metrics().stats.refused.max_handshakes, flood);
  assert.equal(lines.filter((l) => l.msg === 'upgrade refused').length, STRANGER_LOG_LIMIT.burst);
});

test('one key reconnecting in a loop writes at most the burst of peer connected / replaced / disconnected lines; the metrics count them all', async (t) => {
  const { log, lines } = capturingLogger();
  const alice = makeIdentity(7777);
  const tb = await beaconFor(t, [alice], {}, { logger: log });
  const loops = STRANGER_LOG_LIMIT.burst + 20;
  let previous: WebSocket | undefined;
  for (let i = 0; i < loops; i++) {
    const ws = await connectPeer(tb.url, alice); // replaces the previous one
    previous?.terminate();
    previous = ws;
  }
  previous!.close();
  await eventually(() => tb.beacon.peerCount() === 0, 3_000, 'the last one to leave');
  const { stats } = tb.beacon.metrics();
  assert.equal(stats.authOk, loops);
  assert.equal(stats.replacedPeers, loops - 1);
  const count = (msg: string) => lines.filter((l) => l.msg === msg).length;
  assert.equal(count('peer connected'), STRANGER_LOG_LIMIT.burst);
  assert.equal(count('peer replaced by a newer connection'), STRANGER_LOG_LIMIT.burst);
  assert.ok(count('peer disconnected') <= STRANGER_LOG_LIMIT.burst);
});
