/**
 * Deadlines of one fixed delay for many sockets, on one timer (issue 22):
 * the headers deadline of a new connection, a handshake's auth deadline, a
 * closing socket's grace. A setTimeout per socket costs a Timeout object
 * and a timer-list insertion per connection, thousands a second in a
 * reconnect storm.
 *
 * - One delay per queue, so deadlines come due in the order they were set:
 *   a FIFO ring, and one timer armed for the oldest.
 * - `add` returns a ticket; `cancel(ticket)` clears that slot in O(1)
 *   (nothing is searched or moved). A ticket that has come due or was
 *   cancelled cancels nothing, so callers may cancel twice.
 * - Precision: a deadline fires no earlier than its delay, and at most
 *   `slackMs` later; deadlines that come due together fire in one callback.
 * - Holds the items until they come due or are cancelled; nothing else.
 */

/** What a queue calls for each item whose deadline has passed. */
export type OnDeadline<T> = (item: T) => void;

/** No deadline: a ticket that cancels nothing. */
export const NO_DEADLINE = -1;

const INITIAL_CAPACITY = 64;

export class DeadlineQueue<T extends object> {
  private items: (T | undefined)[] = new Array<T | undefined>(INITIAL_CAPACITY).fill(undefined);
  private dueAt: Float64Array = new Float64Array(INITIAL_CAPACITY);
  /** Tickets are positions in the queue's whole history: slot = ticket % capacity. */
  private head = 0;
  private tail = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = 0;
  private readonly slackMs: number;
  private readonly fire = (): void => this.expire();

  constructor(readonly delayMs: number, private readonly onDeadline: OnDeadline<T>) {
    this.slackMs = Math.max(1, Math.min(50, Math.floor(delayMs / 20)));
  }

  /** Items waiting (cancelled ones included until they reach the head). */
  get size(): number {
    return this.tail - this.head;
  }

  /** `item` comes due `delayMs` from now; returns its ticket. */
  add(item: T): number {
    if (this.tail - this.head === this.items.length) this.grow();
    const ticket = this.tail++;
    const slot = ticket % this.items.length;
    this.items[slot] = item;
    this.dueAt[slot] = performance.now() + this.delayMs;
    if (this.timer === undefined) this.arm(this.dueAt[slot]!);
    return ticket;
  }

  /** Forgets the item of `ticket` if it has not come due yet. */
  cancel(ticket: number): void {
    if (ticket < this.head || ticket >= this.tail) return;
    this.items[ticket % this.items.length] = undefined;
  }

  /** Stops the timer and forgets every item. */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.items.fill(undefined);
    this.head = this.tail; // tickets stay unique: old ones cancel nothing
  }

  private arm(at: number): void {
    this.timerAt = at + this.slackMs;
    this.timer = setTimeout(this.fire, Math.max(0, this.timerAt - performance.now()));
    this.timer.unref();
  }

  /** The timer fired: every item due by now is handed over, oldest first. */
  private expire(): void {
    this.timer = undefined;
    const now = performance.now();
    const capacity = this.items.length;
    while (this.head < this.tail) {
      const slot = this.head % capacity;
      const item = this.items[slot];
      if (item !== undefined && this.dueAt[slot]! > now) break;
      this.items[slot] = undefined;
      this.head++;
      // A callback may add (and so grow the ring): re-read nothing cached across it.
      if (item !== undefined) {
        this.onDeadline(item);
        if (this.items.length !== capacity) return this.rearm();
      }
    }
    this.rearm();
  }

  private rearm(): void {
    if (this.timer !== undefined) return;
    const capacity = this.items.length;
    // Cancelled items at the head need no timer of their own.
    while (this.head < this.tail && this.items[this.head % capacity] === undefined) this.head++;
    if (this.head === this.tail) return;
    this.arm(this.dueAt[this.head % capacity]!);
  }

  /** Doubles the ring, keeping tickets valid: items move to slot ticket % newCapacity. */
  private grow(): void {
    const old = this.items;
    const oldDue = this.dueAt;
    const capacity = old.length * 2;
    this.items = new Array<T | undefined>(capacity).fill(undefined);
    this.dueAt = new Float64Array(capacity);
    for (let ticket = this.head; ticket < this.tail; ticket++) {
      this.items[ticket % capacity] = old[ticket % old.length];
      this.dueAt[ticket % capacity] = oldDue[ticket % old.length]!;
    }
  }
}
