/**
 * Cluster mode: a log line a stranger can cause is rate-limited (issue 19,
 * item 3). Discovers for the same node IDs at two instances, by turns,
 * make each instance drop the endpoint the other now holds, and each drop
 * was one log line. The beacon writes its log synchronously, so with a slow
 * log reader (4 KB/s, a stalled journald) those lines blocked the event
 * loop: /health stalled long enough for the other instances to take the
 * instance for dead. Now: the metrics count every eviction, the log writes
 * the first 50 of a window, and /health answers at once throughout.
 * Real nats-server, instances as child processes (their stdout read slowly).
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, before, test } from 'node:test';
import { STRANGER_LOG_LIMIT } from '../lib/log/rate-limited-log';
import { encodeDiscover } from '../lib/protocol';
import { allSee, joinedInstance, writeKeys, type Instance } from './helpers/cluster';
import { NatsServer } from './helpers/nats';

const EVICTION_LINE = 'node attached to another instance; dropping it here';
/** The slow log reader's pace, as in the reproduction. */
const READER_BYTES_PER_S = 4096;
const SOURCES = 16; // 127.0.0.2 ... : each source address has its own UDP budgets
const IDS_PER_SOURCE = 40;
const FLOOD_MS = 3_000;

let nats: NatsServer;
let a: Instance;
let b: Instance;

before(async () => {
  nats = await NatsServer.start();
  const keys = writeKeys([]);
  [a, b] = await Promise.all([joinedInstance('a', { nats: nats.url(), keys }), joinedInstance('b', { nats: nats.url(), keys })]);
  await allSee([a, b], 2);
});

after(async () => {
  for (const instance of [a, b]) instance?.child.stdout.resume();
  await Promise.all([a?.stop(), b?.stop()]);
  await nats?.close();
});

/** Reads `instance`'s stdout at `bytesPerS` from now on (pausing the pipe, so the instance's writes block once it is full). */
function readSlowly(instance: Instance, bytesPerS: number): () => void {
  const stdout = instance.child.stdout;
  let budget = bytesPerS / 10;
  const onData = (chunk: Buffer) => {
    budget -= chunk.length;
    if (budget <= 0) stdout.pause();
  };
  stdout.on('data', onData);
  const tick = setInterval(() => {
    budget = Math.min(budget + bytesPerS / 10, bytesPerS / 10);
    if (budget > 0) stdout.resume();
  }, 100);
  return () => {
    clearInterval(tick);
    stdout.off('data', onData);
    stdout.resume();
  };
}

/** Probes /health every 50 ms until `until` resolves; the slowest answer, in ms. */
async function slowestHealth(instance: Instance, until: Promise<unknown>): Promise<number> {
  let done = false;
  void until.finally(() => { done = true; });
  let slowest = 0;
  while (!done) {
    const start = performance.now();
    const res = await fetch(`${instance.httpBase}/health`, { signal: AbortSignal.timeout(30_000) });
    await res.arrayBuffer();
    slowest = Math.max(slowest, performance.now() - start);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return slowest;
}

test('Discovers for the same IDs at two instances by turns, with a slow log reader: evictions are counted, a few are logged, /health never stalls', async () => {
  const sockets = await Promise.all(Array.from({ length: SOURCES }, async (_, i) => {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, `127.0.0.${2 + i}`, resolve));
    return socket;
  }));
  const stopReading = [readSlowly(a, READER_BYTES_PER_S), readSlowly(b, READER_BYTES_PER_S)];
  try {
    const linesBefore = a.logs.filter((l) => l.msg === EVICTION_LINE).length;
    const flood = (async () => {
      const end = Date.now() + FLOOD_MS;
      for (let round = 0; Date.now() < end; round++) {
        const port = round % 2 === 0 ? a.udpPort : b.udpPort;
        sockets.forEach((socket, s) => {
          for (let i = 0; i < IDS_PER_SOURCE; i++) socket.send(encodeDiscover(50_000 + s * IDS_PER_SOURCE + i), port, '127.0.0.1');
        });
        await new Promise((resolve) => setTimeout(resolve, 50)); // each source makes at most 100 new claims a second anyway
      }
    })();
    const [slowestA, slowestB] = await Promise.all([slowestHealth(a, flood), slowestHealth(b, flood)]);
    await flood;

    const evicted = (await a.metric('beacon_cluster_evictions_total', { kind: 'udp' }))!;
    assert.ok(evicted > 5 * STRANGER_LOG_LIMIT.burst, `a evicted ${evicted} UDP endpoints: the flood did not bite`);
    // Give the reader time for what was written; the rate-limited lines are few.
    stopReading.forEach((stop) => stop());
    await new Promise((resolve) => setTimeout(resolve, 500));
    const lines = a.logs.filter((l) => l.msg === EVICTION_LINE).length - linesBefore;
    assert.ok(lines <= STRANGER_LOG_LIMIT.burst, `a logged ${lines} eviction lines for ${evicted} evictions`);
    // Unlimited, the reader's pace set /health's: stalls of 2.4-6.3 s here, 10-17 s in the reproduction.
    assert.ok(slowestA < 3_000 && slowestB < 3_000, `/health took up to ${Math.round(slowestA)} ms (a), ${Math.round(slowestB)} ms (b)`);
  } finally {
    stopReading.forEach((stop) => stop());
    for (const socket of sockets) socket.close();
  }
});
