/**
 * The README's walkthrough, read from the README itself and run as written.
 *
 * - `readWalkthrough` cuts the "## Walkthrough" section into its numbered
 *   steps; each step keeps its code blocks in order: ```sh blocks are
 *   commands, bare ``` blocks are the output the text promises.
 * - `runWalkthrough` plays the three terminals: every command is the
 *   README's line, run by bash with the step-0 aliases, in `dir` (a copy of
 *   the project's layout). Long-running commands (the beacon, `connect`,
 *   `discover --to`) stay up; "type a line" is a write to their stdin;
 *   Ctrl-C is SIGINT to their process group. Promised output is waited
 *   for, bounded, line by line.
 * - "Through TLS" runs too: its local Caddyfile is written where the text
 *   says, Caddy is started as shown, and the `send` through it must print
 *   the promised reply.
 * - It binds the README's fixed ports (8443, 9001, 8444, 8080): run it in
 *   a network namespace of its own (test/walkthrough.test.ts does).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CodeBlock {
  /** 'sh' for commands, '' for promised output. */
  lang: string;
  lines: string[];
}

export interface Step {
  number: number;
  title: string;
  blocks: CodeBlock[];
}

/** The numbered steps of the README's walkthrough section. */
export function readWalkthrough(readme: string): Step[] {
  return readSteps(readme, 'Walkthrough');
}

/** The numbered steps (`### N. title`) of the `## <title…>` section of a page, with their code blocks. */
export function readSteps(page: string, section: string): Step[] {
  const start = page.indexOf(`\n## ${section}`);
  if (start < 0) throw new Error(`the page has no "## ${section}" section`);
  const end = page.indexOf('\n## ', start + 1);
  const text = page.slice(start, end < 0 ? undefined : end);
  const steps: Step[] = [];
  let current: Step | undefined;
  let block: CodeBlock | undefined;
  for (const line of text.split('\n')) {
    if (block) {
      if (line.startsWith('```')) {
        current?.blocks.push(block);
        block = undefined;
      } else {
        block.lines.push(line);
      }
      continue;
    }
    const heading = /^### (?:(\d+)\. )?(.*)$/.exec(line);
    if (heading) {
      // Unnumbered subsections ("Through TLS") are not steps of the run.
      current = heading[1] === undefined ? undefined : { number: Number(heading[1]), title: heading[2], blocks: [] };
      if (current) steps.push(current);
      continue;
    }
    const fence = /^```(\w*)$/.exec(line);
    if (fence) block = { lang: fence[1], lines: [] };
  }
  return steps;
}

/** An unnumbered subsection of the walkthrough ("Through TLS"): its text and its code blocks. */
export function readSubsection(readme: string, title: string): { text: string; blocks: CodeBlock[] } {
  const start = readme.indexOf(`\n### ${title}\n`);
  if (start < 0) throw new Error(`the walkthrough has no "### ${title}"`);
  const rest = readme.slice(start + 1);
  const end = rest.search(/\n##/);
  const text = end < 0 ? rest : rest.slice(0, end);
  const blocks: CodeBlock[] = [];
  let block: CodeBlock | undefined;
  for (const line of text.split('\n')) {
    const fence = /^```(\w*)$/.exec(line);
    if (block) {
      if (line.startsWith('```')) {
        blocks.push(block);
        block = undefined;
      } else {
        block.lines.push(line);
      }
    } else if (fence) {
      block = { lang: fence[1], lines: [] };
    }
  }
  return { text, blocks };
}

/** The step numbered `n`, or an error that says the README changed shape. */
export function step(steps: readonly Step[], n: number): Step {
  const found = steps.find((s) => s.number === n);
  if (!found) throw new Error(`the walkthrough has no step ${n}`);
  return found;
}

/** The commands of a step's `index`-th ```sh block (blank lines and comments dropped). */
export function commands(s: Step, index = 0): string[] {
  const blocks = s.blocks.filter((b) => b.lang === 'sh');
  const b = blocks[index];
  if (!b) throw new Error(`step ${s.number} ("${s.title}") has no sh block #${index + 1}`);
  return b.lines.map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

/** The step's `index`-th block of promised output. */
export function promised(s: Step, index = 0): string[] {
  const b = s.blocks.filter((x) => x.lang === '')[index];
  if (!b) throw new Error(`step ${s.number} ("${s.title}") has no output block #${index + 1}`);
  return b.lines.filter(Boolean);
}

/** How long any one promised line may take (a loaded 2-core machine starts Node slowly). */
const WAIT_MS = 20_000;

/** One terminal's command: bash with the step-0 aliases, in its own process group (so Ctrl-C reaches it all). */
export class Terminal {
  readonly child: ChildProcessWithoutNullStreams;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;

  constructor(
    readonly command: string, prelude: string[], cwd: string, private readonly log: (line: string) => void,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    const script = ['shopt -s expand_aliases', ...prelude, command].join('\n');
    this.child = spawn('bash', ['-c', script], { cwd, env, detached: true, stdio: 'pipe' });
    this.child.stdout.setEncoding('utf8').on('data', (t: string) => { this.stdout += t; });
    this.child.stderr.setEncoding('utf8').on('data', (t: string) => { this.stderr += t; });
    this.exited = once(this.child, 'close').then(([code]) => code as number | null);
    log(`$ ${command}`);
  }

  /** Waits until `stream` has a line matching `pattern` (a string must match the whole line). */
  async waitFor(stream: 'stdout' | 'stderr', pattern: string | RegExp, after = 0): Promise<string> {
    const test = (l: string) => (typeof pattern === 'string' ? l === pattern : pattern.test(l));
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const line = this[stream].slice(after).split('\n').find(test);
      if (line !== undefined) {
        this.log(`  ${stream}: ${line}`);
        return line;
      }
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`"${this.command}": no ${stream} line ${String(pattern)} `
          + `(${this.child.exitCode === null ? `within ${WAIT_MS} ms` : `exited ${this.child.exitCode}`});\n`
          + `stdout: ${this.stdout}\nstderr: ${this.stderr}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** A line typed into this terminal. */
  type(line: string): void {
    this.log(`  typed: ${line}`);
    this.child.stdin.write(`${line}\n`);
  }

  /** Ctrl-C: SIGINT to the process group, then the exit. */
  async interrupt(): Promise<number | null> {
    process.kill(-(this.child.pid as number), 'SIGINT');
    return this.finished();
  }

  /** The exit code, or an error after WAIT_MS. */
  async finished(): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`"${this.command}" did not exit within ${WAIT_MS} ms; stderr: ${this.stderr}`)), WAIT_MS);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kills what is left of the process group (by its id), for cleanup. */
  kill(): void {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    try {
      process.kill(-(this.child.pid as number), 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Waits, bounded, for `ready()`. */
export async function until(ready: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${WAIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Runs a command to its end; it must exit 0. */
export async function runToEnd(t: Terminal): Promise<Terminal> {
  const code = await t.finished();
  if (code !== 0) throw new Error(`"${t.command}" exited ${code}; stdout: ${t.stdout}\nstderr: ${t.stderr}`);
  return t;
}

/** A promised line as a pattern: numbers the client draws at random (its reconnect wait) match any number. */
function promisedPattern(line: string): RegExp {
  const escaped = line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${escaped.replace(/reconnecting in \d+ ms \\\(attempt/, 'reconnecting in \\d+ ms \\(attempt')}$`);
}

/** Alice (`connect --udp`, node 7777) prints her address and attaches; a line goes to bob (8888 over WebSocket) and one comes back. */
export async function udpBothWays(alice: Terminal, bob: Terminal): Promise<void> {
  await alice.waitFor('stdout', /^127\.0\.0\.1:\d+$/);
  await alice.waitFor('stderr', /attached to .* over UDP/);
  alice.type('over udp');
  await bob.waitFor('stdout', 'from 7777: over udp');
  bob.type('back over wss');
  await alice.waitFor('stdout', 'from 8888: back over wss');
}

/** Plays the walkthrough's steps 1 to 7 in `dir`; throws at the first broken promise. */
export async function runWalkthrough(readme: string, dir: string, log: (line: string) => void, stopped?: AbortSignal): Promise<void> {
  const steps = readWalkthrough(readme);
  const setup = commands(step(steps, 0));
  const prelude = setup.filter((c) => c.startsWith('alias '));
  if (prelude.length !== 1) throw new Error(`step 0 should define the aliases on one line, got: ${setup.join(' | ')}`);
  const open: Terminal[] = [];
  stopped?.addEventListener('abort', () => { for (const t of open) t.kill(); }, { once: true });
  const term = (command: string, env?: NodeJS.ProcessEnv) => {
    const t = new Terminal(command, prelude, dir, log, env);
    open.push(t);
    return t;
  };
  try {
    // 1, 2: identities and keys, each command to its end.
    for (const n of [1, 2]) {
      for (const command of commands(step(steps, n))) await runToEnd(term(command));
    }

    // 3: the beacon (terminal 1), then the health check from another terminal.
    const [startBeacon] = commands(step(steps, 3), 0);
    let beacon = term(startBeacon);
    await beacon.waitFor('stdout', /"msg":"beacon listening"/);
    for (const command of commands(step(steps, 3), 1)) {
      const check = await runToEnd(term(command));
      if (!/"status":"ok"/.test(check.stdout)) throw new Error(`"${command}" printed ${check.stdout}`);
    }

    // 4: bob connects (terminal 2) and says so, as promised.
    const bob = term(commands(step(steps, 4))[0]);
    for (const line of promised(step(steps, 4))) await bob.waitFor('stderr', line);

    // 5: alice sends; terminal 2 prints it. Then a send that waits for a line typed in terminal 2.
    const s5 = step(steps, 5);
    await runToEnd(term(commands(s5, 0)[0]));
    for (const line of promised(s5, 0)) await bob.waitFor('stdout', line);
    const asking = term(commands(s5, 1)[0]);
    await asking.waitFor('stderr', /waiting up to \d+ ms for a reply/);
    bob.type('hello alice');
    await asking.waitFor('stdout', 'from 8888: hello alice');
    await runToEnd(asking);

    // 6: alice over UDP (terminal 3): her address first, then lines both ways.
    const alice = term(commands(step(steps, 6))[0]);
    await udpBothWays(alice, bob);

    // Through TLS: the local Caddyfile as the text gives it, Caddy in front of the running beacon, a round trip.
    const tls = readSubsection(readme, 'Through TLS');
    const caddyfileName = /put\s+this in a file `([^`]+)`/.exec(tls.text)?.[1];
    const caddyfile = tls.blocks.find((b) => b.lang === '' && b.lines.some((l) => l.includes('tls internal')));
    const tlsBlock = tls.blocks.find((b) => b.lang === 'sh' && b.lines.some((l) => l.startsWith('caddy run')));
    const reply = /`send` prints `([^`]+)`/.exec(tls.text)?.[1];
    if (!caddyfileName || !caddyfile || !tlsBlock || !reply) throw new Error('"Through TLS" lost its local Caddyfile, its commands or the reply it promises');
    writeFileSync(join(dir, caddyfileName), `${caddyfile.lines.join('\n')}\n`);
    const [runCaddy, sendThroughTls] = tlsBlock.lines.filter((l) => l.trim() && !l.startsWith('#'));
    // HOME in the scratch directory: Caddy keeps its own config there, not in the tester's home.
    const caddy = term(runCaddy, { ...process.env, HOME: dir });
    await caddy.waitFor('stderr', /"msg":"serving initial configuration"/);
    const ca = /--ca (\S+)/.exec(sendThroughTls)?.[1];
    if (ca) await until(() => existsSync(join(dir, ca)), `Caddy's local CA at ${ca}`);
    const tlsSend = await runToEnd(term(sendThroughTls));
    await tlsSend.waitFor('stdout', reply);
    await caddy.interrupt();

    // 7: Ctrl-C in terminal 1, the same command again; terminal 2 shows the promised lines.
    const mark = bob.stderr.length;
    const code = await beacon.interrupt();
    if (code !== 0) throw new Error(`the beacon exited ${code} on Ctrl-C; stderr: ${beacon.stderr}`);
    beacon = term(startBeacon);
    for (const line of promised(step(steps, 7))) await bob.waitFor('stderr', promisedPattern(line), mark);

    for (const t of [alice, bob, beacon]) {
      const exit = await t.interrupt();
      if (exit !== 0) throw new Error(`"${t.command}" exited ${exit} on Ctrl-C; stderr: ${t.stderr}`);
    }
  } finally {
    for (const t of open) t.kill();
  }
}

/** Run as a script (in the network namespace): `node walkthrough.js README DIR`. */
if (require.main === module) {
  const [readmePath, dir] = process.argv.slice(2);
  // Stopped from outside (the test's deadline): take the terminals down with us.
  const stop = new AbortController();
  process.once('SIGTERM', () => {
    stop.abort();
    process.exit(1);
  });
  runWalkthrough(readFileSync(readmePath, 'utf8'), dir, (line) => process.stdout.write(`${line}\n`), stop.signal).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`walkthrough: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
