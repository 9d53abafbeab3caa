#!/usr/bin/env node
/**
 * beacon-client: checks a beacon deployment end to end from the daemon's
 * side. Parses flags and calls lib/client/cli.ts; nothing else lives here.
 *
 *   beacon-client connect URL... --identity FILE --node-id N [--to DEST] [--ca FILE]
 *   beacon-client send URL... --identity FILE --node-id N --to DEST --data TEXT [--wait DURATION] [--ca FILE]
 * Several URLs: failover between them, in order (lib/client/compat-client.ts).
 *   beacon-client discover HOST:PORT [--node-id N [--listen] [--to DEST]]
 *
 * Every error, commander's own included, is one line starting
 * `beacon-client:`; required options say so in --help.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { ExitCode, reportError, runConnect, runDiscover, runSend, type CliIo } from '../lib/client/cli';
import { DURATION_FORMS, parseDuration, parseHostPort, parsePositiveInt } from '../lib/config/units';
import { MAX_NODE_ID } from '../lib/protocol';
import { VERSION } from '../lib/version';

const io: CliIo = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin };

/** Wraps a parser so commander reports its message as an invalid argument. */
function arg<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}
const nodeId = arg((text) => parsePositiveInt(text, MAX_NODE_ID));
const URLS_HELP = 'ws://HOST:PORT/v1/compat or wss://HOST/v1/compat; several to fail over between them (first one first, then the next on every reconnect)';
const duration = arg(parseDuration);
const udpAddress = arg((text) => parseHostPort(text, '127.0.0.1:9001'));

/** Commander does not mark required options in --help; the description does. */
const REQUIRED = ' (required)';

const EXAMPLES = {
  connect: 'beacon-client connect ws://127.0.0.1:8443/v1/compat --identity identities/bob.json --node-id 8888 --to 7777',
  send: 'beacon-client send ws://127.0.0.1:8443/v1/compat --identity identities/alice.json --node-id 7777 --to 8888 --data hi --wait 30s',
  discover: "beacon-client discover 127.0.0.1:9001 --node-id 7777   (UDP: the beacon's --udp address, port 9001 by default)",
  query: 'beacon-client discover 127.0.0.1:9001                  (no --node-id: only ask for the address; the beacon records nothing)',
};
const DURATIONS = `Durations need a unit: ${DURATION_FORMS}.`;

function helpFooter(...examples: string[]): string {
  return `\n${DURATIONS}\nExample${examples.length > 1 ? 's' : ''}:\n${examples.map((line) => `  ${line}`).join('\n')}`;
}

interface ClientOpts { identity: string; nodeId: number; ca?: string; timeout: number }

function clientOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--identity <file>', `identity file of this node (beacon keygen --out FILE)${REQUIRED}`)
    .requiredOption('--node-id <n>', `node ID to authenticate as${REQUIRED}`, nodeId)
    .option('--ca <file>', 'PEM certificate of the CA to trust for wss:// (a private or self-signed CA)')
    .addOption(new Option('--timeout <duration>', 'give up connecting after this (upgrade, challenge and auth_ok)').default(10_000, '10s').argParser(duration));
}

async function main(argv: string[]): Promise<number> {
  const program = new Command('beacon-client')
    .description('Talk to a Pilot beacon as a daemon would: over the compat WebSocket, or over UDP')
    .version(VERSION)
    .exitOverride()
    // Commander's "error: required option ..." becomes one `beacon-client:` line like every other error.
    .configureOutput({ outputError: (text, write) => write(`beacon-client: ${text.replace(/^error:\s*/, '')}`) })
    .addHelpText('after', helpFooter(EXAMPLES.connect, EXAMPLES.send, EXAMPLES.discover));
  let result: Promise<number> = Promise.resolve(ExitCode.ok);

  clientOptions(program.command('connect')
    .description('connect, print each relayed packet as "from <sender>: <payload>", relay stdin lines to --to')
    .argument('<url...>', URLS_HELP)
    .option('--to <dest>', 'relay each line read from stdin to this node', nodeId)
    .addHelpText('after', helpFooter(EXAMPLES.connect)))
    .action((url: string[], opts: ClientOpts & { to?: number }) => {
      const stop = new AbortController();
      process.once('SIGINT', () => stop.abort());
      process.once('SIGTERM', () => stop.abort());
      result = runConnect({
        url, identityFile: opts.identity, nodeId: opts.nodeId, caFile: opts.ca, connectTimeoutMs: opts.timeout,
        to: opts.to, signal: stop.signal,
      }, io);
    });

  clientOptions(program.command('send')
    .description('connect, relay one payload to --to, exit 0 once the beacon took it. Delivery is not confirmed '
      + '(the protocol has no delivery report; the beacon drops a packet for a node that is not connected): '
      + 'with --wait, exit 0 only if --to replies in time, else 1')
    .argument('<url...>', URLS_HELP)
    .requiredOption('--to <dest>', `node to relay to${REQUIRED}`, nodeId)
    .requiredOption('--data <text>', `payload (UTF-8 text)${REQUIRED}`)
    .option('--wait <duration>', `wait this long for a reply from --to and print it: the only confirmation that --to got the message (e.g. 30s)`, duration)
    .addHelpText('after', helpFooter(EXAMPLES.send)))
    .action((url: string[], opts: ClientOpts & { to: number; data: string; wait?: number }) => {
      result = runSend({
        url, identityFile: opts.identity, nodeId: opts.nodeId, caFile: opts.ca, connectTimeoutMs: opts.timeout,
        to: opts.to, data: opts.data, waitMs: opts.wait,
      }, io);
    });

  program.command('discover')
    .description('send Discover over UDP and print the endpoint the beacon sees (IP:PORT); with --listen, stay attached over UDP')
    .argument('<host:port>', "the beacon's UDP address (its --udp, e.g. 127.0.0.1:9001)", udpAddress)
    .option('--node-id <n>', 'node ID to discover as; without it, a Discover for node 0: the beacon answers with the address it sees '
      + 'and records nothing (what a Go daemon asks before it registers)', nodeId)
    .option('--listen', 'stay attached over UDP and print each relayed packet as "from <sender>: <payload>" (needs --node-id)')
    .option('--to <dest>', 'relay each line read from stdin to this node over UDP (implies --listen; needs --node-id)', nodeId)
    .addOption(new Option('--timeout <duration>', 'give up waiting for the DiscoverReply after this').default(3_000, '3s').argParser(duration))
    .addHelpText('after', helpFooter(EXAMPLES.discover, EXAMPLES.query))
    .action((at: { host: string; port: number }, opts: { nodeId?: number; timeout: number; listen?: boolean; to?: number }) => {
      const stop = new AbortController();
      process.once('SIGINT', () => stop.abort());
      process.once('SIGTERM', () => stop.abort());
      result = runDiscover({
        host: at.host, port: at.port, nodeId: opts.nodeId, timeoutMs: opts.timeout, listen: opts.listen, to: opts.to, signal: stop.signal,
      }, io);
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    throw err;
  }
  return result;
}

main(process.argv).then(
  (code) => process.exit(code),
  (err: unknown) => process.exit(reportError(err, io)),
);
