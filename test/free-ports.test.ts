/**
 * The tests' port picker (test/helpers/free-ports.ts): a port handed to a
 * server started as another process is never handed out twice in one test
 * process. The kernel does give a just-closed number to the next bind of
 * port 0 (7 repeats in 300 picks here), and a nats-server given one number
 * for two of its ports exited with "address already in use" in CI.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { test } from 'node:test';
import { freeConsecutiveTcpPorts, freeTcpPort, freeTcpUdpPort, freeUdpPort } from './helpers/free-ports';

const PICKS = 300;

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

function canBindUdp(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', () => { socket.close(); resolve(false); });
    socket.bind(port, '127.0.0.1', () => socket.close(() => resolve(true)));
  });
}

test(`${PICKS} TCP picks in a row are all different, and each can be listened on`, async () => {
  const ports: number[] = [];
  for (let i = 0; i < PICKS; i++) ports.push(await freeTcpPort());
  assert.equal(new Set(ports).size, PICKS, 'a TCP port was handed out twice');
  assert.ok(await canListen(ports[PICKS - 1]!));
});

test(`${PICKS} UDP picks in a row are all different, and each can be bound`, async () => {
  const ports: number[] = [];
  for (let i = 0; i < PICKS; i++) ports.push(await freeUdpPort());
  assert.equal(new Set(ports).size, PICKS, 'a UDP port was handed out twice');
  assert.ok(await canBindUdp(ports[PICKS - 1]!));
});

test('a consecutive pair and a TCP+UDP port are free as asked, and no later pick hands out any of them', async () => {
  const base = await freeConsecutiveTcpPorts();
  assert.ok(await canListen(base) && await canListen(base + 1), 'the pair was not free');
  const both = await freeTcpUdpPort();
  assert.ok(await canListen(both) && await canBindUdp(both), 'the TCP+UDP port was not free for both');
  const taken = new Set([base, base + 1, both]);
  for (let i = 0; i < PICKS; i++) {
    const port = await freeTcpPort();
    assert.ok(!taken.has(port), `TCP port ${port} was handed out again`);
  }
  for (let i = 0; i < 50; i++) assert.notEqual(await freeUdpPort(), both, 'the TCP+UDP port was handed out again for UDP');
});
