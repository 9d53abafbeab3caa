/**
 * A worker thread's whole job: one load of the keys file (keys-file-job.ts),
 * posted back with the key table's buffers transferred, not copied. One
 * worker per load; the thread ends after posting, and its parse garbage
 * with it. Started by KeysFile (keys-file.ts) for files too big to parse on
 * the event loop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runKeysFileJob, type KeysFileJob } from './keys-file-job';

if (parentPort) {
  const { result, transfer } = runKeysFileJob(workerData as KeysFileJob);
  parentPort.postMessage(result, transfer);
}
