/**
 * systemd's notification protocol (sd_notify), for `beacon` run by a unit
 * of Type=notify (deploy/beacon.service).
 *
 * - Messages: READY=1 once the beacon serves; RELOADING=1 (with
 *   MONOTONIC_USEC, the CLOCK_MONOTONIC time systemd matches reloads by)
 *   and READY=1 again around a SIGHUP reload; STOPPING=1 when a graceful
 *   stop begins. Each carries a STATUS= line for `systemctl status`.
 * - Watchdog: when $WATCHDOG_USEC is set and $WATCHDOG_PID is unset or our
 *   PID, WATCHDOG=1 goes out from an event-loop timer every half of it, as
 *   systemd advises. A loop that stalls stops the pings, and systemd
 *   restarts the beacon (WatchdogSec=).
 * - Transport: the datagram goes through the udp-batch addon's sdNotify,
 *   as Node cannot open a Unix datagram socket. $NOTIFY_SOCKET set but no
 *   way to reach it (the addon not built, a vsock: address) is reported as
 *   `unusable`: the caller refuses to start, since systemd would wait for
 *   READY=1 in vain; deploy/beacon.service.d/wait-ready.conf is the unit's
 *   fallback without the addon (Type=exec, polling /health).
 * - A failed send never throws: the first failure of a run is logged, and
 *   the recovery, so a manager that went away costs one line, not one a ping.
 * - Does not: pass file descriptors (FDSTORE), extend start-up timeouts, or
 *   speak the vsock form of $NOTIFY_SOCKET.
 * - The variables are removed from process.env once read (as sd_notify's
 *   unset_environment), so no child process answers for the beacon.
 */
import type { FastifyBaseLogger } from 'fastify';

/** Sends one datagram to the notification socket; throws an Error with an errno `code` on failure. */
export type NotifySend = (address: string, message: Buffer) => void;

/** The variables systemd sets for a notify service. */
export interface NotifyEnvironment {
  NOTIFY_SOCKET?: string;
  WATCHDOG_USEC?: string;
  WATCHDOG_PID?: string;
}

export type NotifierSetup =
  /** Not run by a manager that listens for notifications: nothing to do. */
  | { kind: 'none' }
  | { kind: 'ready'; notifier: SystemdNotifier }
  /** $NOTIFY_SOCKET is set but cannot be used; `problem` names it and the fix. */
  | { kind: 'unusable'; problem: string };

/**
 * Reads the notification variables from `env` and removes them. `send` is
 * the addon's sdNotify, or why the addon is not there.
 */
export function systemdNotifierFromEnv(
  env: NotifyEnvironment,
  options: { pid: number; send: NotifySend | { unavailable: string }; log: FastifyBaseLogger },
): NotifierSetup {
  const address = env.NOTIFY_SOCKET;
  const watchdogUsec = env.WATCHDOG_USEC;
  const watchdogPid = env.WATCHDOG_PID;
  delete env.NOTIFY_SOCKET;
  delete env.WATCHDOG_USEC;
  delete env.WATCHDOG_PID;
  if (address === undefined || address === '') return { kind: 'none' };
  if (!address.startsWith('/') && !address.startsWith('@')) {
    return { kind: 'unusable', problem: `NOTIFY_SOCKET="${address}" is neither a path nor an abstract socket name (@...), which is all this beacon can send to` };
  }
  if (typeof options.send !== 'function') {
    return {
      kind: 'unusable',
      problem: `NOTIFY_SOCKET is set (a unit of Type=notify) but the udp-batch addon, which sends systemd's notifications, is not available (${options.send.unavailable}); `
        + 'build it (install g++, make and python3, then npm ci or npm rebuild @beacon/udp-batch), '
        + 'or install the drop-in deploy/beacon.service.d/wait-ready.conf (beacon@.service.d/ for beacon@N), with which the unit waits for /health instead',
    };
  }
  return { kind: 'ready', notifier: new SystemdNotifier(address, options.send, options.log, watchdogIntervalMs(watchdogUsec, watchdogPid, options.pid)) };
}

/**
 * Half of $WATCHDOG_USEC in ms, if the watchdog is ours: undefined when
 * unset, not a positive number, or meant for another process.
 */
export function watchdogIntervalMs(usecText: string | undefined, pidText: string | undefined, pid: number): number | undefined {
  if (usecText === undefined || !/^\d+$/.test(usecText)) return undefined;
  const usec = Number(usecText);
  if (!(usec > 0) || !Number.isSafeInteger(usec)) return undefined;
  if (pidText !== undefined && pidText !== '' && pidText !== String(pid)) return undefined;
  return Math.max(1, Math.floor(usec / 2_000));
}

/** CLOCK_MONOTONIC in microseconds, the clock libuv's hrtime reads. */
function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1_000n;
}

export class SystemdNotifier {
  private watchdog: NodeJS.Timeout | undefined;
  private failing = false;

  constructor(
    readonly address: string,
    private readonly send: NotifySend,
    private readonly log: FastifyBaseLogger,
    /** How often WATCHDOG=1 goes out; undefined when systemd set no watchdog for us. */
    readonly watchdogIntervalMs: number | undefined,
  ) {}

  /** The beacon serves (after start, and after a reload). */
  ready(status: string): void {
    this.notify(`READY=1\nSTATUS=${oneLine(status)}\n`);
  }

  /** A SIGHUP reload begins; ready() ends it. */
  reloading(status: string): void {
    this.notify(`RELOADING=1\nMONOTONIC_USEC=${monotonicUsec()}\nSTATUS=${oneLine(status)}\n`);
  }

  /** A graceful stop begins. */
  stopping(status: string): void {
    this.notify(`STOPPING=1\nSTATUS=${oneLine(status)}\n`);
  }

  /** Starts WATCHDOG=1 pings from the event loop (a no-op without a watchdog); the timer never keeps the process alive. */
  startWatchdog(): void {
    if (this.watchdogIntervalMs === undefined || this.watchdog) return;
    this.notify('WATCHDOG=1\n');
    this.watchdog = setInterval(() => this.notify('WATCHDOG=1\n'), this.watchdogIntervalMs);
    this.watchdog.unref();
  }

  stopWatchdog(): void {
    clearInterval(this.watchdog);
    this.watchdog = undefined;
  }

  private notify(message: string): void {
    try {
      this.send(this.address, Buffer.from(message));
      if (this.failing) {
        this.failing = false;
        this.log.info({ notifySocket: this.address }, 'systemd notification socket reachable again');
      }
    } catch (err) {
      if (this.failing) return;
      this.failing = true;
      const code = (err as NodeJS.ErrnoException).code ?? 'ERROR';
      this.log.warn({ notifySocket: this.address, code, err: (err as Error).message, message: message.split('\n')[0] },
        'cannot send to systemd\'s notification socket; systemd may wait for READY=1 or miss watchdog pings (retried with the next message)');
    }
  }
}

/** STATUS= is one line; a newline would start another assignment. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ');
}
