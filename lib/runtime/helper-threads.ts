/**
 * The event loop first: on Linux, the process's other threads (V8's
 * garbage collector and compiler helpers, Node's platform threads, and
 * whatever else runs beside the main thread) get a higher nice value than
 * the main thread (issue 22).
 *
 * - Why: in a reconnect storm on a busy core, V8's helpers (concurrent
 *   marking, parallel scavenging, background compilation) hold the core a
 *   scheduler slice at a time (~3-4 ms), and every attached peer's frames
 *   wait them out. With a higher nice value the main thread goes first; on
 *   a core with time to spare they run as before, so a machine with idle
 *   cores sees no change.
 * - Linux keeps a nice value per thread, and setpriority() with a thread
 *   ID moves that thread alone (os.setPriority takes one there). Raising a
 *   nice value needs no privilege. Elsewhere a thread ID is not a process
 *   ID, so nothing is done.
 * - Only threads running now are moved: V8's and Node's are started with
 *   the process. A thread started later (a keys-file worker, libuv's pool
 *   on first use) starts at its creator's priority, the main thread's.
 * - A thread already at or above the target (an operator's choice, or an
 *   earlier call) is left alone, so calling this again changes nothing.
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { MAX_NICE } from '../config';

export interface HelperThreadsMoved {
  /** Threads given the lower priority now. */
  moved: number;
  /** Their nice value; NaN when nothing was done (not Linux, or `by` is 0). */
  nice: number;
}

/**
 * Gives every thread of this process but the main one a nice value `by`
 * above the main thread's (capped at 19). Never throws: a thread that left
 * meanwhile, or a /proc that cannot be read, is skipped.
 */
export function lowerHelperThreads(by: number): HelperThreadsMoved {
  if (process.platform !== 'linux' || by <= 0) return { moved: 0, nice: NaN };
  let tids: number[];
  try {
    tids = readdirSync('/proc/self/task').map(Number).filter((tid) => Number.isInteger(tid) && tid !== process.pid);
  } catch {
    return { moved: 0, nice: NaN };
  }
  const nice = Math.min(MAX_NICE, getPriority() + by);
  let moved = 0;
  for (const tid of tids) {
    try {
      if (getPriority(tid) >= nice) continue;
      setPriority(tid, nice);
      moved++;
    } catch {
      // The thread ended between the listing and now.
    }
  }
  return { moved, nice };
}
