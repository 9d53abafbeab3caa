/**
 * Runs a guide-runner script (walkthrough.js, cluster-quickstart.js) as a
 * child process, the way the guide tests do: in a temporary copy of the
 * project's layout (dist, node_modules and package.json linked), in a
 * private network namespace when this process may make one, otherwise
 * under a lock shared by all such runs so two never hold the guides' fixed
 * ports at once. The run is ended (SIGTERM, by its PID) past `deadlineMs`.
 * It does not judge the run: the caller asserts on the exit code and output.
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

const ROOT = join(__dirname, '..', '..', '..');

/** `unshare` + `ip` as root: a private loopback. */
function canIsolate(): boolean {
  if (process.getuid?.() !== 0) return false;
  const probe = spawnSync('unshare', ['--net', '--', 'ip', 'link', 'set', 'lo', 'up'], { stdio: 'ignore', timeout: 10_000 });
  return probe.status === 0;
}

/**
 * Runs `node runner ...args dir`, where dir is a fresh copy of the layout
 * named after `prefix` (removed when the test ends); resolves with the exit
 * code and everything the runner wrote.
 */
export async function runGuide(t: TestContext, prefix: string, runner: string, args: readonly string[], deadlineMs: number): Promise<{ code: number | null; output: string }> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const entry of ['dist', 'node_modules', 'package.json']) symlinkSync(join(ROOT, entry), join(dir, entry));
  const argv = [runner, ...args, dir];
  const child = canIsolate()
    ? spawn('unshare', ['--net', '--', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"', process.execPath, ...argv], { cwd: dir })
    : spawn('flock', [join(tmpdir(), 'beacon-walkthrough.lock'), process.execPath, ...argv], { cwd: dir });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => { output += s; });
  child.stderr.setEncoding('utf8').on('data', (s: string) => { output += s; });
  const deadline = setTimeout(() => child.kill('SIGTERM'), deadlineMs); // by its PID; the runner takes its terminals down
  t.after(() => clearTimeout(deadline));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, output };
}
