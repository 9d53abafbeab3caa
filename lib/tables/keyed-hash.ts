/**
 * The hash of every table keyed by something a stranger chooses (node IDs
 * from Discover, Relay, Sync or attach notices): HalfSipHash-1-3 of the
 * 32-bit key under a random key drawn once per process.
 *
 * - Why keyed: a fixed hash (Fibonacci hashing, V8's integer hash) can be
 *   inverted, so a stranger can choose thousands of node IDs that land in
 *   one probe run or one bucket, and every lookup near them walks all of
 *   them (issue 19: 5 % of a core became 95 %). Under a secret key the
 *   stranger cannot tell which IDs collide.
 * - Why HalfSipHash-1-3: a pseudorandom function made for exactly this
 *   (Linux hashes its network tables with it), on 32-bit words, so it runs
 *   on JavaScript's int32 arithmetic. About 20 ns a hash on the test
 *   machine; a relay costs microseconds.
 * - Not for anything but hash tables: 1-3 rounds are not a MAC.
 */
import { randomBytes } from 'node:crypto';

const seed = randomBytes(8);
const KEY0 = seed.readUInt32LE(0);
const KEY1 = seed.readUInt32LE(4);

/** The hash of a 32-bit key under this process's secret key: any u32 in, a u32 out. */
export function keyedHash(word: number): number {
  return halfSipHash13(KEY0, KEY1, word);
}

/** The length byte of a 4-byte message, in the top byte of the last block. */
const LENGTH_BLOCK = 4 << 24;

/**
 * HalfSipHash-1-3 with a 32-bit output, of one 32-bit word (the bytes of
 * `word`, little-endian) under the key (`key0`, `key1`): the reference
 * algorithm (Aumasson, Bernstein), checked against its test vector.
 */
export function halfSipHash13(key0: number, key1: number, word: number): number {
  let v0 = key0 | 0;
  let v1 = key1 | 0;
  let v2 = (0x6c796765 ^ key0) | 0;
  let v3 = (0x74656462 ^ key1 ^ word) | 0;
  // Five rounds: one per block (the word, then the length), three to finish.
  for (let round = 0; round < 5; round++) {
    v0 = (v0 + v1) | 0; v1 = (v1 << 5) | (v1 >>> 27); v1 ^= v0; v0 = (v0 << 16) | (v0 >>> 16);
    v2 = (v2 + v3) | 0; v3 = (v3 << 8) | (v3 >>> 24); v3 ^= v2;
    v0 = (v0 + v3) | 0; v3 = (v3 << 7) | (v3 >>> 25); v3 ^= v0;
    v2 = (v2 + v1) | 0; v1 = (v1 << 13) | (v1 >>> 19); v1 ^= v2; v2 = (v2 << 16) | (v2 >>> 16);
    if (round === 0) {
      v0 ^= word;
      v3 ^= LENGTH_BLOCK;
    } else if (round === 1) {
      v0 ^= LENGTH_BLOCK;
      v2 ^= 0xff;
    }
  }
  return (v1 ^ v3) >>> 0;
}
