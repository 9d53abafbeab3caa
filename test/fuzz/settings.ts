/**
 * How many cases each property runs, and from which seed.
 *
 * - In `npm test`: a fixed seed and each property's own bounded count, so
 *   the suite is repeatable and quick.
 * - `npm run fuzz` (test/fuzz/run.ts) sets BEACON_FUZZ_SEED to a random seed
 *   it prints, and BEACON_FUZZ_SCALE to multiply every count; a failure is
 *   replayed with `npm run fuzz -- --seed N` (fast-check also prints the
 *   seed and the path of the smallest failing case).
 */
import type { Parameters } from 'fast-check';

/** The seed of every property in `npm test`. */
export const FIXED_SEED = 0x5eed;

export function fuzzSeed(): number {
  const text = process.env.BEACON_FUZZ_SEED;
  return text === undefined || text === '' ? FIXED_SEED : Number(text);
}

export function fuzzScale(): number {
  const scale = Number(process.env.BEACON_FUZZ_SCALE ?? '1');
  return Number.isFinite(scale) && scale > 0 ? scale : 1;
}

/** fast-check parameters for a property that runs `runs` cases in `npm test`. */
export function fuzzParams<T>(runs: number, extra: Parameters<T> = {}): Parameters<T> {
  // includeErrorInReport: the assertion that failed, not only the counterexample.
  return { seed: fuzzSeed(), numRuns: Math.max(1, Math.round(runs * fuzzScale())), includeErrorInReport: true, ...extra };
}
