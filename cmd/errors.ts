/**
 * How the CLI reports a failure: one line on stderr, `beacon: <problem and fix>`.
 *
 * - Bad input (flags, environment, files the operator named, an address in
 *   use) exits 2; the errors lib/ throws for it carry messages that already
 *   name the flag or file and the fix, so they are printed as they are.
 * - Anything else is a bug or an accident of the host: it exits 1, still
 *   on one line (no stack trace for operators; `--log-level debug` logs
 *   details once the beacon runs).
 * - Commander's own usage errors keep their text, folded onto one line.
 */
import { CommanderError } from 'commander';
import { KeysFileError } from '../lib/auth/keys-file';
import { StartError } from '../lib/start-error';
import { ConfigError } from '../lib/config';
import { IdentityFileError } from '../lib/identity';

/** Exit code for bad input: flags, environment, named files, addresses. */
export const EXIT_USAGE = 2;
/** Exit code for an unexpected failure. */
export const EXIT_FAILURE = 1;

/** Bad input found by cmd/ itself (a flag combination, an unwritable path). */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface Problem {
  line: string;
  exitCode: number;
}

/** The one line to print and the exit code for `err`; exit code 0 for --help and --version. */
export function describeFailure(err: unknown): Problem {
  if (err instanceof CommanderError) {
    if (err.exitCode === 0) return { line: '', exitCode: 0 };
    const text = err.message.replace(/^error:\s*/, '');
    const hint = err.code === 'commander.unknownOption' || err.code === 'commander.unknownCommand'
      || err.code === 'commander.excessArguments' ? ' (see beacon --help)' : '';
    return { line: oneLine(text) + hint, exitCode: EXIT_USAGE };
  }
  if (err instanceof UsageError || err instanceof ConfigError || err instanceof StartError
    || err instanceof KeysFileError || err instanceof IdentityFileError) {
    return { line: oneLine(err.message), exitCode: EXIT_USAGE };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { line: oneLine(`unexpected error: ${message}`), exitCode: EXIT_FAILURE };
}

/** Prints the failure (if any) and exits with its code. */
export function exitWithFailure(err: unknown): never {
  const { line, exitCode } = describeFailure(err);
  if (line) process.stderr.write(`beacon: ${line}\n`);
  process.exit(exitCode);
}

function oneLine(text: string): string {
  return text.split(/\r?\n/).map((part) => part.trim()).filter(Boolean).join(' ');
}
