/**
 * `beacon [options]`: runs the beacon until a signal stops it.
 *
 * - Flags become a BeaconConfig (cmd/options.ts), validated before anything
 *   binds; the keys file is --keys, else ./keys.json if it exists, else none
 *   (with a warning that says how to add a key).
 * - Logs are pino JSON on stdout, written synchronously so the last lines
 *   before an exit are never lost; the same logger is the beacon's.
 * - SIGTERM/SIGINT: close() (peers get 1001), then exit 0; a second one while
 *   closing exits 1 at once. SIGHUP: reload the keys file (the beacon logs
 *   the outcome and revokes peers whose key is gone).
 * - Failures before the beacon listens are thrown to cmd/beacon.ts (one
 *   line, exit 2); an unexpected error afterwards is logged, exit 1.
 */
import { existsSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { startBeacon, type Beacon } from '../lib/beacon';
import { redactUrl, validateConfig } from '../lib/config';
import { VERSION } from '../lib/version';
import { DEFAULT_KEYS_FILE, configFromFlags, type RunFlags } from './options';

const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

export async function runBeacon(flags: RunFlags): Promise<void> {
  const keysFile = flags.keys ?? (existsSync(DEFAULT_KEYS_FILE) ? DEFAULT_KEYS_FILE : undefined);
  const config = configFromFlags(flags, keysFile);
  validateConfig(config);

  const log = pino({ level: config.logLevel, name: 'beacon' }, pino.destination({ fd: 1, sync: true }));
  log.info({
    version: VERSION, keysFile: keysFile ?? null, registry: flags.registry ?? null,
    cluster: config.clusterServers.length > 0 ? config.clusterServers.map(redactUrl) : null,
  }, 'beacon starting');

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
    if (beacon) shutDown(beacon, signal, log);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, stop);
  process.on('SIGHUP', () => {
    if (!beacon) return;
    if (!config.keysFile) {
      log.warn({ signal: 'SIGHUP' }, 'no keys file to reload; start the beacon with --keys FILE');
      return;
    }
    log.info({ signal: 'SIGHUP', keysFile: config.keysFile }, 'reloading keys file');
    void beacon.reloadKeys();
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

  if (!keysFile && !config.registry) {
    log.warn({ keysFile: null },
      'no keys file and no registry: no daemon can authenticate yet; add a key with '
      + `beacon keys add --keys ${DEFAULT_KEYS_FILE} --node-id N --public-key B64 `
      + `and restart the beacon (it uses ./${DEFAULT_KEYS_FILE}), or start it with --keys FILE or --registry HOST:PORT`);
  }
  if (stopSignal) shutDown(beacon, stopSignal, log);
}

function shutDown(beacon: Beacon, signal: NodeJS.Signals, log: Logger): void {
  log.info({ signal }, 'signal received; shutting down');
  beacon.close().then(() => {
    log.info('beacon stopped');
    process.exit(0);
  }, (err: unknown) => {
    log.error({ err }, 'shutdown failed');
    process.exit(1);
  });
}
