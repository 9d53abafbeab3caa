/**
 * `npm run fuzz`: the property tests (test/fuzz-*.test.ts) with a random
 * seed, printed first, and many more cases than `npm test` runs.
 *
 *   npm run fuzz                      random seed, 20x the cases (a few minutes)
 *   npm run fuzz -- --seed N          replay a run (same seed, same scale)
 *   npm run fuzz -- --scale K         K times the cases of npm test
 *   npm run fuzz -- --only codec      only test/fuzz-codec.test.ts (codec, handshake, keys-file, registry)
 *
 * On a failure fast-check also prints the counterexample and the seed and
 * path of its smallest form.
 */
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

function parseArgs(argv: readonly string[]): { seed: number; scale: number; only: string | undefined } {
  let seed = randomInt(1, 2 ** 31 - 1);
  let scale = 20;
  let only: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--seed') seed = Number(value);
    else if (flag === '--scale') scale = Number(value);
    else if (flag === '--only') only = value;
    else throw new Error(`unknown flag ${flag}; use --seed N, --scale K, --only NAME`);
    if (flag !== '--only' && !(Number.isInteger(Number(value)) && Number(value) > 0)) throw new Error(`${flag} needs a positive integer`);
  }
  return { seed, scale, only };
}

function main(): void {
  const { seed, scale, only } = parseArgs(process.argv.slice(2));
  const testDir = join(__dirname, '..');
  const files = readdirSync(testDir)
    .filter((f) => /^fuzz-.*\.test\.js$/.test(f) && (only === undefined || f.includes(only)))
    .map((f) => join(testDir, f));
  if (files.length === 0) throw new Error(`no fuzz test file matches "${only}"`);
  const replay = `npm run fuzz -- --seed ${seed} --scale ${scale}${only ? ` --only ${only}` : ''}`;
  console.log(`fuzz: seed ${seed}, ${scale}x the cases of npm test; replay with: ${replay}`);
  const child = spawn(process.execPath, ['--test', '--test-concurrency=1', ...files], {
    stdio: 'inherit',
    env: { ...process.env, BEACON_FUZZ_SEED: String(seed), BEACON_FUZZ_SCALE: String(scale) },
  });
  child.on('exit', (code) => {
    console.log(code === 0 ? `fuzz passed (seed ${seed})` : `FUZZ FAILED (seed ${seed}); replay with: ${replay}`);
    process.exitCode = code ?? 1;
  });
}

try {
  main();
} catch (err) {
  console.error(`fuzz: ${(err as Error).message}`);
  process.exitCode = 2;
}
