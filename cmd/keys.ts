/**
 * The key-management subcommands.
 *
 * - `beacon keygen --out FILE`: a new daemon identity (lib/identity), mode
 *   0600 (its folder created 0700 if missing), never over an existing file;
 *   prints the public key and the next step.
 * - `beacon keys add --keys FILE --node-id N (--identity FILE | --public-key B64) [--replace]`:
 *   adds one entry to the keys file and rewrites it atomically; an existing
 *   file that is invalid is refused, never overwritten. A node that already
 *   has another key keeps it unless --replace is given: replacing it
 *   disconnects the daemon that holds it, and a wrong --node-id is the
 *   likelier mistake.
 * - `beacon keys list`, `remove`, `check`: cmd/keys-manage.ts.
 * - Output is for people, on stdout; failures are thrown (cmd/errors.ts).
 */
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { Command, Option } from 'commander';
import type { KeySet } from '../lib/auth/keys-file';
import { generateIdentity, loadIdentity, publicKeyBase64, saveIdentity } from '../lib/identity';
import { PUBLIC_KEY_BYTES, decodeBase64Exact, type NodeId } from '../lib/protocol';
import { UsageError } from './errors';
import {
  countKeys, keysCheckCommand, keysFileOption, keysListCommand, keysRemoveCommand, nodeIdOption, readKeysForEdit, writeKeys,
} from './keys-manage';
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
    .description('add the public key of one node to the keys file (with --replace, change it)')
    .addOption(keysFileOption('update (created if missing)'))
    .addOption(nodeIdOption('node ID').makeOptionMandatory())
    .addOption(new Option('--identity <file>', 'take the public key from this identity file (from beacon keygen)')
      .conflicts('publicKey'))
    .addOption(new Option('--public-key <b64>', `the public key: base64 of ${PUBLIC_KEY_BYTES} bytes`)
      .argParser(usageParser(parsePublicKey)))
    .option('--replace', 'replace the key of a node that already has another one (its daemon is disconnected)')
    .action((flags: KeysAddFlags) => keysAdd(flags)));
  keys.addCommand(keysListCommand());
  keys.addCommand(keysRemoveCommand());
  keys.addCommand(keysCheckCommand());
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
  replace?: boolean;
}

function keysAdd(flags: KeysAddFlags): void {
  if (flags.identity === undefined && flags.publicKey === undefined) {
    throw new UsageError('keys add needs the key: give --public-key B64 or --identity FILE');
  }
  const publicKey = flags.publicKey ?? publicKeyBase64(loadIdentity(flags.identity as string));
  const raw = Buffer.from(publicKey, 'base64');
  const { keys: existing, badEntryDropped } = readKeysForEdit(flags.keys, flags.nodeId);
  const previous = existing.rawOf(flags.nodeId);
  if (previous?.equals(raw)) {
    process.stdout.write(`node ${flags.nodeId} already has this key in ${flags.keys}; nothing changed\n`);
    return;
  }
  const replacing = previous !== undefined || badEntryDropped;
  if (replacing && !flags.replace) throw refuseReplace(flags, existing, previous, raw);
  const keys = existing.with(flags.nodeId, raw);
  writeKeys(flags.keys, keys);
  const what = replacing ? `replaced the key of node ${flags.nodeId} in` : `added node ${flags.nodeId} to`;
  process.stdout.write([
    `${what} ${flags.keys} (${countKeys(keys.size)})`,
    `a beacon running with --keys ${flags.keys} picks this up by itself (it watches the file), or on SIGHUP (kill -HUP <pid>)`,
    '',
  ].join('\n'));
}

/** Says whose key would go, and what to do instead. */
function refuseReplace(flags: KeysAddFlags, keys: KeySet, previous: Buffer | undefined, raw: Buffer): UsageError {
  let owner: NodeId | undefined;
  for (const [nodeId, key] of keys.rawEntries()) {
    if (key.equals(raw)) {
      owner = nodeId;
      break;
    }
  }
  const alsoOwner = owner === undefined ? '' : ` (this key is already registered for node ${owner})`;
  const current = previous === undefined ? 'an invalid key' : `another key (${previous.toString('base64')})`;
  return new UsageError(`node ${flags.nodeId} already has ${current} in ${flags.keys}; adding this one${alsoOwner} would replace it `
    + `and disconnect the daemon that holds node ${flags.nodeId}'s key. Check --node-id; if node ${flags.nodeId} really has a new key, `
    + 'run the same command with --replace');
}

function parsePublicKey(text: string): string {
  const raw = decodeBase64Exact(text, PUBLIC_KEY_BYTES);
  if (!raw) {
    throw new Error(`"${text}" is not a public key: use standard base64 (with padding) of ${PUBLIC_KEY_BYTES} bytes, as printed by beacon keygen`);
  }
  return raw.toString('base64');
}
