/**
 * Property test of the compat handshake (PROTOCOL.md §2) on a real beacon:
 * one to three concurrent WebSockets, each sending any sequence of text and
 * binary messages with any small delays, some closing early.
 *
 * - A connection gets auth_ok only when its first message is a valid
 *   auth_reply: a signature by the key registered for the claimed node ID
 *   over that node ID and the nonce sent; otherwise it is closed with 1008
 *   "auth failed" (unless the client closed first).
 * - Afterwards nothing is left behind: no handshake in progress, no peer,
 *   no referenced timer, every handshake counted exactly once, and the
 *   admission slots come back (a small --max-per-ip and --max-handshakes
 *   would refuse later cases if they leaked).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import WebSocket from 'ws';
import { AUTH_FAILURE_REASONS } from '../lib/metrics';
import { COMPAT_SUBPROTOCOL, authReplyMessage } from '../lib/protocol';
import { eventually, startTestBeacon, withTimeout, type TestBeacon } from './helpers/harness';
import { makeIdentity, sign, type TestIdentity } from './helpers/identity';
import { fuzzParams } from './fuzz/settings';

/** Long enough that a loaded machine (the suite runs two files at once) never times out a valid handshake. */
const AUTH_TIMEOUT_MS = 1_500;
const known = [makeIdentity(7001), makeIdentity(7002)];
const stranger = makeIdentity(7999); // not in the keys file

type Kind =
  | 'valid' | 'valid_extra_fields' | 'valid_other_public_key'
  | 'wrong_key' | 'wrong_nonce' | 'other_node_signed' | 'claims_other_node' | 'node_id_as_text'
  | 'short_sig' | 'base64url_sig' | 'wrong_type' | 'text' | 'json' | 'binary';
const ACCEPTED: ReadonlySet<Kind> = new Set(['valid', 'valid_extra_fields', 'valid_other_public_key']);

interface Message { kind: Kind; delayMs: number; text: string; bytes: Uint8Array }
interface Connection { claim: number; messages: Message[]; closeAfterMs: number | undefined }

const message: fc.Arbitrary<Message> = fc.record({
  kind: fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom<Kind>('valid', 'valid_extra_fields', 'valid_other_public_key') },
    { weight: 4, arbitrary: fc.constantFrom<Kind>('wrong_key', 'wrong_nonce', 'other_node_signed', 'claims_other_node',
      'node_id_as_text', 'short_sig', 'base64url_sig', 'wrong_type', 'text', 'json', 'binary') },
  ),
  delayMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 15 })),
  text: fc.oneof(fc.string({ maxLength: 40 }), fc.json({ maxDepth: 2 })),
  bytes: fc.uint8Array({ maxLength: 64 }),
});
const connection: fc.Arbitrary<Connection> = fc.record({
  claim: fc.integer({ min: 0, max: 2 }), // 2: a node the beacon does not know
  messages: fc.oneof({ weight: 20, arbitrary: fc.array(message, { minLength: 1, maxLength: 4 }) }, { weight: 1, arbitrary: fc.constant<Message[]>([]) }),
  closeAfterMs: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 30 }) }),
});

function identityOf(claim: number): TestIdentity {
  return claim < known.length ? known[claim]! : stranger;
}

/** The text or bytes of `m` for a connection claiming `id`, answering `nonce`. */
function encode(m: Message, id: TestIdentity, nonce: string): string | Buffer {
  const other = id === known[0] ? known[1]! : known[0]!;
  const signed = (signer: TestIdentity, nodeId: number, n: string) => sign(signer, `compat_auth:${nodeId}:${n}`);
  const reply = (fields: Record<string, unknown>) => JSON.stringify({
    type: 'auth_reply', node_id: id.nodeId, public_key: id.publicKeyB64, sig: signed(id, id.nodeId, nonce), ...fields,
  });
  switch (m.kind) {
    case 'valid': return authReplyMessage({ node_id: id.nodeId, public_key: id.publicKeyB64, sig: signed(id, id.nodeId, nonce) });
    case 'valid_extra_fields': return reply({ hostname: m.text, version: 2 });
    case 'valid_other_public_key': return reply({ public_key: m.text }); // informational only
    case 'wrong_key': return reply({ sig: signed(other, id.nodeId, nonce) });
    case 'wrong_nonce': return reply({ sig: signed(id, id.nodeId, nonce.replace(/^./, (c) => (c === 'a' ? 'b' : 'a'))) });
    case 'other_node_signed': return reply({ sig: signed(id, other.nodeId, nonce) });
    case 'claims_other_node': return reply({ node_id: other.nodeId });
    case 'node_id_as_text': return reply({ node_id: String(id.nodeId) });
    case 'short_sig': return reply({ sig: Buffer.from(signed(id, id.nodeId, nonce), 'base64').subarray(1).toString('base64') });
    case 'base64url_sig': return reply({ sig: `${Buffer.from(signed(id, id.nodeId, nonce), 'base64').toString('base64url')}-` });
    case 'wrong_type': return reply({ type: 'auth_ok' });
    case 'text': return m.text;
    case 'json': return JSON.stringify({ type: 'auth_reply', junk: m.text });
    case 'binary': return Buffer.from(m.bytes);
  }
}

type Outcome = { authOk: boolean; closedBy: 'server' | 'client'; code: number; reason: string };

async function play(url: string, c: Connection): Promise<Outcome> {
  const id = identityOf(c.claim);
  const ws = new WebSocket(url, [COMPAT_SUBPROTOCOL]);
  let authOk = false;
  let clientClosed = false;
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: String(reason) }));
  });
  ws.on('error', () => {});
  const nonce = await withTimeout(new Promise<string>((resolve, reject) => {
    ws.once('message', (data) => resolve((JSON.parse(String(data)) as { nonce: string }).nonce));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with HTTP ${res.statusCode}: a slot leaked`)));
  }), 10_000, 'the challenge');
  let verdict: () => void = () => {};
  const decided = new Promise<void>((resolve) => { verdict = resolve; });
  void closed.then(() => verdict());
  ws.on('message', (data, isBinary) => {
    if (!isBinary && String(data) === '{"type":"auth_ok"}') {
      authOk = true;
      verdict();
    }
  });
  if (c.closeAfterMs !== undefined) {
    setTimeout(() => { clientClosed = ws.readyState === WebSocket.OPEN; ws.close(1000); }, c.closeAfterMs);
  }
  for (const m of c.messages) {
    if (m.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, m.delayMs));
    if (ws.readyState === WebSocket.OPEN) ws.send(encode(m, id, nonce));
  }
  // Well-behaved from here: wait for the verdict (auth_ok or the close), then leave.
  await withTimeout(decided, AUTH_TIMEOUT_MS + 10_000, 'auth_ok or the close');
  const wasOk = authOk;
  if (ws.readyState === WebSocket.OPEN) { clientClosed = true; ws.close(1000); }
  const { code, reason } = await withTimeout(closed, 10_000, 'the close');
  return { authOk: wasOk, closedBy: clientClosed ? 'client' : 'server', code, reason };
}

function handshakesCounted(tb: TestBeacon): number {
  const { stats } = tb.beacon.metrics();
  return stats.authOk + AUTH_FAILURE_REASONS.reduce((sum, reason) => sum + stats.authFailed[reason], 0);
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

describe('compat handshake', () => {
  let tb: TestBeacon;
  before(async () => {
    tb = await startTestBeacon(known, { authTimeoutMs: AUTH_TIMEOUT_MS, maxPerIp: 6, maxHandshakes: 6, shutdownGraceMs: 200 });
  });
  after(() => tb.close());

  test('auth_ok only for a valid signature over the right node ID and nonce, else 1008; nothing left behind', async () => {
    await fc.assert(fc.asyncProperty(fc.array(connection, { minLength: 1, maxLength: 3 }), async (connections) => {
      // A failed case (while shrinking) may leave closes in flight: start from quiet.
      await eventually(() => { const m = tb.beacon.metrics(); return m.handshakes === 0 && m.peers === 0; }, 10_000, 'a quiet beacon');
      const timersBefore = timers();
      const countedBefore = handshakesCounted(tb);
      const upgradesBefore = tb.beacon.metrics().stats.upgradesOk;
      const outcomes = await Promise.all(connections.map((c) => play(tb.url, c)));
      outcomes.forEach((outcome, i) => {
        const c = connections[i]!;
        const first = c.messages[0];
        const shouldPass = c.claim < known.length && first !== undefined && ACCEPTED.has(first.kind);
        const what = `connection ${i} (node ${identityOf(c.claim).nodeId}, first ${first?.kind ?? 'nothing'})`;
        if (!shouldPass) assert.equal(outcome.authOk, false, `${what} was accepted`);
        if (outcome.closedBy === 'client' && !outcome.authOk) return; // it left before the verdict
        if (shouldPass) {
          assert.equal(outcome.authOk, true, `${what} was refused: ${outcome.code} ${outcome.reason}`);
        } else {
          assert.equal(outcome.code, 1008, `${what} closed with ${outcome.code}`);
          assert.equal(outcome.reason, 'auth failed');
        }
      });
      await eventually(() => {
        const m = tb.beacon.metrics();
        return m.handshakes === 0 && m.peers === 0 && handshakesCounted(tb) - countedBefore === m.stats.upgradesOk - upgradesBefore;
      }, 10_000, 'every handshake to end and be counted once');
      assert.equal(tb.beacon.metrics().stats.upgradesOk - upgradesBefore, connections.length);
      await eventually(() => timers() <= timersBefore, 10_000, 'no timer left behind');
    }), fuzzParams(30));
  });
});
