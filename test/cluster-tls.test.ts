/**
 * Cluster mode over TLS to NATS, for real: a nats-server that requires TLS,
 * with a certificate for 127.0.0.1 signed by a CA made for this run
 * (openssl). With --cluster-tls-ca the instances join and relay across
 * over TLS; every way of getting TLS wrong exits 2 with one ECLUSTERTLS
 * line naming the fix, within seconds.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { FAST, Instance, allSee, joinedInstance, relayUntilDelivered, writeKeys } from './helpers/cluster';
import { tempDir } from './helpers/deploy';
import { withTimeout } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { startNatsWith, type RunningNats } from './helpers/nats-deploy';
import { issueServerCert, makeCa, type TestCa } from './helpers/test-ca';
import { WsPeer } from './helpers/wire';

const alice = makeIdentity(1101);
const bob = makeIdentity(2202);
let keys: string;
let ca: TestCa;
let otherCa: TestCa;
let nats: RunningNats;

const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

before(async () => {
  keys = writeKeys([alice, bob]);
  [ca, otherCa] = await Promise.all([makeCa('beacon test NATS CA'), makeCa('some other CA')]);
  const cert = await issueServerCert(ca);
  nats = await startNatsWith(`tls {\n  cert_file: ${JSON.stringify(cert.certFile)}\n  key_file: ${JSON.stringify(cert.keyFile)}\n}`);
  cleanup.push(() => nats.stop());
});

test('with --cluster-tls-ca two instances join over TLS, and a relay crosses from one to the other', async () => {
  const tlsUrl = `tls://127.0.0.1:${nats.ports.client}`;
  const a = await joinedInstance('tls-a', { nats: tlsUrl, keys, extra: ['--cluster-tls-ca', ca.certFile] });
  cleanup.push(() => a.stop());
  // With a CA given, a nats:// URL is TLS too (the server requires it anyway).
  const b = await joinedInstance('tls-b', { nats: `nats://127.0.0.1:${nats.ports.client}`, keys, extra: ['--cluster-tls-ca', ca.certFile] });
  cleanup.push(() => b.stop());
  await allSee([a, b], 2);
  assert.equal(await a.metric('beacon_cluster_connected'), 1);
  assert.equal(await b.metric('beacon_cluster_connected'), 1);

  // The server says both connections are TLS.
  const connz = await nats.monitor('/connz');
  const ours = ((connz.connections ?? []) as { name?: string; tls_version?: string }[]).filter((c) => /^beacon tls-[ab]$/.test(c.name ?? ''));
  assert.equal(ours.length, 2, JSON.stringify(connz.connections));
  for (const conn of ours) assert.match(conn.tls_version ?? '', /^1\.[23]$/, `${conn.name} is not on TLS: ${JSON.stringify(conn)}`);

  const aliceA = await WsPeer.connect(a.url, alice);
  cleanup.push(() => aliceA.close());
  const bobB = await WsPeer.connect(b.url, bob);
  cleanup.push(() => bobB.close());
  await relayUntilDelivered(aliceA, alice, bobB, bob.nodeId, 'across TLS NATS');
  assert.ok((await a.metric('beacon_relay_total', { route: 'cluster' }))! >= 1);
  assert.ok((await b.metric('beacon_cluster_frames_total', { direction: 'in' }))! >= 1);
});

/** Starts a beacon with `args` and returns its one stderr line once it exited 2 (15 s at most: it never hangs). */
async function refused(name: string, args: string[]): Promise<string> {
  const proc = new Instance(name, [...FAST, '--keys', keys, '--instance-id', name, ...args]);
  const { code } = await withTimeout(proc.exited, 15_000, `${name} to exit`);
  assert.equal(code, 2, `${name}: exit code; stderr: ${proc.stderr}`);
  const lines = proc.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${name}: one line: ${proc.stderr}`);
  assert.ok(!proc.logs.some((l) => l.msg === 'cluster joined'), `${name} joined`);
  return lines[0]!;
}

test('TLS got wrong: no CA, another CA, nats:// to this TLS server, tls:// to a plain one, an unreadable or foreign CA file: each exits 2 with one line naming the fix', async () => {
  const plain = await NatsServer.start();
  cleanup.push(() => plain.close());
  const tlsUrl = `tls://127.0.0.1:${nats.ports.client}`;
  const dir = tempDir('tls-ca-files');
  const notPem = join(dir, 'not-a-ca.pem');
  writeFileSync(notPem, 'this is not a certificate\n');

  const [noCa, wrongCa, natsScheme, tlsToPlain, missing, foreign] = await Promise.all([
    refused('no-ca', ['--cluster', tlsUrl]),
    refused('wrong-ca', ['--cluster', tlsUrl, '--cluster-tls-ca', otherCa.certFile]),
    refused('nats-scheme', ['--cluster', `nats://127.0.0.1:${nats.ports.client}`]),
    refused('tls-to-plain', ['--cluster', `tls://127.0.0.1:${plain.port}`, '--cluster-tls-ca', ca.certFile]),
    refused('missing-ca', ['--cluster', tlsUrl, '--cluster-tls-ca', join(dir, 'nonexistent.pem')]),
    refused('foreign-ca', ['--cluster', tlsUrl, '--cluster-tls-ca', notPem]),
  ]);
  const untrusted = /^beacon: --cluster: TLS to NATS failed \(.*certificate.*\); the NATS server's certificate is not signed by a CA this beacon trusts: give the CA that signed it with --cluster-tls-ca FILE$/;
  assert.match(noCa, untrusted);
  assert.match(wrongCa, untrusted);
  assert.match(natsScheme, untrusted);
  assert.match(tlsToPlain, /^beacon: --cluster: TLS to NATS failed \(server does not support 'tls'\); the NATS server does not speak TLS: use a nats:\/\/ URL without --cluster-tls-ca/);
  assert.match(missing, /^beacon: --cluster-tls-ca \S+nonexistent\.pem: cannot read \(ENOENT\); name the PEM file of the CA/);
  assert.match(foreign, /^beacon: --cluster-tls-ca \S+not-a-ca\.pem: no PEM certificate in it; name the PEM file/);
});
