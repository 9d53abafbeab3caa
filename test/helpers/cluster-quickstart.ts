/**
 * The quick start of docs/cluster.md, read from the page and run as written
 * (the README walkthrough's Terminal, test/helpers/walkthrough.ts).
 *
 * - First what the quick start says it builds on: the README walkthrough's
 *   steps 0 to 2 (its aliases, identities and keys file), and a single
 *   beacon already running on 8443 and 9001 (its step 3), which the quick
 *   start must leave alone.
 * - Then each numbered step's commands, each in its own terminal: the
 *   long-running ones (nats-server, the instances, `connect`, `discover
 *   --to`) stay up and are waited for by the lines the text promises; the
 *   checks run to their end and must print what the text promises.
 * - It binds fixed ports (the quick start's and the single beacon's): run
 *   it in a network namespace of its own (test/deploy-cluster-quickstart.test.ts
 *   does).
 */
import { readFileSync } from 'node:fs';
import { Terminal, commands, promised, readSteps, readWalkthrough, runToEnd, step, udpBothWays } from './walkthrough';

/** The line an instance logs once it takes UDP claims (lib/cluster/nats-cluster.ts). */
const VIEW_COMPLETE = /"msg":"cluster: directory current and every live instance heard; taking UDP claims"/;

export async function runClusterQuickStart(readme: string, clusterPage: string, dir: string, log: (line: string) => void, stopped?: AbortSignal): Promise<void> {
  const walkthrough = readWalkthrough(readme);
  const prelude = commands(step(walkthrough, 0)).filter((c) => c.startsWith('alias '));
  if (prelude.length !== 1) throw new Error('the README\'s step 0 should define the aliases on one line');
  const quick = readSteps(clusterPage, 'Quick start on one machine');
  const open: Terminal[] = [];
  stopped?.addEventListener('abort', () => { for (const t of open) t.kill(); }, { once: true });
  // nats-server lives in /usr/sbin on Debian.
  const env = { ...process.env, PATH: `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin` };
  const term = (command: string) => {
    const t = new Terminal(command, prelude, dir, log, env);
    open.push(t);
    return t;
  };
  try {
    // What it builds on: the walkthrough's identities and keys, and its beacon on 8443 and 9001.
    for (const n of [1, 2]) for (const command of commands(step(walkthrough, n))) await runToEnd(term(command));
    const single = term(commands(step(walkthrough, 3))[0]!);
    await single.waitFor('stdout', /"bind":"127\.0\.0\.1:8443".*"msg":"beacon listening"/);

    // 1: NATS, its store in a throwaway directory.
    const [startNats] = commands(step(quick, 1));
    if (!/-sd "\$\(mktemp -d\)"/.test(startNats!) || /\/var\/lib\/nats/.test(startNats!)) throw new Error(`step 1 should use a throwaway store: ${startNats}`);
    const nats = term(startNats!);
    await nats.waitFor('stderr', /Server is ready/);

    // 2: two instances on one address; each takes UDP claims once it has heard the cluster.
    const starts = commands(step(quick, 2));
    if (starts.length !== 2) throw new Error(`step 2 should start two instances, found ${starts.length}`);
    const instances = starts.map((command) => term(command));
    for (const instance of instances) await instance.waitFor('stdout', VIEW_COMPLETE);

    // 3: the first instance's metrics say it is connected and sees both; the second's /health answers.
    const [metrics, health] = commands(step(quick, 3));
    const scraped = await runToEnd(term(metrics!));
    for (const line of promised(step(quick, 3))) {
      if (!scraped.stdout.split('\n').includes(line)) throw new Error(`"${metrics}" printed ${JSON.stringify(scraped.stdout)}, not the promised "${line}"`);
    }
    const answered = await runToEnd(term(health!));
    if (answered.stdout.trim() !== '{"status":"ok","peers":0}') throw new Error(`"${health}" printed ${answered.stdout}`);

    // 4: bob stays connected; alice's message reaches him, whichever instances the kernel chose.
    const [connect, send] = commands(step(quick, 4));
    const bob = term(connect!);
    await bob.waitFor('stderr', /^beacon-client: connected to ws:\/\/127\.0\.0\.1:8543\/v1\/compat as node 8888$/);
    await runToEnd(term(send!));
    for (const line of promised(step(quick, 4))) await bob.waitFor('stdout', line);

    // 5: alice over UDP, both ways.
    const alice = term(commands(step(quick, 5))[0]!);
    await udpBothWays(alice, bob);

    // The single beacon was left alone: still serving on 8443.
    const still = await runToEnd(term('curl -s http://127.0.0.1:8443/health'));
    if (!/"status":"ok"/.test(still.stdout)) throw new Error(`the single beacon on 8443 no longer answers: ${still.stdout}`);

    // 6: Ctrl-C everywhere; each exits cleanly.
    for (const t of [alice, bob, ...instances, nats, single]) {
      const exit = await t.interrupt();
      if (exit !== 0) throw new Error(`"${t.command}" exited ${exit} on Ctrl-C; stderr: ${t.stderr}`);
    }
  } finally {
    for (const t of open) t.kill();
  }
}

/** Run as a script (in the network namespace): `node cluster-quickstart.js README CLUSTER_MD DIR`. */
if (require.main === module) {
  const [readmePath, clusterPath, dir] = process.argv.slice(2);
  const stop = new AbortController();
  process.once('SIGTERM', () => {
    stop.abort();
    process.exit(1);
  });
  runClusterQuickStart(readFileSync(readmePath!, 'utf8'), readFileSync(clusterPath!, 'utf8'), dir!, (line) => process.stdout.write(`${line}\n`), stop.signal).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`cluster quick start: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
