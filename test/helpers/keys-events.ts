/** Bounded waits on a KeysFile's events. */
import { once } from 'node:events';
import type { KeysFile } from '../../lib/auth';

/** Every wait on a keys-file event is bounded: a missing event fails the test, never hangs it. */
export const KEYS_EVENT_TIMEOUT_MS = 3000;

/**
 * The next `name` event, or a rejection after KEYS_EVENT_TIMEOUT_MS. The
 * timer is a ref'd one on purpose: the watcher does not keep the process
 * alive, so the wait itself must (AbortSignal.timeout would not).
 */
export async function nextKeysEvent<T extends unknown[]>(file: KeysFile, name: 'reload' | 'reloadError'): Promise<T> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error(`no '${name}' event within ${KEYS_EVENT_TIMEOUT_MS} ms`)), KEYS_EVENT_TIMEOUT_MS);
  try {
    return (await once(file, name, { signal: abort.signal })) as T;
  } finally {
    clearTimeout(timer);
  }
}
