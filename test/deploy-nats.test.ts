/**
 * deploy/nats/nats-server.conf (one machine) and nats-server-3.conf (three),
 * as shipped, with Debian's real nats-server: `nats-server -t` accepts them;
 * the one-machine file runs with JetStream, on loopback, and lets in only
 * the beacon user with its password (the one cluster.env uses); three
 * servers on the three-machine file form one JetStream cluster, and the
 * directory bucket raised to three replicas keeps its entry on the others
 * when the server leading it stops. The replicas script reads the
 * variables as the beacon does: a token URL is a token and never
 * printed, and a CA file it cannot use is one line and exit 2.
 *
 * Needs Debian's nats-server (.ci/install-deps); fails, never skips, without it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { requireTool, run, sleep, tempDir, REPO_ROOT } from './helpers/deploy';
import {
  NATS_SINGLE_CONF, NATS_THREE_CONF, NatsProbe, adaptNatsConfig, directoryStream, freeNatsPorts, metaLeaderElected, readShipped,
  shippedPassword, startNats, startNatsWith, startThreeNats, type RunningNats,
} from './helpers/nats-deploy';
import { issueServerCert, makeCa } from './helpers/test-ca';
import { parseEnvFile } from './helpers/systemd';
import { renameSync, writeFileSync } from 'node:fs';
import { spawnInstance, writeKeys } from './helpers/cluster';
import { makeIdentity } from './helpers/identity';
import { WsPeer } from './helpers/wire';

const servers: RunningNats[] = [];
const probes: NatsProbe[] = [];
after(async () => {
  for (const p of probes) p.close();
  for (const s of servers) await s.stop();
});

/** Asks `attempt` every 250 ms until it gives a value (failures count as no value yet); 45 s at most. */
async function eventually<T>(attempt: () => Promise<T | undefined>, what: string): Promise<T> {
  const deadline = Date.now() + 45_000;
  let last = 'no answer yet';
  for (;;) {
    try {
      const value = await attempt();
      if (value !== undefined) return value;
      last = 'not yet';
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`no ${what} within 45 s (last: ${last})`);
    await sleep(250);
  }
}

async function login(port: number, user?: string, pass?: string) {
  const result = await NatsProbe.login(port, user, pass);
  probes.push(result.probe);
  return result;
}

const BUCKET_SCRIPT = join(REPO_ROOT, 'deploy', 'nats-directory-bucket');

/** Runs deploy/nats-directory-bucket as the guide does: cluster.env's variables, its URL moved to `clientPorts`. */
async function setReplicas(replicas: string, clientPorts: number[], password?: string) {
  const env = Object.fromEntries(parseEnvFile(readShipped(join(REPO_ROOT, 'deploy', 'cluster.env')))
    .filter((e) => !e.commented).map((e) => [e.name, e.value]));
  const shipped = new URL(env.BEACON_CLUSTER!);
  env.BEACON_CLUSTER = clientPorts.map((port) => {
    const url = new URL(shipped.href);
    url.port = String(port);
    if (password !== undefined) url.password = password;
    return url.href.replace(/\/$/, '');
  }).join(',');
  return run(process.execPath, [BUCKET_SCRIPT, replicas], { env: { PATH: process.env.PATH, ...env }, timeoutMs: 30_000 });
}

test('nats-server -t accepts both shipped configurations, and rejects a broken copy', async () => {
  const bin = requireTool('nats-server');
  for (const file of [NATS_SINGLE_CONF, NATS_THREE_CONF]) {
    const checked = await run(bin, ['-t', '-c', file], { timeoutMs: 20_000 });
    assert.equal(checked.code, 0, `nats-server -t ${file}:\n${checked.stdout}${checked.stderr}`);
    assert.match(checked.stdout + checked.stderr, /is valid/);
  }
  const broken = join(tempDir('nats-broken'), 'nats-server.conf');
  writeFileSync(broken, readShipped(NATS_SINGLE_CONF).replace('jetstream {', 'jetstrem {'));
  const bad = await run(bin, ['-t', '-c', broken], { timeoutMs: 20_000 });
  assert.notEqual(bad.code, 0, 'nats-server -t accepted an unknown field');
  assert.match(bad.stdout + bad.stderr, /unknown field "jetstrem"/);
});

test('cluster.env logs in as the user and password of the shipped NATS files, at their client port', () => {
  const env = Object.fromEntries(parseEnvFile(readShipped(join(REPO_ROOT, 'deploy', 'cluster.env')))
    .filter((e) => !e.commented).map((e) => [e.name, e.value]));
  const url = new URL(env.BEACON_CLUSTER!);
  assert.equal(url.protocol, 'nats:');
  assert.equal(url.port, '4222');
  assert.equal(url.username, 'beacon');
  for (const file of [NATS_SINGLE_CONF, NATS_THREE_CONF]) {
    assert.equal(decodeURIComponent(url.password), shippedPassword(readShipped(file), 'beacon'), `${file} and cluster.env disagree on the password`);
  }
  assert.equal(env.BEACON_CLUSTER_NAME, 'beacon', 'the three-machine test creates the bucket of the cluster name "beacon"');
});

test('one machine: JetStream on, loopback only, and only the beacon user with its password gets in', async () => {
  const shipped = readShipped(NATS_SINGLE_CONF);
  const p = await freeNatsPorts();
  const nats = await startNats(adaptNatsConfig(shipped, p, tempDir('nats-store')), p);
  servers.push(nats);

  const varz = await nats.monitor('/varz');
  assert.equal(varz.host, '127.0.0.1');
  assert.equal(varz.auth_required, true);
  assert.equal(varz.server_name, 'beacon-nats-1');
  assert.ok(varz.jetstream && typeof varz.jetstream === 'object', `JetStream is off: ${JSON.stringify(varz.jetstream)}`);

  const anonymous = await login(p.client);
  assert.equal(anonymous.info.auth_required, true);
  assert.match(anonymous.answer, /^-ERR 'Authorization Violation'/);
  const wrong = await login(p.client, 'beacon', 'not-the-password');
  assert.match(wrong.answer, /^-ERR 'Authorization Violation'/);

  const beacon = await login(p.client, 'beacon', shippedPassword(shipped, 'beacon'));
  assert.equal(beacon.answer, 'PONG');
  const account = await beacon.probe.request('$JS.API.INFO', '');
  assert.equal(account.error, undefined, `JetStream is not enabled for the beacon's account: ${JSON.stringify(account)}`);
  assert.equal(account.type, 'io.nats.jetstream.api.v1.account_info_response');

  // The replicas script: one server keeps one copy; three are refused with the fix; a wrong password is refused.
  const three = await setReplicas('3', [p.client]);
  assert.equal(three.code, 1, three.stdout + three.stderr);
  assert.match(three.stderr, /^nats-directory-bucket: this NATS server is not part of a NATS cluster, so it cannot keep 3 copies; .*nats-server-3\.conf/);
  const one = await setReplicas('1', [p.client]);
  assert.equal(one.code, 0, one.stderr);
  assert.equal(one.stdout, 'nats-directory-bucket: there was no bucket beacon-directory: created it with 1 replica, empty (the instances write their nodes into it when they join or rejoin NATS)\n');
  const again = await setReplicas('1', [p.client]);
  assert.match(again.stdout, /already has 1 replica; nothing to do/);
  const denied = await setReplicas('1', [p.client], 'wrong');
  assert.equal(denied.code, 1);
  assert.match(denied.stderr, /Authorization Violation/);
  for (const bad of ['0', 'three']) {
    const refused = await setReplicas(bad, [p.client]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /is not a number of replicas from 1 to 5/);
  }
});

test('the replicas script reads the variables as the beacon does: a token URL is a token, never printed; a missing or non-PEM CA file is one line and exit 2', async () => {
  const token = 'tok-91c4e2-never-printed';
  const ca = await makeCa('beacon test NATS CA');
  const cert = await issueServerCert(ca);
  const nats = await startNatsWith(`tls {\n  cert_file: ${JSON.stringify(cert.certFile)}\n  key_file: ${JSON.stringify(cert.keyFile)}\n}\n`
    + `authorization {\n  token: "${token}"\n}`);
  servers.push(nats);
  const notPem = join(tempDir('not-pem'), 'ca.txt');
  writeFileSync(notPem, 'not a certificate\n');
  const script = (env: Record<string, string>) => run(process.execPath, [BUCKET_SCRIPT, '1'], { env: { PATH: process.env.PATH, ...env }, timeoutMs: 30_000 });
  const at = (secret: string) => `tls://${secret}@127.0.0.1:${nats.ports.client}`;

  const [created, wrong, missingCa, notPemCa, badUrl] = await Promise.all([
    script({ BEACON_CLUSTER: at(token), BEACON_CLUSTER_TLS_CA: ca.certFile }),
    script({ BEACON_CLUSTER: at(`${token}-not`), BEACON_CLUSTER_TLS_CA: ca.certFile }),
    script({ BEACON_CLUSTER: at(token), BEACON_CLUSTER_TLS_CA: join(tempDir('no-ca'), 'nonexistent.pem') }),
    script({ BEACON_CLUSTER: at(token), BEACON_CLUSTER_TLS_CA: notPem }),
    script({ BEACON_CLUSTER: `nats://${token}@127.0.0.1:port` }),
  ]);
  assert.equal(created.code, 0, created.stderr);
  assert.equal(created.stdout, 'nats-directory-bucket: there was no bucket beacon-directory: created it with 1 replica, empty (the instances write their nodes into it when they join or rejoin NATS)\n');
  const stream = await directoryStream(nats, '$G');
  assert.equal(stream?.config.num_replicas, 1, 'the bucket is on the token-protected server');
  assert.equal(wrong.code, 1, wrong.stderr);
  assert.match(wrong.stderr, /^nats-directory-bucket: .*Authorization Violation/);
  const oneLine = (result: typeof created, message: RegExp) => {
    assert.equal(result.code, 2, result.stdout + result.stderr);
    assert.equal(result.stdout, '');
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    assert.match(result.stderr, message);
  };
  oneLine(missingCa, /^nats-directory-bucket: BEACON_CLUSTER_TLS_CA \S+nonexistent\.pem: cannot read \(ENOENT\); name the PEM file of the CA that signed the NATS server's certificate\n$/);
  oneLine(notPemCa, /^nats-directory-bucket: BEACON_CLUSTER_TLS_CA \S+ca\.txt: no PEM certificate in it; name the PEM file \(-----BEGIN CERTIFICATE-----\) of the CA/);
  oneLine(badUrl, /^nats-directory-bucket: BEACON_CLUSTER: "nats:\/\/\*\*\*@127\.0\.0\.1:port" is not nats:\/\/HOST:PORT/);
  for (const result of [created, wrong, missingCa, notPemCa, badUrl]) {
    assert.ok(!(result.stdout + result.stderr).includes(token), `the token was printed: ${result.stdout}${result.stderr}`);
  }
});

test('three machines: three servers form one JetStream cluster; the directory raised to three replicas keeps its entry on the others when the server leading it stops', async () => {
  const shipped = readShipped(NATS_THREE_CONF);
  const { all, started } = await startThreeNats();
  servers.push(...started);

  // The JetStream meta group of three elects a leader.
  await metaLeaderElected(started[0]!, 3);

  const password = shippedPassword(shipped, 'beacon');
  const beacon = await login(all[0]!.client, 'beacon', password);
  assert.equal(beacon.answer, 'PONG');
  // A bucket made with one copy (as on one machine before NATS grew to three) and written to; the script (docs/cluster-deploy.md) raises it to three.
  const created = await setReplicas('1', all.map((p) => p.client));
  assert.equal(created.code, 0, created.stderr);
  const ack = await eventually(async () => {
    const answer = await beacon.probe.request('$KV.beacon-directory.7777', 'w beacon-host-1', 2_000);
    return answer.stream ? answer : undefined;
  }, 'the write to be acknowledged');
  assert.equal(ack.stream, 'KV_beacon-directory', JSON.stringify(ack));
  const raised = await eventually(async () => {
    const result = await setReplicas('3', all.map((p) => p.client));
    return result.code === 0 ? result : undefined;
  }, 'the bucket raised to three replicas');
  // (A retry after a lost answer finds the work done.)
  assert.match(raised.stdout, /^nats-directory-bucket: (the bucket beacon-directory now has 3 replicas \(it had 1\); its 1 entry is kept|the bucket beacon-directory already has 3 replicas; nothing to do)\n$/);

  // The bucket's group of three: a leader and two followers, each caught up (seconds on a loaded machine).
  // (Only the leader knows whether its followers are current: ask it.)
  const led = await eventually(async () => {
    const leader = (await directoryStream(started[0]!))?.cluster?.leader;
    const index = Number(/^beacon-nats-(\d)$/.exec(leader ?? '')?.[1]) - 1;
    if (!(index >= 0 && index < 3)) return undefined;
    const info = await directoryStream(started[index]!);
    const cluster = info?.cluster;
    const replicas = cluster?.replicas ?? [];
    const ready = info?.config.num_replicas === 3 && cluster?.leader === leader
      && replicas.length === 2 && replicas.every((r) => r.current);
    return ready ? cluster : undefined;
  }, 'three current replicas of the bucket');

  // Each server holds its own copy of the entry, so stopping the one leading the bucket loses nothing.
  // (Electing the next leader is NATS's own business, and can take long on a loaded machine.)
  const leaderIndex = Number(/beacon-nats-(\d)/.exec(led.leader!)?.[1]) - 1;
  assert.ok(leaderIndex >= 0 && leaderIndex < 3, led.leader);
  for (const server of started) {
    await eventually(async () => ((await directoryStream(server))?.state.messages === 1 ? true : undefined), 'a copy of the entry on every server');
  }
  await started[leaderIndex]!.stop();
  // With one replica the only copy would have gone with the leader. (Asking a
  // survivor's monitor can go unanswered for long on a loaded machine while
  // the two elect a leader, so one survivor's copy is enough here.)
  const survivors = started.filter((_, i) => i !== leaderIndex);
  const copy = await eventually(async () => {
    for (const survivor of survivors) {
      const info = await directoryStream(survivor).catch(() => undefined);
      if (info?.state.messages === 1) return info;
    }
    return undefined;
  }, 'the entry on a surviving server');
  assert.equal(copy.config.num_replicas, 3);
});

test('growing one machine\'s NATS into three as docs/cluster-deploy.md 2.1 says: the old store moved aside, the instance rejoins, recreates the bucket with three copies and writes its node again; the guide\'s replica check prints the copies', async () => {
  const guide = readShipped(join(REPO_ROOT, 'docs', 'cluster-deploy.md'));
  const moveAside = /^\s*mv \/var\/lib\/nats\/jetstream (\/var\/lib\/nats\/(\S+))\s*$/m.exec(guide);
  assert.ok(moveAside, 'the guide moves /var/lib/nats/jetstream aside before the first server joins the others');
  const check = /^\s*(curl -s 'http:\/\/127\.0\.0\.1:8222\/jsz[^\n]*num_replicas[^\n]*)$/m.exec(guide);
  assert.ok(check, 'the guide has a replica check');

  // Part 1: one machine, its NATS alone on the shipped file, an instance with a daemon attached.
  const single = readShipped(NATS_SINGLE_CONF);
  const password = shippedPassword(single, 'beacon');
  const first = await freeNatsPorts(true);
  const store = tempDir('nats-grow');
  const lone = await startNats(adaptNatsConfig(single, first, store), first);
  servers.push(lone);
  const alice = makeIdentity(7777);
  const url = `nats://beacon:${encodeURIComponent(password)}@127.0.0.1:${first.client}`;
  // A long dead-after: nobody sweeps the stale entry below while the test runs.
  const instance = await spawnInstance('grow', { nats: url, keys: writeKeys([alice]), deadAfter: '60s' });
  await instance.waitForLog((l) => l.msg === 'cluster joined', "'cluster joined'");
  const peer = await WsPeer.connect(instance.url, alice);
  try {
    await eventually(async () => ((await directoryStream(lone))?.state.messages === 1 ? true : undefined), 'alice in the lone server\'s bucket');
    // And an entry no live instance writes again (a node of an instance gone meanwhile): the old copy differs from the new.
    const writer = await login(first.client, 'beacon', password);
    assert.equal((await writer.probe.request('$KV.beacon-directory.8888', 'w gone-instance', 5_000)).stream, 'KV_beacon-directory');
    await eventually(async () => ((await directoryStream(lone))?.state.messages === 2 ? true : undefined), 'two entries in the lone server\'s bucket');
    await lone.stop();
    renameSync(join(store, 'jetstream'), join(store, moveAside[2]!));

    // Part 2: the first machine's server (same ports, same store) and two new ones, on the three-machine file.
    const shipped3 = readShipped(NATS_THREE_CONF);
    const all = [first, await freeNatsPorts(true), await freeNatsPorts(true)];
    const routePorts = all.map((p) => p.cluster!);
    const three = await Promise.all(all.map((p, i) => startNats(
      adaptNatsConfig(shipped3, p, i === 0 ? store : tempDir(`nats-grow-${i + 1}`), { serverName: `beacon-nats-${i + 1}`, routePorts }), p, '/varz')));
    servers.push(...three);
    await metaLeaderElected(three[0]!, 3);
    await instance.waitForLog((l) => l.msg === 'cluster rejoined', "'cluster rejoined'", 45_000);

    // Every server holds a copy of the bucket, three copies in all, with alice's entry written again
    // (and no server the old copy: without the move, the first one keeps its two entries).
    for (const server of three) {
      await eventually(async () => {
        const stream = await directoryStream(server);
        return stream?.config.num_replicas === 3 && stream.state.messages === 1 ? true : undefined;
      }, `alice's entry in a three-copy bucket on ${server.ports.client}`);
    }
    for (const server of three) {
      const printed = await run('/bin/bash', ['-c', check[1]!.replace('127.0.0.1:8222', `127.0.0.1:${server.ports.monitor}`)], { timeoutMs: 10_000 });
      assert.equal(printed.code, 0, printed.stderr);
      assert.match(printed.stdout, /^"num_replicas": ?3\n$/, `the guide's check printed: ${JSON.stringify(printed.stdout)}`);
    }
    // The script finds the work done.
    const raised = await setReplicas('3', all.map((p) => p.client));
    assert.equal(raised.stdout, 'nats-directory-bucket: the bucket beacon-directory already has 3 replicas; nothing to do\n', raised.stderr);
  } finally {
    peer.close();
    await instance.stop();
  }
});
