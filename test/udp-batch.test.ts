/**
 * The batched transport (lib/udp/batch-transport.ts) and the udp-batch addon
 * below it, with real sockets on 127.0.0.1: truncation, close while a batch
 * is being handled, many starts and stops, and the addon's bounds checks.
 * The UDP and relay-route suites cover the beacon on both transports.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { readdirSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { BeaconStats } from '../lib/metrics';
import { BatchTransport } from '../lib/udp/batch-transport';
import { loadUdpBatchAddon, type UdpBatchAddon } from '../lib/native/udp-batch-addon';
import { eventually, udpClientFor } from './helpers/harness';

function addon(): UdpBatchAddon {
  const { addon: loaded, error } = loadUdpBatchAddon();
  if (!loaded) throw new Error(`the udp-batch addon did not load (${error}): run npm rebuild @beacon/udp-batch`);
  return loaded;
}

interface Received { msg: Buffer; address: string; port: number }

async function transport(
  t: TestContext, onDatagram: (got: Received, transport: BatchTransport) => void = () => {},
  options: { slotBytes?: number } = {},
): Promise<{ transport: BatchTransport; port: number; stats: BeaconStats; got: Received[] }> {
  const stats = new BeaconStats();
  const got: Received[] = [];
  const tr: BatchTransport = new BatchTransport(addon(), 'udp4', (msg, address, port) => {
    const copy = { msg: Buffer.from(msg), address, port };
    got.push(copy);
    onDatagram(copy, tr);
  }, stats, options);
  const { port } = await tr.bind('127.0.0.1', 0);
  t.after(() => tr.close());
  return { transport: tr, port, stats, got };
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

test('a datagram larger than its slot is dropped and counted udp_truncated; the next one is delivered', async (t) => {
  const { port, stats, got } = await transport(t, undefined, { slotBytes: 1024 });
  const client = await udpClientFor(t);
  client.send(Buffer.alloc(1025, 1), port);
  client.send(Buffer.alloc(1024, 2), port);
  await eventually(() => got.length === 1, 3_000, 'the datagram that fits');
  assert.equal(stats.dropped.udp_truncated, 1);
  assert.ok(got[0]!.msg.equals(Buffer.alloc(1024, 2)));
  assert.equal(got[0]!.address, '127.0.0.1');
  assert.equal(got[0]!.port, client.port);
});

test('close while a batch is handled: no datagram after it, no send from it, and the port is free at once', async (t) => {
  let closedAt = -1;
  const { transport: tr, port, stats, got } = await transport(t, (_got, self) => {
    if (closedAt < 0) {
      closedAt = got.length;
      void self.close();
      self.send(Buffer.from('after close'), { address: '127.0.0.1', port: client.port, ip: '127.0.0.1' });
    }
  });
  const client = await udpClientFor(t);
  // Many datagrams queued before the transport reads: its first batch holds several.
  for (let i = 0; i < 40; i++) client.send(Buffer.from([i]), port);
  await eventually(() => closedAt > 0, 3_000, 'the first datagram');
  // Give the loop several turns: nothing more may arrive.
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(got.length, 1, 'only the datagram whose handler closed the transport');
  assert.equal(stats.udpSent, 0);
  await client.expectNothing(100);
  void tr; // closed in the handler; t.after's close is a no-op
  const again = dgram.createSocket('udp4');
  t.after(() => again.close());
  await new Promise<void>((resolve, reject) => {
    again.once('error', reject);
    again.bind(port, '127.0.0.1', () => resolve());
  });
});

test('sends from a batch go out with it; sends from elsewhere leave by the end of the turn', async (t) => {
  const client = await udpClientFor(t);
  const { transport: tr, port, stats } = await transport(t, (got, self) => {
    // An echo, queued while the batch is handled.
    self.send(got.msg, { address: got.address, port: got.port, ip: got.address });
  });
  client.send(Buffer.from('echo me'), port);
  assert.equal((await client.next()).toString(), 'echo me');
  tr.send(Buffer.from('from a timer'), { address: '127.0.0.1', port: client.port, ip: '127.0.0.1' });
  assert.equal(stats.udpSent, 1, 'queued, not yet sent');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(stats.udpSent, 2, 'sent at the end of the turn');
  assert.equal((await client.next()).toString(), 'from a timer');
});

test('a send to an address of the wrong family is counted udp_send_error, never thrown', async (t) => {
  const { transport: tr, stats } = await transport(t);
  tr.send(Buffer.from('x'), { address: '::1', port: 9, ip: '::1' });
  tr.send(Buffer.from('x'), { address: 'not an address', port: 9, ip: '' });
  assert.equal(stats.dropped.udp_send_error, 2);
});

test('500 starts and stops leave no file descriptor and no loop handle behind', async () => {
  const before = openFds();
  const handlesBefore = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
  for (let i = 0; i < 500; i++) {
    const tr = new BatchTransport(addon(), i % 2 === 0 ? 'udp4' : 'udp6', () => {}, new BeaconStats());
    await tr.bind(i % 2 === 0 ? '127.0.0.1' : '::1', 0);
    tr.send(Buffer.from('x'), i % 2 === 0 ? { address: '127.0.0.1', port: 9, ip: '127.0.0.1' } : { address: '::1', port: 9, ip: '::1' });
    await tr.close();
  }
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(openFds(), before);
  assert.equal((process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length, handlesBefore);
});

test('the addon checks what JavaScript hands it: bad sizes, counts and send records are refused', async (t) => {
  const a = addon();
  const small = Buffer.allocUnsafeSlow(64);
  const cb = () => {};
  const addr = Buffer.alloc(16);
  addr.set([127, 0, 0, 1]);
  // Receive area smaller than batch x slot.
  assert.throws(() => a.open(4, addr, 0, false, 0, 0, 4, 1024, small, Buffer.allocUnsafeSlow(4 * 128), small, Buffer.allocUnsafeSlow(32), Buffer.allocUnsafeSlow(12), cb), RangeError);
  // Batch and slot bounds.
  assert.throws(() => a.open(4, addr, 0, false, 0, 0, 0, 16, small, small, small, Buffer.allocUnsafeSlow(32), Buffer.allocUnsafeSlow(12), cb), RangeError);
  assert.throws(() => a.open(4, addr, 0, false, 0, 0, 1, 70_000, small, small, small, Buffer.allocUnsafeSlow(32), Buffer.allocUnsafeSlow(12), cb), RangeError);

  const recvArea = Buffer.allocUnsafeSlow(4 * 256);
  const records = Buffer.allocUnsafeSlow(4 * a.RECORD_WORDS * 4);
  const sendArea = Buffer.allocUnsafeSlow(256);
  const sends = Buffer.allocUnsafeSlow(2 * a.SEND_WORDS * 4);
  const results = Buffer.allocUnsafeSlow(12);
  const handle = a.open(4, addr, 0, false, 0, 0, 4, 256, recvArea, records, sendArea, sends, results, cb);
  t.after(() => a.close(handle));
  const client = await udpClientFor(t);
  const s = new Uint32Array(sends.buffer, sends.byteOffset, 2 * a.SEND_WORDS);
  const r = new Uint32Array(results.buffer, results.byteOffset, 3);
  sendArea.write('inside', 0);
  const record = (i: number, area: number, offset: number, length: number) => {
    s.set([area, offset, length, client.port], i * a.SEND_WORDS);
    new Uint8Array(sends.buffer, sends.byteOffset + (i * a.SEND_WORDS + 4) * 4, 4).set([127, 0, 0, 1]);
  };
  record(0, 0, 250, 7); // past the end of the send area
  record(1, 7, 0, 1); // no such area
  assert.equal(a.flush(handle, 2), 0);
  assert.deepEqual([...r], [0, 0, 2]);
  assert.throws(() => a.flush(handle, 3), RangeError, 'more records than the send records hold');
  record(0, 0, 0, 6);
  assert.equal(a.flush(handle, 1), 1);
  assert.equal((await client.next()).toString(), 'inside');
  await client.expectNothing(50);
});
