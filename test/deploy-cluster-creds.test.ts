/**
 * deploy/beacon@.service.d/cluster-creds.conf, the optional drop-in that
 * hands the beacon its NATS credentials file through systemd's
 * LoadCredential= (the units' dynamic user cannot read a root-only file):
 * `systemd-analyze verify` reads it with either unit and warns about a
 * broken copy; the offline security review rates the units no worse with
 * it; the variable it sets is the CLI's --cluster-creds and nothing shipped
 * overrides it; and the unit's own ExecStart, given a credentials directory
 * as systemd would, joins a nats-server that lets in only that nkey user.
 * Without it, a root-only file named directly stops the beacon with one
 * line that points at the drop-in.
 *
 * Needs Debian's systemd (systemd-analyze) and nats-server
 * (.ci/install-deps); fails, never skips, without them.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, join } from 'node:path';
import { after, test } from 'node:test';
import { createUser } from '@nats-io/nkeys';
import { get, REPO_ROOT, requireTool, run, tempDir } from './helpers/deploy';
import { freeTcpPort } from './helpers/free-ports';
import { withTimeout } from './helpers/harness';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { startNatsWith } from './helpers/nats-deploy';
import { Child, parseEnvFile, parseUnit, setting, unitCommand, UNIT_PATH } from './helpers/systemd';
import { promValue } from './helpers/wire';

const DROP_IN_PATH = join(REPO_ROOT, 'deploy', 'beacon@.service.d', 'cluster-creds.conf');
const TEMPLATE_PATH = join(REPO_ROOT, 'deploy', 'beacon@.service');
const CLUSTER_ENV_PATH = join(REPO_ROOT, 'deploy', 'cluster.env');
const dropInText = readFileSync(DROP_IN_PATH, 'utf8');
const dropIn = parseUnit(dropInText);

/** Both units: the template (checked as instance 1) and the single process. */
const UNITS = [
  { file: TEMPLATE_PATH, name: 'beacon@.service', instance: 'beacon@1.service' },
  { file: UNIT_PATH, name: 'beacon.service', instance: 'beacon.service' },
];

const children: Child[] = [];
const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const child of children) await child.stop(2_000);
  for (const step of cleanup.reverse()) await step();
});

/** A unit in a fresh directory with `dropIn` (text) as <unit>.d/cluster-creds.conf, as systemd would find it. */
function installed(unit: typeof UNITS[number], dropInContent?: string): string {
  const dir = tempDir('creds-unit');
  copyFileSync(unit.file, join(dir, unit.name));
  if (dropInContent !== undefined) {
    mkdirSync(join(dir, `${unit.name}.d`));
    writeFileSync(join(dir, `${unit.name}.d`, 'cluster-creds.conf'), dropInContent);
  }
  return join(dir, unit.instance);
}

/** systemd-analyze verify's exit code and its lines about the unit or the drop-in. */
async function verify(path: string): Promise<{ code: number | null; diagnostics: string[]; all: string }> {
  const result = await run(requireTool('systemd-analyze'), ['verify', path], { timeoutMs: 30_000 });
  const all = `${result.stdout}${result.stderr}`;
  return { code: result.code, diagnostics: all.split('\n').filter((line) => /beacon|cluster-creds/.test(line)), all };
}

async function exposure(path: string): Promise<number> {
  const review = await run(requireTool('systemd-analyze'), ['security', '--offline=yes', '--no-pager', path], { timeoutMs: 30_000 });
  const match = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(review.stdout + review.stderr);
  assert.ok(match, `no exposure level in systemd-analyze security's output:\n${review.stdout}${review.stderr}`);
  return Number(match[1]);
}

/** The drop-in's Environment= as systemd would set it, %d being the credentials directory. */
function dropInEnvironment(credentialsDirectory: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const assignment of dropIn.get('Service')?.get('Environment') ?? []) {
    const eq = assignment.indexOf('=');
    const value = assignment.slice(eq + 1);
    assert.ok(!/%[^d]/.test(value), `${assignment}: only %d is expanded by this test`);
    env[assignment.slice(0, eq)] = value.replace(/%d/g, credentialsDirectory);
  }
  return env;
}

function active(path: string): Record<string, string> {
  return Object.fromEntries(parseEnvFile(readFileSync(path, 'utf8')).filter((e) => !e.commented).map((e) => [e.name, e.value]));
}

test('systemd-analyze verify reads the drop-in with either unit without a warning, and warns about broken copies of it', async () => {
  for (const unit of UNITS) {
    const good = await verify(installed(unit, dropInText));
    assert.equal(good.code, 0, `${unit.name} with the drop-in: exit ${good.code}\n${good.all}`);
    assert.deepEqual(good.diagnostics, [], `systemd-analyze verify warned about ${unit.name} with the drop-in`);
  }
  // (systemd warns and goes on for these, so the check is on the lines; each proves the drop-in was read.)
  const broken: Array<[string, string, RegExp]> = [
    ['an unknown specifier', dropInText.replace(/^(Environment=.*)%d\//m, '$1%Q/'), /Failed to resolve specifiers in BEACON_CLUSTER_CREDS=%Q/],
    ['a misspelled key', dropInText.replace(/^LoadCredential=/m, 'LoadCredentail='), /Unknown key 'LoadCredentail'/],
    ['an invalid credential name', dropInText.replace(/^LoadCredential=nats\.creds:/m, 'LoadCredential=nats/creds:'), /Credential name "nats\/creds" not valid/],
  ];
  const results = await Promise.all(broken.map(([, text]) => verify(installed(UNITS[0]!, text))));
  results.forEach((result, i) => {
    const [what, , warning] = broken[i]!;
    assert.ok(result.diagnostics.some((line) => /cluster-creds\.conf:\d+:/.test(line) && warning.test(line)),
      `no warning for a drop-in with ${what}:\n${result.all}`);
  });
});

test('the offline security review rates each unit no worse with the drop-in (and does read drop-ins)', async () => {
  for (const unit of UNITS) {
    const [without, withDropIn, weakened] = await Promise.all([
      exposure(installed(unit)),
      exposure(installed(unit, dropInText)),
      exposure(installed(unit, `${dropInText}\nProtectHome=no\nPrivateDevices=no\n`)),
    ]);
    assert.ok(withDropIn <= without, `${unit.name}: exposure ${withDropIn} with the drop-in, ${without} without`);
    assert.ok(withDropIn <= 2.0, `${unit.name}: exposure ${withDropIn} > 2.0`);
    assert.ok(weakened > withDropIn, `${unit.name}: a drop-in that lifts protections did not raise the exposure (${weakened}): the review ignored it`);
  }
});

test('the drop-in loads one credential and names its copy in BEACON_CLUSTER_CREDS, the CLI\'s --cluster-creds; nothing shipped overrides or needs it', async () => {
  assert.deepEqual([...dropIn.keys()], ['Service'], 'only a [Service] section');
  assert.deepEqual([...dropIn.get('Service')!.keys()].sort(), ['Environment', 'LoadCredential'], 'nothing but the credential and its variable');
  const load = setting(dropIn, 'Service', 'LoadCredential');
  const [id, source] = [load.slice(0, load.indexOf(':')), load.slice(load.indexOf(':') + 1)];
  assert.equal(source, '/etc/beacon/nats.creds', 'beside the other files in /etc/beacon');
  const env = dropInEnvironment('/run/credentials/beacon@1.service');
  assert.deepEqual(Object.keys(env), ['BEACON_CLUSTER_CREDS']);
  assert.equal(env.BEACON_CLUSTER_CREDS, `/run/credentials/beacon@1.service/${id}`, 'the variable names the loaded credential');
  assert.equal(basename(env.BEACON_CLUSTER_CREDS!), id);

  const help = await run(process.execPath, [join(REPO_ROOT, 'dist', 'cmd', 'beacon.js'), '--help'], { timeoutMs: 10_000 });
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout.replace(/\s+/g, ' '), /--cluster-creds <file> [^-]*\(env: BEACON_CLUSTER_CREDS\)/, 'the CLI reads BEACON_CLUSTER_CREDS as --cluster-creds');

  // An EnvironmentFile= value overrides Environment=: the shipped env files leave the variable commented out.
  for (const file of [CLUSTER_ENV_PATH, join(REPO_ROOT, 'deploy', 'beacon.env')]) {
    assert.ok(!('BEACON_CLUSTER_CREDS' in active(file)), `${file} sets BEACON_CLUSTER_CREDS, which would override the drop-in's`);
  }
  // A LoadCredential= of a missing file fails the unit: the base units must work without one.
  for (const unit of UNITS) {
    const service = parseUnit(readFileSync(unit.file, 'utf8')).get('Service')!;
    assert.ok(!service.has('LoadCredential'), `${unit.name} loads a credential itself`);
  }
});

test('the unit\'s ExecStart with the drop-in\'s variable and a credentials directory joins a NATS that lets in only that nkey user; without it, it is refused', async () => {
  const user = createUser();
  const seed = new TextDecoder().decode(user.getSeed());
  const nats = await startNatsWith(`authorization {\n  users: [\n    { nkey: ${user.getPublicKey()} }\n  ]\n}`);
  cleanup.push(() => nats.stop());

  const dir = tempDir('creds-run');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson([makeIdentity(7777)]));
  // As systemd hands it over: a private directory, the file read-only for the service.
  const credentialsDirectory = join(dir, 'credentials');
  mkdirSync(credentialsDirectory, { mode: 0o700 });
  const id = setting(dropIn, 'Service', 'LoadCredential').split(':')[0]!;
  writeFileSync(join(credentialsDirectory, id), `${seed}\n`, { mode: 0o400 });
  chmodSync(credentialsDirectory, 0o500);
  cleanup.push(() => chmodSync(credentialsDirectory, 0o700)); // so the temp dir can be removed

  const template = parseUnit(readFileSync(TEMPLATE_PATH, 'utf8'));
  const httpPort = await freeTcpPort();
  // systemd's order: Environment= first, then the EnvironmentFile=s override it.
  const unitEnv = (withDropIn: boolean, port: number, opsPort: number) => ({
    PATH: process.env.PATH,
    ...(withDropIn ? { ...dropInEnvironment(credentialsDirectory), CREDENTIALS_DIRECTORY: credentialsDirectory } : {}),
    ...active(join(REPO_ROOT, 'deploy', 'beacon.env')),
    ...active(CLUSTER_ENV_PATH),
    BEACON_BIND: `127.0.0.1:${port}`,
    BEACON_UDP: '127.0.0.1:0',
    // beacon@1's --ops-bind is the base port: a free one here, not the shipped 9101.
    BEACON_OPS_BIND: `127.0.0.1:${opsPort}`,
    BEACON_KEYS: keys,
    BEACON_CLUSTER: `nats://127.0.0.1:${nats.ports.client}`,
    BEACON_LOG_LEVEL: 'info',
  });
  const execStart = unitCommand(setting(template, 'Service', 'ExecStart').replace(/%i/g, '1'));
  const spawnChild = (env: NodeJS.ProcessEnv) => {
    const child = new Child(execStart, env, dir);
    children.push(child);
    return child;
  };

  const opsPort = await freeTcpPort();
  const beacon = spawnChild(unitEnv(true, httpPort, opsPort));
  await beacon.waitForLog('cluster joined', 15_000);
  const metrics = await get(`http://127.0.0.1:${httpPort}`, '/metrics');
  assert.equal(promValue(metrics.body, 'beacon_cluster_connected'), 1);
  // The server let it in as the nkey user of the seed in the credentials directory.
  const connz = await nats.monitor('/connz?auth=true');
  const ours = ((connz.connections ?? []) as { name?: string; authorized_user?: string }[]).find((c) => c.name === `beacon ${hostname()}:${opsPort}`);
  assert.equal(ours?.authorized_user, user.getPublicKey(), JSON.stringify(connz.connections));

  // The same unit without the drop-in: no credentials, so this NATS refuses it (exit 2: systemd does not retry).
  const bare = spawnChild(unitEnv(false, await freeTcpPort(), await freeTcpPort()));
  const exit = await withTimeout(bare.exit, 15_000, "the beacon without credentials to exit");
  assert.deepEqual(exit, { code: 2, signal: null }, bare.output);
  assert.match(bare.output, /NATS refused this beacon's credentials/);

  for (const child of [beacon, bare]) assert.ok(!child.output.includes(seed), 'the seed was printed');
  const stopped = await beacon.stop(10_000);
  assert.equal(stopped.code, 0, beacon.output);
});

test('the trap the drop-in avoids: a root-only credentials file named directly stops the unit\'s ExecStart with exit 2 and one line pointing at the drop-in', async () => {
  const dir = tempDir('creds-denied');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, keysFileJson([makeIdentity(7777)]));
  const secret = join(dir, 'nats.creds');
  writeFileSync(secret, `${new TextDecoder().decode(createUser().getSeed())}\n`, { mode: 0o600 });
  const template = parseUnit(readFileSync(TEMPLATE_PATH, 'utf8'));
  let argv = unitCommand(setting(template, 'Service', 'ExecStart').replace(/%i/g, '1'));
  if (process.getuid?.() === 0) {
    // As the units' dynamic user sees it: someone else's 0600 file, and no capability to override that.
    chownSync(secret, 65534, 65534);
    argv = [requireTool('setpriv'), '--inh-caps=-all', '--bounding-set=-all', ...argv];
  } else {
    chmodSync(secret, 0o000);
  }
  const beacon = new Child(argv, {
    PATH: process.env.PATH,
    ...active(join(REPO_ROOT, 'deploy', 'beacon.env')),
    ...active(CLUSTER_ENV_PATH),
    BEACON_BIND: `127.0.0.1:${await freeTcpPort()}`,
    BEACON_UDP: '127.0.0.1:0',
    BEACON_KEYS: keys,
    BEACON_CLUSTER: `nats://127.0.0.1:${await freeTcpPort()}`,
    BEACON_CLUSTER_CREDS: secret,
  }, dir);
  children.push(beacon);
  assert.deepEqual(await withTimeout(beacon.exit, 15_000, 'the beacon to exit'), { code: 2, signal: null }, beacon.output);
  const lines = beacon.output.trim().split('\n').filter((line) => !line.startsWith('{'));
  assert.equal(lines.length, 1, beacon.output);
  assert.match(lines[0]!, /^beacon: --cluster-creds \S+nats\.creds: cannot read \(EACCES\); .*keep it root-only .*deploy\/beacon@\.service\.d\/cluster-creds\.conf \(LoadCredential=\)/);
});
