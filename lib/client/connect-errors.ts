/**
 * Turns what goes wrong while connecting into a ConnectError a person can
 * act on: one line naming the problem and the fix.
 *
 * - URL: only ws:// and wss:// are beacon URLs.
 * - Socket errors: TLS (untrusted CA -> --ca, wrong name, expired, not TLS
 *   at all), nothing listening, unknown host, other network errors.
 * - HTTP answers instead of the upgrade: 503 (capacity), 429 (per-IP cap),
 *   404 (wrong path), anything else.
 * - Closes before auth_ok: 1008 is handled by AuthFailedError; 1013 is
 *   capacity; 1001 is a beacon shutting down.
 * Pure functions; no I/O.
 */
import { COMPAT_PATH, CloseCode } from '../protocol';
import { ConnectError } from './errors';

/** Parses a beacon URL; throws ConnectError EBADURL naming the expected form. */
export function parseBeaconUrl(text: string): URL {
  const example = `use ws://HOST:PORT${COMPAT_PATH} (plain, e.g. straight to the beacon) or wss://HOST${COMPAT_PATH} (through a TLS proxy)`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConnectError(`"${text}" is not a URL: ${example}`, 'EBADURL');
  }
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw new ConnectError(`"${text}" has the scheme ${url.protocol.replace(/:$/, '')}://, a beacon URL must be ws:// or wss://: ${example}`, 'EBADURL');
  }
  if (url.hash) throw new ConnectError(`"${text}" has a #fragment, which WebSocket URLs cannot have: ${example}`, 'EBADURL');
  return url;
}

/** "HOST:PORT" of a URL, with the scheme's default port filled in. */
export function urlAuthority(url: URL): string {
  const port = url.port || (url.protocol === 'wss:' ? '443' : '80');
  return `${url.hostname}:${port}`;
}

const UNTRUSTED_CA = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);

/** A socket or TLS error of an attempt to `url`. */
export function fromSocketError(err: Error & { code?: string }, url: URL): ConnectError {
  const code = err.code ?? '';
  const where = urlAuthority(url);
  const cause = { cause: code || undefined };
  if (UNTRUSTED_CA.has(code)) {
    return new ConnectError(
      `TLS to ${where} failed: the certificate is not signed by a CA this client trusts (${code}: ${err.message}); ` +
        'if the beacon\'s proxy uses a private or self-signed CA (e.g. Caddy\'s "tls internal"), pass that CA\'s certificate with --ca FILE',
      'ETLS', cause);
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new ConnectError(
      `TLS to ${where} failed: the certificate is not valid for "${url.hostname}" (${err.message}); connect with the name on the certificate`,
      'ETLS', cause);
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    return new ConnectError(
      `TLS to ${where} failed: the certificate ${code === 'CERT_HAS_EXPIRED' ? 'has expired' : 'is not valid yet'}; renew it on the proxy, or check this host's clock`,
      'ETLS', cause);
  }
  // A plain server answers the ClientHello with HTTP; OpenSSL reports it as
  // a bad record (code ERR_SSL_..., or EPROTO with the text).
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' ||
      (code === 'EPROTO' && /wrong version number|packet length too long|http request/i.test(err.message))) {
    return new ConnectError(
      `TLS to ${where} failed: the server does not speak TLS; use ws:// for a beacon without a TLS proxy in front of it`,
      'ETLS', cause);
  }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || code.startsWith('CERT_')) {
    return new ConnectError(`TLS to ${where} failed (${code}: ${err.message}); check the proxy's certificate, or pass its CA with --ca FILE`, 'ETLS', cause);
  }
  switch (code) {
    case 'ECONNREFUSED':
      return new ConnectError(`nothing accepts connections at ${where}: is the beacon (or the proxy in front of it) running, and is the port right?`, 'ECONNREFUSED', cause);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new ConnectError(`cannot resolve "${url.hostname}" (${code}): check the host name in the URL`, 'ENOTFOUND', cause);
    default:
      break;
  }
  if (/subprotocol|Sec-WebSocket|Upgrade header/i.test(err.message)) {
    return new ConnectError(`${where} answered the upgrade but is not a beacon (${err.message}); check the URL path is ${COMPAT_PATH}`, 'EPROTOCOL', cause);
  }
  return new ConnectError(`connection to ${where} failed: ${code ? `${code}: ` : ''}${err.message}`, 'ENETWORK', cause);
}

/** An HTTP answer instead of 101 Switching Protocols. `body` is the first bytes of the answer. */
export function fromHttpResponse(status: number, retryAfter: string | undefined, body: string, url: URL): ConnectError {
  const where = urlAuthority(url);
  const retryAfterMs = parseRetryAfter(retryAfter);
  const details = { status, retryAfterMs };
  const later = retryAfterMs !== undefined ? `retry after ${Math.round(retryAfterMs / 1000)} s` : 'retry later';
  const why = refusalReason(body);
  switch (status) {
    case 503:
      return new ConnectError(
        `the beacon at ${where} refused the connection with HTTP 503${why ? ` (${why})` : ''}: it is at capacity or shutting down; ${later}, or raise its --max-peers`,
        'EATCAPACITY', details);
    case 429:
      return new ConnectError(
        `the beacon at ${where} refused the connection with HTTP 429: too many connections from this address (its --max-per-ip); close some, or raise the limit; ${later}`,
        'ETOOMANYCONNS', details);
    case 404:
      return new ConnectError(url.pathname === COMPAT_PATH
        // The path was right, so whatever answered is not a beacon.
        ? `${where} answered HTTP 404 for ${COMPAT_PATH}: something other than a beacon answered; check the host and port, and that the proxy forwards ${COMPAT_PATH} to the beacon`
        : `${where} answered HTTP 404 for ${url.pathname}: the beacon's compat endpoint is ${COMPAT_PATH}`, 'EHTTP', details);
    case 400:
      return new ConnectError(
        `${where} answered HTTP 400 instead of the WebSocket upgrade${url.protocol === 'ws:' ? ': if a TLS proxy is in front of the beacon, use wss://' : ''}`,
        'EHTTP', details);
    default:
      return new ConnectError(`${where} answered HTTP ${status} instead of the WebSocket upgrade: check the URL, and that the proxy forwards ${COMPAT_PATH} to the beacon`, 'EHTTP', details);
  }
}

/** The socket closed before auth_ok with a code other than 1008. */
export function fromCloseBeforeAuth(code: number, reason: string, url: URL): ConnectError {
  const where = urlAuthority(url);
  const said = reason ? `: ${reason}` : '';
  if (code === CloseCode.TryAgainLater) {
    return new ConnectError(`the beacon at ${where} is at capacity (close ${code}${said}); retry later, or raise its --max-peers`, 'EATCAPACITY', { closeCode: code });
  }
  if (code === CloseCode.GoingAway) {
    return new ConnectError(`the beacon at ${where} is shutting down (close ${code}${said})`, 'ECONNCLOSED', { closeCode: code });
  }
  return new ConnectError(`the connection to ${where} closed before the handshake finished (close ${code}${said})`, 'ECONNCLOSED', { closeCode: code });
}

export type HandshakePhase = 'upgrade' | 'challenge' | 'auth_ok';

/** Nothing arrived in time. */
export function connectTimeout(phase: HandshakePhase, timeoutMs: number, url: URL): ConnectError {
  const where = urlAuthority(url);
  const waitingFor = {
    upgrade: 'the WebSocket upgrade: is the host reachable, and is the port right?',
    challenge: 'the auth challenge after the upgrade: is this a beacon?',
    auth_ok: 'auth_ok: the beacon may be overloaded, or its key registry slow',
  }[phase];
  return new ConnectError(`timed out after ${timeoutMs} ms connecting to ${where}, waiting for ${waitingFor}`, 'ETIMEDOUT');
}

/** Retry-After in seconds (the only form the beacon sends); undefined when absent or a date. */
function parseRetryAfter(value: string | undefined): number | undefined {
  if (value === undefined || !/^\s*\d+\s*$/.test(value)) return undefined;
  return Number(value) * 1000;
}

/** The beacon's refusal body is `{"error":"max_peers"}` and the like. */
function refusalReason(body: string): string | undefined {
  try {
    const value: unknown = JSON.parse(body);
    const error = typeof value === 'object' && value !== null ? (value as Record<string, unknown>).error : undefined;
    return typeof error === 'string' && /^[a-z_]{1,40}$/.test(error) ? error : undefined;
  } catch {
    return undefined;
  }
}
