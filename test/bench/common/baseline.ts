/**
 * Another beacon build for the bench's baseline slot (`--baseline REV`,
 * `--baseline-dist DIR`).
 *
 * - A build runs with its own node_modules: the udp-batch addon is native
 *   code whose interface with its JS changes between commits (f1f67c8 added
 *   arguments to `open`), so an old dist that resolves this tree's addon
 *   fails at start ("open: 14 arguments expected").
 * - `baselineTree(REV)` builds REV once in a directory of its own under the
 *   system's temp dir: `git archive` of the commit, `npm ci` (which builds
 *   its addon), `tsc`. A later run with the same commit finds it built. It
 *   adds no git worktree and changes nothing in this repository.
 * - `checkBaselineDist(DIR)` refuses a dist whose packages resolve outside
 *   its own tree (no node_modules there, or one linked to another tree),
 *   naming the fix.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve, sep } from 'node:path';

/** This repository's root (the bench runs from dist/test/bench/common). */
const REPO_ROOT = join(__dirname, '..', '..', '..', '..');
/** Written last: a tree without it was interrupted mid-build and is built again. */
const BUILT_MARK = '.bench-baseline-built';

function run(command: string, args: string[], cwd: string): void {
  const got = spawnSync(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
  if (got.status !== 0) {
    throw new Error(`--baseline: \`${command} ${args.join(' ')}\` in ${cwd} failed (${got.status ?? got.signal}):\n${(got.stderr || got.stdout).slice(-2_000)}`);
  }
}

/** Builds (once) the beacon at git revision `rev` with its own node_modules; returns its dist directory. */
export function baselineTree(rev: string, log: (line: string) => void): string {
  let commit: string;
  try {
    commit = execFileSync('git', ['rev-parse', '--verify', `${rev}^{commit}`], { cwd: REPO_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    throw new Error(`--baseline ${rev}: not a commit of ${REPO_ROOT}; give a commit, tag or branch (git log --oneline)`);
  }
  const tree = join(tmpdir(), `beacon-bench-baseline-${commit.slice(0, 12)}`);
  const dist = join(tree, 'dist');
  if (existsSync(join(tree, BUILT_MARK))) {
    log(`baseline ${rev} (${commit.slice(0, 12)}): built before, in ${tree}`);
    return dist;
  }
  log(`baseline ${rev} (${commit.slice(0, 12)}): building in ${tree} (git archive, npm ci, tsc; a minute or two)`);
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(tree, { recursive: true });
  const archive = join(tree, '.source.tar');
  run('git', ['archive', '--format=tar', '-o', archive, commit], REPO_ROOT);
  run('tar', ['-xf', archive, '-C', tree], tree);
  rmSync(archive);
  run('npm', ['ci', '--no-audit', '--no-fund'], tree);
  run('npx', ['tsc', '-p', 'tsconfig.json'], tree);
  checkBaselineDist(dist);
  writeFileSync(join(tree, BUILT_MARK), `${commit}\n`);
  return dist;
}

/** `dist` if its beacon server is there and its packages resolve inside its own tree; throws naming the fix otherwise. */
export function checkBaselineDist(distArg: string): string {
  const dist = resolve(distArg);
  const server = join(dist, 'test', 'bench', 'servers', 'beacon-server.js');
  if (!existsSync(server)) throw new Error(`--baseline-dist ${distArg}: no ${server}; give the dist/ of a built beacon tree (npm run build there)`);
  const tree = realpathSync(dirname(dist));
  for (const pkg of ['fastify', '@beacon/udp-batch']) {
    let found: string;
    try {
      found = realpathSync(require.resolve(pkg, { paths: [join(dist, 'lib')] }));
    } catch {
      if (pkg === '@beacon/udp-batch') continue; // optional: that build then runs on dgram
      throw new Error(`--baseline-dist ${distArg}: cannot find ${pkg} from it; run \`npm ci\` in ${tree}, or use --baseline REV`);
    }
    if (!found.startsWith(tree + sep)) {
      throw new Error(`--baseline-dist ${distArg}: ${pkg} resolves to ${found}, outside that build's tree (${tree}); `
        + `a build must run with its own node_modules (the udp-batch addon's interface changes between commits): run \`npm ci\` in ${tree}, or use --baseline REV`);
    }
  }
  return dist;
}
