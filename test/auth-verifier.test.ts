/** SignatureVerifier: handshake signatures checked off the event loop, one at a time, in order. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SignatureVerifier } from '../lib/auth/challenge';
import { registeredKey } from '../lib/auth/keys';
import { makeIdentity, sign } from './helpers/identity';

const alice = makeIdentity(7777);
const aliceKey = registeredKey(7777, Buffer.from(alice.publicKey), 'file');
const nonce = (i: number) => i.toString(16).padStart(64, '0');
const signature = (i: number) => Buffer.from(sign(alice, `compat_auth:7777:${nonce(i)}`), 'base64');

test('queued checks run one at a time, answer in arrival order, and a bad one does not spoil the next', async () => {
  const verifier = new SignatureVerifier();
  const answered: number[] = [];
  const checks = Array.from({ length: 24 }, (_, i) => {
    // Every third signature is over another nonce: invalid.
    const sig = i % 3 === 2 ? signature(i + 1000) : signature(i);
    return verifier.verify(aliceKey, 7777, nonce(i), sig).then((valid) => {
      answered.push(i);
      return valid;
    });
  });
  // The first has started on the pool; the rest wait their turn.
  assert.equal(verifier.queued, 23);
  const results = await Promise.all(checks);
  assert.deepEqual(results, Array.from({ length: 24 }, (_, i) => i % 3 !== 2));
  assert.deepEqual(answered, Array.from({ length: 24 }, (_, i) => i));
  assert.equal(verifier.queued, 0);
});

test('a key registered for another node, or a signature of the wrong length, is refused without throwing', async () => {
  const verifier = new SignatureVerifier();
  assert.equal(await verifier.verify(registeredKey(8888, Buffer.from(alice.publicKey), 'file'), 7777, nonce(1), signature(1)), false);
  assert.equal(await verifier.verify(aliceKey, 7777, nonce(1), signature(1).subarray(0, 63)), false);
  assert.equal(await verifier.verify(aliceKey, 7777, nonce(1), Buffer.alloc(0)), false);
  // And the queue still works afterwards.
  assert.equal(await verifier.verify(aliceKey, 7777, nonce(1), signature(1)), true);
});

test('a check whose handshake has ended is skipped when its turn comes', async () => {
  const verifier = new SignatureVerifier();
  let wanted = true;
  const first = verifier.verify(aliceKey, 7777, nonce(1), signature(1));
  // Valid, but its socket goes away while it waits behind the first.
  const abandoned = verifier.verify(aliceKey, 7777, nonce(2), signature(2), () => wanted);
  const third = verifier.verify(aliceKey, 7777, nonce(3), signature(3));
  wanted = false;
  assert.deepEqual(await Promise.all([first, abandoned, third]), [true, false, true]);
});
