/** wss:// through a TLS proxy in front of the real beacon, with a private CA (as with Caddy's "tls internal"). */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CompatClient, ConnectError, PacketType } from '../lib/client';
import { nextEvent } from './helpers/client-events';
import { CliProcess, killSpawnedCli, runCli } from './helpers/client-cli';
import { TEST_CA_PEM, startTlsProxy, type TlsProxy } from './helpers/client-tls';
import { startTestBeacon, type TestBeacon } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { formatIdentity } from '../lib/identity';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
let tb: TestBeacon;
let proxy: TlsProxy;
const cleanups: Array<() => unknown> = [];

before(async () => {
  tb = await startTestBeacon([alice, bob]);
  proxy = await startTlsProxy(tb.beacon.httpAddress.port);
});
after(async () => {
  killSpawnedCli();
  for (const c of cleanups.reverse()) await c();
  await proxy.close();
  await tb.close();
});

test('with the private CA, two clients authenticate over wss:// and relay', async () => {
  const a = new CompatClient({ url: proxy.url, nodeId: 7777, identity: alice, ca: TEST_CA_PEM });
  const b = new CompatClient({ url: proxy.url, nodeId: 8888, identity: bob, ca: TEST_CA_PEM });
  cleanups.push(() => a.close(), () => b.close());
  await Promise.all([a.connect({ failFast: true, timeoutMs: 3_000 }), b.connect({ failFast: true, timeoutMs: 3_000 })]);
  const got = nextEvent(b, 'packet');
  a.relay(8888, 'over tls');
  const p = await got;
  assert.deepEqual(p.type === PacketType.RelayDeliver && [p.sender, p.payload.toString()], [7777, 'over tls']);
});

test('without it, the error names the CA problem and --ca', async () => {
  const c = new CompatClient({ url: proxy.url, nodeId: 7777, identity: alice });
  cleanups.push(() => c.close());
  const err = await c.connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConnectError);
  assert.equal(err.code, 'ETLS');
  assert.match(err.message, /not signed by a CA this client trusts/);
  assert.match(err.message, /--ca FILE/);
});

test('wss:// to a beacon without TLS says to use ws://', async () => {
  const c = new CompatClient({ url: tb.url.replace('ws://', 'wss://'), nodeId: 7777, identity: alice });
  cleanups.push(() => c.close());
  const err = await c.connect({ failFast: true, timeoutMs: 3_000 }).then(() => undefined, (e: unknown) => e);
  assert.equal((err as ConnectError).code, 'ETLS');
  assert.match((err as Error).message, /does not speak TLS; use ws:\/\//);
});

test('the CLI sends over wss:// with --ca, and without it exits 1 naming the CA problem', async () => {
  const dir = tb.dir;
  const aliceFile = join(dir, 'alice-tls.json');
  const bobFile = join(dir, 'bob-tls.json');
  const caFile = join(dir, 'ca.pem');
  writeFileSync(aliceFile, formatIdentity(alice), { mode: 0o600 });
  writeFileSync(bobFile, formatIdentity(bob), { mode: 0o600 });
  writeFileSync(caFile, TEST_CA_PEM);

  const receiver = new CliProcess(['connect', proxy.url, '--identity', bobFile, '--node-id', '8888', '--ca', caFile]);
  await receiver.waitFor('stderr', /connected to wss:\/\/127\.0\.0\.1:\d+\/v1\/compat as node 8888/);
  const sent = await runCli(['send', proxy.url, '--identity', aliceFile, '--node-id', '7777', '--to', '8888', '--data', 'hello over tls', '--ca', caFile]);
  assert.equal(sent.code, 0, sent.stderr);
  await receiver.waitFor('stdout', /^from 7777: hello over tls$/);
  assert.equal((await receiver.stop()).code, 0);

  const refused = await runCli(['send', proxy.url, '--identity', aliceFile, '--node-id', '7777', '--to', '8888', '--data', 'x']);
  assert.equal(refused.code, 1);
  const lines = refused.stderr.trim().split('\n');
  assert.equal(lines.length, 1, refused.stderr);
  assert.match(lines[0], /^beacon-client: TLS to 127\.0\.0\.1:\d+ failed: the certificate is not signed by a CA this client trusts .*--ca FILE/);
});
