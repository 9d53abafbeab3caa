/**
 * The key-management subcommands.
 *
 * - `beacon keygen --out FILE`: a new daemon identity (lib/identity), mode
 *   0600 (its folder created 0700 if missing), never over an existing file;
 *   prints the public key and the next step.
 * - `beacon keys add --keys FILE --node-id N (--identity FILE | --public-key B64)`:
 *   adds or replaces one entry of the keys file and rewrites it atomically;
 *   an existing file that is invalid is refused, never overwritten.
 * - Output is for people, on stdout; failures are thrown (cmd/errors.ts).
 */
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import { KeySet, KeysFileError, loadKeysFile, writeKeysFileAtomic } from '../lib/auth/keys-file';
import { generateIdentity, loadIdentity, publicKeyBase64, saveIdentity } from '../lib/identity';
import { MAX_NODE_ID, PUBLIC_KEY_BYTES, decodeBase64Exact, type NodeId } from '../lib/protocol';
import { parsePositiveInt } from '../lib/config';
import { UsageError } from './errors';
import { DEFAULT_KEYS_FILE, usageParser } from './options';

export function keygenCommand(): Command {
  return new Command('keygen')
    .description('write a new daemon identity (Ed25519 key pair) and print its public key')
    .requiredOption('--out <file>', 'identity file to create (mode 0600; an existing file is never overwritten)')
    .action((flags: { out: string }) => keygen(flags.out));
}

export function keysCommand(): Command {
  const keys = new Command('keys')
    .description('manage the keys file')
    .action(() => {
      throw new UsageError(`keys needs a subcommand: beacon keys add --keys ${DEFAULT_KEYS_FILE} --node-id N --public-key B64`);
    });
  keys.addCommand(new Command('add')
    .description('add or replace the public key of one node in the keys file')
    .requiredOption('--keys <file>', 'keys file to update (created if missing)')
    .addOption(new Option('--node-id <n>', `node ID, 1 to ${MAX_NODE_ID}`)
      .argParser(usageParser((text: string) => parsePositiveInt(text, MAX_NODE_ID))).makeOptionMandatory())
    .addOption(new Option('--identity <file>', 'take the public key from this identity file (from beacon keygen)')
      .conflicts('publicKey'))
    .addOption(new Option('--public-key <b64>', `the public key: base64 of ${PUBLIC_KEY_BYTES} bytes`)
      .argParser(usageParser(parsePublicKey)))
    .action((flags: KeysAddFlags) => keysAdd(flags)));
  return keys;
}

function keygen(out: string): void {
  // A missing folder (the walkthrough's identities/) is made private: it holds private keys.
  mkdirSync(path.dirname(path.resolve(out)), { recursive: true, mode: 0o700 });
  const identity = generateIdentity();
  saveIdentity(out, identity);
  const publicKey = publicKeyBase64(identity);
  process.stdout.write([
    `wrote ${out} (mode 0600): the node's private key, keep it secret`,
    `public key: ${publicKey}`,
    'next: register it with the beacon:',
    `  beacon keys add --keys ${DEFAULT_KEYS_FILE} --node-id N --public-key ${publicKey}`,
    '',
  ].join('\n'));
}

interface KeysAddFlags {
  keys: string;
  nodeId: NodeId;
  identity?: string;
  publicKey?: string;
}

function keysAdd(flags: KeysAddFlags): void {
  if (flags.identity === undefined && flags.publicKey === undefined) {
    throw new UsageError('keys add needs the key: give --public-key B64 or --identity FILE');
  }
  const publicKey = flags.publicKey ?? publicKeyBase64(loadIdentity(flags.identity as string));
  const raw = Buffer.from(publicKey, 'base64');
  const existing = readExistingKeys(flags.keys);
  const previous = existing.rawOf(flags.nodeId);
  if (previous?.equals(raw)) {
    process.stdout.write(`node ${flags.nodeId} already has this key in ${flags.keys}; nothing changed\n`);
    return;
  }
  const keys = existing.with(flags.nodeId, raw);
  try {
    writeKeysFileAtomic(flags.keys, keys);
  } catch (err) {
    if (err instanceof KeysFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new UsageError(`keys file ${flags.keys}: cannot be written (${code}); check that the directory exists and is writable`);
  }
  const what = previous === undefined ? `added node ${flags.nodeId} to` : `replaced the key of node ${flags.nodeId} in`;
  process.stdout.write([
    `${what} ${flags.keys} (${keys.size} ${keys.size === 1 ? 'key' : 'keys'})`,
    `a beacon running with --keys ${flags.keys} picks this up by itself (it watches the file), or on SIGHUP (kill -HUP <pid>)`,
    '',
  ].join('\n'));
}

/** The file's keys; empty when the file does not exist yet; throws when it is invalid. */
function readExistingKeys(file: string): KeySet {
  try {
    return loadKeysFile(file);
  } catch (err) {
    if (err instanceof KeysFileError && err.code === 'not_found') return KeySet.EMPTY;
    throw err;
  }
}

function parsePublicKey(text: string): string {
  const raw = decodeBase64Exact(text, PUBLIC_KEY_BYTES);
  if (!raw) {
    throw new Error(`"${text}" is not a public key: use standard base64 (with padding) of ${PUBLIC_KEY_BYTES} bytes, as printed by beacon keygen`);
  }
  return raw.toString('base64');
}
