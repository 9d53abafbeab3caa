/**
 * Rebalancing (--reuse-port): an instance holding clearly more than its
 * share of the WebSocket peers of the instances sharing its address asks
 * the excess to reconnect, so a rolling restart ends balanced.
 *
 * - Why it is needed: a daemon keeps its WebSocket for hours, and the
 *   kernel places only new connections. During a rolling restart each
 *   instance's daemons move to the ones still up, so the instance restarted
 *   last ends with almost none (3/0 after restarting two of three).
 * - The group: the live instances that share this one's address (their
 *   heartbeats say so, with their peer counts; an older version says
 *   neither and is left out). share = the group's peers / its instances.
 * - When: an instance sheds once it holds more than share × (1 +
 *   --rebalance-slack) and at least MIN_EXCESS above the share, down to the
 *   share rounded up. Only once no instance has joined or left the group
 *   for --rebalance-delay: never in an instance's first seconds, nor in the
 *   middle of a rolling restart, whose daemons are still coming back.
 * - How: the `restarting` notice (reason "rebalance": come back now, to the
 *   same address) and close 1001, at --rebalance-rate peers a second, oldest
 *   first. The kernel places each reconnect on any instance, this one
 *   included, so it takes a few rounds. A round sheds what it decided, then
 *   waits until every member has heartbeated after its last shed daemons
 *   had time to land (SETTLE_MS): deciding on counts that miss daemons in
 *   flight would shed too many and send them back and forth.
 * - Why only with --reuse-port: only then does the beacon know where a
 *   reconnect can land (the instances sharing the address) and that it
 *   lands on any of them. With a port per instance, Caddy (least_conn),
 *   DNS or a client's list of URLs choose, and the beacon does not know
 *   which instances they choose from.
 * - Counted: beacon_cluster_rebalanced_total. This module decides and
 *   paces; the composition root sends the notices.
 */

/** Below this many peers over the share, shedding is churn for nothing (one or two daemons is noise). */
export const MIN_EXCESS = 2;
/**
 * After a round's last shed, how long its daemons take to land elsewhere:
 * the notice spreads them over REBALANCE_TRY_FOR_MS / 2, plus a connection
 * and handshake.
 */
export const SETTLE_MS = 2_000;
/** How often the rebalancer looks (and sheds, a fraction of --rebalance-rate each time). */
const TICK_MS = 100;

/** The notice's window: rebalanced daemons come back within its first half, spread, so not all at once. */
export const REBALANCE_TRY_FOR_MS = 2_000;

export interface RebalanceSettings {
  /** Peers asked to reconnect per second; 0 turns rebalancing off. */
  ratePerSec: number;
  /** How far above its share an instance may be before it sheds (0.1: 10 %). */
  slack: number;
  /** The group must have been stable this long. */
  delayMs: number;
}

/** The instances sharing this one's address, as this one sees them. */
export interface AddressGroup {
  /** Peer counts of the other live members (from their heartbeats). */
  othersPeers: readonly number[];
  /** When a member last joined or left the group (this one's own start included), ms. */
  changedAt: number;
  /** The oldest of the other members' last heartbeats, ms (Infinity when there are none). */
  oldestHeartbeatAt: number;
}

/** Peers to shed now out of `own`, given the others' counts; 0 when this instance is within its share. Pure. */
export function peersToShed(own: number, othersPeers: readonly number[], slack: number): number {
  if (othersPeers.length === 0) return 0;
  let total = own;
  for (const peers of othersPeers) total += peers;
  const share = total / (othersPeers.length + 1);
  const excess = own - Math.ceil(share);
  return own > share * (1 + slack) && excess >= MIN_EXCESS ? excess : 0;
}

export interface RebalancerDeps {
  settings: RebalanceSettings;
  /** The group, or undefined when there is none to balance with (no shared address, cut off from NATS). */
  group(): AddressGroup | undefined;
  ownPeers(): number;
  /** Asks up to `count` peers to reconnect; returns how many were asked. */
  shed(count: number): number;
  /** Wall clock, ms (tests). */
  clock?: () => number;
}

export class Rebalancer {
  private timer: NodeJS.Timeout | undefined;
  /** Peers the current round still has to shed; 0 between rounds. */
  private left = 0;
  /** Sheds the rate allows now (fractions accumulate across ticks). */
  private allowance = 0;
  private lastTickAt = 0;
  /** When the last peer was shed: the next round waits for heartbeats from after it settled. */
  private lastShedAt = -Infinity;
  private readonly clock: () => number;

  constructor(private readonly deps: RebalancerDeps) {
    this.clock = deps.clock ?? Date.now;
  }

  start(): void {
    if (this.deps.settings.ratePerSec === 0 || this.timer) return;
    this.lastTickAt = this.clock();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** @internal One look (tests call it with their clock). */
  tick(): void {
    const now = this.clock();
    const elapsed = now - this.lastTickAt;
    this.lastTickAt = now;
    const { settings } = this.deps;
    const group = this.deps.group();
    if (!group || now - group.changedAt < settings.delayMs) {
      // Not now: a member came or went, or this one cannot see the group. The round is off.
      this.left = 0;
      this.allowance = 0;
      return;
    }
    if (this.left === 0) {
      if (group.oldestHeartbeatAt < this.lastShedAt + SETTLE_MS) return;
      this.left = peersToShed(this.deps.ownPeers(), group.othersPeers, settings.slack);
      if (this.left === 0) return;
    }
    // A second's worth at most, so a stall does not release a burst.
    this.allowance = Math.min(this.allowance + (settings.ratePerSec * elapsed) / 1000, Math.max(1, settings.ratePerSec));
    const count = Math.min(Math.floor(this.allowance), this.left);
    if (count === 0) return;
    const shed = this.deps.shed(count);
    this.allowance -= count;
    // Fewer than asked: the peers are gone already; the round ends, the next one counts again.
    this.left = shed < count ? 0 : this.left - count;
    if (shed > 0) this.lastShedAt = now;
  }
}
