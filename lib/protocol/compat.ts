/**
 * The compat WebSocket transport (docs/protocol.md §2): path, subprotocol, size
 * limit, close codes and the text control messages of the handshake.
 *
 * - Control messages are JSON on text frames; binary frames carry §1 packets.
 * - Parsers return a typed message or `undefined`; they never throw on input
 *   from the network.
 * - The signed message is `compat_auth:<node_id decimal>:<nonce hex>`.
 * - Unknown text messages are reserved: receivers ignore them.
 */
import { isValidNodeId, type NodeId } from './packets';

export const COMPAT_PATH = '/v1/compat';
export const COMPAT_SUBPROTOCOL = 'pilot.v1';
/** An inbound message over this disconnects the peer (§2). */
export const MAX_MESSAGE_BYTES = 64 * 1024;
/** Random bytes in an auth challenge; sent as twice as many hex chars. */
export const NONCE_BYTES = 32;
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

/** WebSocket close codes and reasons the beacon uses. */
export const CloseCode = {
  /** Handshake failed or the node's key was revoked (§2). */
  PolicyViolation: 1008,
  /** The beacon is shutting down or the peer was idle too long. */
  GoingAway: 1001,
  /** ws closes with this when a message exceeds MAX_MESSAGE_BYTES. */
  MessageTooBig: 1009,
  /** (ours) The beacon reached --max-peers while this peer authenticated. */
  TryAgainLater: 1013,
  /** (ours) A newer connection authenticated as the same node. */
  Replaced: 4001,
} as const;

export const CloseReason = {
  authFailed: 'auth failed',
  keyRevoked: 'key revoked',
  shuttingDown: 'shutting down',
  idleTimeout: 'idle timeout',
  replaced: 'replaced by a newer connection',
  atCapacity: 'beacon at capacity',
  /** (ours) This instance holds more than its share of the instances sharing its address (--reuse-port). */
  rebalancing: 'rebalancing',
} as const;

export interface AuthChallenge {
  type: 'auth_challenge';
  nonce: string;
}

export interface AuthReply {
  type: 'auth_reply';
  node_id: NodeId;
  public_key: string;
  sig: string;
}

/** (ours) Sent before a graceful shutdown closes the socket with 1001, and before a rebalancing one. */
export interface RestartingNotice {
  type: 'restarting';
  reconnect_in_ms: number;
  try_for_ms: number;
  /**
   * "rebalance": the beacon at this address goes on; only this process
   * holds more than its share, so come back to the same URL (another
   * process there takes the connection). Absent for a restart.
   */
  reason?: 'rebalance';
}

export function authChallengeMessage(nonce: string): string {
  return JSON.stringify({ type: 'auth_challenge', nonce });
}

export function authReplyMessage(reply: Omit<AuthReply, 'type'>): string {
  return JSON.stringify({ type: 'auth_reply', ...reply });
}

export const AUTH_OK_MESSAGE = JSON.stringify({ type: 'auth_ok' });

export function restartingMessage(notice: Omit<RestartingNotice, 'type'>): string {
  return JSON.stringify({ type: 'restarting', ...notice });
}

/** The exact bytes a daemon signs to answer `nonce`. */
export function authSignedMessage(nodeId: NodeId, nonce: string): Buffer {
  return Buffer.from(`compat_auth:${nodeId}:${nonce}`, 'ascii');
}

const NONCE_PATTERN = /^[0-9a-f]{64}$/;
const BASE64_PATTERN = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Decodes standard, padded base64 of exactly `bytes` bytes, else undefined. */
export function decodeBase64Exact(text: unknown, bytes: number): Buffer | undefined {
  if (typeof text !== 'string' || !BASE64_PATTERN.test(text)) return undefined;
  const buf = Buffer.from(text, 'base64');
  return buf.length === bytes ? buf : undefined;
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** Why an auth reply was refused; becomes the `reason` label of the metric. */
export type AuthReplyProblem = 'bad_json' | 'bad_type' | 'bad_node_id' | 'bad_signature_encoding';

/** Parses and validates a daemon's auth_reply. */
export function parseAuthReply(
  text: string,
): { ok: true; reply: AuthReply; sig: Buffer } | { ok: false; problem: AuthReplyProblem } {
  const msg = parseObject(text);
  if (!msg) return { ok: false, problem: 'bad_json' };
  if (msg.type !== 'auth_reply') return { ok: false, problem: 'bad_type' };
  if (!isValidNodeId(msg.node_id)) return { ok: false, problem: 'bad_node_id' };
  const sig = decodeBase64Exact(msg.sig, SIGNATURE_BYTES);
  if (!sig) return { ok: false, problem: 'bad_signature_encoding' };
  const publicKey = typeof msg.public_key === 'string' ? msg.public_key : '';
  return { ok: true, reply: { type: 'auth_reply', node_id: msg.node_id, public_key: publicKey, sig: msg.sig as string }, sig };
}

/** Control messages a daemon understands; anything else is ignored. */
export type BeaconControlMessage = AuthChallenge | { type: 'auth_ok' } | RestartingNotice;

/** Parses a text message from the beacon (client side). */
export function parseBeaconControl(text: string): BeaconControlMessage | undefined {
  const msg = parseObject(text);
  if (!msg) return undefined;
  switch (msg.type) {
    case 'auth_challenge':
      return typeof msg.nonce === 'string' && NONCE_PATTERN.test(msg.nonce)
        ? { type: 'auth_challenge', nonce: msg.nonce }
        : undefined;
    case 'auth_ok':
      return { type: 'auth_ok' };
    case 'restarting': {
      const wait = msg.reconnect_in_ms;
      const tryFor = msg.try_for_ms;
      const okNumber = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n) && n >= 0;
      if (!okNumber(wait) || !okNumber(tryFor)) return undefined;
      // Another reason is a newer beacon's: read as a restart, the safe reading.
      return msg.reason === 'rebalance'
        ? { type: 'restarting', reconnect_in_ms: wait, try_for_ms: tryFor, reason: 'rebalance' }
        : { type: 'restarting', reconnect_in_ms: wait, try_for_ms: tryFor };
    }
    default:
      return undefined;
  }
}
