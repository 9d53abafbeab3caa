/**
 * Directory snapshots (lib/cluster/snapshot.ts): a newcomer that applies a
 * snapshot taken while the server's mirror kept changing, then replays the
 * bucket from the snapshot's revision, ends with exactly the bucket's
 * state; arbitrary bytes never throw; chunks fit NATS's max_payload; the
 * receiver applies one chunk per event-loop turn and refuses a gap.
 * Fixed seed and bounded runs here; `npm run fuzz` for a longer run.
 */
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Directory } from '../lib/cluster/directory';
import { Instances } from '../lib/cluster/instances';
import { PlacementTable } from '../lib/cluster/placement-table';
import {
  SnapshotReceiver, SnapshotWriter, chunkEntriesFor, decodeSnapshotChunk, forEachSnapshotEntry, refusedChunk,
  type ReceiveOutcome, type SnapshotChunk,
} from '../lib/cluster/snapshot';
import type { AttachKind } from '../lib/cluster/wire';
import { fuzzParams } from './fuzz/settings';

const INSTANCE_IDS = ['a', 'b', 'c'];

/** One write to the bucket; its revision is its position in the stream (1-based). */
type Op = { node: number; put: { instance: number; kind: AttachKind } | undefined };

const op: fc.Arbitrary<Op> = fc.record({
  node: fc.integer({ min: 1, max: 12 }),
  put: fc.option(fc.record({ instance: fc.integer({ min: 0, max: 2 }), kind: fc.constantFrom<AttachKind>('wss', 'udp') }), { nil: undefined, freq: 4 }),
});

function newDirectory(selfId: string): { directory: Directory; members: Instances } {
  // Small tables: the property also meets rebuilds during a walk.
  const members = new Instances(selfId, 1_000, (id) => `fwd.${id}`);
  const directory = new Directory({ self: members.self, evict: () => undefined, onStoreError: (err) => { throw err; }, minTableCapacity: 8 });
  return { directory, members };
}

function apply(directory: Directory, members: Instances, o: Op, rev: number): void {
  if (o.put) directory.applyPut(o.node, members.get(INSTANCE_IDS[o.put.instance]!), o.put.kind, rev);
  else directory.applyDelete(o.node, rev);
}

function contents(directory: Directory): Map<number, string> {
  const out = new Map<number, string>();
  const table = directory.placements();
  for (const [nodeId, slot] of table) out.set(nodeId, `${table.instanceAt(slot).id} ${table.kindAt(slot)} ${table.revAt(slot)}`);
  return out;
}

describe('directory snapshot', () => {
  test('a snapshot taken while the mirror changes, then a replay from its revision, gives exactly the bucket\'s state', () => {
    fc.assert(fc.property(
      fc.array(op, { maxLength: 80 }), fc.nat(), fc.integer({ min: 1, max: 5 }), fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 40 }),
      fc.boolean(),
      (ops, cut, perChunk, changesBetweenChunks, replayEveryOp) => {
        const server = newDirectory('server');
        const truth = newDirectory('truth');
        ops.forEach((o, i) => apply(truth.directory, truth.members, o, i + 1));
        // The server's mirror reflects the stream through R when the snapshot begins.
        let applied = 0;
        const upTo = ops.length === 0 ? 0 : cut % (ops.length + 1);
        while (applied < upTo) { apply(server.directory, server.members, ops[applied]!, applied + 1); applied++; }
        let chunks: SnapshotChunk[] = [];
        // A mirror rebuilt during the walk (it grew) voids the snapshot: the newcomer asks again.
        for (let attempt = 0; ; attempt++) {
          // As the server does: a rebuild still moving entries is finished before the walk.
          server.directory.placements().advanceRebuild(Infinity);
          const writer = new SnapshotWriter(server.directory.placements(), applied, perChunk);
          chunks = [];
          for (let i = 0; ; i++) {
            const bytes = writer.next();
            if (!bytes) break;
            const chunk = decodeSnapshotChunk(bytes);
            assert.ok(chunk, 'every chunk the writer makes decodes');
            assert.equal(chunk.index, i);
            chunks.push(chunk);
            // The server's watch goes on between chunks.
            for (let n = attempt < 3 ? changesBetweenChunks[i] ?? 0 : 0; n > 0 && applied < ops.length; n--) {
              apply(server.directory, server.members, ops[applied]!, applied + 1);
              applied++;
            }
          }
          if (!writer.invalidated) break;
          assert.ok(attempt < 3, 'a walk with no change meanwhile completes');
        }
        const newcomer = newDirectory('newcomer');
        newcomer.directory.beginLoad();
        for (const chunk of chunks) {
          forEachSnapshotEntry(chunk, (id) => newcomer.members.get(id), (nodeId, instance, kind, rev) => newcomer.directory.applyPut(nodeId, instance, kind, rev));
        }
        newcomer.directory.finishLoad();
        // The replay from the revision the chunks carry, in order: the bucket keeps one message per
        // key (its last), but a watch may also reach a message before a later one replaces it.
        const from = chunks[0]!.fromRevision + 1;
        const last = new Map<number, number>();
        ops.forEach((o, i) => last.set(o.node, i));
        ops.forEach((o, i) => {
          if (i + 1 >= from && (replayEveryOp || last.get(o.node) === i)) apply(newcomer.directory, newcomer.members, o, i + 1);
        });
        assert.deepEqual(contents(newcomer.directory), contents(truth.directory));
      },
    ), fuzzParams(400));
  });

  test('arbitrary bytes and damaged chunks never throw: a chunk is whole and in bounds, or undefined', () => {
    const { directory, members } = newDirectory('server');
    for (let node = 1; node <= 5; node++) directory.applyPut(node, members.get(`i${node % 2}`), 'wss', node);
    const good = new SnapshotWriter(directory.placements(), 5).next()!;
    fc.assert(fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 120 }).map((a) => Buffer.from(a)),
        fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })).map(([at, value]) => {
          const damaged = Buffer.from(good);
          damaged[at % damaged.length] = value;
          return damaged;
        }),
        fc.nat().map((cut) => good.subarray(0, cut % good.length)),
      ),
      (bytes) => {
        const chunk = decodeSnapshotChunk(bytes);
        if (!chunk) return;
        forEachSnapshotEntry(chunk, (id) => id, (nodeId, instance, kind, rev) => {
          assert.ok(nodeId >= 1 && nodeId <= 0xffffffff && chunk.instanceIds.includes(instance));
          assert.ok(kind === 'wss' || kind === 'udp');
          assert.ok(Number.isSafeInteger(rev) && rev > 0);
        });
      },
    ), fuzzParams(2_000));
  });
});

test('chunks fit NATS\'s default max_payload even when they name a thousand and more 64-byte instance IDs', () => {
  const { directory, members } = newDirectory('server');
  const ids = Array.from({ length: 1_500 }, (_, i) => `${'x'.repeat(59)}${String(i).padStart(5, '0')}`);
  for (let node = 1; node <= 40_000; node++) directory.applyPut(node, members.get(ids[node % ids.length]!), node % 3 ? 'wss' : 'udp', node);
  const maxPayload = 1024 * 1024;
  const writer = new SnapshotWriter(directory.placements(), 40_000, chunkEntriesFor(maxPayload));
  const seen = new Map<number, string>();
  for (let bytes = writer.next(); bytes; bytes = writer.next()) {
    assert.ok(bytes.length <= maxPayload, `a chunk of ${bytes.length} bytes`);
    forEachSnapshotEntry(decodeSnapshotChunk(bytes)!, (id) => id, (nodeId, id, kind, rev) => seen.set(nodeId, `${id} ${kind} ${rev}`));
  }
  assert.equal(seen.size, 40_000);
  assert.equal(seen.get(7), `${ids[7]} wss 7`);
  assert.equal(seen.get(9), `${ids[9]} udp 9`);
});

test('the receiver applies one chunk per event-loop turn, refuses a gap, and takes a refusal for what it is', async () => {
  const { directory, members } = newDirectory('server');
  for (let node = 1; node <= 10; node++) directory.applyPut(node, members.get('a'), 'wss', node);
  const chunksOf = () => {
    const writer = new SnapshotWriter(directory.placements(), 10, 3);
    const out: Buffer[] = [];
    for (let c = writer.next(); c; c = writer.next()) out.push(c);
    return out;
  };
  const chunks = chunksOf();
  assert.equal(chunks.length, 4); // 3 + 3 + 3 + 1 (the last)

  const applied: number[] = [];
  let outcome: ReceiveOutcome | undefined;
  const receiver = new SnapshotReceiver((chunk) => applied.push(chunk.index) > 0, () => assert.fail('nothing malformed'), (o) => { outcome = o; });
  for (const chunk of chunks) receiver.accept(chunk); // one socket read brings them all
  assert.equal(receiver.receivedAll, true);
  assert.deepEqual(applied, [], 'nothing is applied in the read that brought the chunks');
  await nextTurn();
  assert.deepEqual(applied, [0]);
  await nextTurn();
  assert.deepEqual(applied, [0, 1]);
  while (!outcome) await nextTurn();
  assert.deepEqual(outcome, { kind: 'loaded', fromRevision: 10, entries: 10 });

  let gap: ReceiveOutcome | undefined;
  const gapped = new SnapshotReceiver(() => true, () => assert.fail('a gap is not malformed'), (o) => { gap = o; });
  gapped.accept(chunks[0]!);
  gapped.accept(chunks[2]!);
  assert.equal(gap?.kind, 'failed');

  let refused: ReceiveOutcome | undefined;
  new SnapshotReceiver(() => true, () => undefined, (o) => { refused = o; }).accept(refusedChunk());
  assert.deepEqual(refused, { kind: 'refused' });

  let malformed = 0;
  let bad: ReceiveOutcome | undefined;
  new SnapshotReceiver(() => true, () => { malformed++; }, (o) => { bad = o; }).accept(Buffer.from('not a chunk'));
  assert.equal(malformed, 1);
  assert.equal(bad?.kind, 'failed');
});

test('the receiver applies a big chunk a slice per turn, and a malformed entry ends the load', async () => {
  const { directory, members } = newDirectory('server');
  for (let node = 1; node <= 10_000; node++) directory.applyPut(node, members.get('a'), 'wss', node);
  const chunk = new SnapshotWriter(directory.placements(), 10_000, 20_000).next()!; // all 10,000 in one chunk, the last
  const slices: Array<[number, number]> = [];
  let outcome: ReceiveOutcome | undefined;
  const receiver = new SnapshotReceiver((c, from, to) => {
    slices.push([from, to]);
    return forEachSnapshotEntry(c, (id) => id, () => undefined, from, to);
  }, () => assert.fail('nothing malformed'), (o) => { outcome = o; });
  receiver.accept(chunk);
  assert.deepEqual(slices, []);
  await nextTurn();
  assert.deepEqual(slices, [[0, 4_096]], 'one slice per turn');
  while (!outcome) await nextTurn();
  assert.deepEqual(outcome, { kind: 'loaded', fromRevision: 10_000, entries: 10_000 });
  assert.deepEqual(slices, [[0, 4_096], [4_096, 8_192], [8_192, 10_000]]);

  // The same chunk with one entry's instance index out of range: refused while applying.
  const damaged = Buffer.from(chunk);
  const decoded = decodeSnapshotChunk(damaged)!;
  damaged.writeUInt16BE(9, decoded.entriesAt + 5_000 * 15 + 4);
  let malformed = 0;
  let bad: ReceiveOutcome | undefined;
  const applied: number[] = [];
  const strict = new SnapshotReceiver((c, from, to) => forEachSnapshotEntry(c, (id) => id, (nodeId) => { applied.push(nodeId); }, from, to),
    () => { malformed++; }, (o) => { bad = o; });
  strict.accept(damaged);
  while (!bad) await nextTurn();
  assert.equal(bad.kind, 'failed');
  assert.equal(malformed, 1);
  assert.ok(applied.length < 10_000);
});

describe('placement table', () => {
  test('any run of sets and deletes leaves the table holding exactly what a Map would, across rebuilds', () => {
    const instances = ['a', 'b'].map((id) => ({ id }));
    const nodeIds = fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 0xffffffff }));
    const step = fc.tuple(fc.boolean(), nodeIds, fc.integer({ min: 0, max: 1 }), fc.constantFrom<AttachKind>('wss', 'udp'));
    fc.assert(fc.property(fc.array(step, { maxLength: 600 }), fc.constantFrom(8, 16, 1024), (steps, minCapacity) => {
      const table = new PlacementTable<{ id: string }>(minCapacity);
      const model = new Map<number, string>();
      steps.forEach(([isSet, nodeId, instance, kind], rev) => {
        if (isSet) {
          table.set(nodeId, instances[instance]!, kind, rev + 1);
          model.set(nodeId, `${instances[instance]!.id} ${kind} ${rev + 1}`);
        } else {
          assert.equal(table.delete(nodeId), model.delete(nodeId));
        }
      });
      assert.equal(table.size, model.size);
      const held = new Map<number, string>();
      for (const [nodeId, slot] of table) held.set(nodeId, `${table.instanceAt(slot).id} ${table.kindAt(slot)} ${table.revAt(slot)}`);
      assert.deepEqual(held, model);
      for (const nodeId of model.keys()) assert.ok(table.find(nodeId) >= 0);
    }), fuzzParams(300));
  });

  test('a snapshot walk over a table that grows under it is void: no chunk after, and the server refuses', () => {
    const table = new PlacementTable<{ id: string }>(8);
    const a = { id: 'a' };
    for (let node = 1; node <= 5; node++) table.set(node, a, 'wss', node);
    const writer = new SnapshotWriter(table, 5, 2);
    assert.ok(writer.next());
    assert.equal(writer.invalidated, false);
    for (let node = 6; node <= 50; node++) table.set(node, a, 'wss', node); // grows: rebuilt
    assert.equal(writer.invalidated, true);
    assert.equal(writer.next(), undefined);
  });
});
