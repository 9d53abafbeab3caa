import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { encodeRelay, decodePacket, PacketType } from '../lib/protocol';
import { makeIdentity } from './helpers/identity';
import { connectPeer, nextMessage, startTestBeacon, type TestBeacon } from './helpers/harness';

const alice = makeIdentity(7777);
const bob = makeIdentity(8888);
let tb: TestBeacon;

before(async () => { tb = await startTestBeacon([alice, bob]); });
after(async () => { await tb.close(); });

test('two peers authenticate and a Relay crosses as RelayDeliver', async () => {
  const a = await connectPeer(tb.url, alice);
  const b = await connectPeer(tb.url, bob);
  assert.equal(tb.beacon.peerCount(), 2);
  assert.ok(tb.beacon.isConnected(7777));
  const got = nextMessage(b);
  a.send(encodeRelay(7777, 8888, Buffer.from('hello bob')));
  const { data, isBinary } = await got;
  assert.equal(isBinary, true);
  const packet = decodePacket(data);
  assert.deepEqual(packet && packet.type === PacketType.RelayDeliver && [packet.sender, packet.payload.toString()], [7777, 'hello bob']);
  const m = tb.beacon.metrics();
  assert.equal(m.stats.relay.wss, 1);
  assert.equal(m.stats.framesIn, 1);
  assert.equal(m.stats.framesOut, 1);
  a.close(); b.close();
});
