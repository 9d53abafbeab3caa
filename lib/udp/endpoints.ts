/**
 * The UDP endpoint table: node ID -> the address its Discover or
 * PunchRequest last came from.
 *
 * - UDP is unauthenticated, so anyone can add entries: the table is bounded
 *   (`maxEntries`; new nodes are refused when full, known ones still
 *   refresh) and entries not refreshed within `ttlMs` are forgotten.
 * - `address` is kept as the socket reported it (what `send` needs);
 *   `ip` is its canonical form (what DiscoverReply and PunchCommand carry).
 */
import { canonicalIp, type NodeId } from '../protocol';

export interface UdpEndpoint {
  /** As reported by the socket, e.g. `::ffff:1.2.3.4` on a dual-stack socket. */
  address: string;
  port: number;
  /** Canonical form of `address` (IPv4-mapped IPv6 as IPv4). */
  ip: string;
}

interface Entry extends UdpEndpoint {
  refreshedAt: number;
}

export function udpEndpoint(address: string, port: number): UdpEndpoint {
  return { address, port, ip: canonicalIp(address) };
}

export class EndpointTable {
  private readonly byNode = new Map<NodeId, Entry>();

  constructor(private readonly ttlMs: number, private readonly maxEntries: number) {}

  get size(): number {
    return this.byNode.size;
  }

  get(nodeId: NodeId): UdpEndpoint | undefined {
    return this.byNode.get(nodeId);
  }

  /** Records or refreshes `nodeId`'s endpoint; false when the table is full. */
  record(nodeId: NodeId, address: string, port: number, now = Date.now()): boolean {
    const existing = this.byNode.get(nodeId);
    if (!existing && this.byNode.size >= this.maxEntries) return false;
    if (existing && existing.address === address && existing.port === port) {
      existing.refreshedAt = now;
    } else {
      this.byNode.set(nodeId, { ...udpEndpoint(address, port), refreshedAt: now });
    }
    return true;
  }

  delete(nodeId: NodeId): void {
    this.byNode.delete(nodeId);
  }

  /** Forgets entries older than the TTL; returns how many. */
  expire(now = Date.now()): number {
    let removed = 0;
    for (const [nodeId, entry] of this.byNode) {
      if (now - entry.refreshedAt >= this.ttlMs) {
        this.byNode.delete(nodeId);
        removed++;
      }
    }
    return removed;
  }

  nodeIds(): IterableIterator<NodeId> {
    return this.byNode.keys();
  }
}
