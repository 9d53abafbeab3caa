/**
 * The batched transport: the udp-batch addon owns the socket and reads it
 * with recvmmsg, up to BATCH datagrams per call into JavaScript.
 *
 * - Receive: the addon fills slots of one preallocated receive area and one
 *   record per datagram (length, source); `onBatch` hands each datagram to
 *   the receiver as a slice of the area (no copy), then flushes the sends
 *   the batch queued with one sendmmsg. Truncated datagrams are counted
 *   (`udp_truncated`) and dropped.
 * - The slices are lent (`BorrowedBytes`), not given: the addon refills
 *   the area in a later turn (not before the loop's check phase, so
 *   setImmediate callbacks of this turn still see them). Whatever keeps a
 *   datagram's bytes longer copies them (the cluster forwarder does, into
 *   its batch).
 * - Send: a datagram that is a slice of the receive area, sent while its
 *   batch is handled (a relay rewritten in place), goes out from the area
 *   itself; anything else is copied into the send area. Sends from outside
 *   a batch (WebSocket reads, Sync) are flushed at the end of the turn
 *   (setImmediate), or at once when the send records or area fill up.
 * - Addresses cross as bytes: source addresses become strings through a
 *   small cache (the same few peers send most datagrams); destinations
 *   become bytes through another.
 * - After close nothing is delivered and nothing is sent.
 */
import { lookup } from 'node:dns/promises';
import { isIP, type AddressInfo } from 'node:net';
import type { BeaconStats } from '../metrics';
import { NodeMap } from '../tables/node-map';
import type { UdpEndpoint } from './endpoints';
import {
  UDP_RECV_BUFFER_BYTES, UDP_SEND_BUFFER_BYTES, type DatagramReceiver, type DatagramTransport,
} from './transport';
import { addressBytes, type Handle, type UdpBatchAddon } from '../native/udp-batch-addon';

/** Datagrams per recvmmsg, and so per call into JavaScript (the C relay of issue 13 used 64). */
export const BATCH = 64;
/** One slot per datagram: the largest UDP payload (65,507 on IPv4, 65,527 on IPv6) fits. */
export const SLOT_BYTES = 65_536;
/** Sends per sendmmsg; a batch of relays plus the replies it triggers fits. */
const SEND_RECORDS = 256;
/** Copied sends per flush; more than one maximum datagram, so any datagram fits. */
const SEND_AREA_BYTES = 512 * 1024;
/** Address cache entries before it is emptied (a spray of sources must not grow it). */
const ADDRESS_CACHE_MAX = 4096;

export interface BatchOptions {
  /** Tests: smaller slots, to see truncation. */
  slotBytes?: number;
  batch?: number;
}

export class BatchTransport implements DatagramTransport {
  readonly io = 'batched';
  private handle: Handle | undefined;
  private readonly batch: number;
  private readonly slot: number;
  private readonly words: number;
  private readonly sendWords: number;
  private readonly recvArea: Buffer;
  private readonly records: Buffer;
  private readonly records32: Uint32Array;
  private readonly sendArea: Buffer;
  private readonly sends: Buffer;
  private readonly sends32: Uint32Array;
  private readonly resultsBuffer: Buffer;
  private readonly results32: Uint32Array;
  private queued = 0;
  private sendAt = 0;
  private inBatch = false;
  private flushScheduled = false;
  /** Keyed by the source's IPv4 word, which a stranger chooses (spoofed sources): a NodeMap, not a Map. */
  private readonly v4Names = new NodeMap<string>();
  private readonly v4MappedNames = new NodeMap<string>();
  private readonly destWords = new Map<string, Uint32Array>();
  private readonly scratch = new Uint8Array(16);
  private readonly scratch32 = new Uint32Array(this.scratch.buffer);

  constructor(
    private readonly addon: UdpBatchAddon,
    private readonly family: 'udp4' | 'udp6',
    private readonly receive: DatagramReceiver,
    private readonly stats: BeaconStats,
    options: BatchOptions = {},
  ) {
    this.batch = options.batch ?? BATCH;
    this.slot = options.slotBytes ?? SLOT_BYTES;
    this.words = addon.RECORD_WORDS;
    this.sendWords = addon.SEND_WORDS;
    // allocUnsafeSlow: own ArrayBuffers, 4-aligned, pages untouched until the kernel writes them.
    this.recvArea = Buffer.allocUnsafeSlow(this.batch * this.slot);
    this.records = Buffer.allocUnsafeSlow(this.batch * this.words * 4);
    this.records32 = new Uint32Array(this.records.buffer, this.records.byteOffset, this.batch * this.words);
    this.sendArea = Buffer.allocUnsafeSlow(SEND_AREA_BYTES);
    this.sends = Buffer.allocUnsafeSlow(SEND_RECORDS * this.sendWords * 4);
    this.sends32 = new Uint32Array(this.sends.buffer, this.sends.byteOffset, SEND_RECORDS * this.sendWords);
    const results = Buffer.allocUnsafeSlow(3 * 4);
    this.results32 = new Uint32Array(results.buffer, results.byteOffset, 3);
    this.resultsBuffer = results;
  }

  async bind(host: string, port: number, reusePort = false): Promise<AddressInfo> {
    const version = this.family === 'udp6' ? 6 : 4;
    const address = isIP(host) !== 0 ? host : (await lookup(host, { family: version })).address;
    const bytes = addressBytes(address, version);
    if (!bytes) throw Object.assign(new Error(`${address} is not an IPv${version} address`), { code: 'EADDRNOTAVAIL' });
    this.handle = this.addon.open(
      version, bytes, port, reusePort, UDP_RECV_BUFFER_BYTES, UDP_SEND_BUFFER_BYTES, this.batch, this.slot,
      this.recvArea, this.records, this.sendArea, this.sends, this.resultsBuffer, this.onBatch,
    );
    return { address, family: version === 6 ? 'IPv6' : 'IPv4', port: this.addon.localPort(this.handle) };
  }

  send(packet: Buffer, to: UdpEndpoint): void {
    if (!this.handle) return;
    const length = packet.length;
    let area = 0;
    let offset: number;
    if (this.inBatch && packet.buffer === this.recvArea.buffer) {
      // A slice of the batch being handled: the area holds it until the flush at the batch's end.
      area = 1;
      offset = packet.byteOffset - this.recvArea.byteOffset;
    } else {
      if (length > SEND_AREA_BYTES) return this.stats.drop('udp_send_error');
      if (this.sendAt + length > SEND_AREA_BYTES) this.flush();
      offset = this.sendAt;
      this.sendArea.set(packet, offset);
      this.sendAt += length;
    }
    const dest = this.destinationOf(to.address);
    if (!dest) return this.stats.drop('udp_send_error');
    const s = this.sends32;
    const at = this.queued * this.sendWords;
    s[at] = area;
    s[at + 1] = offset;
    s[at + 2] = length;
    s[at + 3] = to.port;
    s[at + 4] = dest[0]!;
    s[at + 5] = dest[1]!;
    s[at + 6] = dest[2]!;
    s[at + 7] = dest[3]!;
    if (++this.queued === SEND_RECORDS) this.flush();
    else if (!this.inBatch && !this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushAtTurnEnd);
    }
  }

  close(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    this.queued = 0;
    this.sendAt = 0;
    if (handle) this.addon.close(handle);
    return Promise.resolve();
  }

  /** One call per recvmmsg: every datagram to the receiver, then the batch's sends in one sendmmsg. */
  private readonly onBatch = (count: number): void => {
    const r = this.records32;
    const words = this.words;
    const slot = this.slot;
    const area = this.recvArea;
    const receive = this.receive;
    this.inBatch = true;
    for (let i = 0; i < count && this.handle; i++) {
      const at = i * words;
      if (r[at + 1] !== 0) {
        this.stats.drop('udp_truncated');
        continue;
      }
      const start = i * slot;
      receive(area.subarray(start, start + r[at]!), this.sourceAddress(at), r[at + 3]!);
    }
    this.inBatch = false;
    this.flush();
  };

  private readonly flushAtTurnEnd = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  private flush(): void {
    const count = this.queued;
    if (count === 0 || !this.handle) return;
    this.queued = 0;
    this.sendAt = 0;
    this.addon.flush(this.handle, count);
    const res = this.results32;
    this.stats.udpSent += res[0]!;
    if (res[1] !== 0) this.stats.dropped.udp_send_full += res[1]!;
    if (res[2] !== 0) this.stats.dropped.udp_send_error += res[2]!;
  }

  /** The source of record `at` as dgram names it (IPv4 dotted, IPv6 as libuv formats it). */
  private sourceAddress(at: number): string {
    const r = this.records32;
    const o = at * 4 + 16;
    if (r[at + 2] === 4) {
      const key = r[at + 4]!;
      let name = this.v4Names.get(key);
      if (name === undefined) {
        name = dotted(this.records, o);
        cacheSet(this.v4Names, key, name);
      }
      return name;
    }
    // IPv4-mapped (::ffff:a.b.c.d, every IPv4 source on a dual-stack socket): cached like IPv4.
    if (r[at + 4] === 0 && r[at + 5] === 0 && this.records[o + 8] === 0 && this.records[o + 9] === 0
      && this.records[o + 10] === 0xff && this.records[o + 11] === 0xff) {
      const key = r[at + 7]!;
      let name = this.v4MappedNames.get(key);
      if (name === undefined) {
        name = `::ffff:${dotted(this.records, o + 12)}`;
        cacheSet(this.v4MappedNames, key, name);
      }
      return name;
    }
    const textAt = at * 4 + 36;
    return this.records.toString('latin1', textAt, textAt + r[at + 8]!);
  }

  /** A destination's address bytes as the four words of a send record; undefined if it is no address of this family. */
  private destinationOf(address: string): Uint32Array | undefined {
    let words = this.destWords.get(address);
    if (words === undefined) {
      const bytes = addressBytes(address, this.family === 'udp6' ? 6 : 4);
      if (!bytes) return undefined;
      this.scratch.set(bytes);
      words = Uint32Array.from(this.scratch32);
      cacheSet(this.destWords, address, words);
    }
    return words;
  }
}

function dotted(bytes: Buffer, at: number): string {
  return `${bytes[at]}.${bytes[at + 1]}.${bytes[at + 2]}.${bytes[at + 3]}`;
}

function cacheSet<K, V>(cache: { readonly size: number; clear(): void; set(key: K, value: V): unknown }, key: K, value: V): void {
  if (cache.size >= ADDRESS_CACHE_MAX) cache.clear();
  cache.set(key, value);
}
