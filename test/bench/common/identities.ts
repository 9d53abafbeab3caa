/**
 * Daemon identities for the load generators, and the beacon's keys file.
 *
 * - Keys are Ed25519 made and used with Node's native crypto: the load
 *   generators must sign thousands of challenges a second on one core, which
 *   tweetnacl cannot (the beacon verifies natively either way; the bytes on
 *   the wire are the same as a tweetnacl daemon's).
 * - Node IDs are 1..count; identities go to the load generators as a JSON
 *   file of `[nodeId, seedBase64, publicKeyBase64]`.
 */
import { createPrivateKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';

/** DER prefix of an Ed25519 PKCS#8 private key; the 32-byte seed follows. */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
/** DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows. */
const ED25519_SPKI_PREFIX_BYTES = 12;

export type IdentityRow = [nodeId: number, seed: string, publicKey: string];

export function makeIdentities(count: number): IdentityRow[] {
  const rows: IdentityRow[] = [];
  for (let nodeId = 1; nodeId <= count; nodeId++) {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const seed = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(ED25519_PKCS8_PREFIX.length);
    const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(ED25519_SPKI_PREFIX_BYTES);
    rows.push([nodeId, seed.toString('base64'), raw.toString('base64')]);
  }
  return rows;
}

export function writeIdentityFiles(rows: readonly IdentityRow[], identitiesPath: string, keysPath: string): void {
  writeFileSync(identitiesPath, JSON.stringify(rows));
  writeFileSync(keysPath, JSON.stringify(Object.fromEntries(rows.map(([id, , pub]) => [String(id), pub]))));
}

/** A daemon's signing side, as the load generators hold it. */
export class Signer {
  private key: KeyObject | undefined;

  constructor(readonly nodeId: number, private readonly seedBase64: string, readonly publicKeyBase64: string) {}

  /** Base64 signature of `compat_auth:<node_id>:<nonce>` (docs/protocol.md §2). */
  sign(nonce: string): string {
    return sign(null, Buffer.from(`compat_auth:${this.nodeId}:${nonce}`, 'ascii'), this.prepare()).toString('base64');
  }

  /** The signing key, built on first use (a bench builds them before a measured window). */
  prepare(): KeyObject {
    this.key ??= createPrivateKey({
      key: Buffer.concat([ED25519_PKCS8_PREFIX, Buffer.from(this.seedBase64, 'base64')]),
      format: 'der', type: 'pkcs8',
    });
    return this.key;
  }
}

export function loadSigners(identitiesPath: string): Map<number, Signer> {
  const rows = JSON.parse(readFileSync(identitiesPath, 'utf8')) as IdentityRow[];
  return new Map(rows.map(([id, seed, pub]) => [id, new Signer(id, seed, pub)]));
}
