/**
 * The UDP endpoint table: node ID -> the address its Discover or
 * PunchRequest last came from.
 *
 * - UDP is unauthenticated, so anyone can add entries. Three bounds:
 *   entries not refreshed within `ttlMs` are forgotten; one source (an IPv4
 *   address, an IPv6 prefix) holds at most `maxPerSource` entries, beyond
 *   which its new nodes are refused (known ones still refresh); and when the
 *   table is full, the least recently refreshed entry makes room.
 * - So junk from one source cannot fill the table, and junk from many
 *   (spoofed) sources cannot keep newcomers out for ever: it must outpace
 *   the refreshes of real nodes to push them out, and a real node that is
 *   pushed out is back with its next Discover.
 * - Entries are kept in refresh order (a refresh moves one to the end), so
 *   eviction and expiry look only at the oldest.
 * - Node IDs are chosen by whoever sends the Discover, so the table is a
 *   NodeMap (keyed hash, secret per process), not a Map: IDs chosen to
 *   collide under V8's integer hash cost no more than any others.
 * - `address` is kept as the socket reported it (what `send` needs);
 *   `ip` is its canonical form (what DiscoverReply and PunchCommand carry).
 */
import { perIpKey } from '../net/client-address';
import { canonicalIp, type NodeId } from '../protocol';
import { NodeMap } from '../tables/node-map';

export interface UdpEndpoint {
  /** As reported by the socket, e.g. `::ffff:1.2.3.4` on a dual-stack socket. */
  address: string;
  port: number;
  /** Canonical form of `address` (IPv4-mapped IPv6 as IPv4). */
  ip: string;
}

interface Entry extends UdpEndpoint {
  refreshedAt: number;
  /** The per-source key it is counted under. */
  source: string;
}

export interface EndpointLimits {
  ttlMs: number;
  maxEntries: number;
  maxPerSource: number;
  ipv6PrefixBits: number;
}

/** What `record` did. */
export type RecordResult = 'recorded' | 'evicted_oldest' | 'source_full';

export function udpEndpoint(address: string, port: number): UdpEndpoint {
  return { address, port, ip: canonicalIp(address) };
}

export class EndpointTable {
  private readonly byNode = new NodeMap<Entry>();
  private readonly perSource = new Map<string, number>();

  constructor(private readonly limits: EndpointLimits) {}

  get size(): number {
    return this.byNode.size;
  }

  get(nodeId: NodeId): UdpEndpoint | undefined {
    return this.byNode.get(nodeId);
  }

  /** Entries held for the source `ip` (canonical) now. */
  entriesFrom(ip: string): number {
    return this.perSource.get(perIpKey(ip, this.limits.ipv6PrefixBits)) ?? 0;
  }

  /** Records or refreshes `nodeId`'s endpoint, within the limits. */
  record(nodeId: NodeId, address: string, port: number, now = Date.now()): RecordResult {
    const existing = this.byNode.get(nodeId);
    if (existing && existing.address === address && existing.port === port) {
      existing.refreshedAt = now;
      this.byNode.delete(nodeId); // to the end: most recently refreshed
      this.byNode.set(nodeId, existing);
      return 'recorded';
    }
    const ip = canonicalIp(address);
    const source = perIpKey(ip, this.limits.ipv6PrefixBits);
    if (existing?.source !== source && (this.perSource.get(source) ?? 0) >= this.limits.maxPerSource) return 'source_full';
    if (existing) this.delete(nodeId);
    let result: RecordResult = 'recorded';
    if (this.byNode.size >= this.limits.maxEntries) {
      this.delete(this.byNode.oldest()!);
      result = 'evicted_oldest';
    }
    this.byNode.set(nodeId, { address, port, ip, refreshedAt: now, source });
    this.perSource.set(source, (this.perSource.get(source) ?? 0) + 1);
    return result;
  }

  delete(nodeId: NodeId): void {
    const entry = this.byNode.get(nodeId);
    if (!entry) return;
    this.byNode.delete(nodeId);
    const left = (this.perSource.get(entry.source) ?? 1) - 1;
    if (left === 0) this.perSource.delete(entry.source);
    else this.perSource.set(entry.source, left);
  }

  /** Forgets entries older than the TTL; returns how many. */
  expire(now = Date.now()): number {
    let removed = 0;
    for (const [nodeId, entry] of this.byNode.entries()) {
      if (now - entry.refreshedAt < this.limits.ttlMs) break; // the rest are younger
      this.delete(nodeId);
      removed++;
    }
    return removed;
  }

  /** Node IDs, least recently refreshed first. */
  nodeIds(): IterableIterator<NodeId> {
    return this.byNode.keys();
  }

  /** @internal Slots looked at to find `nodeId` (tests bound it for IDs chosen to collide). */
  probes(nodeId: NodeId): number {
    return this.byNode.probes(nodeId);
  }
}
