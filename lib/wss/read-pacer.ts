/**
 * How much of the beacon's reading one peer may have (issue 12, "one heavy
 * sender"; issue 19; docs/rate-limits.md).
 *
 * - Budget: a token bucket in bytes per node (--peer-rate, --peer-burst),
 *   charged with every byte read from its TCP socket after auth_ok,
 *   headers, pings and all, and each frame at least --peer-rate /
 *   --peer-frame-rate bytes, so tiny frames are bounded like large ones. A
 *   socket over budget is paused: it is not read until the bucket has
 *   refilled, so the kernel's receive buffer fills and TCP slows the sender
 *   down. Nothing is dropped.
 * - The bucket is the node's, not the socket's: a connection that replaces
 *   another takes over its bucket (both charge it while the old one
 *   closes), and a node that leaves in debt finds its debt again when it
 *   reconnects, until the bucket has refilled. Reconnecting buys nothing.
 * - A closing socket stays paced until it is closed: it is read only within
 *   the node's budget (its frames are dropped by the caller), so its close
 *   reply may wait, and the close grace ends it.
 * - Fair turns: a peer that has read TURN_SHARE_BYTES in one turn of the
 *   event loop stops reading until the next turn, so a full receive window
 *   (libuv reads a ready socket up to 32 times in a row) does not hold the
 *   loop while other peers wait.
 * - Pausing uses ws's own pause()/resume(), which ws's backpressure
 *   respects.
 * - Pure bookkeeping besides pause/resume and one timer per paused socket:
 *   no allocation per read.
 */
import type WebSocket from 'ws';
import type { NodeId } from '../protocol';

/**
 * Bytes a peer may read in one turn before yielding to the others: one
 * TCP read (Node reads up to 64 KiB at a time). Processing that much takes
 * well under a millisecond, the most one peer then delays the rest.
 */
export const TURN_SHARE_BYTES = 64 * 1024;

/**
 * A paused peer resumes when its bucket holds this much (or is full, if
 * smaller): enough for the read that is already buffered and the next
 * one, so a resume is not followed by an immediate pause.
 */
const RESUME_BYTES = 128 * 1024;

export interface ReadBudget {
  rateBytesPerSec: number;
  burstBytes: number;
  /** Frames per second a node sending tiny frames may send: each frame costs at least rateBytesPerSec / frameRate bytes. */
  frameRate: number;
}

/** One node's bucket, shared by its sockets (see the header). */
export class NodeBudget {
  /** Sockets of the node charging it now. */
  users = 0;

  constructor(readonly nodeId: NodeId, public tokens: number, public refilledAt: number) {}
}

/** Counters the pacers of one beacon share. */
export interface PacingCounters {
  peerReadPauses: number;
  peerReadPausedMs: number;
  peerReadYields: number;
}

/** What all pacers of one server share: the budget, the counters, how many are paused, and the buckets of nodes that left in debt. */
export class ReadPacing {
  /** Sockets paused for their budget right now. */
  paused = 0;
  readonly bytesPerMs: number;
  readonly resumeBytes: number;
  /** The least a frame is charged, headers included (whole bytes, so the per-frame sum stays a small integer). */
  readonly minFrameBytes: number;
  /**
   * Buckets of nodes whose last socket closed before the bucket refilled,
   * until it has (forgetRefilled). Only authenticated nodes get here.
   */
  private readonly leftInDebt = new Map<NodeId, NodeBudget>();

  constructor(readonly budget: ReadBudget, readonly counters: PacingCounters) {
    this.bytesPerMs = budget.rateBytesPerSec / 1000;
    this.resumeBytes = Math.min(RESUME_BYTES, budget.burstBytes);
    this.minFrameBytes = Math.ceil(budget.rateBytesPerSec / budget.frameRate);
  }

  /** The bucket a new socket of `nodeId` starts with: the one it left in debt, or a full one. */
  budgetFor(nodeId: NodeId): NodeBudget {
    const left = this.leftInDebt.get(nodeId);
    if (left === undefined) return new NodeBudget(nodeId, this.budget.burstBytes, performance.now());
    this.leftInDebt.delete(nodeId);
    return left;
  }

  /** The last socket charging `budget` closed: keep it for a reconnect while it is not full. */
  keep(budget: NodeBudget): void {
    if (this.refilled(budget, performance.now()) < this.budget.burstBytes) this.leftInDebt.set(budget.nodeId, budget);
  }

  /** Forgets the kept buckets that have refilled (a node back now starts full anyway). */
  forgetRefilled(): void {
    const now = performance.now();
    for (const [nodeId, budget] of this.leftInDebt) {
      if (this.refilled(budget, now) >= this.budget.burstBytes) this.leftInDebt.delete(nodeId);
    }
  }

  /** Buckets kept for nodes that left in debt. */
  get keptBudgets(): number {
    return this.leftInDebt.size;
  }

  /** What `budget` holds at `now`, not above the burst. */
  refilled(budget: NodeBudget, now: number): number {
    const tokens = budget.tokens + (now - budget.refilledAt) * this.bytesPerMs;
    return tokens < this.budget.burstBytes ? tokens : this.budget.burstBytes;
  }
}

/** Bytes of a client frame's header (masked) for a payload of `length`. */
function clientHeaderBytes(length: number): number {
  return length < 126 ? 6 : length < 65536 ? 8 : 14;
}

export class ReadPacer {
  /** The node's bucket, shared with its other sockets. */
  private budget: NodeBudget;
  /** The turn `turnBytes` counts, and the bytes read in it. */
  private turn = -1;
  private turnBytes = 0;
  /** When the current budget pause began; 0 when not paused for budget. */
  private pausedAt = 0;
  private resumeTimer: NodeJS.Timeout | undefined;
  /** Paused until the next turn (fair share used up). */
  yielded = false;
  /** What frames parsed since the last onRead cost beyond their bytes. */
  private frameExtra = 0;
  private released = false;

  constructor(private readonly ws: WebSocket, private readonly pacing: ReadPacing, nodeId: NodeId) {
    this.budget = pacing.budgetFor(nodeId);
    this.budget.users++;
  }

  /** This socket replaces `previous` (same node): it charges the node's bucket from now on, as `previous` does while it closes. */
  shareBudgetOf(previous: ReadPacer): void {
    if (previous.budget === this.budget) return;
    this.budget.users--;
    this.budget = previous.budget;
    this.budget.users++;
  }

  get isPaused(): boolean {
    return this.pausedAt !== 0;
  }

  /**
   * Charges `bytes` just read from the socket, and what the frames in them
   * cost beyond their bytes; pauses it when over budget or past its share
   * of the turn.
   */
  onRead(bytes: number): void {
    const extra = this.frameExtra;
    this.frameExtra = 0;
    if (this.released) return;
    const { pacing, budget } = this;
    const now = performance.now();
    budget.tokens = pacing.refilled(budget, now) - bytes - extra;
    budget.refilledAt = now;
    if (budget.tokens < 0) return this.pauseForBudget(now);
    // The turn's share is in bytes: counting frames' extra cost here too
    // made a busy peer of small frames yield on nearly every read.
    if (this.turn !== currentTurn) {
      this.turn = currentTurn;
      this.turnBytes = 0;
      armTurnEnd();
    }
    this.turnBytes += bytes;
    if (this.turnBytes >= TURN_SHARE_BYTES && !this.yielded) this.yieldTurn();
  }

  /**
   * A frame of `payloadBytes` was parsed: what it costs beyond its bytes,
   * when it is smaller than the least a frame costs. Settled by the
   * onRead of the read that held it (ws parses a read before its other
   * listeners see it), so a frame costs no clock read of its own.
   */
  onFrame(payloadBytes: number): void {
    const extra = this.pacing.minFrameBytes - payloadBytes - clientHeaderBytes(payloadBytes);
    if (extra > 0) this.frameExtra += extra;
  }

  /**
   * Stops pacing for good: the socket closed. The pause ends in the
   * counters, and the node's bucket is kept for a reconnect if this was its
   * last socket and it is in debt.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.endPause();
    this.yielded = false;
    if (--this.budget.users === 0) this.pacing.keep(this.budget);
  }

  /** @internal The resume timer fired. */
  resumeAfterPause(): void {
    this.resumeTimer = undefined;
    this.endPause();
    // A closing socket is read too (within the budget), so its close reply is seen.
    if (!this.yielded && !this.released && this.ws.readyState !== 3) this.ws.resume();
  }

  /** @internal A new turn began. */
  resumeAfterYield(): void {
    this.yielded = false;
    if (this.pausedAt === 0 && !this.released && this.ws.readyState !== 3) this.ws.resume();
  }

  private pauseForBudget(now: number): void {
    const { pacing } = this;
    if (this.pausedAt === 0) {
      this.pausedAt = now;
      pacing.paused++;
      pacing.counters.peerReadPauses++;
      this.ws.pause();
    }
    // Wait until the bucket holds resumeBytes again; a read already
    // buffered in the stream arrives after the resume and is charged then.
    const waitMs = Math.ceil((pacing.resumeBytes - this.budget.tokens) / pacing.bytesPerMs);
    clearTimeout(this.resumeTimer);
    this.resumeTimer = setTimeout(resumeAfterPause, waitMs, this);
  }

  private yieldTurn(): void {
    this.yielded = true;
    this.pacing.counters.peerReadYields++;
    this.ws.pause();
    yieldedPacers.push(this);
  }

  private endPause(): void {
    clearTimeout(this.resumeTimer);
    this.resumeTimer = undefined;
    if (this.pausedAt === 0) return;
    this.pacing.counters.peerReadPausedMs += performance.now() - this.pausedAt;
    this.pacing.paused--;
    this.pausedAt = 0;
  }
}

function resumeAfterPause(pacer: ReadPacer): void {
  pacer.resumeAfterPause();
}

/**
 * Turns of the event loop, as pacers see them: a turn ends at the loop's
 * check phase (one setImmediate, armed by the first read of a turn), after
 * every socket that was ready had its reads.
 */
let currentTurn = 0;
let turnEndArmed = false;
const yieldedPacers: ReadPacer[] = [];

function armTurnEnd(): void {
  if (turnEndArmed) return;
  turnEndArmed = true;
  setImmediate(endTurn);
}

function endTurn(): void {
  turnEndArmed = false;
  currentTurn++;
  // A pacer released or closed since it yielded resumes nothing (see resumeAfterYield).
  for (let i = 0; i < yieldedPacers.length; i++) yieldedPacers[i]!.resumeAfterYield();
  yieldedPacers.length = 0;
}
