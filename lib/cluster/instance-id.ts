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
 * - Pure: no NATS, loaded by the composition root before the cluster is.
 */
import { hostname } from 'node:os';
import type { BeaconConfig } from '../config';

export interface InstanceIdChoice {
  id: string;
  /** The fix to print when another live process has `id`. */
  fix: string;
}

/** `bindPort` and `opsPort` are the bound ports (tests bind port 0). */
export function chooseInstanceId(config: BeaconConfig, bindPort: number, opsPort: number | undefined, host = hostname()): InstanceIdChoice {
  if (config.instanceId !== undefined) {
    return { id: config.instanceId, fix: 'give each process its own --instance-id' };
  }
  const name = host.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 56) || 'beacon';
  if (opsPort !== undefined) {
    return {
      id: `${name}:${opsPort}`,
      fix: 'give each process its own --instance-id (the default, host name and --ops-bind port, is the same on hosts of one name)',
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
