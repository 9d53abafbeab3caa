/** Pure parts of the client: backoff, URL check, error messages, payload display. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffCeiling, backoffDelay, formatDelivery, formatPayload, isPrintable, jittered, parseBeaconUrl } from '../lib/client';
import { fromCloseBeforeAuth, fromHttpResponse, fromSocketError } from '../lib/client/connect-errors';

test('backoff ceilings double from the initial delay and stop at the cap', () => {
  const ceilings = Array.from({ length: 10 }, (_, i) => backoffCeiling(i + 1, 250, 30_000));
  assert.deepEqual(ceilings, [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  assert.equal(backoffCeiling(5_000, 250, 30_000), 30_000, 'a huge attempt number still gives the cap');
});

test('equal jitter stays between half the ceiling and the ceiling; full jitter between 0 and the ceiling', () => {
  const policy = (r: number, jitter: 'equal' | 'full' | 'none') => ({ initialDelayMs: 10, maxDelayMs: 80, jitter, random: () => r });
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, policy(0, 'equal'))), [5, 10, 20, 40, 40, 40]);
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, policy(0.999999, 'equal'))), [10, 20, 40, 80, 80, 80]);
  assert.deepEqual([1, 4, 9].map((a) => backoffDelay(a, policy(0, 'full'))), [0, 0, 0]);
  assert.deepEqual([1, 4, 9].map((a) => backoffDelay(a, policy(0.5, 'full'))), [5, 40, 40]);
  assert.deepEqual([1, 4, 9].map((a) => backoffDelay(a, policy(0.3, 'none'))), [10, 80, 80]);
  for (let i = 0; i < 1_000; i++) {
    const d = jittered(30_000, { jitter: 'equal', random: Math.random });
    assert.ok(d >= 15_000 && d <= 30_000, `${d} out of [15000, 30000]`);
  }
});

test('a misbehaving random source cannot push a delay out of range', () => {
  for (const r of [NaN, -1, 1, 7, Infinity]) {
    const d = jittered(1_000, { jitter: 'equal', random: () => r });
    assert.ok(d >= 500 && d <= 1_000, `random ${r} gave ${d}`);
  }
});

test('only ws:// and wss:// are beacon URLs', () => {
  assert.equal(parseBeaconUrl('ws://127.0.0.1:8443/v1/compat').protocol, 'ws:');
  assert.equal(parseBeaconUrl('wss://beacon.example.com/v1/compat').protocol, 'wss:');
  for (const bad of ['http://127.0.0.1:8443/v1/compat', 'https://beacon.example.com/v1/compat', 'tcp://x:1', '127.0.0.1:8443', '']) {
    assert.throws(() => parseBeaconUrl(bad), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EBADURL');
      assert.match(err.message, /ws:\/\/.*wss:\/\//);
      return true;
    }, bad);
  }
});

test('HTTP refusals become errors that say what to do', () => {
  const url = new URL('ws://127.0.0.1:8443/v1/compat');
  const full = fromHttpResponse(503, '5', '{"error":"max_peers"}', url);
  assert.equal(full.code, 'EATCAPACITY');
  assert.equal(full.details.retryAfterMs, 5_000);
  assert.match(full.message, /503.*max_peers.*capacity/);
  const perIp = fromHttpResponse(429, '5', '{"error":"max_per_ip"}', url);
  assert.equal(perIp.code, 'ETOOMANYCONNS');
  assert.match(perIp.message, /429.*too many connections from this address/);
  const notFound = fromHttpResponse(404, undefined, '', new URL('ws://127.0.0.1:8443/wrong'));
  assert.equal(notFound.code, 'EHTTP');
  assert.match(notFound.message, /\/v1\/compat/);
  assert.equal(fromCloseBeforeAuth(1013, 'beacon at capacity', url).code, 'EATCAPACITY');
});

test('socket errors name the TLS problem and --ca, or what is not listening', () => {
  const url = new URL('wss://beacon.internal/v1/compat');
  const untrusted = fromSocketError(Object.assign(new Error('unable to verify the first certificate'), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }), url);
  assert.equal(untrusted.code, 'ETLS');
  assert.match(untrusted.message, /not signed by a CA this client trusts.*--ca FILE/);
  const selfSigned = fromSocketError(Object.assign(new Error('self-signed certificate'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }), url);
  assert.equal(selfSigned.code, 'ETLS');
  assert.match(selfSigned.message, /--ca/);
  const name = fromSocketError(Object.assign(new Error("Hostname/IP does not match certificate's altnames"), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' }), url);
  assert.match(name.message, /not valid for "beacon.internal"/);
  const plain = fromSocketError(Object.assign(new Error('wrong version number'), { code: 'ERR_SSL_WRONG_VERSION_NUMBER' }), url);
  assert.match(plain.message, /does not speak TLS.*ws:\/\//);
  const plainEproto = fromSocketError(Object.assign(new Error('write EPROTO 80EC:error:0A00010B:SSL routines:ssl3_get_record:wrong version number'), { code: 'EPROTO' }), url);
  assert.equal(plainEproto.code, 'ETLS');
  assert.match(plainEproto.message, /does not speak TLS/);
  const refused = fromSocketError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), url);
  assert.equal(refused.code, 'ECONNREFUSED');
  assert.match(refused.message, /beacon.internal:443/);
});

test('payloads print as text when printable on one line, as hex otherwise', () => {
  assert.equal(formatDelivery(7777, Buffer.from('hello bob')), 'from 7777: hello bob');
  assert.equal(formatDelivery(7777, Buffer.from('grüße, 世界\tok')), 'from 7777: grüße, 世界\tok');
  assert.equal(formatPayload(Buffer.from([0, 1, 0xff])), '0x0001ff');
  assert.equal(formatPayload(Buffer.from('two\nlines')), `0x${Buffer.from('two\nlines').toString('hex')}`);
  assert.equal(formatPayload(Buffer.from('\u001b[2Jclear')), `0x${Buffer.from('\u001b[2Jclear').toString('hex')}`);
  assert.equal(isPrintable(Buffer.from([0xc3])), false, 'a truncated UTF-8 sequence is not text');
  assert.equal(formatPayload(Buffer.alloc(0)), '');
});
