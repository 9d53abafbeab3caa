/**
 * Everything the soak does to one beacon at once, each part bounded in rate
 * and in sockets held:
 *
 * - well-behaved relays on every route, numbered, so a lost one is seen:
 *   WebSocket->WebSocket, WebSocket->UDP, UDP->WebSocket, UDP->UDP,
 *   WebSocket->peer beacon and peer beacon->WebSocket (a fake peer beacon
 *   that sends Sync);
 * - churn: connects, handshakes (keys file and registry nodes), replacements
 *   and disconnects;
 * - keys reloads: a key rotated every few seconds (its peer is revoked), an
 *   invalid file now and then (kept out), SIGHUP;
 * - a registry that flaps: up, refusing connections, silent;
 * - a slow reader that never reads, fed by a sender (its frames are dropped,
 *   it is disconnected as idle, it comes back);
 * - bad handshakes (wrong key, wrong nonce, binary, garbage, oversized,
 *   silent) and malformed UDP, including Syncs from strangers.
 *
 * Outcomes that must never happen (a bad handshake accepted, a good one
 * refused while nothing explains it) are counted as `unexpected`, by kind,
 * with the first few of each kind kept as examples. A handshake the soak
 * itself answered too late (its process starved on a busy machine: longer
 * than the beacon's auth timeout) explains a refusal; it is counted
 * (`lateClientRefusals`), not failed.
 */
import { randomBytes } from 'node:crypto';
import type dgram from 'node:dgram';
import { renameSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import type WebSocket from 'ws';
import {
  PacketType, encodeDiscover, encodeRelay, encodeSync,
} from '../../lib/protocol';
import { startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry';
import { makeIdentity, type TestIdentity } from '../helpers/identity';
import { connectCompat, openUdp, type CompatConnection, type ReplyStyle } from './clients';

/** Relays per stream per tick, and the tick. */
const STREAM_BURST = 10;
const TICK_MS = 100;
const STREAM_PAYLOAD_BYTES = 64;
/** Payload marker of a numbered relay; anything else a receiver sees is noise. */
const MAGIC = 0xb5;
/** Sockets the churn keeps open at most. */
const CHURN_MAX_OPEN = 80;
/** The slow reader lives this long (paused) before it gives up and reconnects. */
// Longer than the beacon's idle drop takes (30 s --idle-timeout, found by a sweep every
// 10 s, so up to ~40 s after the handshake): at 40 s the reader was sometimes gone first.
const SLOW_READER_LIFE_MS = 50_000;
const SLOW_FEED_PER_TICK = 80;
const SLOW_FEED_BYTES = 1024;

/** Node ID ranges, so every ID says what it is. */
const IDS = {
  wellBehaved: 1000,
  udp: 2000,
  remote: 3000,
  churnFile: 10_000,
  churnRegistry: 20_000,
  rotating: 30_000,
  slow: 40_000,
  unknown: 50_000,
};
const CHURN_FILE_COUNT = 300;
const CHURN_REGISTRY_COUNT = 50;
const ROTATING_COUNT = 10;
const BEACON_ID_OF_FAKE_PEER = 2;

export interface Stream {
  name: string;
  sent: number;
  received: number;
}

export interface LoadCounts {
  churnConnects: number;
  churnOk: number;
  replacements: number;
  revocationsSeen: number;
  badHandshakes: number;
  slowReaderCycles: number;
  keysRotations: number;
  invalidKeysFiles: number;
  sighups: number;
  registryFlaps: number;
  udpNoise: number;
  lateClientRefusals: number;
  /** Kind -> how many, and the first examples. */
  unexpected: Map<string, { count: number; examples: string[] }>;
}

export interface LoadOptions {
  keysPath: string;
  /** The beacon's --auth-timeout. */
  authTimeoutMs: number;
  /** Sends a signal to the beacon (SIGHUP reloads the keys file). */
  signal: (name: NodeJS.Signals) => void;
}

/** Set up before the beacon starts (it needs their addresses), started after. */
export class SoakLoad {
  readonly streams: Stream[] = [];
  readonly counts: LoadCounts = {
    churnConnects: 0, churnOk: 0, replacements: 0, revocationsSeen: 0, badHandshakes: 0, slowReaderCycles: 0,
    keysRotations: 0, invalidKeysFiles: 0, sighups: 0, registryFlaps: 0, udpNoise: 0, lateClientRefusals: 0, unexpected: new Map(),
  };
  private readonly wellBehaved = range(6, (i) => makeIdentity(IDS.wellBehaved + i));
  private readonly churnFile = range(CHURN_FILE_COUNT, (i) => makeIdentity(IDS.churnFile + i));
  private readonly churnRegistry = range(CHURN_REGISTRY_COUNT, (i) => makeIdentity(IDS.churnRegistry + i));
  private readonly rotating = range(ROTATING_COUNT, (i) => makeIdentity(IDS.rotating + i));
  private readonly slow = makeIdentity(IDS.slow);
  private readonly flooder = makeIdentity(IDS.slow + 1);
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly open = new Set<WebSocket>();
  private readonly udpSockets: dgram.Socket[] = [];
  private url = '';
  private udpPort = 0;
  private running = false;
  private registry!: FakeRegistry;
  private registryGate!: RegistryGate;
  private peerBeacon!: dgram.Socket;
  /** Sends malformed datagrams and strangers' Syncs. */
  private noise: dgram.Socket | undefined;
  private churnOpen = 0;
  /** Rotating nodes with an authenticated churn connection open. */
  private readonly attachedRotating = new Set<number>();
  private keysBroken = false;

  constructor(private readonly options: LoadOptions) {}

  /** Writes the keys file and starts the registry and the fake peer beacon. */
  async prepare(): Promise<{ registryPort: number; peerBeaconPort: number }> {
    this.writeKeys();
    const registryKeys = new Map(this.churnRegistry.map((id) => [id.nodeId, id.publicKeyB64]));
    this.registry = await startFakeRegistry(registryKeys);
    this.registryGate = await RegistryGate.start(this.registry.port);
    this.peerBeacon = await openUdp((msg) => this.onPeerBeaconDatagram(msg));
    this.udpSockets.push(this.peerBeacon);
    return { registryPort: this.registryGate.port, peerBeaconPort: this.peerBeacon.address().port };
  }

  /** Starts every workload against the beacon at these ports. */
  async start(httpPort: number, udpPort: number): Promise<void> {
    this.url = `ws://127.0.0.1:${httpPort}/v1/compat`;
    this.udpPort = udpPort;
    this.running = true;
    await this.startStreams();
    this.every(TICK_MS / 2, () => this.churnOne());
    this.every(250, () => this.badHandshake());
    this.every(4_000, () => this.rotateKey());
    this.every(30_000, () => this.breakKeysFileBriefly());
    this.every(20_000, () => { this.counts.sighups++; this.options.signal('SIGHUP'); });
    this.every(TICK_MS, () => this.udpNoise());
    this.flapRegistry();
    this.slowReaderCycle();
  }

  /** Stops sending and closes every socket; waits for relays in flight. */
  async stop(drainMs = 5_000): Promise<void> {
    this.running = false;
    for (const timer of this.timers) clearInterval(timer);
    const deadline = Date.now() + drainMs;
    while (Date.now() < deadline && this.streams.some((s) => s.received < s.sent)) await sleep(50);
    for (const ws of this.open) ws.terminate();
    for (const socket of this.udpSockets) socket.close();
    await this.registryGate.stop();
    await this.registry.stop();
  }

  // ---- well-behaved relays on every route ---------------------------------

  private async startStreams(): Promise<void> {
    const [a1, a2, a3, b1, b2, b3] = this.wellBehaved as [TestIdentity, TestIdentity, TestIdentity, TestIdentity, TestIdentity, TestIdentity];
    const ws = async (id: TestIdentity) => {
      const conn = connectCompat(this.url, id, 'valid', (data) => this.onDelivered(data));
      this.track(conn);
      const end = await conn.handshake;
      if (!end.ok) throw new Error(`well-behaved node ${id.nodeId} was refused: ${end.code} ${end.reason}`);
      // A daemon's keepalive: a Discover every few seconds, as well-behaved daemons send.
      this.every(5_000, () => conn.ws.send(encodeDiscover(id.nodeId)));
      void conn.closed.then((code) => {
        if (this.running) this.unexpected('well-behaved disconnected', `well-behaved node ${id.nodeId} was disconnected with ${code}`);
      });
      return conn.ws;
    };
    const [wa1, wa2, wa3] = await Promise.all([ws(a1), ws(a2), ws(a3), ws(b1), ws(b2), ws(b3)]);
    const udp = await Promise.all(range(4, () => openUdp((msg) => this.onDelivered(msg))));
    this.udpSockets.push(...udp);
    const [, u2, u3] = udp as [dgram.Socket, dgram.Socket, dgram.Socket, dgram.Socket];
    this.noise = await openUdp(() => {});
    this.udpSockets.push(this.noise);
    const udpIds = [IDS.udp, IDS.udp + 1, IDS.udp + 2, IDS.udp + 3];
    const discover = () => udp.forEach((socket, i) => socket.send(encodeDiscover(udpIds[i]!), this.udpPort, '127.0.0.1'));
    discover();
    this.every(2_000, discover);
    const announce = () => this.peerBeacon.send(encodeSync(BEACON_ID_OF_FAKE_PEER, [IDS.remote]), this.udpPort, '127.0.0.1');
    announce();
    this.every(2_000, announce);
    await sleep(300); // the Discovers and the Sync land before the first relay

    this.stream('wss->wss', a1.nodeId, b1.nodeId, (p) => wa1.send(p));
    this.stream('wss->udp', a2.nodeId, udpIds[0]!, (p) => wa2.send(p));
    this.stream('udp->wss', udpIds[1]!, b2.nodeId, (p) => this.udpSend(u2, p));
    this.stream('udp->udp', udpIds[2]!, udpIds[3]!, (p) => this.udpSend(u3, p));
    this.stream('wss->beacon', a3.nodeId, IDS.remote, (p) => wa3.send(p));
    this.stream('beacon->wss', IDS.remote + 1, b3.nodeId, (p) => this.udpSend(this.peerBeacon, p));
  }

  private stream(name: string, sender: number, dest: number, send: (packet: Buffer) => void): void {
    const index = this.streams.length;
    const stream: Stream = { name, sent: 0, received: 0 };
    this.streams.push(stream);
    this.every(TICK_MS, () => {
      for (let i = 0; i < STREAM_BURST; i++) {
        const payload = Buffer.alloc(STREAM_PAYLOAD_BYTES);
        payload[0] = MAGIC;
        payload[1] = index;
        payload.writeUInt32BE(stream.sent, 2);
        stream.sent++;
        send(encodeRelay(sender, dest, payload));
      }
    });
  }

  /** A RelayDeliver at a daemon, or a forwarded Relay at the peer beacon. */
  private onDelivered(data: Buffer): void {
    const offset = data[0] === PacketType.RelayDeliver ? 5 : data[0] === PacketType.Relay ? 9 : -1;
    if (offset < 0 || data.length !== offset + STREAM_PAYLOAD_BYTES || data[offset] !== MAGIC) return;
    const stream = this.streams[data[offset + 1]!];
    if (stream) stream.received++;
  }

  private onPeerBeaconDatagram(msg: Buffer): void {
    if (msg[0] === PacketType.Relay) this.onDelivered(msg);
  }

  private udpSend(socket: dgram.Socket, packet: Buffer): void {
    socket.send(packet, this.udpPort, '127.0.0.1');
  }

  // ---- churn ----------------------------------------------------------------

  private churnOne(): void {
    if (this.churnOpen >= CHURN_MAX_OPEN) return;
    const fromRegistry = Math.random() < 0.2;
    const rotating = !fromRegistry && Math.random() < 0.1;
    const pool = fromRegistry ? this.churnRegistry : rotating ? this.rotating : this.churnFile;
    const id = pick(pool);
    this.counts.churnConnects++;
    const conn = this.openTracked(id, 'valid');
    const t0 = Date.now();
    void conn.handshake.then(async (end) => {
      if (!end.ok) {
        if (!this.running) return; // the soak closed it
        // A registry node may be refused while the registry is down or
        // silent; a rotating node when its key changed mid-handshake.
        const explained = (fromRegistry && end.code === 1008) || (rotating && end.code === 1008);
        if (explained) return;
        if (this.tooLate(conn)) return;
        this.unexpected('churn refused', `churn node ${id.nodeId} refused: ${end.code} ${end.reason} after ${Date.now() - t0} ms`);
        return;
      }
      this.counts.churnOk++;
      if (rotating) {
        this.attachedRotating.add(id.nodeId);
        void conn.closed.then(() => this.attachedRotating.delete(id.nodeId));
      }
      conn.ws.send(encodeDiscover(id.nodeId));
      conn.ws.send(encodeRelay(id.nodeId, pick(this.churnFile).nodeId, Buffer.from('churn')));
      if (Math.random() < 0.15) {
        this.counts.replacements++;
        this.openTracked(id, 'valid'); // replaces this one (4001), then lives its own life
      }
      await sleep(200 + Math.random() * 2_800);
      if (conn.ws.readyState === conn.ws.OPEN) conn.ws.close(1000);
    });
    void conn.closed.then((code) => {
      if (code === 1008 && rotating) this.counts.revocationsSeen++;
    });
  }

  private openTracked(id: TestIdentity, style: ReplyStyle, other?: TestIdentity): CompatConnection {
    const conn = connectCompat(this.url, id, style, undefined, other);
    this.churnOpen++;
    void conn.closed.then(() => { this.churnOpen--; });
    this.track(conn);
    // Nothing here holds a socket forever: the beacon's auth timeout, the
    // churn's own close, or this backstop ends it.
    const backstop = setTimeout(() => { conn.expired = true; conn.ws.terminate(); }, 20_000);
    void conn.closed.then(() => clearTimeout(backstop));
    return conn;
  }

  private track(conn: CompatConnection): void {
    this.open.add(conn.ws);
    void conn.closed.then(() => this.open.delete(conn.ws));
  }

  // ---- bad handshakes and malformed UDP -------------------------------------

  private static readonly BAD_STYLES: readonly ReplyStyle[] = ['wrong_key', 'wrong_nonce', 'binary', 'garbage', 'oversized', 'silent'];

  private badHandshake(): void {
    if (this.churnOpen >= CHURN_MAX_OPEN) return;
    const style = pick(SoakLoad.BAD_STYLES);
    const unknown = Math.random() < 0.2;
    const id = unknown ? makeIdentity(IDS.unknown + Math.floor(Math.random() * 1000)) : pick(this.churnFile);
    this.counts.badHandshakes++;
    const conn = this.openTracked(id, unknown ? 'valid' : style, pick(this.rotating));
    // An oversized first message meets the handshake budget (4 KiB: 1008) or,
    // when its header came alone in the first read, the 64 KiB limit (1009).
    const expected = style === 'oversized' && !unknown ? [1008, 1009] : [1008];
    void conn.handshake.then((end) => {
      if (!this.running) return; // the soak closed it
      if (end.ok) this.unexpected('bad handshake accepted', `a bad handshake (${unknown ? 'unknown node' : style}) was accepted`);
      else if (!expected.includes(end.code) && end.code !== 1006) {
        if (this.tooLate(conn)) return;
        this.unexpected('bad handshake code', `a bad handshake (${unknown ? 'unknown node' : style}) ended with ${end.code}, expected ${expected.join(' or ')}`);
      }
    });
  }

  private udpNoise(): void {
    const socket = this.noise;
    if (!socket) return;
    this.counts.udpNoise++;
    socket.send(randomBytes(1 + Math.floor(Math.random() * 40)), this.udpPort, '127.0.0.1');
    if (Math.random() < 0.1) socket.send(encodeSync(99, [IDS.wellBehaved]), this.udpPort, '127.0.0.1'); // a stranger's Sync
  }

  // ---- keys file -------------------------------------------------------------

  private writeKeys(content?: string): void {
    const all = [...this.wellBehaved, ...this.churnFile, ...this.rotating, this.slow, this.flooder];
    const text = content ?? JSON.stringify(Object.fromEntries(all.map((id) => [String(id.nodeId), id.publicKeyB64])), null, 1);
    const temp = `${this.options.keysPath}.${randomBytes(4).toString('hex')}.tmp`;
    writeFileSync(temp, text);
    renameSync(temp, this.options.keysPath);
  }

  /** A new key for one rotating node: its attached peer (if any) is revoked. */
  private rotateKey(): void {
    if (this.keysBroken) return;
    // Mostly a node that is attached now, so the rotation revokes a peer.
    const attached = [...this.attachedRotating];
    const i = attached.length > 0 && Math.random() < 0.8
      ? attached[Math.floor(Math.random() * attached.length)]! - IDS.rotating
      : Math.floor(Math.random() * this.rotating.length);
    this.rotating[i] = makeIdentity(this.rotating[i]!.nodeId);
    this.counts.keysRotations++;
    this.writeKeys();
  }

  /** An invalid keys file for a second: the beacon keeps the keys it has. */
  private breakKeysFileBriefly(): void {
    this.keysBroken = true;
    this.counts.invalidKeysFiles++;
    this.writeKeys('{"1": "not a key", ');
    this.later(1_000, () => {
      this.writeKeys();
      this.keysBroken = false;
    });
  }

  // ---- registry that flaps ---------------------------------------------------

  /** Up 15 s, refusing connections 8 s, silent 7 s; round again. */
  private flapRegistry(): void {
    const cycle = () => {
      if (!this.running) return;
      this.registryGate.mode = 'up';
      this.registry.neverAnswer = false;
      this.later(15_000, () => {
        this.counts.registryFlaps++;
        this.registryGate.mode = 'refuse';
        this.later(8_000, () => {
          this.registryGate.mode = 'up';
          this.registry.neverAnswer = true;
          this.later(7_000, () => {
            this.registry.dropConnections();
            cycle();
          });
        });
      });
    };
    cycle();
  }

  // ---- a slow reader ---------------------------------------------------------

  private async slowReaderCycle(): Promise<void> {
    const feeder = connectCompat(this.url, this.flooder, 'valid');
    this.track(feeder);
    if (!(await feeder.handshake).ok) return this.unexpected('slow reader refused', 'the slow reader\'s feeder was refused');
    const filler = Buffer.alloc(SLOW_FEED_BYTES, 0x5a);
    this.every(TICK_MS, () => {
      for (let i = 0; i < SLOW_FEED_PER_TICK; i++) feeder.ws.send(encodeRelay(this.flooder.nodeId, this.slow.nodeId, filler));
    });
    const cycle = async () => {
      if (!this.running) return;
      this.counts.slowReaderCycles++;
      const reader = connectCompat(this.url, this.slow, 'valid');
      this.track(reader);
      const end = await reader.handshake;
      if (!end.ok) this.unexpected('slow reader refused', `the slow reader was refused: ${end.code}`);
      // Stop reading: the beacon's queue to it fills, then it is idle and dropped.
      (reader.ws as unknown as { _socket?: net.Socket })._socket?.pause();
      this.later(SLOW_READER_LIFE_MS, () => {
        reader.ws.terminate();
        void cycle();
      });
    };
    await cycle();
  }

  // ---- bookkeeping -----------------------------------------------------------

  private every(ms: number, fn: () => void): void {
    this.timers.push(setInterval(() => { if (this.running) fn(); }, ms));
  }

  private later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => { if (this.running) fn(); }, ms);
    this.timers.push(timer);
  }

  /**
   * The soak's own process was too slow to blame the beacon: it never
   * answered the challenge, answered more than half the auth timeout after
   * the upgrade, or its backstop closed the socket. A beacon that stalls a
   * handshake the client answered promptly is still a failure.
   */
  private tooLate(conn: CompatConnection): boolean {
    const answeredIn = conn.repliedAt !== undefined && conn.openedAt !== undefined ? conn.repliedAt - conn.openedAt : Infinity;
    if (!conn.expired && answeredIn <= this.options.authTimeoutMs / 2) return false;
    this.counts.lateClientRefusals++;
    return true;
  }

  private unexpected(kind: string, what: string): void {
    const entry = this.counts.unexpected.get(kind) ?? { count: 0, examples: [] };
    entry.count++;
    if (entry.examples.length < 5) entry.examples.push(what);
    this.counts.unexpected.set(kind, entry);
  }
}

/**
 * A TCP gate in front of the fake registry: `up` passes connections
 * through, `refuse` resets them at once (a registry that is down).
 */
class RegistryGate {
  mode: 'up' | 'refuse' = 'up';
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(targetPort: number): Promise<RegistryGate> {
    let gate: RegistryGate | undefined;
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      if (!gate || gate.mode === 'refuse') {
        socket.resetAndDestroy();
        return;
      }
      const upstream = net.connect(targetPort, '127.0.0.1');
      upstream.on('error', () => socket.destroy());
      socket.on('close', () => upstream.destroy());
      upstream.on('close', () => socket.destroy());
      socket.pipe(upstream).pipe(socket);
      gate.sockets.add(socket);
      socket.on('close', () => gate?.sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    gate = new RegistryGate(server, (server.address() as net.AddressInfo).port);
    return gate;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function range<T>(n: number, fn: (i: number) => T): T[] {
  return Array.from({ length: n }, (_, i) => fn(i));
}

function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)]!;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
