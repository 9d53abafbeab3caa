/**
 * Property tests of the registry client's framing (PROTOCOL.md §4), against
 * a real TCP server that answers a pipeline of lookups with a scripted
 * byte stream: any chunking, answers that are errors, bad keys, another
 * node's answer (out of order), not JSON, oversized length headers, a
 * stream cut short or stalled.
 *
 * - Every lookup resolves, never rejects, and gets the answer meant for it
 *   or `unavailable`, never another node's key.
 * - Once the stream cannot be trusted, nothing after it is believed.
 * - The next lookup works on a fresh connection, and no timer is left.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { RegistryClient, REGISTRY_MAX_MESSAGE_BYTES } from '../lib/auth/registry-client';
import type { KeyLookup } from '../lib/auth/keys';
import { BeaconStats } from '../lib/metrics';
import { frame, generatePublicKey } from './helpers/fake-registry';
import { fuzzParams } from './fuzz/settings';

const ANSWERS = ['ok', 'error', 'bad_key', 'other_node', 'not_json', 'not_object', 'wrong_type', 'oversized'] as const;
type Answer = (typeof ANSWERS)[number];
/** Answers after which the client must distrust the connection. */
const DESYNC: ReadonlySet<Answer> = new Set(['other_node', 'not_json', 'not_object', 'wrong_type', 'oversized']);

interface Script {
  nodeIds: number[];
  answers: Answer[];
  /** 'complete': every byte; 'cut': close after `keep` of them; 'stall': send `keep` of them, then nothing. */
  ending: 'complete' | 'cut' | 'stall';
  /** Fraction of the stream sent before a cut or stall. */
  keep: number;
  /** Where the stream is split into separate writes, as fractions. */
  cuts: number[];
}

const KEYS = new Map<number, string>();
function keyOf(nodeId: number): string {
  let key = KEYS.get(nodeId);
  if (!key) KEYS.set(nodeId, key = generatePublicKey());
  return key;
}

function answerBytes(nodeId: number, answer: Answer): Buffer {
  const json = (value: unknown) => frame(Buffer.from(JSON.stringify(value)));
  switch (answer) {
    case 'ok': return json({ type: 'lookup_ok', node_id: nodeId, public_key: keyOf(nodeId) });
    case 'error': return json({ type: 'error', error: `node ${nodeId} not found` });
    case 'bad_key': return json({ type: 'lookup_ok', node_id: nodeId, public_key: 'not a key' });
    case 'other_node': return json({ type: 'lookup_ok', node_id: nodeId + 1, public_key: keyOf(nodeId + 1) });
    case 'not_json': return frame(Buffer.from('{"type":'));
    case 'not_object': return json([nodeId]);
    case 'wrong_type': return json({ type: 'lookup', node_id: nodeId });
    case 'oversized': {
      const header = Buffer.alloc(4);
      header.writeUInt32BE(REGISTRY_MAX_MESSAGE_BYTES + 1);
      return header;
    }
  }
}

/** What each lookup must resolve to, from the script alone. */
function expectedResults(script: Script, sentBytes: number): Array<KeyLookup['status'] | 'found'> {
  const results: Array<KeyLookup['status']> = [];
  let offset = 0;
  let trusted = true;
  script.answers.forEach((answer, i) => {
    const bytes = answerBytes(script.nodeIds[i]!, answer);
    const end = offset + bytes.length;
    // An oversized header is refused as soon as its 4 bytes arrive.
    const arrived = answer === 'oversized' ? offset + 4 <= sentBytes : end <= sentBytes;
    offset = end;
    if (!trusted || !arrived) return results.push('unavailable');
    if (DESYNC.has(answer)) trusted = false;
    results.push(answer === 'ok' ? 'found' : answer === 'error' ? 'unknown' : 'unavailable');
  });
  return results;
}

const script: fc.Arbitrary<Script> = fc.integer({ min: 1, max: 6 }).chain((n) => fc.record({
  nodeIds: fc.uniqueArray(fc.integer({ min: 1, max: 5000 }).map((i) => i * 2), { minLength: n, maxLength: n }),
  answers: fc.array(fc.oneof({ weight: 6, arbitrary: fc.constant<Answer>('ok') }, { weight: 1, arbitrary: fc.constantFrom(...ANSWERS) }),
    { minLength: n, maxLength: n }),
  ending: fc.oneof({ weight: 4, arbitrary: fc.constant<'complete'>('complete') }, { weight: 1, arbitrary: fc.constantFrom<'cut' | 'stall'>('cut', 'stall') }),
  keep: fc.double({ min: 0, max: 1, noNaN: true }),
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 8 }),
}));

/** A registry whose first connection follows `script`; later ones answer every lookup correctly. */
async function scriptedRegistry(s: Script): Promise<{ port: number; requests: number[]; stop: () => Promise<void> }> {
  const requests: number[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const scripted = connections++ === 0;
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32BE(0)) {
        const request = JSON.parse(buffer.subarray(4, 4 + buffer.readUInt32BE(0)).toString()) as { type: string; node_id: number };
        buffer = buffer.subarray(4 + buffer.readUInt32BE(0));
        assert.equal(request.type, 'lookup');
        if (!scripted || requests.length >= s.nodeIds.length) {
          socket.write(answerBytes(request.node_id, 'ok'));
          continue;
        }
        requests.push(request.node_id);
        if (requests.length === s.nodeIds.length) void play(socket, s);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function streamOf(s: Script): { stream: Buffer; sent: number } {
  const stream = Buffer.concat(s.answers.map((answer, i) => answerBytes(s.nodeIds[i]!, answer)));
  const sent = s.ending === 'complete' ? stream.length : Math.floor(s.keep * stream.length);
  return { stream, sent };
}

async function play(socket: net.Socket, s: Script): Promise<void> {
  const { stream, sent } = streamOf(s);
  const points = [...new Set(s.cuts.map((c) => Math.floor(c * sent)))].filter((p) => p > 0 && p < sent).sort((a, b) => a - b);
  let from = 0;
  for (const to of [...points, sent]) {
    if (socket.destroyed) return;
    socket.write(stream.subarray(from, to));
    from = to;
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (s.ending === 'cut') socket.end();
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

describe('registry client framing', () => {
  test('every lookup gets its own answer or unavailable, whatever the chunking and damage; the client recovers', async () => {
    await fc.assert(fc.asyncProperty(script, async (s) => {
      const registry = await scriptedRegistry(s);
      // A stalled stream is found out by the client's timeout: short there, generous elsewhere.
      const timeoutMs = s.ending === 'stall' ? 400 : 5_000;
      const client = new RegistryClient({ registry: { host: '127.0.0.1', port: registry.port }, stats: new BeaconStats(), timeoutMs });
      const timersBefore = timers();
      try {
        const results = await Promise.all(s.nodeIds.map((id) => client.lookup(id)));
        assert.deepEqual(registry.requests, s.nodeIds, 'requests arrive whole and in order');
        const want = expectedResults(s, streamOf(s).sent);
        results.forEach((result, i) => {
          const nodeId = s.nodeIds[i]!;
          assert.equal(result.status, want[i], `lookup ${i} of node ${nodeId} (${s.answers[i]})`);
          if (result.status === 'found') {
            assert.equal(result.key.nodeId, nodeId);
            assert.equal(result.key.raw.toString('base64'), keyOf(nodeId), 'the key of the node asked for');
          }
        });
        // Whatever happened to the first connection, the next lookup works.
        const again = await client.lookup(s.nodeIds[0]! + 1);
        assert.equal(again.status, 'found');
      } finally {
        client.close();
        await registry.stop();
      }
      assert.ok(timers() <= timersBefore, 'no lookup timer is left behind');
    }), fuzzParams(60));
  });
});
