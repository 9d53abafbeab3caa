/**
 * Rebalancing with real processes and a real nats-server: two instances
 * share one address (--reuse-port); a rolling restart of one moves all its
 * daemons (CompatClients, which follow the restarting notice) to the
 * other; the restarted instance takes new daemons, and once the group has
 * been stable for --rebalance-delay the instance holding everything asks
 * its excess to reconnect (reason "rebalance"), at --rebalance-rate, until
 * both hold about half. Never sooner than the delay after the newcomer
 * joined, and never by the newcomer; every daemon is connected and
 * reachable at the end.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { CompatClient, type RestartingNotice } from '../lib/client';
import { allSee, sharedInstance, writeKeys, type Instance, type LogLine, type SharedAddress } from './helpers/cluster';
import { nextDelivery, record, until } from './helpers/client-events';
import { withTimeout } from './helpers/harness';
import { makeIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';

const DAEMONS = 24;
const NEWCOMERS = 4;
const DELAY_MS = 2_000;
const ids = Array.from({ length: DAEMONS + NEWCOMERS }, (_, i) => makeIdentity(20_000 + i));
const keys = writeKeys(ids);
const address: SharedAddress = { bindPort: 0, udpPort: 0 };
let nats: NatsServer;
const instances: Instance[] = [];
const clients: CompatClient[] = [];
/** Each client's restarting notices, as they come. */
const notices: Array<Array<{ at: number; value: RestartingNotice }>> = [];

before(async () => {
  nats = await NatsServer.start();
});

after(async () => {
  for (const client of clients) await client.close();
  await Promise.all(instances.map((i) => i.stop()));
  await nats?.close();
});

async function start(name: string): Promise<Instance> {
  const instance = await sharedInstance(name, address, {
    nats: nats.url(), keys,
    extra: ['--rebalance-rate', '50/s', '--rebalance-delay', `${DELAY_MS}ms`, '--rebalance-slack', '10%',
      '--restart-delay', '200ms', '--restart-window', '400ms', '--shutdown-grace', '2s'],
  });
  instances.push(instance);
  return instance;
}

async function connect(index: number): Promise<CompatClient> {
  const id = ids[index]!;
  const client = new CompatClient({ url: `ws://127.0.0.1:${address.bindPort}/v1/compat`, nodeId: id.nodeId, identity: id, initialDelayMs: 50, maxDelayMs: 500 });
  clients.push(client);
  notices.push(record(client, 'restarting'));
  await client.connect({ failFast: true, timeoutMs: 10_000 });
  return client;
}

async function peersOn(instance: Instance): Promise<number> {
  return (await instance.metric('beacon_wss_peers')) ?? -1;
}

function lines(instance: Instance, msg: string): LogLine[] {
  return instance.logs.filter((line) => line.msg === msg);
}

const ASKED = 'peer asked to reconnect: this instance holds more than its share';
const LEFT = 'cluster: instance left (stopped gracefully); routes to it dropped';

test('a rolling restart ends balanced: the instance left holding every daemon asks the excess to reconnect once the group is stable', async () => {
  const a = await start('a');
  let b = await start('b');
  await allSee([a, b], 2);
  for (let i = 0; i < DAEMONS; i++) await connect(i);

  // Restart b: its daemons get the restarting notice and come back to the address, where only a listens.
  // Both may shed a few until a hears that b is draining (the kernel's spread was uneven, and a's
  // rebalancing may still be under way); from b's goodbye on, a is alone and must ask nobody.
  b.kill('SIGTERM');
  assert.deepEqual(await withTimeout(b.exited, 15_000, 'b to exit'), { code: 0, signal: null });
  const goodbye = await a.waitForLog((l) => l.msg === LEFT && l.instance === b.instanceId, "a's line for b's goodbye");
  const askedBefore = a.logs.slice(0, a.logs.indexOf(goodbye)).filter((l) => l.msg === ASKED).length;
  await until(() => clients.every((c) => c.state === 'connected'), 15_000, 'every daemon back');
  await a.waitForMetric('beacon_wss_peers', {}, (n) => n === DAEMONS, 10_000);

  b = await start('b-restarted');
  await allSee([a, b], 2);
  assert.equal(lines(a, ASKED).length, askedBefore, 'alone, a had nobody to balance with');
  // On a's clock: when it first heard the restarted b.
  const heardAt = (await a.waitForLog((l) => l.msg === 'cluster: instance live' && l.instance === b.instanceId, 'b-restarted live')).time as number;
  for (let i = DAEMONS; i < DAEMONS + NEWCOMERS; i++) await connect(i);

  // Balanced within the slack: 28 / 2 = 14, and an instance sheds above 15.4 (14 × 1.1) only: 15 / 13 at worst.
  const total = DAEMONS + NEWCOMERS;
  const deadline = Date.now() + 40_000;
  let counts = [0, 0];
  for (;;) {
    counts = [await peersOn(a), await peersOn(b)];
    const settled = counts[0]! + counts[1]! === total && Math.abs(counts[0]! - counts[1]!) <= 2
      && clients.every((c) => c.state === 'connected');
    if (settled) break;
    assert.ok(Date.now() < deadline, `balanced within 40 s: a ${counts[0]}, b ${counts[1]}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }

  const firstAsked = lines(a, ASKED)[askedBefore];
  assert.ok(firstAsked, 'a asked daemons to reconnect');
  const after = (firstAsked.time as number) - heardAt;
  assert.ok(after >= DELAY_MS, `not before --rebalance-delay after b-restarted came: ${after} ms`);
  assert.ok((await a.metric('beacon_cluster_rebalanced_total'))! >= total / 2 - 2, 'counted');
  assert.equal(await b.metric('beacon_cluster_rebalanced_total'), 0, 'the newcomer sheds nothing');
  assert.ok(notices.flat().some(({ value }) => value.reason === 'rebalance'), 'the daemons were told why');

  // Every daemon is reachable wherever it landed (a route to one that just moved may take a moment to reach the other instance).
  for (const [i, client] of clients.entries()) {
    const sender = clients[(i + 1) % clients.length]!;
    for (let attempt = 0; ; attempt++) {
      const got = nextDelivery(client, 250).catch(() => undefined);
      sender.relay(client.nodeId, `hello ${i}`);
      if (await got === `${sender.nodeId}:hello ${i}`) break;
      assert.ok(attempt < 20, `daemon ${client.nodeId} reachable from ${sender.nodeId}`);
    }
  }
});
