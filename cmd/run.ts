/**
 * `beacon [options]`: runs the beacon until a signal stops it.
 *
 * - Flags become a BeaconConfig (cmd/options.ts), validated before anything
 *   binds; the keys file is --keys (which must load), else ./keys.json,
 *   watched even while it does not exist, so creating it later works at
 *   once (a warning says how, and that no daemon can authenticate before).
 * - Logs are pino JSON on stdout, written synchronously so the last lines
 *   before an exit are never lost; the same logger is the beacon's.
 * - SIGTERM/SIGINT: close() (peers get 1001), then exit 0; a second one while
 *   closing exits 1 at once. SIGHUP: reload the keys file (the beacon logs
 *   the outcome and revokes peers whose key is gone).
 * - Under systemd's Type=notify (lib/systemd/notify.ts): READY=1 once the
 *   beacon serves, RELOADING=1/READY=1 around a SIGHUP reload, STOPPING=1
 *   when a stop begins, WATCHDOG=1 pings from the event loop when the unit
 *   sets WatchdogSec=. $NOTIFY_SOCKET that cannot be used is bad input
 *   (exit 2): systemd would otherwise wait for READY=1 until it times out.
 * - Failures before the beacon listens are thrown to cmd/beacon.ts (one
 *   line, exit 2); an unexpected error afterwards is logged, exit 1.
 */
import { existsSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { startBeacon, type Beacon } from '../lib/beacon';
import { formatHostPort, redactUrl, validateConfig, type BeaconConfig } from '../lib/config';
import { StartError } from '../lib/start-error';
import { systemdNotifierFromEnv, type SystemdNotifier } from '../lib/systemd/notify';
import { loadUdpBatchAddon } from '../lib/native/udp-batch-addon';
import { VERSION } from '../lib/version';
import { DEFAULT_KEYS_FILE, configFromFlags, type RunFlags } from './options';

const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

/** The same advice in the start-up warning, on SIGHUP and in the docs. */
const HOW_TO_ADD_A_KEY = `add a key with beacon keys add --keys ${DEFAULT_KEYS_FILE} --node-id N --public-key B64: `
  + 'this beacon watches the file and picks it up at once, no restart needed';

export async function runBeacon(flags: RunFlags): Promise<void> {
  const keysFile = flags.keys ?? DEFAULT_KEYS_FILE;
  const config: BeaconConfig = { ...configFromFlags(flags, keysFile), keysFileMayBeMissing: flags.keys === undefined };
  validateConfig(config);

  const log = pino({ level: config.logLevel, name: 'beacon' }, pino.destination({ fd: 1, sync: true }));
  log.info({
    version: VERSION, keysFile, registry: flags.registry ?? null,
    cluster: config.clusterServers.length > 0 ? config.clusterServers.map(redactUrl) : null,
  }, 'beacon starting');
  const systemd = systemdNotifier(log);
  systemd?.startWatchdog();

  // Installed before start so a signal during start-up is not the default
  // (abrupt) exit; it is acted on once the beacon exists.
  let beacon: Beacon | undefined;
  let stopSignal: NodeJS.Signals | undefined;
  const stop = (signal: NodeJS.Signals) => {
    if (stopSignal) {
      log.warn({ signal }, 'second signal while shutting down; exiting now');
      process.exit(1);
    }
    stopSignal = signal;
    if (beacon) shutDown(beacon, signal, log, systemd);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, stop);
  process.on('SIGHUP', () => {
    if (!beacon || stopSignal) return;
    const serving = beacon;
    log.info({ signal: 'SIGHUP', keysFile }, 'reloading keys file');
    systemd?.reloading(`reloading ${keysFile}`);
    // A failed reload of an existing file is logged by the beacon; a file that is not there yet, here.
    void serving.reloadKeys().then((loaded) => {
      if (!loaded && !existsSync(keysFile)) log.warn({ signal: 'SIGHUP', keysFile }, `${keysFile} does not exist yet; ${HOW_TO_ADD_A_KEY}`);
      if (!stopSignal) systemd?.ready(servingStatus(serving, loaded ? `${keysFile} reloaded` : `${keysFile} not reloaded, previous keys kept`));
    });
  });

  try {
    beacon = await startBeacon(config, { logger: log });
  } catch (err) {
    for (const signal of STOP_SIGNALS) process.off(signal, stop);
    throw err;
  }

  // Cluster mode: a second live process with our --instance-id, found after start (NATS came late).
  beacon.on('fatal', (err: Error) => {
    log.fatal({ err: err.message }, 'cannot go on; exiting');
    process.stderr.write(`beacon: ${err.message}\n`);
    process.exit(2);
  });

  const crash = (err: unknown) => {
    log.fatal({ err }, 'unexpected error; exiting');
    process.exit(1);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);

  if (!stopSignal) systemd?.ready(servingStatus(beacon, 'started'));
  if (flags.keys === undefined && !config.registry && !existsSync(keysFile)) {
    log.warn({ keysFile },
      `no keys file yet (./${keysFile} does not exist) and no registry: no daemon can authenticate yet; ${HOW_TO_ADD_A_KEY}, `
      + 'or start the beacon with --keys FILE or --registry HOST:PORT');
  }
  if (stopSignal) shutDown(beacon, stopSignal, log, systemd);
}

/**
 * The systemd notifier when run by a Type=notify unit; undefined otherwise.
 * Throws StartError (exit 2) when $NOTIFY_SOCKET is set but cannot be used.
 */
function systemdNotifier(log: Logger): SystemdNotifier | undefined {
  const { addon, error } = loadUdpBatchAddon();
  const setup = systemdNotifierFromEnv(process.env, {
    pid: process.pid, log, send: addon ? addon.sdNotify : { unavailable: error ?? 'not built' },
  });
  if (setup.kind === 'unusable') throw new StartError(setup.problem, 'ENOTIFY');
  if (setup.kind === 'none') return undefined;
  const { notifier } = setup;
  log.info({ notifySocket: notifier.address, watchdogIntervalMs: notifier.watchdogIntervalMs ?? null }, 'systemd notifications on');
  return notifier;
}

function servingStatus(beacon: Beacon, what: string): string {
  const http = formatHostPort({ host: beacon.httpAddress.address, port: beacon.httpAddress.port });
  const udp = formatHostPort({ host: beacon.udpAddress.address, port: beacon.udpAddress.port });
  const ops = beacon.opsAddress ? `, ${formatHostPort({ host: beacon.opsAddress.address, port: beacon.opsAddress.port })} (/health, /metrics)` : '';
  return `serving on ${http} (HTTP, WebSocket) and ${udp} (UDP)${ops}; ${what}`;
}

function shutDown(beacon: Beacon, signal: NodeJS.Signals, log: Logger, systemd: SystemdNotifier | undefined): void {
  log.info({ signal }, 'signal received; shutting down');
  systemd?.stopping(`${signal}: draining ${beacon.peerCount()} peers, then stopping`);
  beacon.close().then(() => {
    log.info('beacon stopped');
    process.exit(0);
  }, (err: unknown) => {
    log.error({ err }, 'shutdown failed');
    process.exit(1);
  });
}
