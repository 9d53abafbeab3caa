/**
 * Cluster mode's credentials against real nats-servers: an nkey seed file
 * (--cluster-creds) for a server that knows the nkey user, a password or a
 * token in the URL, and a NATS .creds file (user JWT and seed) for a server in
 * operator mode whose operator, accounts and user are minted here with
 * @nats-io/jwt. The right ones join; wrong ones exit 2 with one
 * ECLUSTERAUTH line; a damaged seed is refused before connecting. No seed
 * or password ever shows in a log line or an error line.
 */
import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from '@nats-io/jwt';
import { createAccount, createOperator, createUser, type KeyPair } from '@nats-io/nkeys';
import { FAST, Instance, allSee, joinedInstance, relayUntilDelivered, writeKeys } from './helpers/cluster';
import { tempDir } from './helpers/deploy';
import { withTimeout } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { startNatsWith } from './helpers/nats-deploy';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1201);
const bob = makeIdentity(2302);
let keys: string;
const dir = tempDir('cluster-creds');

const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

before(() => {
  keys = writeKeys([alice, bob]);
});

/** A secret file, as an operator would install it (0600). */
function secretFile(name: string, content: string | Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  chmodSync(path, 0o600);
  return path;
}

const seedOf = (kp: KeyPair) => new TextDecoder().decode(kp.getSeed());

/** Everything a process said: its log lines and stderr. */
const everything = (proc: Instance) => JSON.stringify(proc.logs) + proc.stderr;

async function refused(name: string, args: string[]): Promise<{ line: string; proc: Instance }> {
  const proc = new Instance(name, [...FAST, '--keys', keys, '--instance-id', name, ...args]);
  const { code } = await withTimeout(proc.exited, 15_000, `${name} to exit`);
  assert.equal(code, 2, `${name}: exit code; stderr: ${proc.stderr}`);
  const lines = proc.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${name}: one line: ${proc.stderr}`);
  return { line: lines[0]!, proc };
}

const AUTH_REFUSED = /^beacon: --cluster: NATS refused this beacon's credentials \(.*Authorization Violation.*\); check user:password in the --cluster URL or the --cluster-creds file/;

test('nkey seed file: the nkey user joins and relays across; another seed and a damaged one exit 2; a password in the URL joins; no seed or password is ever printed', async () => {
  const user = createUser();
  const stranger = createUser();
  const password = 'pw-7f3a9c-never-printed';
  const nats = await startNatsWith(`authorization {\n  users: [\n    { nkey: ${user.getPublicKey()} }\n    { user: beacon, password: "${password}" }\n  ]\n}`);
  cleanup.push(() => nats.stop());
  const url = `nats://127.0.0.1:${nats.ports.client}`;
  const seedFile = secretFile('beacon.nk', `${seedOf(user)}\n`);

  const a = await joinedInstance('nkey-a', { nats: url, keys, extra: ['--cluster-creds', seedFile] });
  cleanup.push(() => a.stop());
  const b = await joinedInstance('password-b', { nats: `nats://beacon:${password}@127.0.0.1:${nats.ports.client}`, keys });
  cleanup.push(() => b.stop());
  await allSee([a, b], 2);
  const aliceA = await WsPeer.connect(a.url, alice);
  cleanup.push(() => aliceA.close());
  const bobB = await WsPeer.connect(b.url, bob);
  cleanup.push(() => bobB.close());
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'nkey to password');

  const strangerSeed = seedOf(stranger);
  const damagedSeed = seedOf(user).slice(0, -2) + (seedOf(user).endsWith('AA') ? 'BB' : 'AA');
  const [wrong, damaged, wrongPassword] = await Promise.all([
    refused('wrong-seed', ['--cluster', url, '--cluster-creds', secretFile('stranger.nk', strangerSeed)]),
    refused('damaged-seed', ['--cluster', url, '--cluster-creds', secretFile('damaged.nk', damagedSeed)]),
    refused('wrong-password', ['--cluster', `nats://beacon:${password}-not@127.0.0.1:${nats.ports.client}`]),
  ]);
  assert.match(wrong.line, AUTH_REFUSED);
  assert.match(wrongPassword.line, AUTH_REFUSED);
  assert.match(damaged.line, /^beacon: --cluster-creds \S+damaged\.nk: the nkey seed in it is damaged \(.*checksum.*\); copy it again from where `nk -gen user` made it$/);

  for (const proc of [a, b, wrong.proc, damaged.proc, wrongPassword.proc]) {
    const said = everything(proc);
    for (const secret of [seedOf(user), strangerSeed, damagedSeed, password]) {
      assert.ok(!said.includes(secret), `${proc.name} printed a secret`);
    }
  }
  // (The check above can fail: the URL's user is printed, only the password is hidden.)
  assert.ok(JSON.stringify(b.logs).includes('beacon:***@'), 'the password-b instance logs its URL with the password hidden');
});

test('a token in the URL joins; a wrong token exits 2; neither is printed', async () => {
  const token = 'tok-5d1e88-never-printed';
  const nats = await startNatsWith(`authorization {\n  token: "${token}"\n}`);
  cleanup.push(() => nats.stop());
  const a = await joinedInstance('token-a', { nats: `nats://${token}@127.0.0.1:${nats.ports.client}`, keys });
  cleanup.push(() => a.stop());
  assert.equal(await a.metric('beacon_cluster_connected'), 1);
  const wrong = await refused('wrong-token', ['--cluster', `nats://${token}-not@127.0.0.1:${nats.ports.client}`]);
  assert.match(wrong.line, AUTH_REFUSED);
  for (const proc of [a, wrong.proc]) assert.ok(!everything(proc).includes(token), `${proc.name} printed the token`);
  assert.ok(JSON.stringify(a.logs).includes(`nats://***@127.0.0.1:${nats.ports.client}`), 'the URL is logged with the token hidden');
});

test('.creds file (operator mode, JWTs minted here): the user joins; a user of an account the server does not know, and a damaged file, exit 2; no seed is printed', async () => {
  const operator = createOperator();
  const system = createAccount();
  const account = createAccount();
  const unknownAccount = createAccount();
  const signed = { signer: operator };
  const limits = {
    subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1,
    mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1,
  };
  const operatorJwt = await encodeOperator('beacon-test', operator, { system_account: system.getPublicKey() });
  const systemJwt = await encodeAccount('SYS', system, {}, signed);
  const accountJwt = await encodeAccount('BEACON', account, { limits }, signed);
  const nats = await startNatsWith([
    `operator: ${operatorJwt}`,
    `system_account: ${system.getPublicKey()}`,
    'resolver: MEMORY',
    `resolver_preload: {\n  ${system.getPublicKey()}: ${systemJwt}\n  ${account.getPublicKey()}: ${accountJwt}\n}`,
  ].join('\n'));
  cleanup.push(() => nats.stop());
  const url = `nats://127.0.0.1:${nats.ports.client}`;

  const user = createUser();
  const creds = secretFile('beacon.creds', fmtCreds(await encodeUser('beacon', user, account), user));
  const a = await joinedInstance('creds-a', { nats: url, keys, extra: ['--cluster-creds', creds] });
  cleanup.push(() => a.stop());
  const b = await joinedInstance('creds-b', { nats: url, keys, extra: ['--cluster-creds', creds] });
  cleanup.push(() => b.stop());
  await allSee([a, b], 2);
  assert.equal(await a.metric('beacon_cluster_connected'), 1);
  // The bucket lives in the account the .creds file's user belongs to.
  const jsz = await nats.monitor('/jsz?accounts=true&streams=true');
  const details = (jsz.account_details ?? []) as { id: string; stream_detail?: { name: string }[] }[];
  assert.ok(details.find((d) => d.id === account.getPublicKey())?.stream_detail?.some((s) => s.name === 'KV_beacon-directory'),
    `no directory bucket in the BEACON account: ${JSON.stringify(details)}`);

  const stranger = createUser();
  const strangerCreds = secretFile('stranger.creds', fmtCreds(await encodeUser('stranger', stranger, unknownAccount), stranger));
  const userSeed = seedOf(user);
  const damagedSeed = userSeed.slice(0, -2) + (userSeed.endsWith('AA') ? 'BB' : 'AA');
  const damagedCreds = secretFile('damaged.creds', new TextDecoder().decode(fmtCreds(await encodeUser('beacon', user, account), user)).replace(userSeed, damagedSeed));
  const [wrong, damaged] = await Promise.all([
    refused('unknown-account', ['--cluster', url, '--cluster-creds', strangerCreds]),
    refused('damaged-creds', ['--cluster', url, '--cluster-creds', damagedCreds]),
  ]);
  assert.match(wrong.line, AUTH_REFUSED);
  assert.match(damaged.line, /^beacon: --cluster-creds \S+damaged\.creds: the \.creds file in it is damaged \(.*checksum.*\); copy it again from where `nsc generate creds` made it$/);

  for (const proc of [a, b, wrong.proc, damaged.proc]) {
    const said = everything(proc);
    for (const secret of [userSeed, damagedSeed, seedOf(stranger)]) assert.ok(!said.includes(secret), `${proc.name} printed a seed`);
  }
});
