/** A keys reload with many peers attached drops exactly the peers whose key changed. */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import type WebSocket from 'ws';
import { CloseCode } from '../lib/protocol';
import { keysFileJson, makeIdentity } from './helpers/identity';
import { closed, connectPeer, eventually, startTestBeacon } from './helpers/harness';

test('reloading keys keeps every one of 300 peers whose key did not change', async (t) => {
  const ids = Array.from({ length: 300 }, (_, i) => makeIdentity(10_000 + i));
  const tb = await startTestBeacon(ids, { maxPerIp: 1_000 });
  t.after(() => tb.close());
  const sockets: WebSocket[] = [];
  for (let i = 0; i < ids.length; i += 50) {
    sockets.push(...await Promise.all(ids.slice(i, i + 50).map((id) => connectPeer(tb.url, id))));
  }
  t.after(() => sockets.forEach((ws) => ws.terminate()));
  assert.equal(tb.beacon.peerCount(), 300);
  const closes = new Map<number, number>();
  sockets.forEach((ws, i) => ws.on('close', (code) => closes.set(ids[i].nodeId, code)));

  // Node 10_007's key is rotated, node 10_123 is removed; everyone else is unchanged.
  const revokedClosed = [closed(sockets[7]), closed(sockets[123])];
  const next = ids.filter((id) => id.nodeId !== 10_123).map((id) => (id.nodeId === 10_007 ? makeIdentity(10_007) : id));
  writeFileSync(tb.keysPath, keysFileJson(next));
  assert.equal(await tb.beacon.reloadKeys(), true); // what SIGHUP does
  for (const result of await Promise.all(revokedClosed)) assert.equal(result.code, CloseCode.PolicyViolation);
  await eventually(() => tb.beacon.peerCount() === 298, 3_000, 'the two revoked peers to leave');
  assert.deepEqual([...closes.keys()].sort(), [10_007, 10_123]);
  assert.equal(tb.beacon.metrics().stats.revokedPeers, 2);
});
