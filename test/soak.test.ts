/**
 * The soak in `npm test`: a one-minute run of `npm run soak` (everything at
 * once on one real beacon process), so a leak or a lost relay cannot land
 * unnoticed; and the verdict functions on series that do and do not grow.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { judgeGrowth, judgeIdle, type Sample } from './soak/figures';

function sample(t: number, values: Partial<Sample> = {}): Sample {
  return { t, rssMiB: 100, heapMiB: 20, fds: 80, handles: 60, timers: 5, peers: 50, handshakes: 2, counters: {}, ...values };
}

describe('soak verdicts', () => {
  test('a steady series passes, one that keeps growing after the warm-up fails', () => {
    const steady = Array.from({ length: 12 }, (_, i) => sample(i * 5, { rssMiB: 100 + (i % 3), heapMiB: 20 + (i % 2) * 8 }));
    assert.ok(judgeGrowth(steady, 20, 3).every((v) => v.ok));
    // A socket leaked every third connection of the churn (about 20/s): fds and handles climb by 7 a second.
    const leaking = steady.map((s) => ({ ...s, fds: s.fds + 7 * s.t, handles: s.handles + 7 * s.t }));
    const failed = judgeGrowth(leaking, 20, 3).filter((v) => !v.ok).map((v) => v.resource);
    assert.deepEqual(failed, ['fds', 'handles']);
  });

  test('the heap is judged by its floor, so garbage between collections is not growth', () => {
    const sawtooth = Array.from({ length: 12 }, (_, i) => sample(i * 5, { heapMiB: i % 2 === 0 ? 20 : 60 + i }));
    assert.ok(judgeGrowth(sawtooth, 20, 3).find((v) => v.resource === 'heapMiB')!.ok);
    const risingFloor = sawtooth.map((s) => ({ ...s, heapMiB: s.heapMiB + s.t / 2 }));
    assert.equal(judgeGrowth(risingFloor, 20, 3).find((v) => v.resource === 'heapMiB')!.ok, false);
  });

  test('a burst of work in flight is not growth; one timer leaked per handshake is', () => {
    // The one-minute soak's timers (issue 18): a sample every 2 s, a 30 s warm-up, windows
    // of five. The registry is silent for 7 s of every 30; handshakes waiting on it pile up
    // (13 in flight, three timers each). The last window holds such a burst, the first none.
    const silent = (t: number) => t % 30 >= 23;
    const bursty = Array.from({ length: 30 }, (_, i) => {
      const t = (i + 1) * 2;
      const handshakes = silent(t) ? 13 : i % 3;
      return sample(t, { handshakes, timers: 3 * handshakes });
    });
    const judge = (series: Sample[]) => judgeGrowth(series, 30, 5).find((v) => v.resource === 'timers')!;
    assert.ok(judge(bursty).ok, JSON.stringify(judge(bursty)));
    // The same run with one timer per handshake never cleared: the soak completes about
    // 24 handshakes a second (churn and bad ones), so the quietest sample climbs with them.
    const leaking = bursty.map((s) => ({ ...s, timers: s.timers + 24 * s.t }));
    assert.equal(judge(leaking).ok, false);
    // Even a leak of one timer per ten handshakes shows within the minute.
    const slowLeak = bursty.map((s) => ({ ...s, timers: s.timers + 2.4 * s.t }));
    assert.equal(judge(slowLeak).ok, false);
  });

  test('too few samples after the warm-up is an error, not a pass', () => {
    assert.throws(() => judgeGrowth([sample(0), sample(5)], 20, 3), /run longer/);
  });

  test('after the load the beacon must hold what it held before it', () => {
    assert.deepEqual(judgeIdle(sample(0, { peers: 0, handshakes: 0 }), sample(0, { peers: 0, handshakes: 0, fds: 82 })), []);
    const problems = judgeIdle(sample(0, { peers: 0, handshakes: 0 }), sample(0, { peers: 1, handshakes: 0, timers: 9 }));
    assert.equal(problems.length, 2);
  });
});

test('npm run soak -- --minutes 1 passes', { timeout: 180_000 }, async () => {
  const proc = spawn(process.execPath, [join(__dirname, 'soak', 'run.js'), '--minutes', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (chunk: Buffer) => { output += chunk.toString(); });
  proc.stderr.on('data', (chunk: Buffer) => { output += chunk.toString(); });
  const code = await new Promise<number | null>((resolve) => proc.on('exit', resolve));
  assert.equal(code, 0, `the soak failed:\n${output}`);
  assert.match(output, /soak passed/);
});
