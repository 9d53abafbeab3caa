#!/usr/bin/env node
/**
 * The `beacon` command line.
 *
 * - `beacon [options]` runs the beacon (cmd/run.ts); every BeaconConfig
 *   field is a flag (cmd/options.ts) and a BEACON_* environment variable.
 * - `beacon keygen` and `beacon keys add` manage identities and the keys
 *   file (cmd/keys.ts).
 * - Any bad input prints one line `beacon: <problem and fix>` on stderr and
 *   exits 2 (cmd/errors.ts); --help and --version exit 0.
 * - cmd/ only parses flags and calls lib/.
 */
import { Command } from 'commander';
import { DURATION_FORMS } from '../lib/config';
import { VERSION } from '../lib/version';
import { exitWithFailure } from './errors';
import { keygenCommand, keysCommand } from './keys';
import { readBooleanVariables, runOptions, type RunFlags } from './options';

/** Units and variables, once for all flags, so --help answers "90 what?". */
const RUN_HELP_FOOTER = `
Durations need a unit: ${DURATION_FORMS} (a bare number is refused).
Sizes are bytes, or with KiB or MiB: 262144, 256KiB, 1MiB.
Every flag can also be set by a variable: --idle-timeout is BEACON_IDLE_TIMEOUT,
--peer is BEACON_PEERS (comma-separated); a flag on the command line wins.`;

export function buildProgram(): Command {
  const program = new Command('beacon')
    .description('Relay beacon for the Pilot overlay network: compat WebSocket listener, UDP side, relay router')
    .version(VERSION)
    // Run flags go before a subcommand, so `keys add --keys` is the subcommand's.
    .enablePositionalOptions()
    // Errors are thrown to main(), which prints them on one line and exits 2.
    .exitOverride()
    .configureOutput({ outputError: () => undefined });
  for (const option of runOptions()) program.addOption(option);
  readBooleanVariables(program);
  program.addHelpText('after', RUN_HELP_FOOTER);
  // Loaded only to run: `beacon keys ...` and `--help` need none of the beacon's modules.
  program.action(async () => (await import('./run')).runBeacon(program.opts<RunFlags>()));
  // Added after exitOverride/configureOutput so they inherit both.
  program.addCommand(inherit(program, keygenCommand()));
  program.addCommand(inherit(program, keysCommand()));
  return program;
}

/** addCommand does not copy settings (command() does): give `sub` and its subcommands ours. */
function inherit(parent: Command, sub: Command): Command {
  sub.copyInheritedSettings(parent);
  for (const child of sub.commands) inherit(sub, child);
  return sub;
}

export async function main(argv: string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    exitWithFailure(err);
  }
}

if (require.main === module) void main();
