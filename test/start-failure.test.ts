/** A start that fails after the beacon bound its sockets leaves nothing open. */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { test } from 'node:test';
import { StartError, startBeacon } from '../lib/beacon';
import { testConfig } from './helpers/harness';
import { freeTcpPort, freeUdpPort } from './helpers/free-ports';

/** Resolves once `port` can be bound again on 127.0.0.1 (TCP), i.e. nobody holds it. */
async function tcpPortIsFree(port: number): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

async function udpPortIsFree(port: number): Promise<void> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, '127.0.0.1', resolve);
  });
  await new Promise<void>((resolve) => socket.close(() => resolve()));
}

test('a start that fails after both sockets listen (a beacon peer that does not resolve) closes them both', async () => {
  const [httpPort, udpPort] = [await freeTcpPort(), await freeUdpPort()];
  const config = testConfig({
    bind: { host: '127.0.0.1', port: httpPort }, udp: { host: '127.0.0.1', port: udpPort },
    beaconId: 1, peers: [{ host: 'no-such-beacon.invalid', port: 9001 }],
  });
  await assert.rejects(startBeacon(config), (err: unknown) => err instanceof StartError && err.code === 'EPEERRESOLVE');
  await tcpPortIsFree(httpPort);
  await udpPortIsFree(udpPort);
});

test('a start that fails on the UDP socket closes the HTTP listener it had opened', async () => {
  const httpPort = await freeTcpPort();
  const taken = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => taken.bind(0, '127.0.0.1', resolve));
  try {
    const config = testConfig({ bind: { host: '127.0.0.1', port: httpPort }, udp: { host: '127.0.0.1', port: taken.address().port } });
    await assert.rejects(startBeacon(config), (err: unknown) => err instanceof StartError && err.code === 'EADDRINUSE');
    await tcpPortIsFree(httpPort);
  } finally {
    taken.close();
  }
});
