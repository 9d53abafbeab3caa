/**
 * The README's walkthrough, run as written (test/helpers/walkthrough.ts):
 * its commands are read from README.md, so the docs cannot drift from what
 * the tools do. Also: the figures the docs give for reconnect waits are
 * the ones the code's constants produce.
 *
 * The walkthrough binds the README's own ports (8443, 9001). As root with
 * `unshare` and `ip` (CI, via .ci/install-deps), it runs in a network
 * namespace of its own, so nothing else on the machine can collide with
 * it; otherwise it runs on the host's loopback, one walkthrough at a time
 * (flock), and fails clearly if something else holds the ports.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CLIENT_DEFAULTS } from '../lib/client/compat-client';
import { DEFAULTS } from '../lib/config';
import { runGuide } from './helpers/guide-run';
import { commands, promised, readSubsection, readWalkthrough, step } from './helpers/walkthrough';

const ROOT = join(__dirname, '..', '..');
const README = join(ROOT, 'README.md');
const RUNNER = join(__dirname, 'helpers', 'walkthrough.js');
/** The whole run: two beacon starts, a restart wait of up to 8 s, and slow Node starts on a loaded machine. */
const RUN_DEADLINE_MS = 150_000;

test('the walkthrough has its steps 0-7, with the commands and promised output the run needs', () => {
  const steps = readWalkthrough(readFileSync(README, 'utf8'));
  assert.deepEqual(steps.map((s) => s.number), [0, 1, 2, 3, 4, 5, 6, 7]);
  // Step 0 is what a fresh clone needs; the test runs after `npm test` built it.
  const setup = commands(step(steps, 0));
  assert.deepEqual(setup.slice(0, 2), ['npm ci', 'npm run build']);
  assert.match(setup[2], /^alias beacon='node dist\/cmd\/beacon\.js' beacon-client='node dist\/cmd\/beacon-client\.js'$/);
  for (const command of commands(step(steps, 1))) assert.match(command, /^beacon keygen --out identities\//, 'identities go to the git-ignored folder');
  assert.match(commands(step(steps, 3))[0], /^beacon /);
  assert.match(commands(step(steps, 4))[0], /^beacon-client connect /);
  assert.ok(promised(step(steps, 5)).includes('from 7777: hello bob'));
  assert.match(commands(step(steps, 6))[0], /^beacon-client discover 127\.0\.0\.1:9001 /);
  assert.equal(promised(step(steps, 7)).length, 4);
  // Trying Caddy locally must not touch the system's trust store.
  const tls = readSubsection(readFileSync(README, 'utf8'), 'Through TLS');
  assert.ok(tls.blocks.some((b) => b.lines.some((l) => l.trim() === 'skip_install_trust')), 'the local Caddyfile sets skip_install_trust');
  assert.match(tls.text.replace(/\s+/g, ' '), /Caddy running as root adds its local CA to the system's trusted roots/);
});

test('the reconnect waits the docs give are the ones the code\'s constants produce', () => {
  const readme = readFileSync(README, 'utf8').replace(/\s+/g, ' ');
  const guide = readFileSync(join(ROOT, 'docs', 'operators-guide.md'), 'utf8').replace(/\s+/g, ' ');
  const s = (ms: number) => `${ms / 1000}`;
  // After a restart notice: reconnect_in_ms plus up to half of try_for_ms (lib/client/compat-client.ts).
  const restart = `between ${s(DEFAULTS.restartDelayMs)} and ${s(DEFAULTS.restartDelayMs + DEFAULTS.restartWindowMs / 2)} s`;
  assert.ok(readme.includes(restart), `README says ${restart}`);
  assert.ok(guide.includes(restart), `the operator's guide says ${restart}`);
  assert.ok(readme.includes(`"come back in ${s(DEFAULTS.restartDelayMs)} s, and keep trying for ${s(DEFAULTS.restartWindowMs)} s"`));
  // After being replaced: the cap with equal jitter, half the cap to the cap.
  const replaced = `between ${s(CLIENT_DEFAULTS.maxDelayMs / 2)} and ${s(CLIENT_DEFAULTS.maxDelayMs)} s`;
  assert.ok(readme.includes(replaced), `README says ${replaced}`);
  assert.ok(readme.includes(`${CLIENT_DEFAULTS.initialDelayMs} ms at first, doubling up to ${s(CLIENT_DEFAULTS.maxDelayMs)} s`));
  assert.doesNotMatch(readme, /half a minute|up to 1 s of jitter/);
  assert.doesNotMatch(guide, /up to 1 s of jitter/);
});

test('the walkthrough runs as written: two identities, a beacon, WebSocket and UDP both ways, TLS through a local Caddy, a restart', async (t) => {
  const { code, output } = await runGuide(t, 'beacon-walkthrough-', RUNNER, [README], RUN_DEADLINE_MS);
  assert.equal(code, 0, `the walkthrough failed:\n${output}`);
  // It really went through the last step.
  assert.match(output, /stdout: from 8888: back over wss\n/);
  assert.match(output, /\$ beacon-client send wss:\/\/localhost:8444\/v1\/compat .*\n  stdout: from 7777: ping\n/);
  assert.match(output, /stderr: beacon-client: reconnecting in \d+ ms \(attempt 1, restarting\)\n/);
});
