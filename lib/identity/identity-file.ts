/**
 * Daemon identities and their files (docs/protocol.md §5).
 *
 * - An identity is an Ed25519 key pair; the file is JSON
 *   `{"public_key": b64(32), "private_key": b64(64)}` where the private key
 *   is the seed followed by the public key: the layout of Go's
 *   crypto/ed25519 and tweetnacl's secretKey, so files move between Pilot's
 *   Go daemons and this project unchanged.
 * - Signing uses tweetnacl (pure JS: the client runs where Node's crypto
 *   may not); the beacon verifies with Node's native Ed25519.
 * - Loading checks that the public key really belongs to the seed.
 * - Files are written with mode 0600 and never overwritten silently.
 */
import { writeFileSync, readFileSync } from 'node:fs';
import nacl from 'tweetnacl';
import { PUBLIC_KEY_BYTES, decodeBase64Exact } from '../protocol';

export const PRIVATE_KEY_BYTES = 64;

export interface Identity {
  publicKey: Uint8Array;
  /** Seed (32 bytes) followed by the public key (32 bytes). */
  secretKey: Uint8Array;
}

export class IdentityFileError extends Error {
  override name = 'IdentityFileError';
  constructor(readonly file: string, problem: string) {
    super(`identity file ${file}: ${problem}`);
  }
}

export function generateIdentity(): Identity {
  const { publicKey, secretKey } = nacl.sign.keyPair();
  return { publicKey, secretKey };
}

export function publicKeyBase64(identity: Identity): string {
  return Buffer.from(identity.publicKey).toString('base64');
}

export function signDetached(identity: Identity, message: Uint8Array): Uint8Array {
  return nacl.sign.detached(message, identity.secretKey);
}

export function formatIdentity(identity: Identity): string {
  return `${JSON.stringify({
    public_key: Buffer.from(identity.publicKey).toString('base64'),
    private_key: Buffer.from(identity.secretKey).toString('base64'),
  }, null, 2)}\n`;
}

/** Parses an identity file's text; throws IdentityFileError naming the problem. */
export function parseIdentity(text: string, file = '<identity>'): Identity {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new IdentityFileError(file, `not valid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null) throw new IdentityFileError(file, 'must be a JSON object with public_key and private_key');
  const fields = value as Record<string, unknown>;
  const publicKey = decodeBase64Exact(fields.public_key, PUBLIC_KEY_BYTES);
  if (!publicKey) throw new IdentityFileError(file, 'public_key must be base64 of 32 bytes');
  const secretKey = decodeBase64Exact(fields.private_key, PRIVATE_KEY_BYTES);
  if (!secretKey) throw new IdentityFileError(file, 'private_key must be base64 of 64 bytes (seed followed by public key)');
  const derived = nacl.sign.keyPair.fromSeed(secretKey.subarray(0, 32));
  if (!Buffer.from(derived.publicKey).equals(publicKey) || !secretKey.subarray(32).equals(publicKey)) {
    throw new IdentityFileError(file, 'public_key does not belong to private_key');
  }
  return { publicKey: new Uint8Array(publicKey), secretKey: new Uint8Array(secretKey) };
}

export function loadIdentity(file: string): Identity {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new IdentityFileError(file, code === 'ENOENT'
      ? 'not found (create one with: beacon keygen --out FILE)'
      : `cannot be read (${code ?? (err as Error).message})`);
  }
  return parseIdentity(text, file);
}

/** Writes a new identity file with mode 0600; refuses to overwrite one. */
export function saveIdentity(file: string, identity: Identity): void {
  try {
    writeFileSync(file, formatIdentity(identity), { mode: 0o600, flag: 'wx' });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new IdentityFileError(file, code === 'EEXIST'
      ? 'already exists; remove it first or choose another --out'
      : `cannot be written (${code ?? (err as Error).message})`);
  }
}
