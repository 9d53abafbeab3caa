/**
 * The BASELINE: a relay written the way a user would write one in an
 * afternoon, speaking the same packets as the beacon so the same load
 * generators drive both.
 *
 * - WebSocket: a `ws` WebSocketServer with default options, a Map of
 *   sockets by node ID, and one `send` per frame. "Auth" is reading the
 *   node_id of the auth_reply: no signature check, no limits.
 * - UDP: a `dgram` socket, a Map of endpoints from Discover, one `send`
 *   per packet, addressed by IP and port.
 * - Relay: build a fresh RelayDeliver and send it to the WebSocket peer, or
 *   else the UDP endpoint, of the destination.
 *
 * Deliberately plain: it is the yardstick, not a second beacon.
 */
import dgram from 'node:dgram';
import { WebSocketServer, type WebSocket } from 'ws';
import { serve, sendReady } from '../common/serve';
import { writeHeapSnapshot } from 'node:v8';
import { collect } from './memory';

const sockets = new Map<number, WebSocket>();
const endpoints = new Map<number, { address: string; port: number }>();
const counters = { framesIn: 0, framesOut: 0, udpIn: 0, udpOut: 0, dropped: 0 };

function relayDeliver(relay: Buffer): Buffer {
  const out = Buffer.alloc(relay.length - 4);
  out[0] = 0x06;
  relay.copy(out, 1, 1, 5); // sender
  relay.copy(out, 5, 9); // payload
  return out;
}

function relay(packet: Buffer): void {
  const dest = packet.readUInt32BE(5);
  const ws = sockets.get(dest);
  if (ws) {
    ws.send(relayDeliver(packet));
    counters.framesOut++;
    return;
  }
  const ep = endpoints.get(dest);
  if (ep) {
    udp.send(relayDeliver(packet), ep.port, ep.address);
    counters.udpOut++;
    return;
  }
  counters.dropped++;
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
wss.on('connection', (ws) => {
  let nodeId = 0;
  ws.send(JSON.stringify({ type: 'auth_challenge', nonce: '00'.repeat(32) }));
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      nodeId = JSON.parse(data.toString()).node_id;
      sockets.set(nodeId, ws);
      ws.send(JSON.stringify({ type: 'auth_ok' }));
      return;
    }
    counters.framesIn++;
    const packet = data as Buffer;
    if (packet[0] === 0x05) relay(packet);
  });
  ws.on('close', () => {
    if (sockets.get(nodeId) === ws) sockets.delete(nodeId);
  });
});

const udp = dgram.createSocket('udp4');
udp.on('message', (msg, rinfo) => {
  counters.udpIn++;
  if (msg[0] === 0x01) {
    endpoints.set(msg.readUInt32BE(1), { address: rinfo.address, port: rinfo.port });
    const reply = Buffer.alloc(8);
    reply[0] = 0x02;
    reply[1] = 4;
    rinfo.address.split('.').forEach((octet, i) => { reply[2 + i] = Number(octet); });
    reply.writeUInt16BE(rinfo.port, 6);
    udp.send(reply, rinfo.port, rinfo.address);
  } else if (msg[0] === 0x05) {
    relay(msg);
  }
});

udp.bind(0, '127.0.0.1', () => {
  wss.once('listening', ready);
  if (wss.address()) ready();
});

let started = false;
function ready(): void {
  if (started) return;
  started = true;
  serve({
    stats: () => ({ stats: counters, peers: sockets.size, memory: process.memoryUsage() }),
    gc: () => collect(),
    heapSnapshot: (args: { file: string }) => writeHeapSnapshot(args.file),
  }, () => new Promise<void>((resolve) => {
    for (const ws of sockets.values()) ws.terminate();
    udp.close();
    wss.close(() => resolve());
  }));
  const address = wss.address();
  sendReady({ http: typeof address === 'object' && address ? address.port : 0, udp: udp.address().port });
}
