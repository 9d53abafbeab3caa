/**
 * Authenticated peers keyed by node ID (docs/protocol.md §2, §3).
 *
 * - Last writer wins: attaching a node that is already attached returns the
 *   old peer, which the caller closes.
 * - `detach` removes a peer only if it is still the one in the map, so a
 *   replaced socket's teardown never removes its successor (the bug the Go
 *   beacon has: its old read loop deletes the entry by node ID).
 */
import type { NodeId } from '../protocol';
import type { Peer } from './peer';

/** Told of every change of a node's current peer (cluster mode announces them). */
export interface PeerMapListener {
  attached(peer: Peer): void;
  detached(peer: Peer): void;
}

export class PeerMap {
  private readonly byNode = new Map<NodeId, Peer>();

  constructor(private readonly listener?: PeerMapListener) {}

  get size(): number {
    return this.byNode.size;
  }

  get(nodeId: NodeId): Peer | undefined {
    return this.byNode.get(nodeId);
  }

  has(nodeId: NodeId): boolean {
    return this.byNode.has(nodeId);
  }

  /** Attaches `peer`, returning the peer it replaced, if any. */
  attach(peer: Peer): Peer | undefined {
    const previous = this.byNode.get(peer.nodeId);
    this.byNode.set(peer.nodeId, peer);
    this.listener?.attached(peer);
    return previous === peer ? undefined : previous;
  }

  /** Removes `peer` if, and only if, it is the current peer of its node. */
  detach(peer: Peer): boolean {
    if (this.byNode.get(peer.nodeId) !== peer) return false;
    this.byNode.delete(peer.nodeId);
    this.listener?.detached(peer);
    return true;
  }

  values(): IterableIterator<Peer> {
    return this.byNode.values();
  }

  nodeIds(): IterableIterator<NodeId> {
    return this.byNode.keys();
  }
}
