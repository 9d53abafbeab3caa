/**
 * Helper threads at a lower priority than the event loop (issue 22,
 * lib/runtime/helper-threads.ts): on Linux every thread of the process but
 * the main one gets a nice value --helper-thread-nice above the main
 * thread's. Read back from /proc, in processes of their own, so the test
 * runner's threads keep their priority. Linux only, as CI is.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FAST, cleanUpBeaconCli, startCli, stopCli } from './helpers/beacon-cli';

after(cleanUpBeaconCli);

const MODULE = join(__dirname, '..', 'lib', 'runtime', 'helper-threads.js');

/** Each thread's nice value, by thread ID (field 19 of /proc/PID/task/TID/stat, after the name in parentheses). */
function niceByThread(pid: number): Map<number, number> {
  const nices = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      nices.set(Number(tid), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]));
    } catch {
      // The thread ended meanwhile.
    }
  }
  return nices;
}

/** Runs `body` in a fresh node process with the module as `m`; its stdout, parsed as JSON. */
function inProcess(body: string): unknown {
  const script = `const m = require(${JSON.stringify(MODULE)}); const os = require('node:os'); const fs = require('node:fs');
const nices = () => Object.fromEntries(fs.readdirSync('/proc/self/task').map((t) => [t, os.getPriority(Number(t))]));
${body}`;
  return JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }));
}

test('every thread but the main one gets the main thread\'s nice value plus the step; a second call moves nothing', () => {
  const got = inProcess(`const main = os.getPriority();
const first = m.lowerHelperThreads(3);
const after = nices();
const second = m.lowerHelperThreads(3);
console.log(JSON.stringify({ pid: process.pid, main, first, after, second }));`) as {
    pid: number; main: number; first: { moved: number; nice: number }; after: Record<string, number>; second: { moved: number };
  };
  const others = Object.entries(got.after).filter(([tid]) => Number(tid) !== got.pid);
  assert.ok(others.length >= 4, `V8's platform threads are there: ${JSON.stringify(got.after)}`);
  assert.equal(got.after[String(got.pid)], got.main, 'the main thread keeps its priority');
  assert.equal(got.first.nice, Math.min(19, got.main + 3));
  assert.equal(got.first.moved, others.length);
  for (const [tid, nice] of others) assert.equal(nice, got.first.nice, `thread ${tid}`);
  assert.equal(got.second.moved, 0, 'already there: nothing to move');
});

test('a thread already at a lower priority keeps it; a step of 0 changes nothing', () => {
  const got = inProcess(`const helper = fs.readdirSync('/proc/self/task').map(Number).find((t) => t !== process.pid);
os.setPriority(helper, 19);
const none = m.lowerHelperThreads(0);
const untouched = nices();
const some = m.lowerHelperThreads(2);
console.log(JSON.stringify({ pid: process.pid, helper, none, untouched, some, after: nices() }));`) as {
    pid: number; helper: number; none: { moved: number }; untouched: Record<string, number>; some: { moved: number; nice: number }; after: Record<string, number>;
  };
  assert.equal(got.none.moved, 0);
  const atZero = Object.entries(got.untouched).filter(([tid]) => Number(tid) !== got.helper);
  assert.ok(atZero.every(([, nice]) => nice === got.untouched[String(got.pid)]), `a step of 0 moved nothing: ${JSON.stringify(got.untouched)}`);
  assert.equal(got.after[String(got.helper)], 19, 'the thread set to 19 beforehand stays at 19');
  assert.equal(got.some.moved, Object.keys(got.after).length - 2, 'all but the main thread and the one already lower');
});

test('the beacon lowers its helper threads by --helper-thread-nice and says so; the event loop keeps its priority', async () => {
  const { proc, listening } = await startCli([...FAST, '--helper-thread-nice', '7']);
  const pid = proc.child.pid!;
  const main = niceByThread(pid).get(pid)!;
  const expected = Math.min(19, main + 7);
  const said = listening.helperThreads as { moved: number; nice: number };
  assert.equal(said.nice, expected, JSON.stringify(listening));
  assert.ok(said.moved >= 4, `V8's platform threads moved: ${JSON.stringify(said)}`);
  const lowered = [...niceByThread(pid)].filter(([tid, nice]) => tid !== pid && nice === expected);
  assert.ok(lowered.length >= said.moved, `${lowered.length} threads at nice ${expected}, ${said.moved} said moved`);
  await stopCli(proc);
});

test('--helper-thread-nice 0 leaves every thread at the event loop\'s priority', async () => {
  const { proc, listening } = await startCli([...FAST, '--helper-thread-nice', '0']);
  const pid = proc.child.pid!;
  const nices = niceByThread(pid);
  assert.equal(listening.helperThreads, undefined);
  assert.ok([...nices.values()].every((nice) => nice === nices.get(pid)), JSON.stringify([...nices]));
  await stopCli(proc);
});
