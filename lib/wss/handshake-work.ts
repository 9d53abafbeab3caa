/**
 * The handshakes' own work, a bounded amount per turn of the event loop
 * (issue 22): in a reconnect storm new daemons must not starve the frames
 * of the peers already attached.
 *
 * - A step is what a handshake does apart from reading: answering the
 *   upgrade (101 and the challenge) and checking the signature (~0.1-0.2
 *   ms of CPU on the loop). Steps wait in arrival order and run at the end
 *   of a turn, after its I/O, while they have used less than `budgetMs` of
 *   that turn; the rest wait for the next turn, whose I/O (every attached
 *   peer's frames) comes first.
 * - Work that nobody waits for any more (the socket closed, the handshake
 *   failed) is dropped when its turn comes: each queued item does its own
 *   check.
 * - At most one step per handshake waits at a time, so the queue is
 *   bounded by --max-handshakes.
 */

/** Something with a step to run. */
export interface HandshakeStep {
  /** Runs the step due now, or nothing if none is (any more). */
  runStep(): void;
}

export class HandshakeWork {
  private queue: (HandshakeStep | undefined)[] = [];
  private head = 0;
  private scheduled = false;
  private readonly run: () => void;

  /** `counters.handshakeTurnsDeferred` counts the turns that ended with steps still waiting. */
  constructor(private readonly budgetMs: number, private readonly counters: { handshakeTurnsDeferred: number } = { handshakeTurnsDeferred: 0 }) {
    this.run = () => this.runTurn();
  }

  /** Steps waiting. */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  add(step: HandshakeStep): void {
    this.queue.push(step);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.run);
    }
  }

  private runTurn(): void {
    // `scheduled` stays set while this runs: steps added now are taken in this run, or the next.
    const started = performance.now();
    const queue = this.queue;
    while (this.head < queue.length) {
      const step = queue[this.head]!;
      queue[this.head++] = undefined;
      step.runStep();
      if (performance.now() - started >= this.budgetMs) break;
    }
    if (this.head === queue.length) {
      queue.length = 0;
      this.head = 0;
      this.scheduled = false;
      return;
    }
    // Keep the array from growing without end while it is never empty.
    if (this.head > 1024 && this.head * 2 > queue.length) {
      this.queue = queue.slice(this.head);
      this.head = 0;
    }
    this.counters.handshakeTurnsDeferred++;
    setImmediate(this.run);
  }
}
