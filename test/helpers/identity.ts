/** Test identities: tweetnacl key pairs with a node ID, as a daemon holds them. */
import nacl from 'tweetnacl';

export interface TestIdentity {
  nodeId: number;
  publicKey: Uint8Array;
  secretKey: Uint8Array;
  publicKeyB64: string;
}

export function makeIdentity(nodeId: number): TestIdentity {
  const pair = nacl.sign.keyPair();
  return { nodeId, ...pair, publicKeyB64: Buffer.from(pair.publicKey).toString('base64') };
}

/** The keys file content of docs/protocol.md §4 for `ids`. */
export function keysFileJson(ids: readonly TestIdentity[]): string {
  return JSON.stringify(Object.fromEntries(ids.map((id) => [String(id.nodeId), id.publicKeyB64])), null, 2);
}

export function sign(identity: TestIdentity, message: string | Buffer): string {
  const bytes = typeof message === 'string' ? Buffer.from(message, 'ascii') : message;
  return Buffer.from(nacl.sign.detached(bytes, identity.secretKey)).toString('base64');
}
