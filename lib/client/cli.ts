/**
 * The work behind `beacon-client` (cmd/beacon-client.ts only parses flags).
 *
 * - `connect`: one CompatClient that stays up (reconnecting on its own);
 *   RelayDeliver packets go to stdout as `from <sender>: <payload>`, state
 *   changes to stderr, and with `to` each stdin line is relayed.
 * - `send`: connect, relay one payload, optionally wait for a reply from
 *   the destination, exit. The protocol has no delivery report, so without
 *   a reply the output says delivery is not confirmed.
 * - `discover`: one Discover over UDP, the observed endpoint on stdout;
 *   with `listen` (or `to`) it then stays attached over UDP like `connect`.
 *   Without a node ID it is an address query (Discover for node 0): the
 *   beacon answers and records nothing.
 * - The first connection failure of `connect` and `send` ends the command
 *   with the error's one-line message (wrong scheme, TLS, 503, 429, auth,
 *   timeout...); once `connect` has been connected it rides out losses.
 * - Several URLs: the client fails over between them (CompatClient: first
 *   URL first, then the next on every reconnect); the first connection
 *   fails only once every URL failed in a row.
 * - Exit codes: 0 done, 1 the beacon could not be reached or did not
 *   answer as asked, 2 bad input (flags, URL, identity file, CA file).
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { IdentityFileError, loadIdentity } from '../identity';
import { ADDRESS_QUERY_NODE_ID, PacketType, type NodeId } from '../protocol';
import { CompatClient } from './compat-client';
import { parseBeaconUrl } from './connect-errors';
import { ClientError } from './errors';
import { formatDelivery } from './payload-format';
import { UdpNode, formatEndpoint } from './udp-discover';

export const ExitCode = { ok: 0, failed: 1, usage: 2 } as const;

export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
}

/** Bad input a person must fix before trying again (exit 2). */
export class CliUsageError extends Error {
  override name = 'CliUsageError';
}

export interface ClientFlags {
  /** One beacon URL, or several to fail over between. */
  url: string | readonly string[];
  identityFile: string;
  nodeId: NodeId;
  caFile?: string;
  connectTimeoutMs?: number;
}

export interface ConnectCommand extends ClientFlags {
  to?: NodeId;
  pingIntervalMs?: number;
  /** Aborted on SIGINT/SIGTERM: close and exit 0. */
  signal: AbortSignal;
}

export interface SendCommand extends ClientFlags {
  to: NodeId;
  data: string;
  /** Wait this long for a RelayDeliver from `to`; no wait when undefined. */
  waitMs?: number;
}

export interface DiscoverCommand {
  host: string;
  port: number;
  /** Undefined: an address query (node 0), which registers nothing; `listen` and `to` need a node ID. */
  nodeId?: NodeId;
  timeoutMs?: number;
  /** Stay attached over UDP and print RelayDeliver packets. */
  listen?: boolean;
  /** Relay each stdin line over UDP to this node (implies listen). */
  to?: NodeId;
  /** Aborted on SIGINT/SIGTERM when listening. */
  signal?: AbortSignal;
}

const PREFIX = 'beacon-client: ';

function say(io: CliIo, line: string): void {
  io.stderr.write(`${PREFIX}${line}\n`);
}

function makeClient(flags: ClientFlags, extra: { pingIntervalMs?: number } = {}): CompatClient {
  // The URLs first: a wrong scheme is the cheapest mistake to report.
  for (const url of typeof flags.url === 'string' ? [flags.url] : flags.url) parseBeaconUrl(url);
  let ca: Buffer | undefined;
  if (flags.caFile !== undefined) {
    try {
      ca = readFileSync(flags.caFile);
    } catch (err) {
      throw new CliUsageError(`--ca ${flags.caFile}: cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    if (!ca.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) {
      throw new CliUsageError(`--ca ${flags.caFile}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)`);
    }
  }
  return new CompatClient({
    url: flags.url, nodeId: flags.nodeId, identity: loadIdentity(flags.identityFile), ca,
    connectTimeoutMs: flags.connectTimeoutMs, pingIntervalMs: extra.pingIntervalMs,
  });
}

/** `beacon-client connect`: runs until `signal` aborts. */
export async function runConnect(cmd: ConnectCommand, io: CliIo): Promise<number> {
  const client = makeClient(cmd, { pingIntervalMs: cmd.pingIntervalMs });
  const several = client.urls.length > 1;
  const where = client.urls.map((u) => u.href).join(several ? ', ' : '');
  client.on('connected', ({ url }) => say(io, `connected to ${url} as node ${cmd.nodeId}`));
  client.on('disconnected', ({ code, reason }) => {
    if (client.state !== 'closed') say(io, `disconnected (close ${code}${reason ? `: ${reason}` : ''})`);
  });
  client.on('restarting', (n) => say(io, `the beacon announced a restart: reconnecting in about ${n.reconnect_in_ms} ms`));
  client.on('reconnecting', ({ attempt, delayMs, cause, error, url }) => {
    say(io, `reconnecting${several ? ` to ${url}` : ''} in ${delayMs} ms (attempt ${attempt}, ${cause.replace('_', ' ')}${error ? `: ${error.message}` : ''})`);
  });
  client.on('packet', (packet) => {
    if (packet.type === PacketType.RelayDeliver) io.stdout.write(`${formatDelivery(packet.sender, packet.payload)}\n`);
  });

  const stopped = new Promise<void>((resolve) => {
    if (cmd.signal.aborted) resolve();
    cmd.signal.addEventListener('abort', () => resolve(), { once: true });
  });
  void stopped.then(() => client.close());

  say(io, `connecting to ${several ? `the first of ${where}` : where} as node ${cmd.nodeId}`);
  try {
    await client.connect({ failFast: true });
  } catch (err) {
    if (cmd.signal.aborted) return ExitCode.ok;
    throw err;
  }

  const to = cmd.to;
  const lines = to === undefined ? undefined : relayStdinLines(io, (line) => client.relay(to, line));
  await stopped;
  lines?.close();
  await client.close();
  return ExitCode.ok;
}

/** `beacon-client send`: one relay, optionally one reply. */
export async function runSend(cmd: SendCommand, io: CliIo): Promise<number> {
  const client = makeClient(cmd);
  try {
    await client.connect({ failFast: true });
    const reply = cmd.waitMs === undefined ? undefined : new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new ClientError(`no reply from node ${cmd.to} within ${cmd.waitMs} ms`, 'ETIMEDOUT')), cmd.waitMs);
      client.on('packet', (packet) => {
        if (packet.type !== PacketType.RelayDeliver || packet.sender !== cmd.to) return;
        clearTimeout(timer);
        resolve(formatDelivery(packet.sender, packet.payload));
      });
      client.once('disconnected', ({ code, reason }) => {
        clearTimeout(timer);
        reject(new ClientError(`the beacon closed the connection (close ${code}${reason ? `: ${reason}` : ''}) before a reply from node ${cmd.to} arrived`, 'ECONNCLOSED'));
      });
    });
    reply?.catch(() => undefined); // awaited below; keeps an early rejection from being "unhandled"
    const bytes = Buffer.byteLength(cmd.data, 'utf8');
    client.relay(cmd.to, cmd.data);
    // The protocol has no delivery report: say what is known, and what is not.
    say(io, `sent ${bytes} bytes to node ${cmd.to} through ${client.url.host}; ${reply
      ? `waiting up to ${cmd.waitMs} ms for a reply`
      : 'delivery is not confirmed (the beacon drops it if the node is not connected; --wait DURATION waits for a reply)'}`);
    if (reply) io.stdout.write(`${await reply}\n`);
    return ExitCode.ok;
  } finally {
    await client.close();
  }
}

/**
 * `beacon-client discover`: prints the endpoint the beacon sees. With
 * `listen`, stays attached over UDP until `signal` aborts: prints each
 * RelayDeliver, and with `to` relays each stdin line over UDP.
 */
export async function runDiscover(cmd: DiscoverCommand, io: CliIo): Promise<number> {
  const listen = cmd.listen === true || cmd.to !== undefined;
  if (listen && cmd.nodeId === undefined) {
    throw new CliUsageError(`${cmd.to !== undefined ? '--to' : '--listen'} needs --node-id: relays are addressed to a node ID (without one, discover only asks for the address)`);
  }
  const nodeId = cmd.nodeId ?? ADDRESS_QUERY_NODE_ID;
  const node = await UdpNode.open({ host: cmd.host, port: cmd.port, nodeId, keepaliveMs: listen ? undefined : 0 });
  try {
    const endpoint = await node.discover(cmd.timeoutMs);
    io.stdout.write(`${formatEndpoint(endpoint)}\n`);
    if (!listen) return ExitCode.ok;
    say(io, `attached to ${node.where} over UDP as node ${cmd.nodeId} (from local port ${node.localPort}); Ctrl-C to stop`);
    node.on('packet', (packet) => {
      if (packet.type === PacketType.RelayDeliver) io.stdout.write(`${formatDelivery(packet.sender, packet.payload)}\n`);
    });
    node.on('error', (err) => say(io, err.message));
    const to = cmd.to;
    const lines = to === undefined ? undefined : relayStdinLines(io, (line) => node.relay(to, line));
    await new Promise<void>((resolve) => {
      if (cmd.signal?.aborted) resolve();
      cmd.signal?.addEventListener('abort', () => resolve(), { once: true });
    });
    lines?.close();
    return ExitCode.ok;
  } finally {
    node.close();
  }
}

/** Prints `err` as one line and returns the exit code for it. */
export function reportError(err: unknown, io: Pick<CliIo, 'stderr'>): number {
  const message = err instanceof Error ? err.message : String(err);
  io.stderr.write(`${PREFIX}${message.split('\n')[0]}\n`);
  if (err instanceof CliUsageError || err instanceof IdentityFileError || err instanceof TypeError || err instanceof RangeError) return ExitCode.usage;
  if (err instanceof ClientError && err.code === 'EBADURL') return ExitCode.usage;
  return ExitCode.failed;
}

/** Relays each line of stdin with `relay`; a line that cannot be sent is reported, not fatal. */
function relayStdinLines(io: CliIo, relay: (line: string) => void): ReturnType<typeof createInterface> {
  const lines = createInterface({ input: io.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    try {
      relay(line);
    } catch (err) {
      say(io, `line not sent: ${(err as Error).message}`);
    }
  });
  return lines;
}
