/**
 * Reconnect delays: exponential backoff with jitter, as pure functions.
 *
 * - The ceiling of attempt k (1-based) is `initialDelayMs * 2^(k-1)`, capped
 *   at `maxDelayMs`: 250 ms, 500 ms, 1 s, ... 30 s with the defaults.
 * - Jitter spreads a crowd of daemons that lost the same beacon at the same
 *   moment. "equal" (the default) waits between half the ceiling and the
 *   ceiling, so delays still visibly grow; "full" waits between 0 and the
 *   ceiling (the widest spread); "none" waits the ceiling.
 * - The random source is injectable, so tests get exact delays.
 */

export type Jitter = 'equal' | 'full' | 'none';

export interface BackoffPolicy {
  /** Ceiling of the first retry. */
  initialDelayMs: number;
  /** No delay ever exceeds this. */
  maxDelayMs: number;
  jitter: Jitter;
  /** Uniform in [0, 1), like Math.random. */
  random: () => number;
}

/** The largest delay attempt `attempt` (1-based) may wait. */
export function backoffCeiling(attempt: number, initialDelayMs: number, maxDelayMs: number): number {
  const exponent = Math.max(0, Math.min(attempt - 1, 52));
  return Math.min(maxDelayMs, initialDelayMs * 2 ** exponent);
}

/** Applies the policy's jitter to a ceiling. */
export function jittered(ceilingMs: number, policy: Pick<BackoffPolicy, 'jitter' | 'random'>): number {
  const r = clampUnit(policy.random());
  switch (policy.jitter) {
    case 'none':
      return ceilingMs;
    case 'full':
      return Math.round(ceilingMs * r);
    case 'equal':
      return Math.round(ceilingMs / 2 + (ceilingMs / 2) * r);
  }
}

/** The delay before retry number `attempt` (1-based). */
export function backoffDelay(attempt: number, policy: BackoffPolicy): number {
  return jittered(backoffCeiling(attempt, policy.initialDelayMs, policy.maxDelayMs), policy);
}

/** A random source that misbehaves (NaN, 1, negative) cannot push a delay out of its range. */
function clampUnit(r: number): number {
  if (!Number.isFinite(r) || r < 0) return 0;
  return r >= 1 ? 1 : r;
}
