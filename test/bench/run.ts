/**
 * `npm run bench`: measures the beacon against a naive baseline relay, in
 * the same run, scenario by scenario (issue 6).
 *
 *   npm run bench                     full run (< 5 min)
 *   npm run bench -- --quick          smaller and shorter (< 1 min; 64 B payloads only)
 *   npm run bench -- --json FILE      also write the results as JSON
 *   npm run bench -- --md FILE        also write the results as a Markdown table
 *   npm run bench -- --only 1,5       only these scenarios (numbers or names; 8/cluster needs nats-server)
 *   npm run bench -- --runs N         repetitions (default 3; medians need >= 3)
 *   npm run bench -- --profile DIR    CPU profile of each beacon process (under load, not start-up) into DIR,
 *                                     with a summary of the top functions
 *   npm run bench -- --baseline-dist DIR   run another beacon build (its dist/) in the
 *                                     baseline slot: ratios become this build / that one. DIR's tree
 *                                     must have its own node_modules (its own udp-batch addon)
 *   npm run bench -- --baseline REV   the same, for a git revision: built once (git archive, npm ci,
 *                                     tsc) in a directory of its own under the system's temp dir
 *   npm run bench -- --baseline-env K=V   environment of the baseline slot's process (repeatable),
 *                                     e.g. --baseline-dist dist --baseline-env WS_NO_BUFFER_UTIL=1,
 *                                     or --baseline-dist dist --baseline-env BEACON_UDP_IO=dgram (batched vs dgram)
 *   BENCH_LOAD_UDP_IO=dgram npm run bench   load generators' UDP clients on dgram instead of the udp-batch addon
 *   npm run bench -- --only 12,13,14   issue 22's figures: handshakes/s with 64 in flight, RSS per idle peer
 *                                     (5k -> 15k, no forced GC; 100k measured where the fd limit allows),
 *                                     a reconnect storm of 12,000 fresh daemons felt by 16 relaying pairs
 *   npm run bench -- --only caddy     the deployed path: handshakes/s and relay frames/s through Caddy with TLS
 *                                     and direct (needs caddy)
 *   npm run bench -- --only shared    UDP relays: two instances sharing one port (--reuse-port) vs one
 *                                     instance, and the share of cross-instance relays over NATS (needs nats-server)
 *   npm run bench -- --keys-count N   keys in the keys-file scenario (9/keys; default 1,000,000, quick 100,000)
 *   npm run bench -- --only cluster --cluster-parts convergence,move
 *                                     only these parts of scenario 8 (hop, zeroloss, convergence, move,
 *                                     directory; default all); with --baseline-dist DIR the convergence
 *                                     part also runs that build's instances, alternating: before/after
 *   npm run bench -- --only cluster --cluster-three-nats   convergence on three nats-servers (the shipped
 *                                     three-machine file here; the bucket with three copies)
 *
 * - Every server runs in its own process on core 0, every load generator
 *   in its own process on core 1 (taskset, when present). Nothing is
 *   measured on the server's event loop.
 * - All traffic goes to 127.0.0.1. Every phase is bounded in count and time;
 *   the whole run has a hard deadline.
 * - Printed per figure: beacon median [min-max], baseline median [min-max],
 *   and beacon/baseline ratio median [min-max], computed run by run.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fdHardLimit, hasTaskset, stopLeftovers } from './common/child';
import { makeIdentities, writeIdentityFiles } from './common/identities';
import type { BenchSettings, Row } from './scenarios/context';
import { CLUSTER_PARTS, clusterScenario, type ClusterPart } from './scenarios/cluster';
import { handshakeStorm } from './scenarios/handshake-storm';
import { heavySender } from './scenarios/heavy-sender';
import { memoryPerPeer } from './scenarios/memory';
import { mixedRoutes } from './scenarios/mixed';
import { relayThroughput } from './scenarios/relay-throughput';
import { slowReader } from './scenarios/slow-reader';
import { keysScale } from './scenarios/keys-scale';
import { summarizeProfiles } from './profile-summary';
import { loadUdpBatchAddon } from '../../lib/native/udp-batch-addon';
import { markdownTable, printRows } from './report';
import { baselineTree, checkBaselineDist } from './common/baseline';
import { handshakeRate } from './scenarios/handshake-rate';
import { idleMemory } from './scenarios/idle-memory';
import { reconnectStorm } from './scenarios/reconnect-storm';
import { deployedPath } from './scenarios/deployed-path';
import { sharedPort } from './scenarios/shared-port';

interface Scenario {
  id: string;
  name: string;
  run: (settings: BenchSettings) => Promise<Row[]>;
  /** Node IDs 1..N the scenario uses (with keys in the keys file), beyond the run's default. */
  identities?: number;
}

function parseArgs(argv: readonly string[]) {
  const args = { quick: false, json: undefined as string | undefined, md: undefined as string | undefined, only: undefined as string[] | undefined, runs: 3, profile: undefined as string | undefined, keysCount: undefined as number | undefined, baselineDist: undefined as string | undefined, baselineRev: undefined as string | undefined, baselineEnv: {} as Record<string, string>, clusterParts: undefined as Set<ClusterPart> | undefined, clusterThreeNats: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') args.quick = true;
    else if (a === '--json') args.json = value();
    else if (a === '--md') args.md = value();
    else if (a === '--only') args.only = value().split(',');
    else if (a === '--runs') args.runs = Number(value());
    else if (a === '--profile') args.profile = value();
    else if (a === '--keys-count') args.keysCount = Number(value());
    else if (a === '--baseline-dist') args.baselineDist = value();
    else if (a === '--baseline') args.baselineRev = value();
    else if (a === '--cluster-three-nats') args.clusterThreeNats = true;
    else if (a === '--cluster-parts') {
      const parts = value().split(',');
      const unknown = parts.filter((part) => !(CLUSTER_PARTS as readonly string[]).includes(part));
      if (unknown.length > 0) throw new Error(`--cluster-parts: unknown part ${unknown.join(',')}; use some of ${CLUSTER_PARTS.join(',')}`);
      args.clusterParts = new Set(parts as ClusterPart[]);
    }
    else if (a === '--baseline-env') {
      const [k, ...v] = value().split('=');
      args.baselineEnv[k!] = v.join('=');
    }
    else throw new Error(`unknown option ${a}; see the top of test/bench/run.ts`);
  }
  if (!Number.isInteger(args.runs) || args.runs < 1 || args.runs > 20) throw new Error('--runs must be 1..20');
  if (args.baselineDist !== undefined && args.baselineRev !== undefined) throw new Error('--baseline and --baseline-dist: give one of them');
  if (args.keysCount !== undefined && !(Number.isInteger(args.keysCount) && args.keysCount >= 1 && args.keysCount <= 5_000_000)) {
    throw new Error('--keys-count must be 1..5000000');
  }
  return args;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const quick = args.quick;
  const started = Date.now();
  // A hard bound on the whole run, whatever happens inside.
  const limitMinutes = quick ? 4 : 20;
  const deadline = setTimeout(() => {
    console.error(`bench: over the ${limitMinutes} min hard limit; stopping`);
    process.exit(2);
  }, limitMinutes * 60_000);
  deadline.unref();
  // Built (or found built) before the deadline's clock matters: npm ci takes a while.
  const baselineDist = args.baselineRev !== undefined ? baselineTree(args.baselineRev, (line) => console.log(line))
    : args.baselineDist !== undefined ? checkBaselineDist(args.baselineDist) : undefined;

  const memoryPeers = quick ? [200, 500] : [1_000, 10_000];
  const stormSize = quick ? 600 : 3_000;
  const dir = mkdtempSync(join(tmpdir(), 'beacon-bench-'));
  if (args.profile) mkdirSync(args.profile, { recursive: true });
  // Issue 22's three figures: sizes as its held-out bench has them.
  const rate = { poolSize: quick ? 5_000 : 20_000, first: 1, concurrency: 64, windowMs: quick ? 1_000 : 3_000 };
  const idle = { counts: quick ? [1_000, 3_000] : [5_000, 15_000], projectTo: quick ? 10_000 : 100_000 };
  const reconnect = {
    pairs: 16, rate: 10_000, stormSize: quick ? 2_000 : 12_000, stormFirst: 33, concurrency: 128, quietMs: quick ? 1_000 : 3_000,
  };
  const deployed = { pairs: 16, windowMs: quick ? 500 : 2_000, handshakePool: quick ? 2_000 : 10_000, handshakeFirst: 65 };

  const windowMs = quick ? 200 : 1_000;
  const scenarios: Scenario[] = [
    // The keys-file scenario runs first: it needs no load generators and leaves nothing behind.
    { id: '9', name: 'keys', run: (s) => keysScale(s, { keys: args.keysCount ?? (quick ? 100_000 : 1_000_000) }) },
    { id: '1', name: 'wss', run: (s) => relayThroughput(s, { via: 'wss', pairs: 32, payloads: quick ? [64] : [64, 1200], windowMs, searchWindowMs: quick ? 150 : 600, searchSteps: quick ? 1 : 3, latencyWindowMs: quick ? 150 : 1_000 }) },
    { id: '2', name: 'udp', run: (s) => relayThroughput(s, { via: 'udp', pairs: 32, payloads: quick ? [64] : [64, 1200], windowMs, searchWindowMs: quick ? 150 : 600, searchSteps: quick ? 1 : 3, latencyWindowMs: 0 }) },
    { id: '3', name: 'mixed', run: (s) => mixedRoutes(s, { pairs: 16, payload: 64, windowMs: quick ? 150 : windowMs, searchWindowMs: quick ? 100 : 600, searchSteps: quick ? 1 : 3 }) },
    { id: '4', name: 'storm', run: (s) => handshakeStorm(s, { established: 100, stormSize, storm0: Math.max(...memoryPeers) + 101, steadyRatePerFlow: 100, windowMs: quick ? 200 : 1_500 }) },
    { id: '5', name: 'memory', run: (s) => memoryPerPeer(s, { counts: memoryPeers }) },
    { id: '7', name: 'slow', run: (s) => slowReader(s, { pairs: 16, windowMs: quick ? 200 : 1_500 }) },
    { id: '8', name: 'cluster', run: (s) => clusterScenario(s, quick
      ? { pairs: 8, payload: 64, rate: 4_000, windowMs: 400, maxRate: 16_000, attaches: 200, moves: 50, directoryEntries: 100_000, parts: args.clusterParts, threeNats: args.clusterThreeNats }
      : { pairs: 16, payload: 64, rate: 10_000, windowMs: 1_000, maxRate: 128_000, attaches: 1_000, moves: 300, directoryEntries: 1_000_000, parts: args.clusterParts, threeNats: args.clusterThreeNats }) },
    { id: '10', name: 'heavy', run: (s) => heavySender(s, { steadyPairs: 16, steadyRate: 10_000, windowMs: quick ? 500 : 2_000, floodPayload: 1200 }) },
    { id: '11', name: 'heavy-tiny', run: (s) => heavySender(s, { steadyPairs: 16, steadyRate: 10_000, windowMs: quick ? 500 : 2_000, floodPayload: 12 }) },
    { id: '12', name: 'handshakes', run: (s) => handshakeRate(s, rate), identities: rate.first + rate.poolSize },
    { id: '13', name: 'idle-memory', run: (s) => idleMemory(s, idle), identities: (fdHardLimit > idle.projectTo ? idle.projectTo : Math.max(...idle.counts)) + 1 },
    { id: '14', name: 'reconnect', run: (s) => reconnectStorm(s, reconnect), identities: reconnect.stormFirst + args.runs * reconnect.stormSize },
    { id: '15', name: 'caddy', run: (s) => deployedPath(s, deployed), identities: deployed.handshakeFirst + deployed.handshakePool },
    { id: '16', name: 'shared', run: (s) => sharedPort(s, { pairs: 32, payload: 64, windowMs: quick ? 300 : 1_000 }) },
  ];
  const selected = scenarios.filter((s) => !args.only || args.only.includes(s.id) || args.only.includes(s.name)
    || (args.only.includes('6') && s.id === '1'));
  const identityCount = Math.max(Math.max(...memoryPeers) + stormSize + 200, ...selected.map((s) => s.identities ?? 0));
  const settings: BenchSettings = {
    quick, runs: args.runs, profileDir: args.profile, baselineDist, baselineEnv: args.baselineEnv,
    identitiesPath: join(dir, 'identities.json'), keysPath: join(dir, 'keys.json'), identityCount,
    log: (line) => console.log(line),
  };
  const t0 = Date.now();
  writeIdentityFiles(makeIdentities(identityCount), settings.identitiesPath, settings.keysPath);
  console.log(`bench: ${quick ? 'quick' : 'full'} run, ${args.runs} runs per figure, ${identityCount} identities (${Date.now() - t0} ms)`);
  console.log(`UDP load clients: ${process.env.BENCH_LOAD_UDP_IO === 'dgram' || !loadUdpBatchAddon().addon ? 'dgram' : 'udp-batch (sendmmsg/recvmmsg)'}; beacon UDP I/O: ${process.env.BEACON_UDP_IO ?? 'default (batched where built)'}`);
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, node ${process.version}, ${hasTaskset ? 'servers pinned to core 0, load to core 1' : 'no taskset: processes NOT pinned'}; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (baselineDist) console.log(`baseline slot: the beacon build at ${baselineDist}`);
  const rows: Row[] = [];
  const failures: string[] = [];
  try {
    for (const scenario of selected) {
      const t = Date.now();
      console.log(`\n== scenario ${scenario.id} (${scenario.name}) ==`);
      try {
        const got = await scenario.run(settings);
        rows.push(...got);
        printRows(got);
      } catch (err) {
        failures.push(`${scenario.name}: ${(err as Error).message}`);
        console.error(`scenario ${scenario.name} failed: ${(err as Error).stack}`);
      } finally {
        const left = await stopLeftovers();
        if (left) console.error(`stopped ${left} process(es) the scenario left running`);
      }
      console.log(`(${((Date.now() - t) / 1000).toFixed(1)} s; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')})`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  console.log(`\n== summary (${quick ? 'quick' : 'full'}, ${args.runs} runs, ${((Date.now() - started) / 1000).toFixed(0)} s) ==`);
  printRows(rows);
  if (args.profile) summarizeProfiles(args.profile);
  if (args.json) {
    writeFileSync(args.json, `${JSON.stringify({
      date: new Date().toISOString(), quick, runs: args.runs, node: process.version,
      cpus: cpus().length, cpu: cpus()[0]?.model, pinned: hasTaskset, loadAverageAtEnd: loadavg(), baseline: baselineDist, rows, failures,
    }, null, 2)}\n`);
    console.log(`results written to ${args.json}`);
  }
  if (args.md) {
    const pinning = hasTaskset ? 'beacon/baseline on core 0, load generators on core 1 (taskset)' : 'not pinned (no taskset)';
    writeFileSync(args.md, `Machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, Node ${process.version}, ${pinning}.\n` +
      `Command: \`npm run bench${quick ? ' -- --quick' : ''}\`, ${args.runs} runs, ${new Date().toISOString().slice(0, 10)}; ` +
      'cells are median [min-max], the ratio is computed run by run.\n\n' + markdownTable(rows));
    console.log(`results written to ${args.md}`);
  }
  if (failures.length) {
    console.error(`\n${failures.length} scenario(s) failed:\n  ${failures.join('\n  ')}`);
    process.exitCode = 1;
  }
}

main().catch((err: Error) => {
  console.error(`bench: ${err.message}`);
  process.exit(1);
});
