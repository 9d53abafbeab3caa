/**
 * `beacon keys list`, `beacon keys remove` and `beacon keys check`: the way
 * out of a keys file that is wrong, without an editor.
 *
 * - `check FILE` validates with the beacon's own loader (lib/auth/keys-file),
 *   so it prints exactly the message the beacon would: exit 0 valid, 1
 *   invalid or missing.
 * - `list` prints `<node id> <public key>` lines, sorted by node ID; with
 *   --node-id only that node (exit 1 if it is not there).
 * - `remove --node-id N` drops one entry and rewrites the file atomically.
 *   A file whose only fault is that entry's key can be repaired this way
 *   (or with `keys add --replace`): the rest must be valid.
 * - Output is for people, on stdout; failures are thrown (cmd/errors.ts).
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { KeySet, KeysFileError, loadKeysFile, writeKeysFileAtomic } from '../lib/auth/keys-file';
import { parseKeysFile } from '../lib/auth/keys-file-codec';
import { parsePositiveInt } from '../lib/config';
import { MAX_NODE_ID, type NodeId } from '../lib/protocol';
import { UsageError } from './errors';
import { DEFAULT_KEYS_FILE, usageParser } from './options';

/** Exit code of `check`, `list --node-id` and `remove` when the answer is "no". */
const EXIT_NO = 1;

export function keysFileOption(verb: string): Option {
  return new Option('--keys <file>', `keys file to ${verb}`).default(DEFAULT_KEYS_FILE, `${DEFAULT_KEYS_FILE}, as the beacon`);
}

export function nodeIdOption(description: string): Option {
  return new Option('--node-id <n>', `${description}, 1 to ${MAX_NODE_ID}`)
    .argParser(usageParser((text: string) => parsePositiveInt(text, MAX_NODE_ID)));
}

export function keysListCommand(): Command {
  return new Command('list')
    .description('print the keys file as "<node id> <public key>" lines, sorted by node ID')
    .addOption(keysFileOption('read'))
    .addOption(nodeIdOption('print only this node (exit 1 if it has no key)'))
    .action((flags: { keys: string; nodeId?: NodeId }) => keysList(flags));
}

export function keysRemoveCommand(): Command {
  return new Command('remove')
    .description('remove one node from the keys file; a running beacon disconnects it')
    .addOption(keysFileOption('update'))
    .addOption(nodeIdOption('the node to remove').makeOptionMandatory())
    .action((flags: { keys: string; nodeId: NodeId }) => keysRemove(flags));
}

export function keysCheckCommand(): Command {
  return new Command('check')
    .description('validate a keys file as the beacon would: exit 0 if it loads, else 1 with the beacon\'s message')
    .argument('<file>', 'the keys file')
    .action((file: string) => keysCheck(file));
}

function keysList(flags: { keys: string; nodeId?: NodeId }): void {
  const keys = readKeys(flags.keys);
  if (flags.nodeId !== undefined) {
    const key = keys.rawOf(flags.nodeId)?.toString('base64');
    if (key === undefined) {
      process.stderr.write(`beacon: node ${flags.nodeId} has no key in ${flags.keys} (${countKeys(keys.size)})\n`);
      process.exitCode = EXIT_NO;
      return;
    }
    process.stdout.write(`${flags.nodeId} ${key}\n`);
    return;
  }
  // In node ID order already; written in pieces, so a million keys never make one string.
  const lines: string[] = [];
  for (const [id, raw] of keys.rawEntries()) {
    lines.push(`${id} ${raw.toString('base64')}\n`);
    if (lines.length === 4096) process.stdout.write(lines.splice(0).join(''));
  }
  process.stdout.write(lines.join(''));
}

function keysRemove(flags: { keys: string; nodeId: NodeId }): void {
  const { keys: before, badEntryDropped } = readKeysForEdit(flags.keys, flags.nodeId);
  const keys = before.without(flags.nodeId);
  if (keys === before && !badEntryDropped) {
    process.stderr.write(`beacon: node ${flags.nodeId} is not in ${flags.keys}; nothing changed (beacon keys list --keys ${flags.keys} shows the nodes)\n`);
    process.exitCode = EXIT_NO;
    return;
  }
  writeKeys(flags.keys, keys);
  process.stdout.write([
    `removed node ${flags.nodeId} from ${flags.keys} (${countKeys(keys.size)} left)`,
    `a beacon running with --keys ${flags.keys} picks this up by itself and disconnects node ${flags.nodeId}`,
    '',
  ].join('\n'));
}

function keysCheck(file: string): void {
  let size: number;
  try {
    size = loadKeysFile(file).size;
  } catch (err) {
    if (!(err instanceof KeysFileError)) throw err;
    process.stderr.write(`beacon: ${err.message}\n`);
    process.exitCode = EXIT_NO;
    return;
  }
  process.stdout.write(`${file}: valid, ${countKeys(size)}\n`);
}

/** The valid file's keys; throws KeysFileError (missing, invalid). */
export function readKeys(file: string): KeySet {
  return loadKeysFile(file);
}

/**
 * The file's entries for an edit of node `nodeId`: empty when the file does
 * not exist yet. When the only fault of the file is `nodeId`'s own key (the
 * entry the edit replaces or removes), that entry is dropped instead of
 * refusing the file; any other fault is thrown (KeysFileError).
 */
export function readKeysForEdit(file: string, nodeId: NodeId): { keys: KeySet; badEntryDropped: boolean } {
  try {
    return { keys: readKeys(file), badEntryDropped: false };
  } catch (err) {
    if (!(err instanceof KeysFileError)) throw err;
    if (err.code === 'not_found') return { keys: KeySet.EMPTY, badEntryDropped: false };
    if (err.code !== 'bad_public_key' || err.entry !== String(nodeId)) throw err;
    // Only the general (JSON.parse) path reports a bad key, so the file is JSON.
    const entries = JSON.parse(readFileSync(file, 'utf8').replace(/^\uFEFF/, '')) as Record<string, unknown>;
    delete entries[err.entry];
    return { keys: parseKeysFile(file, Buffer.from(JSON.stringify(entries))), badEntryDropped: true };
  }
}

export function writeKeys(file: string, keys: KeySet): void {
  try {
    writeKeysFileAtomic(file, keys);
  } catch (err) {
    if (err instanceof KeysFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new UsageError(`keys file ${file}: cannot be written (${code}); check that the directory exists and is writable`);
  }
}

export function countKeys(n: number): string {
  return `${n} ${n === 1 ? 'key' : 'keys'}`;
}
