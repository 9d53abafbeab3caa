/** Bounded waits on a CompatClient's events, and recorders of them. */
import { PacketType, type CompatClient, type CompatClientEvents, type Packet } from '../../lib/client';
import { withTimeout } from './harness';

type EventName = keyof CompatClientEvents;
type FirstArg<K extends EventName> = CompatClientEvents[K] extends [infer A, ...unknown[]] ? A : undefined;

/** Resolves with the first argument of the next `name` event that passes `filter`; rejects after `ms`. */
export function nextEvent<K extends EventName>(
  client: CompatClient, name: K, ms = 3_000, filter: (arg: FirstArg<K>) => boolean = () => true,
): Promise<FirstArg<K>> {
  let listener: ((...args: unknown[]) => void) | undefined;
  const got = new Promise<FirstArg<K>>((resolve) => {
    listener = (...args: unknown[]) => {
      const arg = args[0] as FirstArg<K>;
      if (filter(arg)) resolve(arg);
    };
    (client as unknown as NodeJS.EventEmitter).on(name, listener);
  });
  return withTimeout(got, ms, `the client's "${String(name)}" event`)
    .finally(() => (client as unknown as NodeJS.EventEmitter).off(name, listener as (...args: unknown[]) => void));
}

/** Records every `name` event's first argument with the time it came. */
export function record<K extends EventName>(client: CompatClient, name: K): Array<{ at: number; value: FirstArg<K> }> {
  const seen: Array<{ at: number; value: FirstArg<K> }> = [];
  (client as unknown as NodeJS.EventEmitter).on(name, (...args: unknown[]) => seen.push({ at: Date.now(), value: args[0] as FirstArg<K> }));
  return seen;
}

/** Polls until `predicate` holds (each 5 ms), rejecting after `ms`. */
export async function until(predicate: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The next RelayDeliver as "sender:payload", or a rejection after `ms`. */
export function nextDelivery(c: CompatClient, ms = 3_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { c.off('packet', on); reject(new Error(`no RelayDeliver within ${ms} ms`)); }, ms);
    const on = (p: Packet) => {
      if (p.type !== PacketType.RelayDeliver) return;
      clearTimeout(timer); c.off('packet', on); resolve(`${p.sender}:${p.payload.toString()}`);
    };
    c.on('packet', on);
  });
}
