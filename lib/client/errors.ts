/**
 * Errors of the compat client, each with a stable `code`.
 *
 * - Callers and tests match on `code`, never on the text; the text is one
 *   line a person can act on (it names the problem and the fix), so the CLI
 *   prints it as is.
 * - `NotConnectedError` (ENOTCONNECTED) is what `send` throws at once while
 *   the client is connecting or backing off: the caller's own retries
 *   decide, the client never queues.
 * - `ConnectError` describes one failed connection attempt; its codes are
 *   the ones an operator can tell apart (scheme, TLS, capacity, per-IP cap,
 *   auth, timeout, nothing listening, ...).
 */

export type ClientErrorCode =
  | 'ENOTCONNECTED'
  | 'ECLIENTCLOSED'
  | 'EBUFFERFULL'
  | 'ETOOBIG'
  | ConnectErrorCode;

export type ConnectErrorCode =
  /** The URL is not ws:// or wss://, or does not parse. */
  | 'EBADURL'
  /** TLS failed: untrusted CA, wrong name, expired certificate, ... */
  | 'ETLS'
  /** HTTP 503 (at capacity, too many handshakes, draining) or close 1013. */
  | 'EATCAPACITY'
  /** HTTP 429: too many connections from this address. */
  | 'ETOOMANYCONNS'
  /** Any other HTTP answer instead of the upgrade (404, 502, ...). */
  | 'EHTTP'
  /** Close 1008 during or after the handshake: the key is not registered (or was revoked). */
  | 'EAUTHFAILED'
  /** No answer (upgrade, challenge or auth_ok) within the connect timeout. */
  | 'ETIMEDOUT'
  /** Nothing listens at the address. */
  | 'ECONNREFUSED'
  /** The host name does not resolve. */
  | 'ENOTFOUND'
  /** The server is not a beacon: no pilot.v1 subprotocol, or a bad challenge. */
  | 'EPROTOCOL'
  /** The socket closed before auth_ok for another reason. */
  | 'ECONNCLOSED'
  /** Any other network error (reset, unreachable, ...). */
  | 'ENETWORK';

export class ClientError extends Error {
  override name = 'ClientError';
  constructor(message: string, readonly code: ClientErrorCode) {
    super(message);
  }
}

/** `send` (or `relay`, `discover`) while not connected. */
export class NotConnectedError extends ClientError {
  override name = 'NotConnectedError';
  constructor(state: string) {
    super(`not connected to the beacon (${state}); the packet was not sent`, 'ENOTCONNECTED');
  }
}

/** Any use of a client after `close()`. */
export class ClientClosedError extends ClientError {
  override name = 'ClientClosedError';
  constructor() {
    super('the client was closed', 'ECLIENTCLOSED');
  }
}

export interface ConnectErrorDetails {
  /** HTTP status when the beacon (or its proxy) refused the upgrade. */
  status?: number;
  /** Retry-After of a 503 or 429, in milliseconds. */
  retryAfterMs?: number;
  /** WebSocket close code when the socket closed before auth_ok. */
  closeCode?: number;
  /** The underlying error's code (ECONNREFUSED, UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...). */
  cause?: string;
}

/** One connection attempt failed. */
export class ConnectError extends ClientError {
  override name = 'ConnectError';
  declare readonly code: ConnectErrorCode;
  constructor(message: string, code: ConnectErrorCode, readonly details: ConnectErrorDetails = {}) {
    super(message, code);
  }
}

/** The beacon closed with 1008: the signature did not verify against the key registered for the node. */
export class AuthFailedError extends ConnectError {
  override name = 'AuthFailedError';
  constructor(readonly nodeId: number, readonly publicKey: string, closeCode: number, reason: string) {
    // The order matters: a wrong --node-id is the likelier mistake, and "add
    // this key for that node" would then replace another daemon's key.
    super(
      `auth failed for node ${nodeId} (${reason || `close ${closeCode}`}): the beacon has no key for node ${nodeId}, or another one. ` +
        `First check that node ${nodeId} is this identity's: its public key is ${publicKey}; ` +
        `compare it with the beacon's entry (beacon keys list --keys FILE --node-id ${nodeId}). ` +
        `If node ${nodeId} is new, register it: beacon keys add --keys FILE --node-id ${nodeId} --public-key ${publicKey}`,
      'EAUTHFAILED',
      { closeCode },
    );
  }
}
