/**
 * UDP claims across the cluster: which instance a node Discovered through,
 * kept out of the durable directory.
 *
 * - A Discover is unauthenticated: anyone may claim any node ID from any
 *   address. So a UDP claim is soft state, never a KV write: the claiming
 *   instance announces it on `<name>.udp.<instance>` over core NATS
 *   (batched per turn) and withdraws it when its endpoint expires or is
 *   replaced; every instance keeps the others' claims in memory. Nothing a
 *   stranger sends grows NATS's storage, and each source's new claims are
 *   budgeted by the caller (nats-cluster.ts).
 * - Order: each claim carries a stamp from a hybrid clock (wall-clock ms,
 *   but always past every stamp this instance has issued or seen), ties
 *   broken by instance ID. The newest claim for a node wins everywhere; an
 *   instance whose own claim is beaten forgets its endpoint (as one beacon
 *   does when a node Discovers from a new address).
 * - A claim never beats a WebSocket attachment (trust only goes up): the
 *   router asks the WebSocket placements first, an instance holding the
 *   node over WebSocket ignores claims for it, and a claim for a node that
 *   turns out to be on a WebSocket elsewhere is withdrawn (`yieldTo`).
 * - Kept fresh and bounded: every instance announces all its claims again
 *   every CLAIMS_REFRESH_MS, and when another instance comes (back) to life;
 *   the others' claims live in two generations swapped every
 *   CLAIMS_ROTATE_MS, so one not heard again for two swaps is forgotten.
 *   At most MAX_REMOTE_CLAIMS are held; beyond, new ones are refused and
 *   counted (`cluster_claims_full`).
 * - The endpoint rides along, and the others' claims keep it: an instance
 *   that shares this one's address (--reuse-port on one machine,
 *   `Instance.sharesAddress`) has the same source address and port, so the
 *   node's NAT mapping holds for both and this instance sends to the
 *   endpoint from its own socket (`sharedEndpointOf`), with no NATS hop. A
 *   claim of an instance elsewhere is only ever forwarded to.
 * - A dead instance that shared this address leaves its claims behind: the
 *   survivor chosen to adopt them (nats-cluster.ts) takes them from
 *   `claimsOf` and claims them anew, so its daemons stay reachable.
 *
 * Wire: `u8 version (1)`, then records `u8 op (1 claim, 2 withdraw) | u32
 * node | f64 stamp | u16 port | u8 address length | address (ASCII, as the
 * socket reported it)`; a withdrawal has port 0 and no address.
 */
import { isIP } from 'node:net';
import type { BeaconStats } from '../metrics';
import type { NodeId } from '../protocol/packets';
import { MAX_NODE_ID } from '../protocol/packets';
import { udpEndpoint, type UdpEndpoint } from '../udp/endpoints';
import type { Instance } from './instances';
import { PlacementTable } from './placement-table';

/** Every instance announces all its claims again this often (a lost message costs at most this long). */
export const CLAIMS_REFRESH_MS = 20_000;
/** The others' claims are kept in two generations swapped this often: one unheard for 45–90 s is forgotten. */
export const CLAIMS_ROTATE_MS = 45_000;
/**
 * Others' claims held at most (about 30 bytes each in the tables, so ~30 MB).
 * Each instance holds at most --max-udp-endpoints (100,000) of its own, so
 * this is ten instances' worth.
 */
export const MAX_REMOTE_CLAIMS = 1_048_576;
/**
 * Distinct endpoint addresses one generation of the others' claims keeps
 * (each claim names one, so never more than the claims themselves).
 */
const MAX_GENERATION_ADDRESSES = MAX_REMOTE_CLAIMS;
/** A claim's payload in the tables: index of its address * PORT_SPAN + port. */
const PORT_SPAN = 65_536;
/** A stamp further ahead of our clock than this is refused (a broken clock must not pin a node for ever). */
const MAX_AHEAD_MS = 60_000;
/** Bytes per claims message: NATS's default max_payload is 1 MiB; small messages interleave with relays. */
const MESSAGE_BYTES = 64 * 1024;
/** Own claims encoded per turn when all are announced again (100,000 take a few turns, not one long one). */
const REANNOUNCE_PER_TURN = 16_384;

const VERSION = 1;
const OP_CLAIM = 1;
const OP_WITHDRAW = 2;
const RECORD_FIXED_BYTES = 1 + 4 + 8 + 2 + 1;
const MAX_ADDRESS_BYTES = 64;

export interface ClaimRecord {
  op: 'claim' | 'withdraw';
  nodeId: NodeId;
  stamp: number;
  /** The claim's endpoint; undefined for a withdrawal. */
  endpoint: { address: string; port: number } | undefined;
}

/** The records of a claims message, or undefined when it is not one of ours (counted by the caller). */
export function decodeClaims(data: Uint8Array): ClaimRecord[] | undefined {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length < 1 || buf[0] !== VERSION) return undefined;
  const records: ClaimRecord[] = [];
  for (let at = 1; at < buf.length;) {
    if (buf.length - at < RECORD_FIXED_BYTES) return undefined;
    const op = buf[at]!;
    const nodeId = buf.readUInt32BE(at + 1);
    const stamp = buf.readDoubleBE(at + 5);
    const port = buf.readUInt16BE(at + 13);
    const length = buf[at + 15]!;
    at += RECORD_FIXED_BYTES;
    if (nodeId === 0 || nodeId > MAX_NODE_ID || !Number.isFinite(stamp) || stamp < 0 || length > buf.length - at) return undefined;
    if (op === OP_CLAIM) {
      if (port === 0 || length === 0) return undefined;
      records.push({ op: 'claim', nodeId, stamp, endpoint: { address: buf.toString('latin1', at, at + length), port } });
    } else if (op === OP_WITHDRAW) {
      if (port !== 0 || length !== 0) return undefined;
      records.push({ op: 'withdraw', nodeId, stamp, endpoint: undefined });
    } else {
      return undefined;
    }
    at += length;
  }
  return records;
}

/** Builds claims messages of at most MESSAGE_BYTES each. */
class ClaimsWriter {
  private buf = Buffer.allocUnsafe(MESSAGE_BYTES);
  private at = 1;

  constructor(private readonly publish: (message: Buffer) => void) {
    this.buf[0] = VERSION;
  }

  get empty(): boolean {
    return this.at === 1;
  }

  claim(nodeId: NodeId, stamp: number, endpoint: UdpEndpoint): void {
    const length = Math.min(Buffer.byteLength(endpoint.address, 'latin1'), MAX_ADDRESS_BYTES);
    this.record(OP_CLAIM, nodeId, stamp, endpoint.port, length);
    this.at += this.buf.write(endpoint.address, this.at, length, 'latin1');
  }

  withdraw(nodeId: NodeId, stamp: number): void {
    this.record(OP_WITHDRAW, nodeId, stamp, 0, 0);
  }

  /** Publishes what is written; the buffer goes with the message (NATS may hold it until it writes). */
  flush(): void {
    if (this.empty) return;
    const message = this.buf.subarray(0, this.at);
    this.buf = Buffer.allocUnsafe(MESSAGE_BYTES);
    this.buf[0] = VERSION;
    this.at = 1;
    this.publish(message);
  }

  private record(op: number, nodeId: NodeId, stamp: number, port: number, addressBytes: number): void {
    if (MESSAGE_BYTES - this.at < RECORD_FIXED_BYTES + addressBytes) this.flush();
    const { buf } = this;
    buf[this.at] = op;
    buf.writeUInt32BE(nodeId, this.at + 1);
    buf.writeDoubleBE(stamp, this.at + 5);
    buf.writeUInt16BE(port, this.at + 13);
    buf[this.at + 15] = addressBytes;
    this.at += RECORD_FIXED_BYTES;
  }
}

/** Records as claims messages (tests, tools; the instance writes them as claims come). */
export function encodeClaims(records: readonly ClaimRecord[]): Buffer[] {
  const messages: Buffer[] = [];
  const writer = new ClaimsWriter((message) => messages.push(message));
  for (const record of records) {
    if (record.endpoint) writer.claim(record.nodeId, record.stamp, { ...record.endpoint, ip: record.endpoint.address });
    else writer.withdraw(record.nodeId, record.stamp);
  }
  writer.flush();
  return messages;
}

/**
 * One generation of the others' claims: node → (instance, stamp) in a
 * placement table, and each claim's endpoint as its payload: the port, and
 * the address by index into the generation's own list of addresses (many
 * nodes behind one NAT share an address, and a claim announced again every
 * 20 s names the same one: no string per claim). The list goes with the
 * generation, so it is bounded like the claims.
 */
class ClaimGeneration {
  readonly table = new PlacementTable<Instance>(undefined, true);
  private readonly addresses: UdpEndpoint[] = [];
  private readonly indexOf = new Map<string, number>();

  /** Records `from`'s claim; false when the address is not an IP or the generation holds as many addresses as it keeps. */
  set(nodeId: NodeId, from: Instance, stamp: number, endpoint: { address: string; port: number }): boolean {
    let index = this.indexOf.get(endpoint.address);
    if (index === undefined) {
      if (this.addresses.length >= MAX_GENERATION_ADDRESSES || isIP(endpoint.address) === 0) return false;
      index = this.addresses.length;
      this.addresses.push(udpEndpoint(endpoint.address, 0));
      this.indexOf.set(endpoint.address, index);
    }
    this.table.set(nodeId, from, 'udp', stamp, index * PORT_SPAN + endpoint.port);
    return true;
  }

  /** The endpoint of the claim in `slot`, written into `into`. */
  endpointAt(slot: number, into: UdpEndpoint): UdpEndpoint {
    const payload = this.table.payloadAt(slot);
    const { address, ip } = this.addresses[Math.floor(payload / PORT_SPAN)]!;
    into.address = address;
    into.ip = ip;
    into.port = payload % PORT_SPAN;
    return into;
  }
}

export interface UdpClaimsDeps {
  self: Instance;
  stats: BeaconStats;
  /** Publishes one claims message on this instance's claims subject; false when NATS refused it. */
  publish(message: Buffer): boolean;
  /** This instance's endpoint for a node it claims (undefined once it expired). */
  endpointOf(nodeId: NodeId): UdpEndpoint | undefined;
  /** Whether the node is attached over WebSocket here. */
  isWssHere(nodeId: NodeId): boolean;
  /** Our claim lost (to a newer claim, or to a WebSocket attachment elsewhere): forget the endpoint here. */
  evict(nodeId: NodeId): void;
  /** Wall clock, ms (tests). */
  clock?: () => number;
  /** Others' claims held at most (tests use a small cap). */
  maxRemoteClaims?: number;
}

/** a's claim (stamp, instance) is newer than b's. */
function newer(aStamp: number, a: Instance, bStamp: number, b: Instance): boolean {
  return aStamp > bStamp || (aStamp === bStamp && a.id > b.id);
}

export class UdpClaims {
  /** Our claims: node → stamp (instance: ourselves). */
  private readonly own = new PlacementTable<Instance>();
  /** The others' claims, this generation and the one before: node → (instance, stamp, endpoint). */
  private current = new ClaimGeneration();
  private previous = new ClaimGeneration();
  /** What sharedEndpointOf lends: one object, rewritten by each call (no allocation per relay). */
  private readonly lent: UdpEndpoint = { address: '', port: 0, ip: '' };
  /** The hybrid clock: past every stamp issued or seen. */
  private lastStamp = 0;
  private readonly writer: ClaimsWriter;
  private flushScheduled = false;
  private readonly flushNow = () => this.flush();
  /** Own claims still to announce again, and whether a pass over them is running. */
  private reannounceQueue: NodeId[] = [];
  private reannouncing = false;
  private readonly clock: () => number;

  constructor(private readonly deps: UdpClaimsDeps) {
    this.clock = deps.clock ?? Date.now;
    this.writer = new ClaimsWriter((message) => this.deps.publish(message));
  }

  /** Our claims plus the others'. */
  get size(): number {
    return this.own.size + this.current.table.size + this.previous.table.size;
  }

  isOwn(nodeId: NodeId): boolean {
    return this.own.find(nodeId) >= 0;
  }

  /** The live instance, other than this one, whose claim for `nodeId` stands. Hot path: one or two lookups. */
  instanceOf(nodeId: NodeId): Instance | undefined {
    let table = this.current.table;
    let slot = table.find(nodeId);
    if (slot < 0) {
      table = this.previous.table;
      slot = table.find(nodeId);
      if (slot < 0) return undefined;
    }
    const instance = table.instanceAt(slot);
    return instance.live ? instance : undefined;
  }

  /**
   * The endpoint of `nodeId` when a live instance sharing this one's
   * address claims it: this instance may send to it from its own socket.
   * Hot path: one or two lookups, no allocation. The object is lent: it is
   * rewritten by the next call, so use it at once (a send) and keep none of it.
   */
  sharedEndpointOf(nodeId: NodeId): UdpEndpoint | undefined {
    let generation = this.current;
    let slot = generation.table.find(nodeId);
    if (slot < 0) {
      generation = this.previous;
      slot = generation.table.find(nodeId);
      if (slot < 0) return undefined;
    }
    const instance = generation.table.instanceAt(slot);
    return instance.live && instance.sharesAddress ? generation.endpointAt(slot, this.lent) : undefined;
  }

  /** The claims `instance` holds, each with its endpoint (a dead instance's, for the survivor that adopts them). */
  claimsOf(instance: Instance): Array<{ nodeId: NodeId; endpoint: UdpEndpoint }> {
    const claims: Array<{ nodeId: NodeId; endpoint: UdpEndpoint }> = [];
    for (const generation of [this.current, this.previous]) {
      for (const [nodeId, slot] of generation.table) {
        if (generation.table.instanceAt(slot) !== instance) continue;
        claims.push({ nodeId, endpoint: generation.endpointAt(slot, { address: '', port: 0, ip: '' }) });
      }
    }
    return claims;
  }

  /**
   * We recorded `nodeId`'s endpoint: `isNew` when it is a new endpoint (a
   * new node here, or a new address), not a refresh. A new one is stamped
   * and announced; a refresh of a standing claim costs nothing.
   */
  claim(nodeId: NodeId, endpoint: UdpEndpoint, isNew: boolean): void {
    if (!isNew && this.own.find(nodeId) >= 0) return;
    const stamp = this.nextStamp();
    this.own.set(nodeId, this.deps.self, 'udp', stamp);
    this.forgetRemote(nodeId); // ours is the newest now
    this.writer.claim(nodeId, stamp, endpoint);
    this.deps.stats.clusterUdpClaims.out++;
    this.scheduleFlush();
  }

  /** Our endpoint for `nodeId` is gone (expired, replaced by a WebSocket here): withdrawn everywhere. */
  withdraw(nodeId: NodeId): void {
    const slot = this.own.find(nodeId);
    if (slot < 0) return;
    const stamp = this.own.revAt(slot);
    this.own.delete(nodeId);
    this.writer.withdraw(nodeId, stamp);
    this.scheduleFlush();
  }

  /** `nodeId` is attached over WebSocket to another instance: our claim for it goes, and the endpoint with it. */
  yieldTo(nodeId: NodeId): void {
    if (this.own.find(nodeId) < 0) return;
    this.withdraw(nodeId);
    this.deps.evict(nodeId);
  }

  /** A claims message from `from`. */
  apply(from: Instance, records: readonly ClaimRecord[]): void {
    const now = this.clock();
    for (const record of records) {
      if (record.op === 'claim') this.deps.stats.clusterUdpClaims.in++;
      if (record.stamp > now + MAX_AHEAD_MS) {
        this.deps.stats.drop('cluster_malformed');
        continue;
      }
      if (record.stamp > this.lastStamp) this.lastStamp = record.stamp;
      if (record.op === 'claim') this.applyClaim(from, record.nodeId, record.stamp, record.endpoint!);
      else this.applyWithdraw(from, record.nodeId, record.stamp);
    }
  }

  /** @internal Slots looked at to find `nodeId` among the others' claims (tests bound it for IDs chosen to collide). */
  probes(nodeId: NodeId): number {
    const { current, previous } = this;
    return current.table.probes(nodeId) + (current.table.find(nodeId) >= 0 ? 0 : previous.table.probes(nodeId));
  }

  /** Our claims, for reconciling against the endpoint table (endpoints expire silently). */
  ownNodes(): NodeId[] {
    const ids: NodeId[] = [];
    for (const [nodeId] of this.own) ids.push(nodeId);
    return ids;
  }

  /** Announces every claim of ours again, a slice per turn (periodically, and for an instance that just came). */
  reannounceAll(): void {
    if (this.reannouncing) return;
    this.reannounceQueue = this.ownNodes();
    this.reannouncing = true;
    const step = () => {
      const batch = this.reannounceQueue.splice(0, REANNOUNCE_PER_TURN);
      for (const nodeId of batch) {
        const slot = this.own.find(nodeId);
        const endpoint = slot >= 0 ? this.deps.endpointOf(nodeId) : undefined;
        if (endpoint) this.writer.claim(nodeId, this.own.revAt(slot), endpoint);
      }
      this.writer.flush();
      if (this.reannounceQueue.length > 0) setImmediate(step);
      else this.reannouncing = false;
    };
    step();
  }

  /** Swaps the generations of the others' claims: those not heard since the last swap are forgotten. */
  rotate(): void {
    this.previous = this.current;
    this.current = new ClaimGeneration();
  }

  /** An instance restarted (a new incarnation) or was declared dead and removed: its claims are void. */
  forgetInstance(instance: Instance): void {
    for (const { table } of [this.current, this.previous]) {
      const stale: NodeId[] = [];
      for (const [nodeId, slot] of table) if (table.instanceAt(slot) === instance) stale.push(nodeId);
      for (const nodeId of stale) table.delete(nodeId);
    }
  }

  /** Forgets everything (closing). */
  clear(): void {
    this.reannounceQueue = [];
    this.current = new ClaimGeneration();
    this.previous = new ClaimGeneration();
  }

  private applyClaim(from: Instance, nodeId: NodeId, stamp: number, endpoint: { address: string; port: number }): void {
    // Trust only goes up: a node on a WebSocket here is not taken by a UDP claim.
    if (this.deps.isWssHere(nodeId)) return;
    const ownSlot = this.own.find(nodeId);
    if (ownSlot >= 0) {
      const ownStamp = this.own.revAt(ownSlot);
      if (newer(ownStamp, this.deps.self, stamp, from)) {
        // Theirs is older: they missed ours (or it crossed theirs). Ours again, so they yield.
        const endpoint = this.deps.endpointOf(nodeId);
        if (endpoint) {
          this.writer.claim(nodeId, ownStamp, endpoint);
          this.scheduleFlush();
        }
        return;
      }
      this.own.delete(nodeId);
      this.deps.evict(nodeId);
    }
    let table = this.current.table;
    let slot = table.find(nodeId);
    if (slot < 0) {
      const old = this.previous.table.find(nodeId);
      if (old >= 0) {
        table = this.previous.table;
        slot = old;
      }
    }
    if (slot >= 0) {
      if (newer(table.revAt(slot), table.instanceAt(slot), stamp, from)) return;
    } else if (this.current.table.size + this.previous.table.size >= (this.deps.maxRemoteClaims ?? MAX_REMOTE_CLAIMS)) {
      this.deps.stats.drop('cluster_claims_full');
      return;
    }
    if (!this.current.set(nodeId, from, stamp, endpoint)) {
      // Not an address, or as many addresses as a generation keeps: refused like a claim past the cap.
      this.deps.stats.drop(isIP(endpoint.address) === 0 ? 'cluster_malformed' : 'cluster_claims_full');
      return;
    }
    if (table === this.previous.table) this.previous.table.delete(nodeId);
  }

  private applyWithdraw(from: Instance, nodeId: NodeId, stamp: number): void {
    for (const { table } of [this.current, this.previous]) {
      const slot = table.find(nodeId);
      if (slot >= 0 && table.instanceAt(slot) === from && table.revAt(slot) <= stamp) table.delete(nodeId);
    }
  }

  private forgetRemote(nodeId: NodeId): void {
    this.current.table.delete(nodeId);
    this.previous.table.delete(nodeId);
  }

  private nextStamp(): number {
    this.lastStamp = Math.max(this.clock(), this.lastStamp + 1);
    return this.lastStamp;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(this.flushNow);
  }

  private flush(): void {
    this.flushScheduled = false;
    this.writer.flush();
  }
}
