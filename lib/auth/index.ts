/**
 * lib/auth: the compat handshake and the public keys it checks against.
 *
 * - keys.ts: key types and the KeyDirectory interface; challenge.ts: nonce
 *   and signature check.
 * - keys-file.ts, registry-client.ts, key-cache.ts: the key sources;
 *   directory.ts composes them.
 * - No sockets of the beacon and no peer state live here.
 */
export * from './keys';
export * from './challenge';
export * from './keys-file';
export * from './registry-client';
export * from './key-cache';
export * from './directory';
