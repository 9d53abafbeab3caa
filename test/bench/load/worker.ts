/**
 * A load generator process: holds WebSocket and UDP clients of one server
 * (the beacon or the baseline) and drives them on the orchestrator's
 * commands. Never runs in the server's process.
 *
 * - `wssConnect` / `udpOpen` attach clients (real handshake; Discover over
 *   UDP). `storm` opens, authenticates and closes connections as fast as it
 *   can. `run` sends Relay frames along flows (from -> to), both ends held
 *   by this process, for a bounded time.
 * - Flows are closed-loop: a flow never has more than WINDOW_BYTES sent and
 *   not yet received, so no queue builds up in socket buffers and each
 *   measurement starts clean. `ratePerFlow` 0 means as fast as the window
 *   allows (saturation); otherwise frames are offered at that rate and
 *   those that the window or the socket refuse are counted as not sent.
 *   An `openLoop` flow ignores the window (a sender to a slow reader).
 * - Every client counts what it receives and records one-way latency: the
 *   sender stamps CLOCK_MONOTONIC (process.hrtime, the same clock in every
 *   process of the machine) into the payload.
 * - Payload after the Relay header: seq u32, seconds u32, nanoseconds u32,
 *   then zeroes up to the payload size.
 * - `stopRun` ends a running `run` early (a window as long as a storm);
 *   `latencyReset` restarts the latency record without the delivery count
 *   (latency over part of a run, loss over all of it); `prepareSigners`
 *   builds signing keys before a window, so the load core spends the
 *   window on handshakes; `loopWatchStart`/`loopWatchStop` say how long
 *   this process's own loop went without turning (servers/loop-watch.ts),
 *   to tell its delays from the server's.
 */
import dgram from 'node:dgram';
import { BeaconStats } from '../../../lib/metrics';
import { BatchTransport } from '../../../lib/udp/batch-transport';
import { loadUdpBatchAddon } from '../../../lib/native/udp-batch-addon';
import { loadSigners, type Signer } from '../common/identities';
import { serve, sendReady } from '../common/serve';
import { LatencyHistogram } from '../common/stats';
import { loopWatchCommands } from '../servers/loop-watch';
import {
  RawWsClient, clientHeaderBytes, connectAndAuthenticate, writeClientHeader, OPCODE_BINARY, HandshakeError,
} from './raw-ws';

const RELAY_HEADER = 9;
const STAMP_BYTES = 12;
/** Bytes a flow may have in flight (sent, not yet received). */
const WINDOW_BYTES = 64 * 1024;
/** A UDP flow whose receiver got nothing for this long counts its in-flight datagrams as lost. */
const LOSS_TIMEOUT_MS = 50;
/** A WebSocket sender stops writing while its socket holds this much. */
const WSS_HIGH_WATER = 64 * 1024;
/** In rate mode, at most this much of a flow's lag is made up in one tick. */
const MAX_CATCH_UP_MS = 10;
const TICK_MS = 1;
/** A tick stops starting new flows after this long, so receiving is never starved. */
const TICK_BUDGET_MS = 4;
/** A datagram is one syscall: few per flow per tick, so other flows get their turn. */
const UDP_MAX_PER_FLOW_TICK = 32;
/** Frames in one WebSocket write (one syscall) at most. */
const WSS_MAX_BATCH_BYTES = 16 * 1024;

const signers = loadSigners(process.argv[2]!);

/** What one client has received. */
interface Counter {
  received: number;
}

/** One UDP client: it talks to one server only, so `send` takes no address. */
interface UdpLoadSocket {
  send(datagram: Buffer): void;
  close(): void;
}

/**
 * UDP clients use the udp-batch addon (sendmmsg/recvmmsg) where it is built,
 * so that on a shared load core the load side costs less per datagram and
 * can offer more; BENCH_LOAD_UDP_IO=dgram forces dgram sockets.
 */
const loadAddon = process.env.BENCH_LOAD_UDP_IO === 'dgram' ? undefined : loadUdpBatchAddon().addon;

const wssClients = new Map<number, { client: RawWsClient; counter: Counter }>();
const udpClients = new Map<number, { socket: UdpLoadSocket; counter: Counter }>();
const latency = new LatencyHistogram();
let received = 0;
/** hrtime taken once per received chunk: every frame of a chunk arrived together. */
let lastChunk: Buffer | undefined;
let chunkNow: [number, number] = [0, 0];
/** Set by `run` while every flow waits for its window: the next delivery resumes it. */
let wakeRun: (() => void) | undefined;
/** Set by `stopRun`: the running `run` ends at its next tick. */
let stopRequested = false;

function stampLatency(buf: Buffer, stampAt: number, now: [number, number]): void {
  const sec = buf.readUInt32BE(stampAt + 4);
  const ns = buf.readUInt32BE(stampAt + 8);
  latency.record(((now[0] - sec) * 1e9 + (now[1] - ns)) / 1e3);
}

function wake(): void {
  if (!wakeRun) return;
  const w = wakeRun;
  wakeRun = undefined;
  setImmediate(w);
}

/** A WebSocket client's binary frame handler (RelayDeliver: type, sender, then our payload). */
function wssReceiver(counter: Counter) {
  return (_opcode: number, buf: Buffer, start: number, end: number): void => {
    if (buf !== lastChunk) {
      lastChunk = buf;
      chunkNow = process.hrtime();
      wake();
    }
    counter.received++;
    received++;
    if (end - start >= 5 + STAMP_BYTES) stampLatency(buf, start + 5, chunkNow);
  };
}

function udpReceiver(counter: Counter) {
  return (msg: Buffer): void => {
    if (msg[0] !== 0x06) return;
    counter.received++;
    received++;
    if (msg.length >= 5 + STAMP_BYTES) stampLatency(msg, 5, process.hrtime());
    wake();
  };
}

interface ConnectArgs {
  port: number;
  path: string;
  nodeIds: number[];
  concurrency: number;
  localAddresses?: string[];
  badSignature?: boolean;
  timeoutMs?: number;
  /** storm: keep cycling through `nodeIds` until this long has passed (or `maxCount`). */
  durationMs?: number;
  maxCount?: number;
  /** Over TLS, trusting this CA (through Caddy). */
  tlsCa?: string;
}

interface ConnectResult {
  ok: number;
  failed: number;
  errors: Record<string, number>;
  ms: number;
}

/** Runs handshakes with at most `concurrency` in flight; `storm` closes each once authenticated. */
async function handshakes(args: ConnectArgs, storm: boolean): Promise<ConnectResult> {
  const started = performance.now();
  const errors: Record<string, number> = {};
  let ok = 0;
  let failed = 0;
  let next = 0;
  const addresses = args.localAddresses?.length ? args.localAddresses : [undefined];
  const deadline = args.durationMs ? started + args.durationMs : Infinity;
  const count = args.durationMs ? args.maxCount ?? 100_000 : args.nodeIds.length;
  const one = async (): Promise<void> => {
    while (next < count && performance.now() < deadline) {
      const i = next++;
      const nodeId = args.nodeIds[i % args.nodeIds.length]!;
      const counter: Counter = { received: 0 };
      try {
        const client = await connectAndAuthenticate({
          port: args.port, path: args.path, signer: signers.get(nodeId) as Signer,
          localAddress: addresses[i % addresses.length], badSignature: args.badSignature,
          timeoutMs: args.timeoutMs ?? 10_000, onBinary: wssReceiver(counter), tlsCa: args.tlsCa,
        });
        ok++;
        if (storm) {
          client.close();
        } else {
          wssClients.get(nodeId)?.client.socket.destroy();
          wssClients.set(nodeId, { client, counter });
        }
      } catch (err) {
        failed++;
        const code = err instanceof HandshakeError ? err.code : String(err);
        errors[code] = (errors[code] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.concurrency, count) }, one));
  return { ok, failed, errors, ms: performance.now() - started };
}

async function udpOpen(args: { port: number; nodeIds: number[] }): Promise<{ ok: number; ms: number }> {
  const started = performance.now();
  let ok = 0;
  await Promise.all(args.nodeIds.map(async (nodeId) => {
    const counter: Counter = { received: 0 };
    let onDatagram: (msg: Buffer) => void = () => {};
    const socket = loadAddon ? await openBatchClient(args.port, (msg) => onDatagram(msg)) : await openDgramClient(args.port, (msg) => onDatagram(msg));
    const discover = Buffer.alloc(5);
    discover[0] = 0x01;
    discover.writeUInt32BE(nodeId, 1);
    const replied = await new Promise<boolean>((resolve) => {
      const retry = setInterval(() => socket.send(discover), 200);
      const giveUp = setTimeout(() => { clearInterval(retry); resolve(false); }, 3_000);
      onDatagram = () => { onDatagram = () => {}; clearInterval(retry); clearTimeout(giveUp); resolve(true); };
      socket.send(discover);
    });
    onDatagram = udpReceiver(counter);
    udpClients.get(nodeId)?.socket.close();
    udpClients.set(nodeId, { socket, counter });
    if (replied) ok++;
  }));
  return { ok, ms: performance.now() - started };
}

async function openDgramClient(port: number, onDatagram: (msg: Buffer) => void): Promise<UdpLoadSocket> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  // The load side must not be where packets are lost: big buffers.
  socket.setRecvBufferSize(4 * 1024 * 1024);
  socket.setSendBufferSize(1024 * 1024);
  // Connected: the server is the only peer, and sends skip the address lookup.
  await new Promise<void>((resolve) => socket.connect(port, '127.0.0.1', resolve));
  socket.on('error', () => {});
  socket.on('message', onDatagram);
  return { send: (datagram) => socket.send(datagram), close: () => socket.close() };
}

async function openBatchClient(port: number, onDatagram: (msg: Buffer) => void): Promise<UdpLoadSocket> {
  const transport = new BatchTransport(loadAddon!, 'udp4', (msg, address, from) => {
    if (from === port && address === '127.0.0.1') onDatagram(msg);
  }, new BeaconStats());
  await transport.bind('127.0.0.1', 0);
  const server = { address: '127.0.0.1', port, ip: '127.0.0.1' };
  return { send: (datagram) => transport.send(datagram, server), close: () => void transport.close() };
}

interface FlowSpec {
  from: number;
  to: number;
  via: 'wss' | 'udp';
  /** Ignore the window: send as fast as the socket takes (towards a slow reader). */
  openLoop?: boolean;
}

interface RunArgs {
  flows: FlowSpec[];
  payloadBytes: number;
  /** Frames per second per flow; 0 = as fast as the window allows. */
  ratePerFlow: number;
  durationMs: number;
}

interface Flow extends FlowSpec {
  /** Frames the rate asked for so far. */
  offered: number;
  /** Frames actually written. */
  sent: number;
  template: Buffer;
  /** Offset of the payload's first byte in `template`. */
  payloadAt: number;
  mask: Buffer | undefined;
  ws: RawWsClient | undefined;
  udp: UdpLoadSocket | undefined;
  /** The receiving client's counter, and its value when the run began. */
  sink: Counter | undefined;
  sinkBase: number;
  window: number;
  waitingDrain: boolean;
  /** Datagrams given up as lost: no longer in flight. */
  writtenOff: number;
  lastReceived: number;
  lastProgressAt: number;
}

function makeFlow(spec: FlowSpec, payloadBytes: number): Flow {
  const relayLength = RELAY_HEADER + payloadBytes;
  const relay = Buffer.alloc(relayLength);
  relay[0] = 0x05;
  relay.writeUInt32BE(spec.from, 1);
  relay.writeUInt32BE(spec.to, 5);
  // Whichever transport the destination uses, its client here counts deliveries.
  const sink = wssClients.get(spec.to)?.counter ?? udpClients.get(spec.to)?.counter;
  const flow: Flow = {
    ...spec, offered: 0, sent: 0, template: relay, payloadAt: RELAY_HEADER, mask: undefined, ws: undefined, udp: undefined,
    sink, sinkBase: sink?.received ?? 0, window: Math.max(4, Math.floor(WINDOW_BYTES / relayLength)), waitingDrain: false,
    writtenOff: 0, lastReceived: sink?.received ?? 0, lastProgressAt: performance.now(),
  };
  if (spec.via === 'wss') {
    const ws = wssClients.get(spec.from)?.client;
    if (!ws) throw new Error(`no WebSocket client for node ${spec.from}`);
    const header = clientHeaderBytes(relayLength);
    const frame = Buffer.allocUnsafe(header + relayLength);
    writeClientHeader(frame, 0, OPCODE_BINARY, relayLength, ws.mask);
    for (let i = 0; i < relayLength; i++) frame[header + i] = relay[i]! ^ ws.mask[i & 3]!;
    flow.template = frame;
    flow.payloadAt = header + RELAY_HEADER;
    flow.mask = ws.mask;
    flow.ws = ws;
  } else {
    flow.udp = udpClients.get(spec.from)?.socket;
    if (!flow.udp) throw new Error(`no UDP client for node ${spec.from}`);
  }
  return flow;
}

/** Frames the flow may send now: its window minus what is in flight (the socket's room for WebSocket). */
function room(flow: Flow, t: number): number {
  if (flow.ws && (flow.waitingDrain || flow.ws.socket.writableLength >= WSS_HIGH_WATER)) return 0;
  const sink = flow.sink;
  if (flow.openLoop || !sink) return Infinity;
  let inFlight = flow.sent - (sink.received - flow.sinkBase) - flow.writtenOff;
  if (sink.received !== flow.lastReceived) {
    flow.lastReceived = sink.received;
    flow.lastProgressAt = t;
  } else if (flow.udp && inFlight > 0 && t - flow.lastProgressAt > LOSS_TIMEOUT_MS) {
    // Nothing arrived for a while: the datagrams in flight were lost, not queued.
    flow.writtenOff += inFlight;
    inFlight = 0;
    flow.lastProgressAt = t;
  }
  return flow.window - inFlight;
}

/** Writes u32 `value` at `at`, XOR-ed with the mask bytes of payload offset `maskOffset`. */
function putU32(buf: Buffer, at: number, value: number, mask: Buffer | undefined, maskOffset: number): void {
  buf.writeUInt32BE(value >>> 0, at);
  if (mask) for (let k = 0; k < 4; k++) buf[at + k] ^= mask[(maskOffset + k) & 3]!;
}

/** Sends `count` frames of `flow`, stamped `now`. */
function sendFrames(flow: Flow, count: number, now: [number, number]): void {
  const { template, payloadAt, mask } = flow;
  const size = template.length;
  // One buffer per call: a datagram's bytes must stay untouched until it is sent.
  const batch = Buffer.allocUnsafe(size * count);
  for (let j = 0; j < count; j++) {
    const base = j * size;
    template.copy(batch, base);
    putU32(batch, base + payloadAt, flow.sent + j, mask, RELAY_HEADER);
    putU32(batch, base + payloadAt + 4, now[0], mask, RELAY_HEADER + 4);
    putU32(batch, base + payloadAt + 8, now[1], mask, RELAY_HEADER + 8);
    if (flow.udp) flow.udp.send(batch.subarray(base, base + size));
  }
  if (flow.ws && !flow.ws.socket.write(batch)) {
    flow.waitingDrain = true;
    flow.ws.socket.once('drain', () => {
      flow.waitingDrain = false;
      wake();
    });
  }
  flow.sent += count;
}

export interface RunResult {
  offered: number;
  sent: number;
  ms: number;
}

async function run(args: RunArgs): Promise<RunResult> {
  if (args.payloadBytes < STAMP_BYTES) throw new Error(`payload must be at least ${STAMP_BYTES} bytes`);
  const flows = args.flows.map((f) => makeFlow(f, args.payloadBytes));
  const started = performance.now();
  const deadline = started + args.durationMs;
  const saturate = args.ratePerFlow === 0;
  stopRequested = false;
  let first = 0; // flow served first in a tick, rotated for fairness
  await new Promise<void>((resolve) => {
    let safety: NodeJS.Timeout | undefined;
    const tick = () => {
      clearTimeout(safety);
      wakeRun = undefined;
      const t = performance.now();
      if (t >= deadline || stopRequested) return resolve();
      const now = process.hrtime();
      let sentAny = false;
      let behind = false;
      const n = flows.length;
      for (let k = 0; k < n; k++) {
        const flow = flows[(first + k) % n]!;
        if (performance.now() - t > TICK_BUDGET_MS) {
          behind = true;
          first = (first + k) % n;
          break;
        }
        const maxBatch = flow.udp ? UDP_MAX_PER_FLOW_TICK : Math.max(1, Math.floor(WSS_MAX_BATCH_BYTES / flow.template.length));
        let count: number;
        if (saturate) {
          count = Math.min(maxBatch, room(flow, t));
        } else {
          // Flows are spread over the frame interval (phase k/n), not sent in step:
          // bursts of every flow at once would measure queueing of the burst, not the relay.
          const due = Math.floor(args.ratePerFlow * (t - started) / 1000 + ((first + k) % n) / n) - flow.offered;
          if (due <= 0) continue;
          // Lag beyond MAX_CATCH_UP_MS is never made up; what the window or socket refuses is not sent.
          const cap = Math.max(1, Math.ceil(args.ratePerFlow * MAX_CATCH_UP_MS / 1000));
          const skipped = Math.max(0, due - cap);
          const take = Math.min(due - skipped, maxBatch);
          if (take < due - skipped) behind = true;
          flow.offered += skipped + take;
          count = Math.min(take, Math.max(0, room(flow, t)));
        }
        if (count <= 0) continue;
        sendFrames(flow, count, now);
        sentAny = true;
      }
      if (behind || (saturate && sentAny)) {
        setImmediate(tick);
      } else if (saturate) {
        // Every window is full: the next delivery (or drain) resumes; the timer bounds the wait.
        wakeRun = tick;
        safety = setTimeout(tick, 5);
      } else {
        setTimeout(tick, TICK_MS);
      }
    };
    tick();
  });
  wakeRun = undefined;
  const ms = performance.now() - started;
  let offered = 0;
  let sent = 0;
  for (const f of flows) {
    offered += saturate ? f.sent : f.offered; // in saturation, every frame sent was offered
    sent += f.sent;
  }
  return { offered, sent, ms };
}

serve({
  ...loopWatchCommands(),
  wssConnect: (args: ConnectArgs) => handshakes(args, false),
  storm: (args: ConnectArgs) => handshakes(args, true),
  udpOpen,
  run,
  recvReset: () => {
    received = 0;
    latency.reset();
  },
  recvReport: () => ({ received, latency: latency.summary() }),
  latencyReset: () => latency.reset(),
  stopRun: () => {
    stopRequested = true;
    wake();
  },
  prepareSigners: (args: { nodeIds: number[] }) => {
    for (const id of args.nodeIds) signers.get(id)?.prepare();
  },
  pauseReading: (args: { nodeIds: number[] }) => {
    for (const id of args.nodeIds) wssClients.get(id)?.client.socket.pause();
  },
  close: (args: { nodeIds: number[] }) => {
    for (const id of args.nodeIds) {
      wssClients.get(id)?.client.socket.destroy();
      wssClients.delete(id);
    }
  },
  closeAll: () => {
    for (const { client } of wssClients.values()) client.socket.destroy();
    for (const { socket } of udpClients.values()) socket.close();
    wssClients.clear();
    udpClients.clear();
  },
}, () => {
  for (const { client } of wssClients.values()) client.socket.destroy();
});
sendReady();
