/**
 * Borrowed bytes (STYLE.md, lib/udp/transport.ts): a received datagram is
 * valid until the end of the turn that delivered it, and whatever keeps
 * bytes longer copies them. A stress test on both UDP transports (batched:
 * slots of one receive area that recvmmsg refills; dgram: a Buffer per
 * datagram), with the cluster forwarder holding batches past the turn
 * (its coalescing window): everything it publishes must still be, at the
 * end, the bytes that were received.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { test } from 'node:test';
import pino from 'pino';
import { Forwarder } from '../lib/cluster/forwarder';
import { Instances } from '../lib/cluster/instances';
import { decodeBatch } from '../lib/cluster/wire';
import { BeaconStats } from '../lib/metrics';
import { encodeRelay } from '../lib/protocol';
import { BatchTransport } from '../lib/udp/batch-transport';
import { DgramTransport } from '../lib/udp/dgram-transport';
import type { UdpIo } from '../lib/config/choices';
import { loadUdpBatchAddon } from '../lib/native/udp-batch-addon';
import type { BorrowedBytes, DatagramTransport } from '../lib/udp/transport';

const DATAGRAMS = 20_000;
/** Datagrams sent per turn of the sender: more than one recvmmsg batch, so slots are refilled turn after turn. */
const BURST = 96;
/** Sent and not yet received at most: the receive buffer never overflows, so nearly nothing is lost. */
const IN_FLIGHT = 512;

/** Datagram `seq`: a Relay whose header and payload both depend on seq, with lengths that vary. */
function datagram(seq: number): Buffer {
  const payload = Buffer.alloc(8 + ((seq * 37) % 900));
  payload.writeUInt32BE(seq, 0);
  payload.fill(seq & 0xff, 4);
  return encodeRelay(1 + (seq % 5000), 100_000 + seq, payload);
}

async function stress(io: UdpIo): Promise<void> {
  const stats = new BeaconStats();
  const received: Buffer[] = []; // owned copies, taken as each datagram arrives
  const published: Uint8Array[] = []; // what the forwarder handed over, kept as it was handed over
  const forwarder = new Forwarder(stats, () => true, (_subject, data) => { published.push(data); return true; });
  const instance = new Instances('self', 1_000, (id) => `fwd.${id}`).get('other');
  // The borrowed slices of this turn, checked at its end (setImmediate) against their copies.
  let heldThisTurn: Array<[BorrowedBytes, Buffer]> = [];
  let changedWithinTurn = 0;
  const endOfTurn = () => {
    for (const [slice, copy] of heldThisTurn) if (!slice.equals(copy)) changedWithinTurn++;
    heldThisTurn = [];
  };
  const receive = (msg: BorrowedBytes) => {
    const copy = Buffer.from(msg);
    received.push(copy);
    if (heldThisTurn.length === 0) setImmediate(endOfTurn);
    heldThisTurn.push([msg, copy]);
    forwarder.forward(instance, msg);
  };
  let transport: DatagramTransport;
  if (io === 'batched') {
    const { addon, error } = loadUdpBatchAddon();
    assert.ok(addon, `the udp-batch addon is not built (${error}): npm rebuild @beacon/udp-batch`);
    transport = new BatchTransport(addon, 'udp4', receive, stats);
  } else {
    transport = new DgramTransport('udp4', receive, stats, pino({ level: 'silent' }));
  }
  const { port } = await transport.bind('127.0.0.1', 0);
  const sender = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => sender.bind(0, '127.0.0.1', resolve));
  try {
    // Closed loop, bounded in time: a burst per turn while fewer than IN_FLIGHT are on the way.
    let presumedLost = 0;
    let progressAt = performance.now();
    let lastReceived = 0;
    const deadline = performance.now() + 30_000;
    for (let seq = 0; seq < DATAGRAMS && performance.now() < deadline;) {
      if (received.length !== lastReceived) {
        lastReceived = received.length;
        progressAt = performance.now();
      } else if (performance.now() - progressAt > 200) {
        presumedLost = seq - received.length; // stalled: what is on the way is lost
      }
      if (seq - received.length - presumedLost < IN_FLIGHT) {
        for (const end = Math.min(seq + BURST, DATAGRAMS); seq < end; seq++) sender.send(datagram(seq), port, '127.0.0.1');
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    // Until the socket is quiet: loopback loses nothing unless the receive buffer overflows, which the bursts avoid.
    for (let count = -1; count !== received.length;) {
      count = received.length;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    forwarder.flushAll();
  } finally {
    sender.close();
    await transport.close();
  }

  assert.ok(received.length >= DATAGRAMS * 0.9, `${io}: received ${received.length} of ${DATAGRAMS}`);
  assert.equal(changedWithinTurn, 0, `${io}: a borrowed slice changed before the end of its turn`);
  // Batches were held past their turn (several turns' frames in one message), and each still holds what was received.
  assert.ok(published.length < received.length / 2, `${io}: ${received.length} frames in ${published.length} messages: no batch was held`);
  const frames = published.flatMap((batch) => decodeBatch(batch) ?? [Buffer.from('an undecodable batch')]);
  assert.equal(frames.length, received.length);
  let wrong = 0;
  for (let i = 0; i < frames.length; i++) if (!frames[i]!.equals(received[i]!)) wrong++;
  assert.equal(wrong, 0, `${io}: ${wrong} of ${frames.length} forwarded frames are not the bytes received`);
  assert.equal(stats.cluster.framesOut, received.length);
}

test('batched UDP: bytes the forwarder holds past the turn are the bytes received, though recvmmsg refills the slots', async () => {
  await stress('batched');
});

test('dgram UDP: the same stress, the same result', async () => {
  await stress('dgram');
});
