/**
 * DeadlineQueue (lib/deadline-queue.ts): deadlines of one delay on one
 * timer, in the order they were set; cancelled ones never fire; the ring
 * grows without losing or reordering any; nothing fires early.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeadlineQueue, NO_DEADLINE } from '../lib/deadline-queue';

interface Item {
  id: number;
  addedAt: number;
  firedAt?: number;
}

/** Resolves once every item has fired; rejects naming the first that has not after 5 s. */
function fired(items: Item[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const check = setInterval(() => {
      const waiting = items.find((item) => item.firedAt === undefined);
      if (waiting === undefined) {
        clearInterval(check);
        resolve();
      } else if (performance.now() - started > 5_000) {
        clearInterval(check);
        reject(new Error(`item ${waiting.id} never fired`));
      }
    }, 5);
  });
}

test('deadlines fire in the order they were set, none before its delay, and cancelled ones never', async () => {
  const delayMs = 60;
  const order: number[] = [];
  const queue = new DeadlineQueue<Item>(delayMs, (item) => {
    item.firedAt = performance.now();
    order.push(item.id);
  });
  // 40 first, fired before the rest: the ring's start has moved on, so what follows wraps around it.
  const early = Array.from({ length: 40 }, (_, i): Item => ({ id: -1 - i, addedAt: performance.now() }));
  for (const item of early) queue.add(item);
  await fired(early);
  order.length = 0;
  const items: Item[] = [];
  const tickets: number[] = [];
  // 300 items over ~30 ms: more than the ring holds, so it grows (twice) while full of live tickets that wrap.
  for (let i = 0; i < 300; i++) {
    const item: Item = { id: i, addedAt: performance.now() };
    items.push(item);
    tickets.push(queue.add(item));
    if (i % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 5));
  }
  // Every third is cancelled, some twice: a second cancel does nothing.
  const cancelled = new Set<number>();
  for (let i = 0; i < 300; i += 3) {
    queue.cancel(tickets[i]!);
    queue.cancel(tickets[i]!);
    cancelled.add(i);
  }
  queue.cancel(NO_DEADLINE);
  const live = items.filter((item) => !cancelled.has(item.id));
  await fired(live);
  await new Promise((resolve) => setTimeout(resolve, delayMs)); // time for a cancelled one to fire, were it to
  assert.deepEqual(order, live.map((item) => item.id), 'in the order set, cancelled ones left out');
  for (const item of live) assert.ok(item.firedAt! - item.addedAt >= delayMs - 1, `item ${item.id} fired after ${(item.firedAt! - item.addedAt).toFixed(1)} ms`);
  assert.equal(queue.size, 0);
});

test('a ticket that has fired cancels nothing, and a deadline added from a callback fires too', async () => {
  const seen: string[] = [];
  const queue: DeadlineQueue<{ name: string }> = new DeadlineQueue(20, (item) => {
    seen.push(item.name);
    if (item.name === 'first') later = queue.add({ name: 'added while firing' });
  });
  let later = NO_DEADLINE;
  const first = queue.add({ name: 'first' });
  const second = queue.add({ name: 'second' });
  await new Promise((resolve) => setTimeout(resolve, 80));
  queue.cancel(first); // fired already: nothing to cancel, and nothing else is touched
  queue.cancel(second);
  assert.deepEqual(seen, ['first', 'second', 'added while firing']);
  assert.notEqual(later, NO_DEADLINE);
  queue.clear();
  queue.add({ name: 'after clear' });
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.deepEqual(seen.at(-1), 'after clear');
});
