/**
 * A crashed instance restarted at once under the same ID (systemd's
 * RestartSec=2s is shorter than --cluster-dead-after): the new process
 * remembers none of the old one's UDP nodes, so the live instance sharing
 * its address adopts them, and every UDP daemon stays reachable on the one
 * address without Discovering again, from whichever instance its flow now
 * reaches. Real processes and a real nats-server.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { encodeDiscover, encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { allSee, sharedInstance, writeKeys, type Instance, type SharedAddress } from './helpers/cluster';
import { freeTcpPort } from './helpers/free-ports';
import { UdpClient, withTimeout } from './helpers/harness';
import { NatsServer } from './helpers/nats';

const FLOWS = 24;
const UDP_NODE = 70_000;
/** Longer than a restart takes here, so the new process heartbeats before the old one is taken for dead. */
const DEAD_AFTER = '4s';
const keys = writeKeys([]);
const address: SharedAddress = { bindPort: 0, udpPort: 0 };
let nats: NatsServer;
const instances: Instance[] = [];
const flows: UdpClient[] = [];

before(async () => {
  nats = await NatsServer.start();
});

after(async () => {
  for (const flow of flows) flow.close();
  await Promise.all(instances.map((i) => i.stop()));
  await nats?.close();
});

async function start(name: string, opsPort = 0): Promise<Instance> {
  const instance = await sharedInstance(name, address, { nats: nats.url(), keys, deadAfter: DEAD_AFTER, opsPort, extra: ['--rebalance-rate', '0'] });
  instances.push(instance);
  return instance;
}

/** Every UDP daemon relays to the next one round the ring; each relay must arrive, from the shared port. */
async function udpRing(tag: string): Promise<void> {
  for (let i = 0; i < FLOWS; i++) {
    const next = (i + 1) % FLOWS;
    const payload = Buffer.from(`${tag} ${i}`);
    flows[i]!.send(encodeRelay(UDP_NODE + i, UDP_NODE + next, payload), address.udpPort);
    for (const deadline = Date.now() + 5_000; ;) {
      const { msg, from } = await flows[next]!.nextFrom(Math.max(1, deadline - Date.now())).catch(() => {
        throw new Error(`${tag}: ${UDP_NODE + i} → ${UDP_NODE + next} not delivered within 5 s`);
      });
      if (!msg.equals(encodeRelayDeliver(UDP_NODE + i, payload))) continue;
      assert.equal(from.port, address.udpPort, 'from the shared port');
      break;
    }
  }
}

test('a crashed instance restarted at once under its ID: the other instance adopts its UDP nodes, reachable without a new Discover', async (t) => {
  const opsPort = await freeTcpPort();
  const a = await start('a');
  const c = await start('c', opsPort);
  await allSee([a, c], 2);
  for (let i = 0; i < FLOWS; i++) {
    const flow = await UdpClient.open();
    flows.push(flow);
    flow.send(encodeDiscover(UDP_NODE + i), address.udpPort);
    await flow.next(5_000);
  }
  const onC = (await c.metric('beacon_udp_endpoints'))!;
  assert.ok(onC > 0 && onC < FLOWS, `the kernel spread the flows: ${onC} of ${FLOWS} on c`);
  for (const instance of [a, c]) await instance.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === FLOWS);
  await udpRing('before');

  c.kill('SIGKILL');
  await withTimeout(c.exited, 10_000, 'c to die');
  const again = await start('c-again', opsPort);
  assert.equal(again.instanceId, c.instanceId, 'the same ID: the same --ops-bind');
  const adopted = await a.waitForLog((l) => l.msg === 'cluster: adopted a dead instance\'s UDP nodes (it shared this address)', 'the adoption');
  assert.deepEqual([adopted.nodes, adopted.adopted], [onC, onC], 'every UDP node of the old process');
  const silent = a.logs.some((l) => l.msg === 'cluster: instance silent; routes to it dropped' && l.instance === c.instanceId);
  // Which way it went depends on how fast the new process started; either way the nodes are adopted.
  t.diagnostic(`adopted ${silent ? 'after the old process was taken for dead' : 'when the new process first heartbeated'}`);

  // No Discover since the crash: the flows reach a or the new process, and every relay arrives.
  for (const instance of [a, again]) await instance.waitForMetric('beacon_cluster_directory_entries', {}, (n) => n === FLOWS);
  await udpRing('after');
});
