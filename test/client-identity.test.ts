/**
 * Identity files the client loads (docs/protocol.md §5), and Ed25519 agreement:
 * the client signs with tweetnacl, the beacon verifies with Node's native
 * Ed25519; RFC 8032's vectors show the two can never disagree.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as nodeSign, verify as nodeVerify } from 'node:crypto';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import nacl from 'tweetnacl';
import { verifyAuthSignature } from '../lib/auth/challenge';
import { registeredKey } from '../lib/auth/keys';
import { CompatClient, generateIdentity, loadIdentity, saveIdentity, signDetached, type Identity } from '../lib/client';
import { authSignedMessage } from '../lib/protocol';
import { nextEvent } from './helpers/client-events';
import { startTestBeacon } from './helpers/harness';
import type { TestIdentity } from './helpers/identity';

const dir = mkdtempSync(join(tmpdir(), 'client-identity-'));
const cleanups: Array<() => Promise<void>> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

const hex = (h: string) => Buffer.from(h, 'hex');
const b64url = (b: Uint8Array) => Buffer.from(b).toString('base64url');
const nodePublicKey = (raw: Uint8Array) => createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(raw) }, format: 'jwk' });
const nodePrivateKey = (seed: Uint8Array, pub: Uint8Array) => createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: b64url(seed), x: b64url(pub) }, format: 'jwk' });

function asTestIdentity(nodeId: number, id: Identity): TestIdentity {
  return { nodeId, publicKey: id.publicKey, secretKey: id.secretKey, publicKeyB64: Buffer.from(id.publicKey).toString('base64') };
}

/** RFC 8032 section 7.1, TEST 1, TEST 2 and TEST 3 (Ed25519). */
const RFC8032 = [
  {
    name: 'TEST 1',
    secretKey: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    publicKey: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    message: '',
    signature: 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    name: 'TEST 2',
    secretKey: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    publicKey: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    message: '72',
    signature: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
  {
    name: 'TEST 3',
    secretKey: 'c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7',
    publicKey: 'fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025',
    message: 'af82',
    signature: '6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a',
  },
];

for (const v of RFC8032) {
  test(`RFC 8032 ${v.name}: tweetnacl and Node's Ed25519 agree with the RFC and with each other`, () => {
    const seed = hex(v.secretKey);
    const pub = hex(v.publicKey);
    const msg = hex(v.message);
    const sig = hex(v.signature);
    const pair = nacl.sign.keyPair.fromSeed(seed);
    assert.equal(Buffer.from(pair.publicKey).toString('hex'), v.publicKey, 'tweetnacl derives the RFC public key');
    assert.deepEqual(Buffer.from(pair.secretKey), Buffer.concat([seed, pub]), 'tweetnacl secretKey is seed || public key');
    assert.equal(Buffer.from(nacl.sign.detached(msg, pair.secretKey)).toString('hex'), v.signature, 'tweetnacl makes the RFC signature');
    assert.equal(nodeSign(null, msg, nodePrivateKey(seed, pub)).toString('hex'), v.signature, "Node's Ed25519 makes the RFC signature");
    assert.equal(nacl.sign.detached.verify(msg, sig, pub), true, 'tweetnacl verifies it');
    assert.equal(nodeVerify(null, msg, nodePublicKey(pub), sig), true, "Node's Ed25519 verifies it");
    // And they reject the same forgeries: a flipped bit in R, in S, in the message.
    for (const [what, m, s] of [
      ['R', msg, Buffer.from(sig).fill(sig[0] ^ 1, 0, 1)],
      ['S', msg, Buffer.from(sig).fill(sig[40] ^ 1, 40, 41)],
      ['message', Buffer.concat([msg, Buffer.from([0])]), sig],
    ] as const) {
      assert.equal(nacl.sign.detached.verify(m, s, pub), false, `tweetnacl rejects a changed ${what}`);
      assert.equal(nodeVerify(null, m, nodePublicKey(pub), s), false, `Node rejects a changed ${what}`);
    }
  });
}

test('the beacon verifies what the client signs (compat_auth message, tweetnacl vs native)', async () => {
  const id = generateIdentity();
  const nonce = 'ab'.repeat(32);
  const sig = Buffer.from(signDetached(id, authSignedMessage(4242, nonce)));
  const key = registeredKey(4242, Buffer.from(id.publicKey), 'file');
  assert.equal(await verifyAuthSignature(key, 4242, nonce, sig), true);
  assert.equal(await verifyAuthSignature(key, 4242, 'cd'.repeat(32), sig), false, 'another nonce');
  assert.equal(await verifyAuthSignature(registeredKey(4243, Buffer.from(id.publicKey), 'file'), 4243, nonce, sig), false, 'another node ID');
});

test('an identity file written as `beacon keygen` writes it (mode 0600) loads and authenticates', async () => {
  const file = join(dir, 'keygen.json');
  const written = generateIdentity();
  saveIdentity(file, written);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const loaded = loadIdentity(file);
  assert.deepEqual(Buffer.from(loaded.secretKey), Buffer.from(written.secretKey));
  assert.deepEqual(Buffer.from(loaded.publicKey), Buffer.from(written.publicKey));

  const tb = await startTestBeacon([asTestIdentity(5151, loaded)]);
  cleanups.push(() => tb.close());
  const client = new CompatClient({ url: tb.url, nodeId: 5151, identity: loaded });
  cleanups.push(() => client.close());
  await client.connect({ failFast: true, timeoutMs: 3_000 });
  assert.ok(tb.beacon.isConnected(5151));
});

test('an identity file in the Go layout (seed || public key, base64) loads, signs like Go would, and authenticates', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  const seed = Buffer.from(jwk.d as string, 'base64url');
  const pub = Buffer.from(jwk.x as string, 'base64url');
  assert.equal(seed.length, 32);
  const file = join(dir, 'go-daemon.json');
  // What Pilot's Go daemon writes: the 64-byte crypto/ed25519 private key.
  writeFileSync(file, JSON.stringify({ public_key: pub.toString('base64'), private_key: Buffer.concat([seed, pub]).toString('base64') }), { mode: 0o600 });

  const loaded = loadIdentity(file);
  assert.deepEqual(Buffer.from(loaded.publicKey), pub);
  const message = authSignedMessage(6161, '0f'.repeat(32));
  const ours = Buffer.from(signDetached(loaded, message));
  assert.deepEqual(ours, nodeSign(null, message, privateKey), 'tweetnacl and the native key sign identically');
  assert.equal(nodeVerify(null, message, publicKey, ours), true);

  const tb = await startTestBeacon([asTestIdentity(6161, loaded)]);
  cleanups.push(() => tb.close());
  const client = new CompatClient({ url: tb.url, nodeId: 6161, identity: loaded });
  cleanups.push(() => client.close());
  const connected = nextEvent(client, 'connected');
  client.start();
  assert.equal((await connected).nodeId, 6161);
  assert.ok(tb.beacon.isConnected(6161));
});
