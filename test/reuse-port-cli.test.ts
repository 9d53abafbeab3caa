/**
 * --reuse-port and --ops-bind at the edges, with the real CLI
 * (dist/cmd/beacon.js): every refusal is one line and exit 2 (no --cluster,
 * no addon, a port held the other way, an ops address in use, a bad
 * variable); --ops-bind alone serves /health and /metrics on its own
 * address and closes last; and the pure rules behind them (which Node has
 * reusePort, the default instance ID and its hint).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test, type TestContext } from 'node:test';
import { chooseInstanceId, instanceIdFromFlags } from '../lib/cluster/instance-id';
import { makeConfig } from '../lib/config';
import { nodeHasReusePort, reusePortProblem } from '../lib/reuse-port';
import { addressBytes, loadUdpBatchAddon } from '../lib/native/udp-batch-addon';
import {
  FAST, assertUsageError, cleanUpBeaconCli, runCli, sockets, startCli, stopCli, tempDir,
} from './helpers/beacon-cli';
import { makeIdentity } from './helpers/identity';
import { promValue, WsPeer } from './helpers/wire';

after(cleanUpBeaconCli);

/** No NATS is reached by these: each refusal comes before the cluster is joined. */
const NO_NATS = ['--cluster', 'nats://127.0.0.1:1'];

/** A preload that makes loading the addon fail, as on a host where it did not build. */
function withoutAddon(): Record<string, string> {
  const file = join(tempDir(), 'no-addon.js');
  writeFileSync(file, `const Module = require('node:module');
const load = Module._load;
Module._load = function (request, ...rest) {
  if (request === '@beacon/udp-batch') throw new Error("Cannot find module '@beacon/udp-batch' (hidden by the test)");
  return load.call(this, request, ...rest);
};
`);
  return { NODE_OPTIONS: `--require ${file}` };
}

/** A port on 127.0.0.1 held by this process, with SO_REUSEPORT (the addon's socket, on any Node) or without. */
async function holdTcp(t: TestContext, reusePort: boolean): Promise<number> {
  const server = net.createServer();
  const { addon } = loadUdpBatchAddon();
  assert.ok(addon, 'the udp-batch addon is built');
  const options: net.ListenOptions = reusePort
    ? { fd: addon.listenTcp(4, addressBytes('127.0.0.1', 4)!, 0, 511, true) } as net.ListenOptions
    : { host: '127.0.0.1', port: 0 };
  await new Promise<void>((resolve) => server.listen(options, resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as net.AddressInfo).port;
}

test('--reuse-port without --cluster: exit 2, one line naming --cluster', async () => {
  assertUsageError(await runCli([...FAST, '--reuse-port']), '--reuse-port is set but --cluster is not', 'add --cluster nats://');
});

test('--reuse-port without the udp-batch addon: exit 2, one line with its load error and how to build it; without --reuse-port the beacon runs on dgram', async () => {
  const env = withoutAddon();
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--reuse-port'], { env }),
    '--reuse-port: the udp-batch addon is not available', 'hidden by the test', 'npm rebuild @beacon/udp-batch', 'without --reuse-port');
  const { proc, listening } = await startCli(FAST, { env });
  assert.equal(listening.udpIo, 'dgram', 'the preload hid the addon and nothing else');
  await stopCli(proc);
});

test('a beacon without --reuse-port on a port held with SO_REUSEPORT is refused naming --reuse-port; one with it, on a port held without, naming that', async (t) => {
  const shared = await holdTcp(t, true);
  assertUsageError(await runCli(['--bind', `127.0.0.1:${shared}`, '--udp', '127.0.0.1:0']),
    `--bind 127.0.0.1:${shared}: address already in use`, 'must all run with --reuse-port');
  const plain = await holdTcp(t, false);
  assertUsageError(await runCli(['--bind', `127.0.0.1:${plain}`, '--udp', '127.0.0.1:0', ...NO_NATS, '--reuse-port']),
    `--bind 127.0.0.1:${plain}: address already in use by a process without --reuse-port`, 'start every beacon sharing it with --reuse-port');
});

test('--ops-bind in use, malformed or --bind\'s own: exit 2, one line naming --ops-bind', async (t) => {
  const taken = await holdTcp(t, false);
  assertUsageError(await runCli([...FAST, '--ops-bind', `127.0.0.1:${taken}`]), `--ops-bind 127.0.0.1:${taken}: address already in use`);
  assertUsageError(await runCli([...FAST, '--ops-bind', 'nowhere']), '--ops-bind');
  assertUsageError(await runCli(['--bind', '127.0.0.1:8443', '--udp', '127.0.0.1:0', '--ops-bind', '127.0.0.1:8443']),
    "--ops-bind 127.0.0.1:8443 is --bind's address", 'an address of their own');
  assertUsageError(await runCli(FAST, { env: { BEACON_OPS_BIND: '127.0.0.1:99999' } }), 'BEACON_OPS_BIND');
});

test('BEACON_REUSE_PORT: 1/true/yes turn it on, 0/false/no off, anything else is one line and exit 2', async () => {
  assertUsageError(await runCli(FAST, { env: { BEACON_REUSE_PORT: 'maybe' } }), 'BEACON_REUSE_PORT=maybe', '1, true or yes');
  for (const on of ['1', 'true', 'YES']) {
    assertUsageError(await runCli(FAST, { env: { BEACON_REUSE_PORT: on } }), '--reuse-port is set but --cluster is not');
  }
  const { proc, listening } = await startCli(FAST, { env: { BEACON_REUSE_PORT: 'false' } });
  assert.equal(listening.reusePort, false);
  await stopCli(proc);
});

test('--reuse-port with --udp-io dgram: refused on a Node whose dgram has no reusePort, run on one that has', async () => {
  const args = [...FAST, ...NO_NATS, '--reuse-port', '--udp-io', 'dgram'];
  if (!nodeHasReusePort()) {
    assertUsageError(await runCli(args), '--reuse-port with --udp-io dgram needs Node 22.12 or later', '--udp-io auto or batched');
    return;
  }
  const { proc, listening } = await startCli(args);
  assert.equal(listening.udpIo, 'dgram');
  assert.equal(listening.reusePort, true);
  await stopCli(proc);
});

test('--ops-bind (BEACON_OPS_BIND) without a cluster: /health and /metrics on their own address, which answers 503 through the drain and closes last', async () => {
  const keysDir = tempDir();
  const alice = makeIdentity(7001);
  writeFileSync(join(keysDir, 'keys.json'), JSON.stringify({ [alice.nodeId]: alice.publicKeyB64 }));
  const { proc, listening, url } = await startCli([...FAST, '--shutdown-grace', '60s', '--keys', join(keysDir, 'keys.json')],
    { env: { BEACON_OPS_BIND: '127.0.0.1:0' } });
  const ops = `http://${String(listening.opsBind)}`;
  assert.notEqual(String(listening.opsBind), String(listening.bind));
  const peer = await WsPeer.connect(url, alice);
  sockets.push(peer.ws);
  assert.deepEqual(await (await fetch(`${ops}/health`)).json(), { status: 'ok', peers: 1 });
  assert.equal(promValue(await (await fetch(`${ops}/metrics`)).text(), 'beacon_wss_peers'), 1);
  assert.equal((await fetch(`${ops}/v1/compat`)).status, 404, 'nothing for daemons there');

  // The peer stops reading: it does not answer the close, so the drain lasts until it reads again.
  const raw = (peer.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
  raw.pause();
  proc.signal('SIGTERM');
  await proc.waitForLog((l) => l.msg === 'shutting down', "'shutting down'");
  const draining = await fetch(`${ops}/health`);
  assert.equal(draining.status, 503);
  assert.deepEqual(await draining.json(), { status: 'shutting down' });
  raw.resume();
  assert.deepEqual(await proc.exit(15_000), { code: 0, signal: null });
  await assert.rejects(fetch(`${ops}/health`), 'closed with the beacon');
});

test('which Node has reusePort, and what --reuse-port needs here', () => {
  for (const [version, has] of [['20.20.2', false], ['22.11.0', false], ['22.12.0', true], ['23.0.1', false], ['23.1.0', true], ['24.21.0', true], ['26.0.0', true]] as const) {
    assert.equal(nodeHasReusePort(version), has, version);
  }
  assert.match(reusePortProblem('Cannot find module', 'batched', '24.0.0')!, /^--reuse-port: the udp-batch addon is not available \(Cannot find module\)/);
  assert.match(reusePortProblem(undefined, 'dgram', '20.20.2')!, /needs Node 22.12 or later .*this is Node 20\.20\.2/);
  assert.equal(reusePortProblem(undefined, 'dgram', '24.0.0'), undefined);
  assert.equal(reusePortProblem(undefined, 'batched', '20.20.2'), undefined);
});

test('the default instance ID: host name and the --ops-bind port, else the --bind port; --instance-id wins; each hint names the fix', () => {
  const cluster = { clusterServers: ['nats://127.0.0.1:4222'] };
  assert.deepEqual(chooseInstanceId(makeConfig({ ...cluster, instanceId: 'x' }), 8443, 9101, 'h'),
    { id: 'x', fix: 'if it is a second copy of this instance, stop one of them; otherwise give each process its own --instance-id' });
  assert.equal(chooseInstanceId(makeConfig({ ...cluster, reusePort: true }), 8443, 9101, 'h').id, 'h:9101');
  assert.match(chooseInstanceId(makeConfig({ ...cluster, reusePort: true }), 8443, 9101, 'h').fix,
    /^if it is a second copy of this instance, stop one of them; otherwise give each its own --ops-bind \(the default ID is the host name and the --ops-bind port/);
  // Before anything is bound (--reuse-port checks the ID first): from the flags, unless a port is still to be chosen.
  assert.equal(instanceIdFromFlags(makeConfig({ ...cluster, reusePort: true, opsBind: { host: '127.0.0.1', port: 9103 } }), 'h')?.id, 'h:9103');
  assert.equal(instanceIdFromFlags(makeConfig({ ...cluster, reusePort: true, opsBind: { host: '127.0.0.1', port: 0 } }), 'h'), undefined);
  assert.equal(instanceIdFromFlags(makeConfig({ ...cluster, reusePort: true, bind: { host: '127.0.0.1', port: 0 } }), 'h'), undefined);
  assert.equal(instanceIdFromFlags(makeConfig({ ...cluster, instanceId: 'x', bind: { host: '127.0.0.1', port: 0 } }), 'h')?.id, 'x');
  assert.equal(chooseInstanceId(makeConfig(cluster), 8443, 9102, 'h').id, 'h:9102');
  const shared = chooseInstanceId(makeConfig({ ...cluster, reusePort: true }), 8443, undefined, 'h');
  assert.equal(shared.id, 'h:8443');
  assert.match(shared.fix, /with --reuse-port the processes share --bind: give each its own --ops-bind/);
  assert.equal(chooseInstanceId(makeConfig(cluster), 8443, undefined, 'web 1/a').id, 'web-1-a:8443', 'host names are kept to the ID\'s characters');
});
