/**
 * This process's instance ID in the cluster, and what to tell the operator
 * when another live process already has it (EINSTANCEID).
 *
 * - --instance-id when given.
 * - Otherwise the host name and a port only this process holds on this
 *   host: the --ops-bind port when set (no two processes can listen on
 *   it), else the --bind port. With --reuse-port the processes share
 *   --bind, so there the ops port is what tells them apart; under systemd
 *   each beacon@N gets its own --ops-bind, so its ID survives restarts.
 * - With --reuse-port the ID is checked before the shared sockets are
 *   bound (a process refused for its ID must not take a share of the
 *   daemons meanwhile): `instanceIdFromFlags` gives it from the flags
 *   alone, unless it depends on a port still to be bound (port 0).
 * - The fix names the default that was used, and a second copy of one
 *   instance (the usual cause on one machine) before a clash of names.
 * - Pure: no NATS, loaded by the composition root before the cluster is.
 */
import { hostname } from 'node:os';
import type { BeaconConfig } from '../config';

export interface InstanceIdChoice {
  id: string;
  /** The fix to print when another live process has `id`. */
  fix: string;
}

/** What to do when two copies of one instance meet: the first thing to check. */
const COPY = 'if it is a second copy of this instance, stop one of them';

/** `bindPort` and `opsPort` are the bound ports (tests bind port 0). */
export function chooseInstanceId(config: BeaconConfig, bindPort: number, opsPort: number | undefined, host = hostname()): InstanceIdChoice {
  if (config.instanceId !== undefined) {
    return { id: config.instanceId, fix: `${COPY}; otherwise give each process its own --instance-id` };
  }
  const name = host.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 56) || 'beacon';
  if (opsPort !== undefined) {
    return {
      id: `${name}:${opsPort}`,
      fix: `${COPY}; otherwise give each its own --ops-bind (the default ID is the host name and the --ops-bind port, `
        + 'the same for one port on hosts of one name) or its own --instance-id',
    };
  }
  if (config.reusePort) {
    return {
      id: `${name}:${bindPort}`,
      fix: 'with --reuse-port the processes share --bind: give each its own --ops-bind (the default ID is then the host name and the --ops-bind port) or its own --instance-id',
    };
  }
  return {
    id: `${name}:${bindPort}`,
    fix: 'give each process its own --instance-id (the default, host name and --bind port, is the same on hosts of one name)',
  };
}

/**
 * The ID chooseInstanceId will choose, from the flags alone (before any
 * socket is bound); undefined when it depends on a port still to be bound.
 */
export function instanceIdFromFlags(config: BeaconConfig, host = hostname()): InstanceIdChoice | undefined {
  const opsPort = config.opsBind?.port;
  if (config.instanceId === undefined && (opsPort === 0 || (opsPort === undefined && config.bind.port === 0))) return undefined;
  return chooseInstanceId(config, config.bind.port, opsPort, host);
}
