/**
 * Node IDs an attacker would choose to collide under the fixed hashes the
 * beacon's tables used before issue 19: V8's integer hash (what a Map of
 * node IDs uses; it has no seed and can be inverted) and the Fibonacci
 * hash the cluster directory's mirror probed with.
 */

/** V8's ComputeUnseededHash (Thomas Wang's integer hash), before V8 cuts it to 30 bits. */
export function v8IntegerHash(key: number): number {
  let h = key >>> 0;
  h = (~h + (h << 15)) >>> 0;
  h = (h ^ (h >>> 12)) >>> 0;
  h = (h + (h << 2)) >>> 0;
  h = (h ^ (h >>> 4)) >>> 0;
  h = Math.imul(h, 2057) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** The inverse of an odd number modulo 2^32 (Newton's iteration). */
function inverseOdd(a: number): number {
  let x = a;
  for (let i = 0; i < 5; i++) x = Math.imul(x, 2 - Math.imul(a, x));
  return x >>> 0;
}

/** The inverse of y = x ^ (x >>> shift). */
function unXorShift(y: number, shift: number): number {
  let x = y;
  for (let k = shift; k < 32; k += shift) x ^= y >>> k;
  return x >>> 0;
}

/** The key whose v8IntegerHash is `hash`: each step of the hash undone. */
export function v8IntegerUnhash(hash: number): number {
  let x = hash >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, inverseOdd(2057)) >>> 0;
  x = unXorShift(x, 4);
  x = Math.imul(x, inverseOdd(5)) >>> 0;
  x = unXorShift(x, 12);
  return Math.imul((x + 1) >>> 0, inverseOdd(32767)) >>> 0;
}

/** The low bits every ID of idsCollidingUnderV8 hashes to. */
export const V8_COLLIDING_LOW_BITS = 0x5a5a;

/**
 * `count` (up to 30,000) node IDs whose V8 hashes share their low 16 bits:
 * in a Map of up to 128k entries (64k buckets) they all fall into one
 * bucket. Kept below 2^31, so V8 holds them as small integers and hashes
 * them that way.
 */
export function idsCollidingUnderV8(count: number): number[] {
  if (count > 30_000) throw new RangeError('at most 30,000 IDs share 16 low hash bits below 2^31');
  const ids: number[] = [];
  for (let high = 1; ids.length < count; high++) {
    const id = v8IntegerUnhash(((high << 16) | V8_COLLIDING_LOW_BITS) >>> 0);
    if (id > 0 && id < 2 ** 31) ids.push(id);
  }
  return ids;
}

/** The Fibonacci hash the directory's mirror used: its slot was the top bits. */
export function fibonacciHash(nodeId: number): number {
  return Math.imul(nodeId, 0x9e3779b1) >>> 0;
}

/**
 * `count` node IDs whose Fibonacci hashes are consecutive: at any table
 * size they fill one run of slots, so the mirror's linear probing walks
 * all of them.
 */
export function idsCollidingUnderFibonacci(count: number): number[] {
  const inverse = inverseOdd(0x9e3779b1);
  const ids: number[] = [];
  for (let hash = 0x40000000; ids.length < count; hash++) {
    const id = Math.imul(hash, inverse) >>> 0;
    if (id !== 0) ids.push(id);
  }
  return ids;
}
