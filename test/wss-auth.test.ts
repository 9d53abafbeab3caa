/** The compat handshake of docs/protocol.md §2 against the real beacon. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { CloseCode, authReplyMessage } from '../lib/protocol';
import { makeIdentity, sign, type TestIdentity } from './helpers/identity';
import { closed, connectPeer, eventually, nextMessage, openCompat, startTestBeacon, type TestBeacon } from './helpers/harness';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
const mallory = makeIdentity(6666); // not registered
let tb: TestBeacon;

before(async () => { tb = await startTestBeacon([alice, bob], { authTimeoutMs: 300 }); });
after(async () => { await tb.close(); });

/** Opens a socket, sends `reply(nonce)`, and resolves with how the beacon closed it. */
async function refusedWith(reply: (nonce: string) => string | Buffer): Promise<{ code: number; reason: string }> {
  const { ws, nonce } = await openCompat(tb.url);
  const done = closed(ws);
  ws.send(reply(nonce));
  return done;
}

function replyAs(id: TestIdentity, nodeId: number, signedNodeId: number, nonce: string): string {
  return authReplyMessage({ node_id: nodeId, public_key: id.publicKeyB64, sig: sign(id, `compat_auth:${signedNodeId}:${nonce}`) });
}

const authFailed = { code: CloseCode.PolicyViolation, reason: 'auth failed' };

test('the challenge is 32 random bytes as 64 lowercase hex chars, new for every socket', async () => {
  const first = await openCompat(tb.url);
  const second = await openCompat(tb.url);
  assert.match(first.nonce, /^[0-9a-f]{64}$/);
  assert.notEqual(first.nonce, second.nonce);
  first.ws.close(); second.ws.close();
});

test('pilot.v1 is selected when offered; a client offering no subprotocol is served too', async () => {
  const offered = await connectPeer(tb.url, alice);
  assert.equal(offered.protocol, 'pilot.v1');
  const plain = new WebSocket(tb.url);
  const challenge = await nextMessage(plain);
  assert.equal(plain.protocol, '');
  assert.match(challenge.data.toString(), /"auth_challenge"/);
  offered.close(); plain.close();
});

test('a good signature gets auth_ok and the node is attached', async () => {
  const ws = await connectPeer(tb.url, bob);
  await eventually(() => tb.beacon.isConnected(8888));
  ws.close();
});

test('a forged signature is refused with 1008 auth failed', async () => {
  const before = tb.beacon.metrics().stats.authFailed.bad_signature;
  const result = await refusedWith(() => authReplyMessage({ node_id: 7777, public_key: alice.publicKeyB64, sig: randomBytes(64).toString('base64') }));
  assert.deepEqual(result, authFailed);
  assert.equal(tb.beacon.metrics().stats.authFailed.bad_signature, before + 1);
});

test('a signature over another node ID is refused', async () => {
  // Alice signs for her own ID but claims Bob's, and the reverse.
  assert.deepEqual(await refusedWith((nonce) => replyAs(alice, 8888, 7777, nonce)), authFailed);
  assert.deepEqual(await refusedWith((nonce) => replyAs(alice, 7777, 8888, nonce)), authFailed);
});

test('the key the daemon sends is ignored: only the registered key counts', async () => {
  // Mallory claims Alice's node, sending her own key and a valid signature by it.
  const result = await refusedWith((nonce) => authReplyMessage({
    node_id: 7777, public_key: mallory.publicKeyB64, sig: sign(mallory, `compat_auth:7777:${nonce}`),
  }));
  assert.deepEqual(result, authFailed);
  assert.equal(tb.beacon.isConnected(7777), false);
});

test('an unknown node is refused', async () => {
  const before = tb.beacon.metrics().stats.authFailed.unknown_node;
  assert.deepEqual(await refusedWith((nonce) => replyAs(mallory, 6666, 6666, nonce)), authFailed);
  assert.equal(tb.beacon.metrics().stats.authFailed.unknown_node, before + 1);
});

test('node ID 0 and node IDs over 2^32-1 are refused', async () => {
  const before = tb.beacon.metrics().stats.authFailed.bad_node_id;
  for (const nodeId of [0, 2 ** 32, -1, 1.5]) {
    assert.deepEqual(await refusedWith((nonce) => replyAs(alice, nodeId, nodeId, nonce)), authFailed, `node_id ${nodeId}`);
  }
  assert.equal(tb.beacon.metrics().stats.authFailed.bad_node_id, before + 4);
});

test('a binary reply, invalid JSON, the wrong message type and bad base64 are refused', async () => {
  const stats = () => tb.beacon.metrics().stats.authFailed;
  const before = { ...stats() };
  assert.deepEqual(await refusedWith(() => Buffer.from('{"type":"auth_reply"}')), authFailed);
  assert.deepEqual(await refusedWith(() => '{"type":"auth_reply",'), authFailed);
  assert.deepEqual(await refusedWith(() => JSON.stringify({ type: 'hello', node_id: 7777 })), authFailed);
  assert.deepEqual(await refusedWith(() => JSON.stringify({ type: 'auth_reply', node_id: 7777, public_key: '', sig: 'not base64!' })), authFailed);
  assert.equal(stats().binary_message, before.binary_message + 1);
  assert.equal(stats().bad_json, before.bad_json + 1);
  assert.equal(stats().bad_type, before.bad_type + 1);
  assert.equal(stats().bad_signature_encoding, before.bad_signature_encoding + 1);
});

test('no reply within the auth timeout is refused with 1008', async () => {
  const before = tb.beacon.metrics().stats.authFailed.timeout;
  const { ws } = await openCompat(tb.url);
  const started = Date.now();
  assert.deepEqual(await closed(ws), authFailed);
  assert.ok(Date.now() - started >= 250, 'closed before the auth timeout');
  assert.equal(tb.beacon.metrics().stats.authFailed.timeout, before + 1);
});
