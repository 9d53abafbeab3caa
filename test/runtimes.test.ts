/**
 * The Node.js versions the beacon supports (package.json `engines`, the
 * README) are ones every locked dependency declares it runs on, so
 * `npm ci` on the oldest supported release of each major prints no
 * EBADENGINE warning. CI runs the suite itself on each major (.ci/run).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

// semver comes with fastify; its types are not installed, so only what is used is declared.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const semver = require('semver') as {
  satisfies(version: string, range: string): boolean;
  minVersion(range: string): { version: string } | null;
};

const ROOT = join(__dirname, '..', '..');

interface Manifest { engines?: { node?: string } }
interface Lock { packages: Record<string, Manifest> }

function read<T>(file: string): T {
  return JSON.parse(readFileSync(join(ROOT, file), 'utf8')) as T;
}

/** The oldest release of each `||` alternative of a range: "^20.19.0 || ^24.0.0" -> 20.19.0, 24.0.0. */
function oldestOfEach(range: string): string[] {
  return range.split('||').map((part) => {
    const min = semver.minVersion(part.trim());
    assert.ok(min, `engines part "${part}" has no lowest version`);
    return min.version;
  });
}

test('engines names Node 20 (from 20.19) and Node 24, as the README says', () => {
  const engines = read<Manifest>('package.json').engines?.node;
  assert.equal(engines, '^20.19.0 || ^24.0.0');
  assert.deepEqual(oldestOfEach(engines), ['20.19.0', '24.0.0']);
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  assert.match(readme, /\*\*Node\.js 20\*\* \(20\.19 or later/);
  assert.match(readme, /\*\*Node\.js 24 LTS\*\*/);
  for (const version of ['20.19.0', '20.20.2', '24.0.0', '24.21.0']) assert.ok(semver.satisfies(version, engines), version);
  for (const version of ['18.20.0', '20.18.3', '22.12.0', '26.0.0']) assert.ok(!semver.satisfies(version, engines), version);
});

test('every locked package declares it runs on the oldest supported Node 20 and Node 24: npm ci warns of no engine', () => {
  const supported = oldestOfEach(read<Manifest>('package.json').engines?.node ?? '');
  const lock = read<Lock>('package-lock.json');
  const refusing: string[] = [];
  let checked = 0;
  for (const [path, manifest] of Object.entries(lock.packages)) {
    const range = manifest.engines?.node;
    if (path === '' || range === undefined) continue;
    checked++;
    for (const version of supported) {
      if (!semver.satisfies(version, range)) refusing.push(`${path} wants node ${range}, not ${version}`);
    }
  }
  assert.ok(checked > 10, `the lock file lists engines for ${checked} packages`);
  assert.deepEqual(refusing, [], 'a dependency declares a Node range the beacon supports but it does not (override it, or document why not)');
});
