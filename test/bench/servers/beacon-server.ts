/**
 * The beacon under test, in its own process: `startBeacon` with a keys file
 * and the config overrides the scenario passes (as JSON in argv[2]).
 *
 * - Prints nothing per packet: the beacon runs without a logger.
 * - BEACON_UDP_IO (batched, dgram) picks the UDP transport, as the flag's
 *   variable does; unset, the default (batched where the addon is built).
 * - Answers `stats` (counters, memory), `gc` (collect, then memory),
 *   `heapSnapshot`, `profileStart` (CPU profile, written to `profileDir`
 *   on exit), `reloadKeys` (as SIGHUP) and `loopWatchStart`/`loopWatchStop`
 *   (how long the event loop went without turning in between,
 *   servers/loop-watch.ts) over IPC;
 *   the orchestrator reads CPU time and RSS from /proc instead while the
 *   beacon is busy.
 */
import { startBeacon } from '../../../lib/beacon';
import { makeConfig, type BeaconConfig } from '../../../lib/config';
import { serve, sendReady } from '../common/serve';
import { writeHeapSnapshot } from 'node:v8';
import { collect } from './memory';
import { loopWatchCommands } from './loop-watch';
import { startProfiling, stopProfiling } from './profiler';

async function main(): Promise<void> {
  const { profileDir, ...overrides } = JSON.parse(process.argv[2] ?? '{}') as Partial<BeaconConfig> & { profileDir?: string };
  const beacon = await startBeacon(makeConfig({
    bind: { host: '127.0.0.1', port: 0 },
    udp: { host: '127.0.0.1', port: 0 },
    // --baseline-env BEACON_UDP_IO=dgram runs the same build on the other UDP transport.
    ...(process.env.BEACON_UDP_IO ? { udpIo: process.env.BEACON_UDP_IO as BeaconConfig['udpIo'] } : {}),
    // Every load generator sends from 127.0.0.1: one source address for the
    // whole UDP load. The per-source budgets have their own tests (udp-rate.test.ts).
    udpRatePerIp: 1e9,
    udpByteRatePerIp: 1e15,
    ...overrides,
  }));
  serve({
    stats: () => ({ stats: beacon.metrics().stats, peers: beacon.peerCount(), memory: process.memoryUsage() }),
    gc: () => collect(),
    heapSnapshot: (args: { file: string }) => writeHeapSnapshot(args.file),
    profileStart: () => startProfiling(),
    reloadKeys: () => beacon.reloadKeys(),
    ...loopWatchCommands(),
  }, async () => {
    if (profileDir) await stopProfiling(profileDir);
    await beacon.close();
  });
  sendReady({ http: beacon.httpAddress.port, udp: beacon.udpAddress.port });
}

main().catch((err: Error) => {
  console.error(`beacon-server: ${err.stack ?? err.message}`);
  process.exit(1);
});
