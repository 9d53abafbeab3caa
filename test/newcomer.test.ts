/**
 * The traps a new operator fell into following the README, each as the
 * behaviour that replaces it: durations need a unit, a keys file created
 * after start is picked up, keys are managed (list, remove, check,
 * --replace) with the beacon's own messages, an identity file given as
 * --keys is recognised, `send` says delivery is not confirmed, and
 * beacon-client's usage errors look like its other errors.
 *
 * Real CLIs as child processes in temporary directories, real beacons on
 * port 0; every wait bounded by an event or an exit.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parseDuration } from '../lib/config';
import { saveIdentity } from '../lib/identity';
import {
  FAST, assertUsageError, cleanUpBeaconCli, runCli, sockets, startCli, stopCli, tempDir,
} from './helpers/beacon-cli';
import { killSpawnedCli, runCli as runClient } from './helpers/client-cli';
import { connectPeer, startTestBeacon } from './helpers/harness';
import { keysFileJson, makeIdentity } from './helpers/identity';

after(() => {
  cleanUpBeaconCli();
  killSpawnedCli();
});

const ROOT = join(__dirname, '..', '..');

/** One stderr line, starting with `prefix`. */
function oneLine(stderr: string, prefix: string): string {
  const lines = stderr.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, `one stderr line, got: ${stderr}`);
  assert.ok(lines[0].startsWith(prefix), lines[0]);
  return lines[0];
}

// ---- durations need a unit -------------------------------------------------------------------

test('parseDuration refuses a bare number and reads every unit', () => {
  assert.throws(() => parseDuration('90'), /"90" has no unit: write it with ms, s, m or h \(e\.g\. 90s or 90ms; 500ms, 10s, 2m, 1h\)/);
  assert.deepEqual(['500ms', '10s', '2m', '1h', '1.5s'].map(parseDuration), [500, 10_000, 120_000, 3_600_000, 1_500]);
});

test('beacon --idle-timeout 90 and BEACON_IDLE_TIMEOUT=90 are refused with one line naming the flag and the forms, exit 2', async () => {
  const [flag, env] = await Promise.all([
    runCli([...FAST, '--idle-timeout', '90']),
    runCli(FAST, { env: { BEACON_IDLE_TIMEOUT: '90' } }),
  ]);
  assertUsageError(flag, '--idle-timeout', '"90" has no unit', '500ms, 10s, 2m');
  assertUsageError(env, 'BEACON_IDLE_TIMEOUT', '--idle-timeout', 'has no unit');
});

test('beacon --help says durations need a unit', async () => {
  const { code, stdout } = await runCli(['--help']);
  assert.equal(code, 0);
  assert.match(stdout, /Durations need a unit: 500ms, 10s, 2m, 1h \(a bare number is refused\)/);
});

test('beacon-client --wait 30 is refused on one beacon-client: line naming --wait, exit 2', async () => {
  const result = await runClient(['send', 'ws://127.0.0.1:1/v1/compat', '--identity', 'x.json', '--node-id', '1', '--to', '2', '--data', 'x', '--wait', '30']);
  assert.equal(result.code, 2);
  const line = oneLine(result.stderr, 'beacon-client: ');
  assert.match(line, /--wait/);
  assert.match(line, /has no unit/);
});

// ---- beacon-client usage -------------------------------------------------------------------------

test('beacon-client: a missing required option is one beacon-client: line, exit 2; --help marks required options', async () => {
  const [missing, help] = await Promise.all([runClient(['send', 'ws://127.0.0.1:1/v1/compat']), runClient(['send', '--help'])]);
  assert.equal(missing.code, 2);
  assert.match(oneLine(missing.stderr, 'beacon-client: '), /^beacon-client: required option '--\S+ <\w+>' not specified$/);

  assert.equal(help.code, 0);
  const text = help.stdout.replace(/\s+/g, ' ');
  for (const option of ['--to <dest> node to relay to (required)', '--data <text> payload (UTF-8 text) (required)', '(beacon keygen --out FILE) (required)', '--node-id <n> node ID to authenticate as (required)']) {
    assert.ok(text.includes(option), `send --help shows "${option}"`);
  }
  assert.match(text, /Delivery is not confirmed/);
  assert.match(text, /Durations need a unit/);
});

test('beacon-client discover: help and errors give UDP examples on port 9001, never the TCP port 8443', async () => {
  const [help, bad] = await Promise.all([runClient(['discover', '--help']), runClient(['discover', 'nowhere', '--node-id', '1'])]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /127\.0\.0\.1:9001/);
  assert.doesNotMatch(help.stdout, /8443/);
  assert.equal(bad.code, 2);
  const line = oneLine(bad.stderr, 'beacon-client: ');
  assert.match(line, /127\.0\.0\.1:9001/);
  assert.doesNotMatch(line, /8443/);
});

test('send to a node that is not connected exits 0 but says delivery is not confirmed; with --wait it waits and fails', async (t) => {
  const alice = makeIdentity(7777);
  const tb = await startTestBeacon([alice]);
  t.after(() => tb.close());
  const identity = join(tb.dir, 'alice.json');
  saveIdentity(identity, alice);
  const base = ['send', tb.url, '--identity', identity, '--node-id', '7777', '--to', '8888', '--data', 'hello bob'];

  // One after the other: two clients with one identity at once replace each other (4001).
  const sent = await runClient(base);
  const waited = await runClient([...base, '--wait', '200ms']);
  assert.equal(sent.code, 0, sent.stderr);
  assert.match(sent.stderr, /sent 9 bytes to node 8888 .*delivery is not confirmed \(the beacon drops it if the node is not connected; --wait DURATION waits for a reply\)/);

  assert.equal(waited.code, 1);
  assert.match(waited.stderr, /waiting up to 200 ms for a reply/);
  assert.match(waited.stderr, /no reply from node 8888 within 200 ms/);
});

// ---- keys: list, remove, check, --replace ------------------------------------------------------------

test('keys check says "valid" with the count (exit 0), or prints the beacon\'s own message (exit 1)', async () => {
  const dir = tempDir();
  const good = join(dir, 'good.json');
  writeFileSync(good, keysFileJson([makeIdentity(1), makeIdentity(2)]));
  const bad = ['{"7777": ', JSON.stringify({ 1: makeIdentity(1).publicKeyB64, 7777: 'not-a-key' })].map((content, i) => {
    const file = join(dir, `bad-${i}.json`);
    writeFileSync(file, content);
    return file;
  });
  const [valid, missing, ...pairs] = await Promise.all([
    runCli(['keys', 'check', good]),
    runCli(['keys', 'check', join(dir, 'none.json')]),
    ...bad.flatMap((file) => [runCli(['keys', 'check', file]), runCli([...FAST, '--keys', file])]),
  ]);
  assert.equal(valid.code, 0, valid.stderr);
  assert.equal(valid.stdout, `${good}: valid, 2 keys\n`);
  for (let i = 0; i < pairs.length; i += 2) {
    const [checked, started] = [pairs[i], pairs[i + 1]];
    assert.equal(checked.code, 1);
    assert.equal(started.code, 2);
    assert.equal(oneLine(checked.stderr, 'beacon: '), oneLine(started.stderr, 'beacon: '), 'keys check and the beacon say the same');
  }
  assert.equal(missing.code, 1);
  assert.match(oneLine(missing.stderr, 'beacon: '), /not found/);
});

test('keys list prints sorted "<node> <key>" lines; --node-id prints one, or exits 1 naming it', async () => {
  const dir = tempDir();
  const keys = join(dir, 'keys.json');
  const [a, b] = [makeIdentity(20), makeIdentity(3)];
  writeFileSync(keys, keysFileJson([a, b]));
  const [all, one, none, here] = await Promise.all([
    runCli(['keys', 'list', '--keys', keys]),
    runCli(['keys', 'list', '--keys', keys, '--node-id', '20']),
    runCli(['keys', 'list', '--keys', keys, '--node-id', '4']),
    runCli(['keys', 'list'], { cwd: dir }), // without --keys: ./keys.json, as the beacon
  ]);
  assert.equal(all.code, 0, all.stderr);
  assert.equal(all.stdout, `3 ${b.publicKeyB64}\n20 ${a.publicKeyB64}\n`);
  assert.equal(one.stdout, `20 ${a.publicKeyB64}\n`);
  assert.equal(none.code, 1);
  assert.match(oneLine(none.stderr, 'beacon: '), /node 4 has no key in .*keys\.json \(2 keys\)/);
  assert.equal(here.stdout, all.stdout);
});

test('keys remove drops one node (exit 0); an absent node changes nothing (exit 1)', async () => {
  const keys = join(tempDir(), 'keys.json');
  const [a, b] = [makeIdentity(1), makeIdentity(2)];
  writeFileSync(keys, keysFileJson([a, b]));
  const removed = await runCli(['keys', 'remove', '--keys', keys, '--node-id', '1']);
  assert.equal(removed.code, 0, removed.stderr);
  assert.match(removed.stdout, /removed node 1 from .*\(1 key left\)/);
  assert.deepEqual(JSON.parse(readFileSync(keys, 'utf8')), { 2: b.publicKeyB64 });
  const before = readFileSync(keys, 'utf8');
  const absent = await runCli(['keys', 'remove', '--keys', keys, '--node-id', '1']);
  assert.equal(absent.code, 1);
  assert.match(oneLine(absent.stderr, 'beacon: '), /node 1 is not in .*; nothing changed/);
  assert.equal(readFileSync(keys, 'utf8'), before);
});

test('a file whose only fault is one entry\'s key: the error\'s own advice (remove, or add --replace) repairs it', async () => {
  const dir = tempDir();
  const keys = join(dir, 'keys.json');
  const good = makeIdentity(1);
  const fixed = makeIdentity(7777);
  const broken = JSON.stringify({ 1: good.publicKeyB64, 7777: 'not-a-key' });

  writeFileSync(keys, broken);
  const check = await runCli(['keys', 'check', keys]);
  const advice = oneLine(check.stderr, 'beacon: ');
  assert.ok(advice.includes(`beacon keys add --keys ${keys} --node-id 7777 --public-key B64 --replace`), advice);
  assert.ok(advice.includes(`beacon keys remove --keys ${keys} --node-id 7777`), advice);

  const plainAdd = await runCli(['keys', 'add', '--keys', keys, '--node-id', '7777', '--public-key', fixed.publicKeyB64]);
  assertUsageError(plainAdd, 'node 7777 already has an invalid key', '--replace');
  assert.equal(readFileSync(keys, 'utf8'), broken);
  const replaced = await runCli(['keys', 'add', '--keys', keys, '--node-id', '7777', '--public-key', fixed.publicKeyB64, '--replace']);
  assert.equal(replaced.code, 0, replaced.stderr);
  assert.deepEqual(JSON.parse(readFileSync(keys, 'utf8')), { 1: good.publicKeyB64, 7777: fixed.publicKeyB64 });

  writeFileSync(keys, broken);
  const removed = await runCli(['keys', 'remove', '--keys', keys, '--node-id', '7777']);
  assert.equal(removed.code, 0, removed.stderr);
  assert.deepEqual(JSON.parse(readFileSync(keys, 'utf8')), { 1: good.publicKeyB64 });

  // Another entry's fault is not repaired by an edit of this one.
  writeFileSync(keys, JSON.stringify({ 1: 'bad', 7777: 'not-a-key' }));
  assertUsageError(await runCli(['keys', 'remove', '--keys', keys, '--node-id', '7777']), 'entry "1"');
});

test('an identity file given as --keys (beacon or keys check) is recognised as one, with the command that registers it', async () => {
  const dir = tempDir();
  const identity = join(dir, 'alice.json');
  saveIdentity(identity, makeIdentity(7777));
  const [started, checked] = await Promise.all([runCli([...FAST, '--keys', identity]), runCli(['keys', 'check', identity])]);
  assertUsageError(started, 'is a daemon identity file', `beacon keys add --keys keys.json --node-id N --identity ${identity}`);
  assert.doesNotMatch(started.stderr, /node ID must be/);
  assert.equal(checked.code, 1);
  assert.match(checked.stderr, /is a daemon identity file/);
});

// ---- the default ./keys.json ------------------------------------------------------------------

test('with no ./keys.json at start, creating it with keys add lets a daemon in at once; SIGHUP before it exists says so', async () => {
  const dir = tempDir();
  const alice = makeIdentity(7777);
  const { proc, url } = await startCli(FAST, { cwd: dir });
  const warning = await proc.waitForLog((l) => l.level === 40 && /no keys file yet/.test(l.msg), 'the no-keys warning');
  assert.match(warning.msg, /picks it up at once, no restart needed/);
  assert.doesNotMatch(warning.msg, /restart the beacon/);

  proc.signal('SIGHUP');
  await proc.waitForLog((l) => l.level === 40 && /keys\.json does not exist yet/.test(l.msg), 'the SIGHUP warning');

  const identity = join(dir, 'alice.json');
  saveIdentity(identity, alice);
  const added = await runCli(['keys', 'add', '--node-id', '7777', '--identity', identity], { cwd: dir });
  assert.equal(added.code, 0, added.stderr);
  await proc.waitForLog((l) => l.msg === 'keys file reloaded' && l.keys === 1, "'keys file reloaded'");
  const ws = await connectPeer(url, alice);
  sockets.push(ws);
  await stopCli(proc);
});

// ---- identities stay out of git --------------------------------------------------------------------

test('keygen makes a missing identities/ folder 0700, and git ignores identities/', async () => {
  const dir = tempDir();
  const result = await runCli(['keygen', '--out', join('identities', 'alice.json')], { cwd: dir });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(statSync(join(dir, 'identities')).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, 'identities', 'alice.json')).mode & 0o777, 0o600);

  const ignore = readFileSync(join(ROOT, '.gitignore'), 'utf8').split('\n');
  assert.ok(ignore.includes('/identities/'), '.gitignore lists /identities/');
  if (existsSync(join(ROOT, '.git'))) {
    // git's own answer, for a checkout: `check-ignore` exits 0 for an ignored path.
    execFileSync('git', ['-C', ROOT, 'check-ignore', '-q', 'identities/alice.json']);
  }
});
