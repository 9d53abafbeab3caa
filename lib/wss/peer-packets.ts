/**
 * What a WebSocket peer may send after auth_ok (docs/protocol.md §1, §3).
 *
 * - Relay: its sender must be the peer's own node ID; then the router
 *   decides where it goes.
 * - Discover: its node_id must be the peer's own, or 0 (an address query,
 *   which speaks for nobody); answered with the client address the beacon
 *   sees (the forwarded one behind a trusted proxy); no UDP endpoint is
 *   registered either way.
 * - PunchRequest: its requester must be the peer's own; never coordinated,
 *   since a peer on WebSocket has no UDP endpoint.
 * - Anything else is dropped and counted: malformed, or a type a daemon
 *   does not send.
 */
import type { BeaconStats } from '../metrics';
// From the module itself, not the '../protocol' index: the index's
// re-exports are getters, a call's worth of cost on every packet.
import {
  ADDRESS_QUERY_NODE_ID, PacketType, decodePacket, encodeDiscoverReply, isRelay, relaySender,
} from '../protocol/packets';
import type { RelayRouter } from '../relay/router';
import type { Peer } from './peer';

export function createPeerPacketHandler(
  stats: BeaconStats, router: RelayRouter, reply: (peer: Peer, packet: Buffer) => void,
): (peer: Peer, packet: Buffer) => void {
  return (peer, packet) => {
    if (packet[0] === PacketType.Relay) {
      if (!isRelay(packet)) return stats.drop('malformed');
      if (relaySender(packet) !== peer.nodeId) return stats.drop('spoofed_sender');
      router.route(packet, 'wss');
      return;
    }
    const decoded = decodePacket(packet);
    if (!decoded) return stats.drop('malformed');
    switch (decoded.type) {
      case PacketType.Discover:
        // Node 0 speaks for nobody (an address query), so it is answered like the peer's own ID.
        if (decoded.nodeId === ADDRESS_QUERY_NODE_ID) stats.addressQueries.wss++;
        else if (decoded.nodeId !== peer.nodeId) return stats.drop('spoofed_sender');
        return reply(peer, encodeDiscoverReply({ ip: peer.clientIp, port: peer.clientPort }));
      case PacketType.PunchRequest:
        if (decoded.requester !== peer.nodeId) return stats.drop('spoofed_sender');
        return stats.drop('punch_unavailable');
      default:
        return stats.drop('unexpected_type');
    }
  };
}
