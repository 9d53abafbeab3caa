/**
 * A worker thread's whole job: one load of the keys file (keys-file-job.ts),
 * posted back with the key table's buffers transferred, not copied. One
 * worker per load; the thread ends after posting, and its parse garbage
 * with it. Started by KeysFile (keys-file.ts) for files too big to parse on
 * the event loop.
 */
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { runKeysFileJob, type KeysFileJob } from './keys-file-job';

/**
 * The parse yields the core to the event loop when both want it: on a
 * pinned or busy machine they share one core, and the loop's relays matter
 * more than a reload finishing sooner. Linux only, where the nice value is
 * per thread (elsewhere it would lower the whole beacon).
 */
const WORKER_NICE = 10;

if (parentPort) {
  if (process.platform === 'linux') {
    try {
      setPriority(WORKER_NICE);
    } catch {
      // Not allowed here (a sandbox); the parse simply competes as equals.
    }
  }
  const { result, transfer } = runKeysFileJob(workerData as KeysFileJob);
  parentPort.postMessage(result, transfer);
}
