/**
 * The rooms of lib/ look down, never across or up (docs/design.md, Layout):
 * read from the import lines of the source, so a new import that breaks a
 * rule fails here, naming the file. The rules are the ones the code keeps
 * today, not every possible one: the configuration needs no part to
 * validate itself, the shared address helpers and the native addon's
 * loader sit below every part that uses them, the listeners (lib/http,
 * lib/udp) know nothing of each other, and only cmd/ imports the
 * composition root (lib/beacon.ts).
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';

const ROOT = join(__dirname, '..', '..');
const LIB = join(ROOT, 'lib');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

/** lib/udp/x.ts and lib/udp (its index.ts) -> 'udp'; lib/beacon.ts -> 'beacon.ts'; outside lib -> undefined. */
function room(path: string): string | undefined {
  const rel = relative(LIB, path);
  if (rel.startsWith('..')) return undefined;
  const [first, second] = rel.split('/');
  if (second !== undefined || (existsSync(path) && statSync(path).isDirectory())) return first;
  return `${first!.replace(/\.ts$/, '')}.ts`;
}

/** Each file's relative imports, as the rooms they land in. */
function importsByFile(): Map<string, Set<string>> {
  const result = new Map<string, Set<string>>();
  for (const file of sources(LIB)) {
    const rooms = new Set<string>();
    for (const match of readFileSync(file, 'utf8').matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gms)) {
      const target = room(resolve(dirname(file), match[1]!));
      if (target !== undefined && target !== room(file)) rooms.add(target);
    }
    result.set(relative(ROOT, file), rooms);
  }
  return result;
}

/** room -> the rooms it may not import. */
const FORBIDDEN: Record<string, (target: string) => boolean> = {
  // The configuration validates itself: only the wire limits it checks against.
  config: (target) => target !== 'protocol',
  // Shared helpers and the addon's loader depend on nothing of ours.
  net: () => true,
  native: () => true,
  // The two listeners know nothing of each other, of the WebSocket side, of the cluster or of the router.
  http: (target) => ['udp', 'wss', 'cluster', 'relay'].includes(target),
  udp: (target) => ['http', 'wss', 'cluster'].includes(target),
};

test('lib/ rooms import only downwards: config, net and native need no part; http and udp know nothing of each other; only cmd/ imports lib/beacon.ts', () => {
  const problems: string[] = [];
  const imports = importsByFile();
  assert.ok(imports.size > 50, `read ${imports.size} files under lib/`);
  for (const [file, rooms] of imports) {
    const own = room(join(ROOT, file))!;
    for (const target of rooms) {
      if (target === 'beacon.ts') problems.push(`${file} imports lib/beacon.ts, the composition root (import what it needs from where it lives, e.g. lib/start-error.ts)`);
      else if (FORBIDDEN[own]?.(target)) problems.push(`${file} (lib/${own}) imports lib/${target}`);
    }
  }
  assert.deepEqual(problems, []);
});

test('the checker sees an import across rooms (a control on the parser)', () => {
  const imports = importsByFile();
  assert.ok(imports.get('lib/udp/endpoints.ts')?.has('net'), 'lib/udp/endpoints.ts imports perIpKey from lib/net');
  assert.ok(imports.get('lib/http/listener.ts')?.has('native'), 'lib/http/listener.ts imports the addon loader from lib/native');
  assert.ok(imports.get('lib/cluster/nats-cluster.ts')?.has('start-error.ts'), 'lib/cluster/nats-cluster.ts imports StartError from lib/start-error.ts');
});
