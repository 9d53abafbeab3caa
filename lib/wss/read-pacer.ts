/**
 * How much of the beacon's reading one peer may have (issue 12, "one heavy
 * sender"; docs/rate-limits.md).
 *
 * - Budget: a token bucket in bytes per peer (--peer-rate, --peer-burst),
 *   charged with every byte read from its TCP socket after auth_ok,
 *   headers, pings and all. A peer over budget is paused: its socket is
 *   not read until the bucket has refilled, so the kernel's receive buffer
 *   fills and TCP slows the sender down. Nothing is dropped or closed.
 * - Fair turns: a peer that has read TURN_SHARE_BYTES in one turn of the
 *   event loop stops reading until the next turn, so a full receive window
 *   (libuv reads a ready socket up to 32 times in a row) does not hold the
 *   loop while other peers wait.
 * - Pausing uses ws's own pause()/resume(), which ws's backpressure
 *   respects; closing releases the pause, so a close handshake is read.
 * - Pure bookkeeping besides pause/resume and one timer per paused peer:
 *   no allocation per read.
 */
import type WebSocket from 'ws';

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
}

/** Counters the pacers of one beacon share. */
export interface PacingCounters {
  peerReadPauses: number;
  peerReadPausedMs: number;
  peerReadYields: number;
}

/** What all pacers of one server share: the budget, the counters, and how many are paused. */
export class ReadPacing {
  /** Peers paused for their budget right now. */
  paused = 0;
  readonly bytesPerMs: number;
  readonly resumeBytes: number;

  constructor(readonly budget: ReadBudget, readonly counters: PacingCounters) {
    this.bytesPerMs = budget.rateBytesPerSec / 1000;
    this.resumeBytes = Math.min(RESUME_BYTES, budget.burstBytes);
  }
}

export class ReadPacer {
  private tokens: number;
  private refilledAt = performance.now();
  /** The turn `turnBytes` counts, and the bytes read in it. */
  private turn = -1;
  private turnBytes = 0;
  /** When the current budget pause began; 0 when not paused for budget. */
  private pausedAt = 0;
  private resumeTimer: NodeJS.Timeout | undefined;
  /** Paused until the next turn (fair share used up). */
  yielded = false;
  private released = false;

  constructor(private readonly ws: WebSocket, private readonly pacing: ReadPacing) {
    this.tokens = pacing.budget.burstBytes;
  }

  get isPaused(): boolean {
    return this.pausedAt !== 0;
  }

  /** Charges `bytes` just read from the peer's socket; pauses it when over budget or past its share of the turn. */
  onRead(bytes: number): void {
    if (this.released || this.ws.readyState !== 1) return;
    const { pacing } = this;
    const now = performance.now();
    const refilled = this.tokens + (now - this.refilledAt) * pacing.bytesPerMs;
    const burst = pacing.budget.burstBytes;
    this.tokens = (refilled < burst ? refilled : burst) - bytes;
    this.refilledAt = now;
    if (this.tokens < 0) return this.pauseForBudget(now);
    if (this.turn !== currentTurn) {
      this.turn = currentTurn;
      this.turnBytes = 0;
      armTurnEnd();
    }
    this.turnBytes += bytes;
    if (this.turnBytes >= TURN_SHARE_BYTES && !this.yielded) this.yieldTurn();
  }

  /**
   * Stops pacing for good (the beacon is closing the socket, or it closed):
   * the socket is read again so the close handshake completes, and the
   * pause ends in the counters.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    const paused = this.pausedAt !== 0;
    this.endPause();
    if ((paused || this.yielded) && this.ws.readyState !== 3) this.ws.resume();
    this.yielded = false;
  }

  /** @internal The resume timer fired. */
  resumeAfterPause(): void {
    this.resumeTimer = undefined;
    this.endPause();
    if (!this.yielded && !this.released && this.ws.readyState === 1) this.ws.resume();
  }

  /** @internal A new turn began. */
  resumeAfterYield(): void {
    this.yielded = false;
    if (this.pausedAt === 0 && !this.released && this.ws.readyState === 1) this.ws.resume();
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
    const waitMs = Math.ceil((pacing.resumeBytes - this.tokens) / pacing.bytesPerMs);
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
