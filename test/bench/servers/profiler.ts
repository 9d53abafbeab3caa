/**
 * CPU profiling of a server child on command, so a profile covers the
 * measured load and not start-up (loading 10,000 keys, compiling modules).
 * Writes a V8 .cpuprofile (the format of `node --cpu-prof`).
 */
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

let session: Session | undefined;

function post(method: string, params: object = {}): Promise<unknown> {
  return new Promise((resolve, reject) => {
    session!.post(method, params, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

export async function startProfiling(): Promise<void> {
  if (session) return;
  session = new Session();
  session.connect();
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 200 });
  await post('Profiler.start');
}

/** Stops and writes the profile into `dir`; nothing if not profiling. */
export async function stopProfiling(dir: string): Promise<void> {
  if (!session) return;
  const { profile } = (await post('Profiler.stop')) as { profile: object };
  writeFileSync(join(dir, `beacon-${process.pid}-${Date.now()}.cpuprofile`), JSON.stringify(profile));
  session.disconnect();
  session = undefined;
}
