/**
 * What a lookup in the tables strangers fill costs (issue 19, items 5 and
 * 6): the cluster directory's mirror (PlacementTable) and the UDP endpoint
 * table, for this build and, with --baseline-dist, another one, each in
 * its own child process (so neither's code shares the other's JIT
 * feedback), alternating run by run.
 *
 *   node dist/test/bench/table-lookups.js [--baseline-dist OTHER/dist] [--runs N]
 *
 * Cases, each ns per lookup in random order (median of --runs, default 3):
 * - mirror 1M: a million random IDs, lookups of present IDs and of absent ones;
 * - mirror 10k, endpoints 10k and 100k: the same at the sizes a busy beacon has;
 * - chosen IDs: 10k IDs that collided under the old hashes (Fibonacci for
 *   the mirror, V8's integer hash for the endpoint table), lookups of them.
 * Pure CPU, one core, no I/O.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { idsCollidingUnderFibonacci, idsCollidingUnderV8 } from '../helpers/colliding-ids';

interface Table { find?(id: number): number; get?(id: number): unknown }
type Case = { name: string; build: (dist: string) => { table: Table; lookup: (t: Table, id: number) => unknown; ids: number[] } };

/** `count` random nonzero IDs (xorshift32 from `seed`: the same IDs for both builds). */
function randomIds(count: number, seed: number): number[] {
  let x = seed;
  const ids: number[] = [];
  while (ids.length < count) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    if (x !== 0) ids.push(x >>> 0);
  }
  return ids;
}

/** The same IDs in another order (seeded), so lookups do not follow insertion order. */
function shuffled(ids: readonly number[], seed: number): number[] {
  const out = [...ids];
  let x = seed;
  for (let i = out.length - 1; i > 0; i--) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    const j = (x >>> 0) % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function mirror(dist: string, ids: readonly number[]): Table {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { PlacementTable } = require(`${dist}/lib/cluster/placement-table.js`) as typeof import('../../lib/cluster/placement-table');
  const table = new PlacementTable<{ id: string }>();
  table.reserve(ids.length);
  const instance = { id: 'b' };
  ids.forEach((id, i) => table.set(id, instance, 'udp', i + 1));
  return table;
}

function endpoints(dist: string, ids: readonly number[]): Table {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { EndpointTable } = require(`${dist}/lib/udp/endpoints.js`) as typeof import('../../lib/udp/endpoints');
  const table = new EndpointTable({ ttlMs: 3_600_000, maxEntries: ids.length, maxPerSource: ids.length, ipv6PrefixBits: 64 });
  ids.forEach((id, i) => table.record(id, `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 9000, 0));
  return table;
}

const findIn = (t: Table, id: number) => t.find!(id);
const getIn = (t: Table, id: number) => t.get!(id);

const CASES: Case[] = [
  { name: 'mirror 1M, present', build: (d) => { const ids = randomIds(1_000_000, 1); return { table: mirror(d, ids), lookup: findIn, ids }; } },
  { name: 'mirror 1M, absent', build: (d) => ({ table: mirror(d, randomIds(1_000_000, 1)), lookup: findIn, ids: randomIds(1_000_000, 2) }) },
  { name: 'mirror 10k, present', build: (d) => { const ids = randomIds(10_000, 3); return { table: mirror(d, ids), lookup: findIn, ids }; } },
  { name: 'mirror 10k chosen IDs, present', build: (d) => { const ids = idsCollidingUnderFibonacci(10_000); return { table: mirror(d, ids), lookup: findIn, ids }; } },
  { name: 'endpoints 100k, present', build: (d) => { const ids = randomIds(100_000, 4); return { table: endpoints(d, ids), lookup: getIn, ids }; } },
  { name: 'endpoints 100k, absent', build: (d) => ({ table: endpoints(d, randomIds(100_000, 4)), lookup: getIn, ids: randomIds(100_000, 5) }) },
  { name: 'endpoints 10k, present', build: (d) => { const ids = randomIds(10_000, 6); return { table: endpoints(d, ids), lookup: getIn, ids }; } },
  { name: 'endpoints 10k chosen IDs, present', build: (d) => { const ids = idsCollidingUnderV8(10_000); return { table: endpoints(d, ids), lookup: getIn, ids }; } },
];

/** In a child: ns per lookup for each case, as one JSON line. */
function worker(dist: string): void {
  const out: Record<string, number> = {};
  for (const c of CASES) {
    const built = c.build(dist);
    const { table, lookup } = built;
    const ids = shuffled(built.ids, 99);
    const rounds = Math.max(1, Math.floor(1_000_000 / ids.length));
    let sink = 0;
    for (const id of ids) if (lookup(table, id) !== undefined) sink++; // warm
    const started = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) for (let i = 0; i < ids.length; i++) if (lookup(table, ids[i]!) !== undefined) sink++;
    out[c.name] = Number(process.hrtime.bigint() - started) / (rounds * ids.length);
    if (sink < 0) console.error(sink);
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function main(argv: string[]): void {
  let baseline: string | undefined;
  let runs = 3;
  for (let i = 0; i < argv.length; i += 2) {
    if (argv[i] === '--worker') return worker(resolve(argv[i + 1]!));
    if (argv[i] === '--baseline-dist') baseline = resolve(argv[i + 1]!);
    else if (argv[i] === '--runs') runs = Number(argv[i + 1]);
    else throw new Error(`unknown flag ${argv[i]}`);
  }
  const builds: Array<[string, string]> = [['this build', resolve(__dirname, '../..')]];
  if (baseline) builds.push(['baseline', baseline]);
  const results = new Map<string, Array<Record<string, number>>>(builds.map(([name]) => [name, []]));
  for (let run = 0; run < runs; run++) {
    for (const [name, dist] of run % 2 === 0 ? builds : [...builds].reverse()) {
      const child = spawnSync(process.execPath, [__filename, '--worker', dist], { encoding: 'utf8', timeout: 300_000 });
      if (child.status !== 0) throw new Error(`${name}: ${child.stderr}`);
      results.get(name)!.push(JSON.parse(child.stdout) as Record<string, number>);
    }
  }
  console.log(`ns per lookup, median of ${runs} runs${baseline ? ` (baseline: ${baseline})` : ''}`);
  console.log(['case', ...builds.map(([name]) => name), ...(baseline ? ['this / baseline'] : [])].join(' | '));
  for (const c of CASES) {
    const cells = builds.map(([name]) => median(results.get(name)!.map((r) => r[c.name]!)));
    console.log([c.name, ...cells.map((v) => v.toFixed(1)), ...(baseline ? [`${(cells[0]! / cells[1]!).toFixed(2)}x`] : [])].join(' | '));
  }
}

main(process.argv.slice(2));
