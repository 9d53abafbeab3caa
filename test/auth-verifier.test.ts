/**
 * Handshake signatures are checked on the event loop, a bounded amount of
 * handshake work per turn (issue 22): the check itself, and the queue that
 * bounds it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { verifyAuthSignatureNow } from '../lib/auth/challenge';
import { registeredKey } from '../lib/auth/keys';
import { HandshakeWork } from '../lib/wss/handshake-work';
import { makeIdentity, sign } from './helpers/identity';

const alice = makeIdentity(7777);
const aliceKey = registeredKey(7777, Buffer.from(alice.publicKey), 'file');
const nonce = (i: number) => i.toString(16).padStart(64, '0');
const signature = (i: number) => Buffer.from(sign(alice, `compat_auth:7777:${nonce(i)}`), 'base64');

test('a valid signature passes; another nonce, a key registered for another node, or a signature of the wrong length is refused without throwing', () => {
  assert.equal(verifyAuthSignatureNow(aliceKey, 7777, nonce(1), signature(1)), true);
  assert.equal(verifyAuthSignatureNow(aliceKey, 7777, nonce(2), signature(1)), false);
  assert.equal(verifyAuthSignatureNow(registeredKey(8888, Buffer.from(alice.publicKey), 'file'), 7777, nonce(1), signature(1)), false);
  assert.equal(verifyAuthSignatureNow(aliceKey, 7777, nonce(1), signature(1).subarray(0, 63)), false);
  assert.equal(verifyAuthSignatureNow(aliceKey, 7777, nonce(1), Buffer.alloc(0)), false);
  assert.equal(verifyAuthSignatureNow(aliceKey, 7777, nonce(1), signature(1)), true);
});

/** Spins for `ms` of wall time: a step's CPU work. */
function spin(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) { /* working */ }
}

test('handshake steps run in arrival order, at most a budget\'s worth per turn, and the loop turns in between', async () => {
  const budgetMs = 5;
  const stepMs = 2;
  const counters = { handshakeTurnsDeferred: 0 };
  const work = new HandshakeWork(budgetMs, counters);
  /** Turns of the loop as a timer sees them: incremented by a 0 ms timer re-armed every time it runs. */
  let turns = 0;
  let ticking = true;
  const tick = () => { turns++; if (ticking) setTimeout(tick, 0); };
  setTimeout(tick, 0);
  const ran: { step: number; turn: number }[] = [];
  const done = new Promise<void>((resolve) => {
    for (let i = 0; i < 12; i++) {
      work.add({ runStep: () => { spin(stepMs); ran.push({ step: i, turn: turns }); if (i === 11) resolve(); } });
    }
  });
  assert.equal(work.waiting, 12);
  await done;
  ticking = false;
  assert.deepEqual(ran.map((r) => r.step), Array.from({ length: 12 }, (_, i) => i));
  const perTurn = new Map<number, number>();
  for (const { turn } of ran) perTurn.set(turn, (perTurn.get(turn) ?? 0) + 1);
  // A turn stops taking steps once it has spent the budget: three steps of 2 ms at most (a slower machine fits fewer).
  assert.ok(Math.max(...perTurn.values()) <= Math.ceil(budgetMs / stepMs), `steps per turn: ${[...perTurn.values()]}`);
  // The timer ran between turns: the steps were spread over several turns of the loop.
  assert.ok(perTurn.size >= 12 / Math.ceil(budgetMs / stepMs), `turns seen: ${perTurn.size}`);
  assert.ok(counters.handshakeTurnsDeferred >= 3, 'turns that left steps for the next are counted');
  assert.equal(work.waiting, 0);
});

test('a step added while the queue runs is taken in the same run or the next, never lost', async () => {
  const work = new HandshakeWork(1);
  const ran: string[] = [];
  await new Promise<void>((resolve) => {
    work.add({ runStep: () => { ran.push('first'); work.add({ runStep: () => { ran.push('added'); resolve(); } }); } });
  });
  assert.deepEqual(ran, ['first', 'added']);
  assert.equal(work.waiting, 0);
});
