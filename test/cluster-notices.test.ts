/**
 * Attach notices (lib/cluster/attach-notices.ts): the provisional routes'
 * rules without NATS (confirmation by the KV entry, quick moves, a notice
 * after its KV entry, dead instances, expiry, the cap), then for real: a
 * node attached on instance A is reachable from B although A may not write
 * its KV entry, until the notice expires; garbage on the notices' subject
 * is counted cluster_malformed.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import {
  PROVISIONAL_TTL_MS, ProvisionalRoutes, decodeAttachNotice, encodeAttachNotice,
} from '../lib/cluster/attach-notices';
import { Instances } from '../lib/cluster/instances';
import { subjectsFor } from '../lib/cluster/wire';
import { encodeRelay, encodeRelayDeliver } from '../lib/protocol';
import { allSee, joinedInstance, writeKeys, type Instance } from './helpers/cluster';
import { makeIdentity, type TestIdentity } from './helpers/identity';
import { NatsServer } from './helpers/nats';
import { WsPeer } from './helpers/wire';

const cleanup: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

/** Instances x and y live, z known but dead, and a clock the test moves. */
function world(ttlMs = 1_000, cap = 100) {
  const members = new Instances('self', 5_000, (id) => `fwd.${id}`);
  members.heartbeat('x', '01', 0);
  members.heartbeat('y', '02', 0);
  const z = members.get('z');
  const clock = { now: 0 };
  const routes = new ProvisionalRoutes(ttlMs, cap, () => clock.now);
  cleanup.push(() => routes.clear());
  return { x: members.get('x'), y: members.get('y'), z, self: members.self, clock, routes };
}

test('notice wire: node, kind and instance round-trip; anything else is refused', () => {
  assert.equal(encodeAttachNotice(4004, 'wss', 'host:8443'), '4004 w host:8443');
  assert.deepEqual(decodeAttachNotice('4004 w host:8443'), { nodeId: 4004, kind: 'wss', instanceId: 'host:8443' });
  assert.deepEqual(decodeAttachNotice(encodeAttachNotice(7, 'udp', 'b')), { nodeId: 7, kind: 'udp', instanceId: 'b' });
  for (const bad of ['', '4004', '4004 ', '0 w a', '4294967296 w a', 'x w a', '4004 x a', '4004 w', '4004 w a b', ' 4004 w a']) {
    assert.equal(decodeAttachNotice(bad), undefined, JSON.stringify(bad));
  }
  assert.equal(subjectsFor('prod').attach('host.example:1'), 'prod.att.host%2Eexample:1');
});

test('provisional: a notice routes to its live instance until the KV entry naming that instance confirms it', () => {
  const { x, y, routes } = world();
  assert.equal(routes.instanceOf(1), undefined);
  routes.noted(1, x, 'wss', undefined);
  assert.equal(routes.instanceOf(1), x);
  assert.equal(routes.isWssElsewhere(1), true);
  routes.confirmed(1, y);
  assert.equal(routes.instanceOf(1), x, 'an entry naming another instance is older (the node was there before): the notice stands');
  routes.confirmed(1, x);
  assert.equal(routes.instanceOf(1), undefined, 'confirmed: the mirror routes from now on');
  assert.equal(routes.size, 0);
});

test('provisional: a quick move keeps the newest notice; a notice after its KV entry adds nothing; a local attach forgets', () => {
  const { x, y, routes } = world();
  routes.noted(2, x, 'wss', undefined);
  routes.noted(2, y, 'wss', undefined);
  assert.equal(routes.instanceOf(2), y, 'moved from x to y');
  routes.confirmed(2, x);
  assert.equal(routes.instanceOf(2), y, 'x\'s late KV entry does not undo the move');
  routes.noted(3, x, 'wss', x);
  assert.equal(routes.size, 1, 'the mirror already names x for node 3');
  routes.noted(3, y, 'wss', undefined);
  routes.noted(3, x, 'wss', x);
  assert.equal(routes.instanceOf(3), undefined, 'back on x, which the mirror names: the older notice for y goes');
  routes.forget(2);
  assert.equal(routes.instanceOf(2), undefined, 'the node attached here');
});

test('provisional: none for this instance itself; a dead instance is not routed to; UDP attachments are not WebSockets', () => {
  const { self, z, y, routes } = world();
  routes.noted(4, self, 'wss', undefined);
  assert.equal(routes.size, 0);
  routes.noted(5, z, 'wss', undefined);
  assert.equal(routes.instanceOf(5), undefined, 'z is dead');
  assert.equal(routes.isWssElsewhere(5), false);
  routes.noted(6, y, 'udp', undefined);
  assert.equal(routes.instanceOf(6), y);
  assert.equal(routes.isWssElsewhere(6), false);
  y.live = false;
  assert.equal(routes.instanceOf(6), undefined, 'y died after its notice');
});

test('provisional: routes expire after the TTL, oldest first (a renewed one counts from its renewal); the cap drops the oldest', () => {
  const { x, y, clock, routes } = world(1_000, 3);
  routes.noted(1, x, 'wss', undefined);
  clock.now = 400;
  routes.noted(2, x, 'wss', undefined);
  clock.now = 600;
  routes.noted(1, y, 'wss', undefined); // renewed: now younger than node 2's
  routes.expire(1_100);
  assert.equal(routes.instanceOf(1), y);
  assert.equal(routes.instanceOf(2), x);
  routes.expire(1_400);
  assert.equal(routes.instanceOf(2), undefined, 'node 2 is 1,000 ms old');
  assert.equal(routes.instanceOf(1), y, 'node 1 only 800 ms since its renewal');
  routes.expire(1_600);
  assert.equal(routes.size, 0);
  clock.now = 2_000;
  for (const nodeId of [11, 12, 13, 14]) routes.noted(nodeId, x, 'wss', undefined);
  assert.equal(routes.size, 3);
  assert.equal(routes.instanceOf(11), undefined, 'the oldest made room');
  assert.equal(routes.instanceOf(14), x);
});

test('provisional: the table empties itself on its own timer', async () => {
  const members = new Instances('self', 5_000, (id) => `fwd.${id}`);
  members.heartbeat('x', '01', 0);
  const routes = new ProvisionalRoutes(40, 10);
  cleanup.push(() => routes.clear());
  routes.noted(1, members.get('x'), 'wss', undefined);
  assert.equal(routes.size, 1);
  const deadline = Date.now() + 5_000;
  while (routes.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(routes.size, 0);
});

// ---- for real: NATS, instances as child processes ----------------------------

const alice = makeIdentity(1001);
const bob = makeIdentity(2002);
/** The node A may not write into the directory (NATS permissions), so only its notice tells B. */
const carol = makeIdentity(4004);
const keys = writeKeys([alice, bob, carol]);

async function peer(url: string, id: TestIdentity): Promise<WsPeer> {
  const p = await WsPeer.connect(url, id);
  cleanup.push(() => p.close());
  return p;
}

/** Relays `text` from `from` to `to` every 50 ms until it arrives; false after `ms`. */
async function delivered(from: WsPeer, sender: TestIdentity, to: WsPeer, dest: number, text: string, ms: number): Promise<boolean> {
  const expected = encodeRelayDeliver(sender.nodeId, Buffer.from(text));
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    from.send(encodeRelay(sender.nodeId, dest, Buffer.from(text)));
    for (let got = await to.next(50).catch(() => undefined); got; got = await to.next(50).catch(() => undefined)) {
      if (got.equals(expected)) return true;
    }
  }
  return false;
}

async function pair(name: string): Promise<{ nats: NatsServer; a: Instance; b: Instance }> {
  const nats = await NatsServer.start({
    config: `authorization {
      users = [
        { user: a, password: a, permissions: { publish: { allow: [">"], deny: ["$KV.${name}-directory.${carol.nodeId}"] } } }
        { user: b, password: b }
        { user: t, password: t }
      ]
    }\n`,
  });
  cleanup.push(() => nats.close());
  const [a, b] = await Promise.all([
    joinedInstance(`${name}-a`, { nats: nats.url('a', 'a'), keys, extra: ['--cluster-name', name] }),
    joinedInstance(`${name}-b`, { nats: nats.url('b', 'b'), keys, extra: ['--cluster-name', name] }),
  ]);
  cleanup.push(() => a.stop(), () => b.stop());
  await allSee([a, b], 2);
  return { nats, a, b };
}

test('a node attached on A is reachable from B by its notice alone (A may not write its KV entry), until the notice expires', async () => {
  const { nats, a, b } = await pair('notice');
  const nc = await connect({ servers: `127.0.0.1:${nats.port}`, user: 't', pass: 't' });
  cleanup.push(() => nc.close());
  const kv = await new Kvm(nc).open('notice-directory');
  const bobB = await peer(b.url, bob);
  // The ordinary path first: alice's entry is written, and B reaches her.
  const aliceA = await peer(a.url, alice);
  assert.ok(await delivered(bobB, bob, aliceA, alice.nodeId, 'to alice', 8_000), 'alice (KV entry and notice) reachable from B');

  // Before the handshake: B may hear the notice (sent before auth_ok) before this process reads auth_ok.
  const attachedAt = Date.now();
  const carolA = await peer(a.url, carol);
  assert.ok(await delivered(bobB, bob, carolA, carol.nodeId, 'to carol', PROVISIONAL_TTL_MS - 200), 'carol reachable from B through the notice');
  assert.equal(await kv.get(String(carol.nodeId)), null, 'the directory has no entry for carol');
  // B forgets the notice after the TTL, never before: with no KV entry, relays to carol are then unknown.
  const unknownBefore = (await b.metric('beacon_relay_total', { route: 'unknown' })) ?? 0;
  const relayer = setInterval(() => bobB.send(encodeRelay(bob.nodeId, carol.nodeId, Buffer.from('until dropped'))), 50);
  cleanup.push(() => clearInterval(relayer));
  await b.waitForMetric('beacon_relay_total', { route: 'unknown' }, (n) => n > unknownBefore, 4 * PROVISIONAL_TTL_MS);
  clearInterval(relayer);
  assert.ok(Date.now() - attachedAt >= PROVISIONAL_TTL_MS, `dropped ${Date.now() - attachedAt} ms after the attach, before the TTL`);
});

test('garbage on the notices\' subject is counted cluster_malformed; a notice from an unheard instance is ignored; neither routes', async () => {
  const { nats, b } = await pair('noise');
  const nc = await connect({ servers: `127.0.0.1:${nats.port}`, user: 't', pass: 't' });
  cleanup.push(() => nc.close());
  const before = (await b.metric('beacon_dropped_total', { reason: 'cluster_malformed' })) ?? 0;
  // First the one to ignore: once the three after it are counted, it has been handled too.
  nc.publish('noise.att.noise-x', Buffer.from(`${carol.nodeId} w noise-x`)); // well-formed, from an instance nobody hears: ignored
  nc.publish('noise.att.noise-a', Buffer.from('not a notice'));
  nc.publish('noise.att.noise-a', Buffer.from(`${carol.nodeId} w noise-x`)); // on another instance's subject
  nc.publish('noise.att.noise-a', Buffer.from([0xff, 0xfe, 0x00]));
  await nc.flush();
  await b.waitForMetric('beacon_dropped_total', { reason: 'cluster_malformed' }, (n) => n >= before + 3);
  assert.equal(await b.metric('beacon_dropped_total', { reason: 'cluster_malformed' }), before + 3);
  const bobB = await peer(b.url, bob);
  const unknownBefore = (await b.metric('beacon_relay_total', { route: 'unknown' })) ?? 0;
  bobB.send(encodeRelay(bob.nodeId, carol.nodeId, Buffer.from('nobody')));
  await b.waitForMetric('beacon_relay_total', { route: 'unknown' }, (n) => n === unknownBefore + 1);
  assert.equal(await b.metric('beacon_relay_total', { route: 'cluster' }) ?? 0, 0);
});
