/**
 * `npm run soak -- --minutes N`: everything at once on one beacon for N
 * minutes (test/soak/load.ts), a row of figures per sample, and a verdict.
 *
 *   npm run soak -- --minutes 60              the long run (a row a minute)
 *   npm run soak -- --minutes 1               what `npm test` runs (a row every 5 s)
 *   npm run soak -- --minutes N --json FILE   also write every sample as JSON
 *   --sample-seconds S, --warmup-seconds W    override the defaults below
 *
 * - The beacon is the real CLI in its own process; figures come from its
 *   /metrics (test/soak/figures.ts), so the soak's own clients never count.
 * - It fails (exit 1) when: a resource grew after the warm-up beyond its
 *   margin; the beacon, once the load stopped and every client closed,
 *   holds more than before the load; a relay between well-behaved peers was
 *   lost; an outcome that must not happen happened (a bad handshake
 *   accepted, a well-behaved peer dropped); a workload never took effect;
 *   the beacon logged an error or did not exit 0 on SIGTERM.
 * - Only 127.0.0.1; every workload is bounded in rate and sockets.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BeaconProcess } from './beacon-process';
import {
  IDLE_SLACK, MARGINS, SAMPLE_HEADER, SUMMARY, formatTable, judgeGrowth, judgeIdle, parseSample, sampleRow, type Sample,
} from './figures';
import { SoakLoad } from './load';

interface Args {
  minutes: number;
  sampleS: number;
  warmupS: number;
  json: string | undefined;
}

function parseArgs(argv: readonly string[]): Args {
  let minutes = 1;
  let sampleS: number | undefined;
  let warmupS: number | undefined;
  let json: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v <= 0) throw new Error(`${flag} needs a positive number`);
      return v;
    };
    if (flag === '--minutes') minutes = value();
    else if (flag === '--sample-seconds') sampleS = value();
    else if (flag === '--warmup-seconds') warmupS = value();
    else if (flag === '--json') json = argv[++i];
    else throw new Error(`unknown flag ${flag}; use --minutes N [--sample-seconds S] [--warmup-seconds W] [--json FILE]`);
  }
  const durationS = minutes * 60;
  return {
    minutes,
    // A row a minute on long runs; about 30 rows on short ones.
    sampleS: sampleS ?? Math.min(60, Math.max(2, Math.round(durationS / 30))),
    // Caches fill, the JIT settles and the heap finds its size: a fifth of
    // the run, at least 30 s, at most 5 minutes.
    warmupS: warmupS ?? Math.min(300, Math.max(30, durationS / 5)),
    json,
  };
}

const AUTH_TIMEOUT_MS = 2_000;

/** Counters that must have moved: each workload took effect. */
const MUST_MOVE = ['authOk', 'badSig', 'replaced', 'revoked', 'idle', 'relayWss', 'relayUdp', 'relayBeacon', 'bufFull',
  // An oversized first message meets the 4 KiB handshake budget (hsBudget) before the 64 KiB limit (oversized).
  'malformed', 'hsBudget', 'reloadOk', 'reloadFail', 'regFound', 'regError', 'regDown'];

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dir = mkdtempSync(join(tmpdir(), 'beacon-soak-'));
  const keysPath = join(dir, 'keys.json');
  let beacon: BeaconProcess | undefined;
  const load = new SoakLoad({ keysPath, authTimeoutMs: AUTH_TIMEOUT_MS, signal: (name) => beacon?.signal(name) });
  const failures: string[] = [];
  try {
    const { registryPort, peerBeaconPort } = await load.prepare();
    beacon = await BeaconProcess.start([
      '--keys', keysPath, '--registry', `127.0.0.1:${registryPort}`,
      '--beacon-id', '1', '--peer', `127.0.0.1:${peerBeaconPort}`, '--sync-interval', '2s',
      '--auth-timeout', `${AUTH_TIMEOUT_MS}ms`, '--idle-timeout', '30s', '--max-per-ip', '512',
      '--key-cache-ttl', '3s', '--key-cache-negative-ttl', '1s', '--log-level', 'info',
    ]);
    console.log(`soak: ${args.minutes} min on beacon pid ${beacon.pid} (http ${beacon.httpPort}, udp ${beacon.udpPort}); `
      + `a sample every ${args.sampleS} s, warm-up ${args.warmupS} s`);
    const idleBefore = parseSample(await beacon.scrape(), 0);

    const startedAt = Date.now();
    await load.start(beacon.httpPort, beacon.udpPort);
    const samples: Sample[] = [];
    const rows: string[][] = [SAMPLE_HEADER];
    console.log(formatTable([SAMPLE_HEADER]));
    const endAt = startedAt + args.minutes * 60_000;
    for (let next = startedAt + args.sampleS * 1000; next <= endAt + 500; next += args.sampleS * 1000) {
      await sleep(next - Date.now());
      if (!beacon.running) throw new Error('the beacon exited during the soak');
      const sample = parseSample(await beacon.scrape(), (Date.now() - startedAt) / 1000);
      samples.push(sample);
      rows.push(sampleRow(sample));
      console.log(formatTable(rows).split('\n').at(-1));
    }

    await load.stop();
    const idleAfter = await waitForIdle(beacon);
    failures.push(...judgeIdle(idleBefore, idleAfter).map((p) => `after the load, ${p}`));

    console.log('\nGrowth after the warm-up (first third of the samples after it vs the last third; RSS: median of each, the rest: lowest of each):');
    const steady = samples.filter((s) => s.t >= args.warmupS).length;
    const verdicts = judgeGrowth(samples, args.warmupS, Math.max(3, Math.floor(steady / 3)));
    console.log(formatTable([['resource', 'of each', 'baseline', 'final', 'limit', 'margin', '', 'medians'],
      ...verdicts.map((v) => [v.resource, SUMMARY[v.resource], v.baseline.toFixed(1), v.final.toFixed(1), v.limit.toFixed(1),
        `+${MARGINS[v.resource].relative * 100}% +${MARGINS[v.resource].absolute}`, v.ok ? 'ok' : 'GREW',
        `${v.medians[0].toFixed(1)} -> ${v.medians[1].toFixed(1)}`])]));
    for (const v of verdicts) if (!v.ok) failures.push(`${v.resource} grew from ${v.baseline.toFixed(1)} to ${v.final.toFixed(1)} (limit ${v.limit.toFixed(1)})`);
    console.log(`\nIdle before the load vs after it (slack ${JSON.stringify(IDLE_SLACK)}):`);
    console.log(formatTable([['', 'fds', 'handles', 'timers', 'peers', 'hs', 'rss MiB', 'heap MiB'],
      ...[['before', idleBefore], ['after', idleAfter]].map(([name, s]) => {
        const x = s as Sample;
        return [name as string, String(x.fds), String(x.handles), String(x.timers), String(x.peers), String(x.handshakes),
          x.rssMiB.toFixed(1), x.heapMiB.toFixed(1)];
      })]));

    console.log('\nWell-behaved relays:');
    console.log(formatTable([['route', 'sent', 'received', 'lost'],
      ...load.streams.map((s) => [s.name, String(s.sent), String(s.received), String(s.sent - s.received)])]));
    for (const s of load.streams) {
      if (s.sent === 0) failures.push(`no relay was sent on ${s.name}`);
      if (s.received < s.sent) failures.push(`${s.sent - s.received} of ${s.sent} relays lost on ${s.name}`);
    }
    const { unexpected, ...counts } = load.counts;
    console.log(`\nLoad: ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    for (const [kind, { count, examples }] of unexpected) failures.push(`${count} x ${kind}, e.g. ${examples.join('; ')}`);
    const last = samples.at(-1)!;
    for (const counter of MUST_MOVE) {
      if (!(last.counters[counter]! > 0)) failures.push(`counter ${counter} never moved: that workload did not take effect`);
    }

    const code = await beacon.stop();
    if (code !== 0) failures.push(`the beacon exited with ${code} on SIGTERM`);
    const expectedErrors = (line: string) => line.includes('"msg":"keys file reload failed; keeping the previous keys"');
    const errors = beacon.errors.filter((line) => !expectedErrors(line));
    // The watcher and a SIGHUP may both reload one invalid file: a count, not a check.
    console.log(`failed keys reloads logged: ${beacon.errors.length - errors.length} (invalid files written: ${load.counts.invalidKeysFiles})`);
    failures.push(...errors.slice(0, 10).map((line) => `beacon logged an error: ${line}`));
    console.log(`beacon log lines: ${beacon.logLines}`);
    if (args.json) writeFileSync(args.json, JSON.stringify({ args, idleBefore, idleAfter, samples, streams: load.streams, counts: load.counts, failures }, null, 1));
  } finally {
    if (beacon?.running) await beacon.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  if (failures.length > 0) {
    console.log(`\nSOAK FAILED:\n${failures.map((f) => `  - ${f}`).join('\n')}`);
    process.exitCode = 1;
  } else {
    console.log('\nsoak passed');
  }
}

/** Waits until no peer and no handshake is left, then a moment for closes to finish; the sample after. */
async function waitForIdle(beacon: BeaconProcess): Promise<Sample> {
  const deadline = Date.now() + 20_000;
  let sample = parseSample(await beacon.scrape(), 0);
  while ((sample.peers > 0 || sample.handshakes > 0) && Date.now() < deadline) {
    await sleep(250);
    sample = parseSample(await beacon.scrape(), 0);
  }
  await sleep(3_000); // closes in their grace period (2 s) end
  return parseSample(await beacon.scrape(), 0);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

main().catch((err: Error) => {
  console.error(`soak: ${err.stack ?? err.message}`);
  process.exit(2);
});
