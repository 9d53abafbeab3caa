/**
 * The daemon side of the compat transport: what a TypeScript/JavaScript
 * daemon imports to talk to a beacon.
 *
 * - `CompatClient`: one long-lived WebSocket with the handshake, pings,
 *   backoff and the restarting notice (compat-client.ts).
 * - `discoverOverUdp`: Discover over UDP (udp-discover.ts).
 * - Packet helpers are lib/protocol's, re-exported here: the project has one
 *   codec, shared by the beacon and its clients.
 * - Identity files are lib/identity's (docs/protocol.md §5), re-exported here.
 * - Errors carry stable codes (errors.ts); the CLI's work is in cli.ts.
 */
export * from './compat-client';
export * from './errors';
export * from './backoff';
export { parseBeaconUrl } from './connect-errors';
export * from './udp-discover';
export * from './payload-format';
export {
  PacketType, decodePacket, encodeRelay, encodeDiscover, encodePunchRequest,
  COMPAT_PATH, COMPAT_SUBPROTOCOL, CloseCode, CloseReason, MAX_MESSAGE_BYTES,
  type Packet, type Endpoint, type NodeId, type RestartingNotice,
} from '../protocol';
export {
  generateIdentity, loadIdentity, saveIdentity, parseIdentity, formatIdentity, publicKeyBase64, signDetached,
  IdentityFileError, type Identity,
} from '../identity';
