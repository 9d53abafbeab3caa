/**
 * Rebalancing (lib/cluster/rebalance.ts) without processes: who sheds how
 * many, the pacing of a round, the waits (group changes, counts not fresh
 * yet), the restarting notice's reason on both sides; and the flags at the
 * CLI's edge (bad values, and any of them without --reuse-port, are one
 * line and exit 2). The real thing, with instances sharing an address, is
 * test/reuse-port-cluster.test.ts.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { MIN_EXCESS, Rebalancer, SETTLE_MS, peersToShed, type AddressGroup } from '../lib/cluster/rebalance';
import { ConfigError, makeConfig } from '../lib/config';
import { parseBeaconControl, restartingMessage } from '../lib/protocol';
import { FAST, assertUsageError, cleanUpBeaconCli, runCli } from './helpers/beacon-cli';

after(cleanUpBeaconCli);

test('peersToShed: down to the share (rounded up), only when clearly above it (slack and MIN_EXCESS)', () => {
  assert.equal(peersToShed(24, [0], 0.1), 12, 'a restarted instance next to one holding everything');
  assert.equal(peersToShed(30, [0, 0], 0.1), 20);
  assert.equal(peersToShed(0, [24], 0.1), 0, 'the one below its share sheds nothing');
  assert.equal(peersToShed(13, [11], 0.1), 0, '13 is within 10 % of 12');
  assert.equal(peersToShed(14, [10], 0.1), 2, '14 is more than 13.2');
  assert.equal(peersToShed(14, [10], 0.2), 0, 'within a slack of 20 %');
  assert.equal(peersToShed(3, [1], 0), 0, `one over the share is less than MIN_EXCESS (${MIN_EXCESS})`);
  assert.equal(peersToShed(100, [], 0.1), 0, 'alone: nobody to balance with');
  assert.equal(peersToShed(7, [0, 0, 0], 0.1), 5, 'share 1.75, rounded up to 2');
});

/** A rebalancer on a test clock; `shed` records and removes peers. */
function rig(settings = { ratePerSec: 10, slack: 0.1, delayMs: 5_000 }) {
  let now = 100_000;
  let own = 24;
  const group: AddressGroup = { othersPeers: [0], changedAt: now, oldestHeartbeatAt: now };
  const sheds: Array<[number, number]> = [];
  const rebalancer = new Rebalancer({
    settings, clock: () => now, group: () => group, ownPeers: () => own,
    shed: (count) => {
      const asked = Math.min(count, own);
      own -= asked;
      sheds.push([now, asked]);
      return asked;
    },
  });
  const run = (ms: number) => {
    for (const end = now + ms; now < end;) {
      now += 100;
      rebalancer.tick();
    }
  };
  return {
    group, sheds, run, rebalancer,
    get own() { return own; },
    set own(value: number) { own = value; },
    get now() { return now; },
    shedTotal: () => sheds.reduce((sum, [, n]) => sum + n, 0),
  };
}

test('Rebalancer: nothing during --rebalance-delay after the group changed; then the excess, at --rebalance-rate', () => {
  const r = rig();
  r.run(4_900);
  assert.equal(r.shedTotal(), 0, 'the group changed less than the delay ago');
  r.run(600);
  assert.ok(r.shedTotal() >= 4 && r.shedTotal() <= 6, `10 a second once allowed: ${r.shedTotal()} in half a second`);
  r.run(1_000);
  assert.equal(r.shedTotal(), 12, 'the round stops at the share (12 of 24)');
  assert.equal(r.own, 12);
  // Paced: one per 100 ms tick at 10/s, never a burst.
  assert.ok(r.sheds.every(([, n]) => n === 1), JSON.stringify(r.sheds));
  r.run(5_000);
  assert.equal(r.own, 12, 'balanced: nothing more');
});

test('Rebalancer: the next round waits for every member\'s count from after the shed daemons settled, and a group change stops a round', () => {
  const r = rig({ ratePerSec: 100, slack: 0.1, delayMs: 1_000 });
  r.group.changedAt -= 1_000;
  r.run(200);
  assert.equal(r.own, 12, 'a whole round at 100/s');
  const roundEnd = r.sheds.at(-1)![0];
  // Half of them came back here (the kernel placed them), and the other instance's count is not fresh yet.
  r.own = 18;
  r.group.othersPeers = [6];
  r.group.oldestHeartbeatAt = roundEnd + SETTLE_MS - 1;
  r.run(3_000);
  assert.equal(r.own, 18, 'a count from before the shed daemons landed is not acted on');
  r.group.oldestHeartbeatAt = roundEnd + SETTLE_MS;
  r.run(200);
  assert.equal(r.own, 12, 'a fresh count: the next round');
  // A member joins mid-round: the round is off until the group is stable again.
  const before = r.shedTotal();
  r.own = 30;
  r.group.othersPeers = [0, 0];
  r.group.oldestHeartbeatAt = r.now + SETTLE_MS; // counts from after the last round settled
  r.group.changedAt = r.now;
  r.run(900);
  assert.equal(r.shedTotal(), before);
  r.run(400);
  assert.equal(r.own, 10, 'once stable: down to the share of three, and no further on counts from before');
});

test('Rebalancer: rate 0 sheds nothing; neither does an instance that sees no group (no shared address, cut off from NATS)', () => {
  const off = rig({ ratePerSec: 0, slack: 0.1, delayMs: 1 });
  off.run(10_000);
  assert.equal(off.shedTotal(), 0);
  assert.equal(off.own, 24);
  const alone = new Rebalancer({
    settings: { ratePerSec: 10, slack: 0, delayMs: 1 }, group: () => undefined, ownPeers: () => 100,
    shed: () => assert.fail('shed without a group'),
  });
  for (let i = 0; i < 50; i++) alone.tick();
});

test('the restarting notice: reason "rebalance" round-trips; an unknown reason reads as a plain restart', () => {
  const text = restartingMessage({ reconnect_in_ms: 0, try_for_ms: 2_000, reason: 'rebalance' });
  assert.equal(text, '{"type":"restarting","reconnect_in_ms":0,"try_for_ms":2000,"reason":"rebalance"}');
  assert.deepEqual(parseBeaconControl(text), { type: 'restarting', reconnect_in_ms: 0, try_for_ms: 2_000, reason: 'rebalance' });
  assert.deepEqual(parseBeaconControl('{"type":"restarting","reconnect_in_ms":5,"try_for_ms":6,"reason":"moon"}'),
    { type: 'restarting', reconnect_in_ms: 5, try_for_ms: 6 });
});

test('config: rebalance values out of range are refused', () => {
  assert.throws(() => makeConfig({ rebalanceRate: -1 }), ConfigError);
  assert.throws(() => makeConfig({ rebalanceRate: 1.5 }), ConfigError);
  assert.throws(() => makeConfig({ rebalanceSlack: Number.NaN }), ConfigError);
  assert.throws(() => makeConfig({ rebalanceDelayMs: 0 }), /rebalanceDelayMs must be a positive number/);
});

const NO_NATS = ['--cluster', 'nats://127.0.0.1:1'];

test('CLI: a rebalancing flag (or variable) without --reuse-port, or a bad value, is one line and exit 2', async () => {
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--rebalance-rate', '5/s']),
    '--rebalance-rate is set but --reuse-port is not', 'add --reuse-port, or remove --rebalance-rate');
  assertUsageError(await runCli([...FAST, ...NO_NATS], { env: { BEACON_REBALANCE_DELAY: '30s' } }),
    '--rebalance-delay is set but --reuse-port is not');
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--reuse-port', '--rebalance-rate', 'fast']), '--rebalance-rate', 'peers per second, e.g. 10/s');
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--reuse-port', '--rebalance-rate', '20000']), '--rebalance-rate', '0/s to 10000/s');
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--reuse-port', '--rebalance-slack', '0.1']), '--rebalance-slack', 'percentage: use e.g. 10%');
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--reuse-port'], { env: { BEACON_REBALANCE_SLACK: '5000%' } }), 'BEACON_REBALANCE_SLACK', '0% to 1000%');
  assertUsageError(await runCli([...FAST, ...NO_NATS, '--reuse-port', '--rebalance-delay', '20']), '--rebalance-delay', 'has no unit');
});
