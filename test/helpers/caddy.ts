/**
 * A real Caddy (Debian's `caddy`) running the shipped Caddyfile, for tests.
 *
 * - `adaptShippedCaddyfile` changes the shipped file only where a test
 *   machine differs from a server: a global block (no admin endpoint, no
 *   trust-store install, no :80 redirect listener), `bind 127.0.0.1` and
 *   `tls internal` in the site, and the upstream port. Each substitution is
 *   checked to have happened exactly once, so the routes under test are the
 *   shipped ones. The site address itself comes from BEACON_DOMAIN, the
 *   shipped file's own knob.
 * - `startCaddy` runs `caddy run` with HOME and XDG dirs in a temp dir (it
 *   never touches the machine's Caddy state), waits (bounded) for its local
 *   root CA and for TLS to answer, and `stop()` kills it by PID.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, get, requireTool, startTool, tempDir } from './deploy';
import { freeTcpUdpPort } from './free-ports';

export const SHIPPED_CADDYFILE = join(REPO_ROOT, 'Caddyfile');

/** The shipped site line and upstream, as the tests expect to find them. */
export const SITE_LINE = /^\{\$BEACON_DOMAIN:([^}]+)\} \{$/m;
export const SHIPPED_UPSTREAM = 'reverse_proxy 127.0.0.1:8443';

function replaceOnce(text: string, find: string | RegExp, replacement: string, what: string): string {
  const count = typeof find === 'string' ? text.split(find).length - 1 : (text.match(new RegExp(find.source, `${find.flags.replace('g', '')}g`)) ?? []).length;
  if (count !== 1) throw new Error(`the shipped Caddyfile should contain ${what} exactly once, found ${count}`);
  return text.replace(find, replacement);
}

/** The shipped Caddyfile, adapted for a test machine (see the module comment). */
export function adaptShippedCaddyfile(upstreamPort: number, shipped = readFileSync(SHIPPED_CADDYFILE, 'utf8')): string {
  const text = replaceOnce(shipped, SHIPPED_UPSTREAM, `reverse_proxy 127.0.0.1:${upstreamPort}`, `"${SHIPPED_UPSTREAM}"`);
  return forTestMachine(text);
}

/** deploy/Caddyfile.cluster: one upstream, the address every instance shares (--reuse-port). */
export const SHIPPED_CLUSTER_CADDYFILE = join(REPO_ROOT, 'deploy', 'Caddyfile.cluster');
export const SHIPPED_CLUSTER_UPSTREAM = 'reverse_proxy 127.0.0.1:8443 {';

/** The shipped cluster Caddyfile, adapted for a test machine, its upstream the instances' shared port. */
export function adaptClusterCaddyfile(sharedPort: number, shipped = readFileSync(SHIPPED_CLUSTER_CADDYFILE, 'utf8')): string {
  const text = replaceOnce(shipped, SHIPPED_CLUSTER_UPSTREAM, `reverse_proxy 127.0.0.1:${sharedPort} {`, `"${SHIPPED_CLUSTER_UPSTREAM}"`);
  return forTestMachine(text);
}

/** The site bound to loopback with `tls internal`, and a global block for a test machine. */
function forTestMachine(shipped: string): string {
  const text = replaceOnce(shipped, SITE_LINE, '$&\n\tbind 127.0.0.1\n\ttls internal', 'the site line {$BEACON_DOMAIN:...} {');
  const global = [
    '{',
    '\tadmin off',
    '\tskip_install_trust',
    '\tauto_https disable_redirects',
    '}',
    '',
  ].join('\n');
  return global + text;
}

/** Environment for a Caddy that keeps all its state under `dir`. */
export function isolatedCaddyEnv(dir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: dir,
    XDG_DATA_HOME: join(dir, 'data'),
    XDG_CONFIG_HOME: join(dir, 'config'),
    ...extra,
  };
}

export interface RunningCaddy {
  pid: number;
  /** https://127.0.0.1:PORT */
  base: string;
  /** Caddy's local root CA (PEM), to trust its `tls internal` certificates. */
  rootCa: string;
  dir: string;
  /** Everything Caddy printed so far (for failure messages). */
  logs(): string;
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 20_000;

/**
 * Runs `caddy run` on `caddyfile` with BEACON_DOMAIN=127.0.0.1:PORT, PORT free
 * for TCP and for UDP (HTTP/3), and resolves once its root CA exists and GET
 * /health over TLS (trusting that CA) gets any HTTP answer; `base` names the
 * port. Rejects with Caddy's output if it exits or is not ready within 20 s.
 */
export async function startCaddy(caddyfile: string): Promise<RunningCaddy> {
  const caddy = requireTool('caddy');
  const port = await freeTcpUdpPort();
  const dir = tempDir('caddy');
  const config = join(dir, 'Caddyfile');
  writeFileSync(config, caddyfile);
  const rootPath = join(dir, 'data', 'caddy', 'pki', 'authorities', 'local', 'root.crt');
  const base = `https://127.0.0.1:${port}`;
  const { tool, ready: rootCa } = await startTool('caddy', caddy, ['run', '--config', config, '--adapter', 'caddyfile'], {
    env: isolatedCaddyEnv(dir, { BEACON_DOMAIN: `127.0.0.1:${port}` }),
  }, async () => {
    if (!existsSync(rootPath)) throw new Error('no root CA yet');
    const ca = readFileSync(rootPath, 'utf8');
    await get(base, '/health', { ca, timeoutMs: 1_000 });
    return ca;
  }, START_TIMEOUT_MS);
  return { pid: tool.pid, base, rootCa, dir, logs: tool.logs, stop: tool.stop };
}
