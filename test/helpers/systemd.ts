/**
 * Reading the shipped systemd unit and env file, and running their commands
 * here: the unit's /opt/beacon is this repository, so the commands the
 * tests run are the unit's own, not copies of them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './deploy';

export const UNIT_PATH = join(REPO_ROOT, 'deploy', 'beacon.service');
export const ENV_PATH = join(REPO_ROOT, 'deploy', 'beacon.env');
/** Where the unit expects the project to be installed. */
export const INSTALL_DIR = '/opt/beacon';

/** The unit's settings: section -> key -> values in order (a key may repeat). */
export type Unit = Map<string, Map<string, string[]>>;

export function parseUnit(text: string = readFileSync(UNIT_PATH, 'utf8')): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = unit.get(header[1]!) ?? new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const eq = line.indexOf('=');
    if (!section || eq < 0) throw new Error(`unit line outside a section or without "=": ${raw}`);
    const key = line.slice(0, eq).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return unit;
}

/** The last value of `key` in `section` (systemd's rule for single-valued keys); throws if absent. */
export function setting(unit: Unit, section: string, key: string): string {
  const values = unit.get(section)?.get(key);
  if (!values || values.length === 0) throw new Error(`the unit has no ${key}= in [${section}]`);
  return values[values.length - 1]!;
}

/** systemd time spans as the unit writes them: `15s`, `2min`, `500ms`, a bare number of seconds. */
export function parseTimespanMs(text: string): number {
  const units: Record<string, number> = { ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000 };
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h)?$/.exec(text.trim());
  if (!match) throw new Error(`"${text}" is not a time span this test understands`);
  return Number(match[1]) * units[match[2] ?? 's']!;
}

/**
 * A unit command line (ExecStart=...) as argv, with /opt/beacon replaced by
 * this repository; throws if the command does not live under /opt/beacon,
 * so a changed install path cannot go untested.
 */
export function unitCommand(line: string): string[] {
  const argv = line.replace(/^[-@:+!]+/, '').split(/\s+/).filter(Boolean);
  if (!argv.some((arg) => arg.startsWith(`${INSTALL_DIR}/`))) {
    throw new Error(`"${line}" does not run anything under ${INSTALL_DIR}`);
  }
  return argv.map((arg) => arg.startsWith(`${INSTALL_DIR}/`) ? join(REPO_ROOT, arg.slice(INSTALL_DIR.length + 1)) : arg);
}

export interface EnvEntry {
  name: string;
  value: string;
  /** A commented-out example (`#BEACON_X=...`). */
  commented: boolean;
  line: number;
}

/**
 * The variables of an EnvironmentFile: `NAME=value` lines, plus the
 * commented examples `#NAME=value` (flagged). Quotes are not used by the
 * shipped file and are refused, so what systemd reads is exactly what the
 * test reads.
 */
export function parseEnvFile(text: string = readFileSync(ENV_PATH, 'utf8')): EnvEntry[] {
  const entries: EnvEntry[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    const example = /^#\s*([A-Z][A-Z0-9_]*)=(.*)$/.exec(line);
    if (example) { entries.push({ name: example[1]!, value: example[2]!, commented: true, line: index + 1 }); return; }
    if (!line || line.startsWith('#')) return;
    const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!match) throw new Error(`${ENV_PATH}:${index + 1}: not NAME=value: ${raw}`);
    if (/["'\\$]/.test(match[2]!)) throw new Error(`${ENV_PATH}:${index + 1}: quotes, backslashes and $ are not used in this file: ${raw}`);
    entries.push({ name: match[1]!, value: match[2]!, commented: false, line: index + 1 });
  });
  return entries;
}

/** A process started by a test, with its output kept and lines awaited. */
export class Child {
  readonly process: ChildProcess;
  private out = '';
  private readonly waiters = new Set<() => void>();
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(argv: string[], env: NodeJS.ProcessEnv, cwd?: string) {
    this.process = spawn(argv[0]!, argv.slice(1), { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk: Buffer) => {
      this.out += chunk.toString('utf8');
      for (const wake of [...this.waiters]) wake();
    };
    this.process.stdout!.on('data', keep);
    this.process.stderr!.on('data', keep);
    this.exit = new Promise((resolve) => this.process.once('exit', (code, signal) => {
      resolve({ code, signal });
      for (const wake of [...this.waiters]) wake();
    }));
  }

  get pid(): number {
    return this.process.pid!;
  }

  get output(): string {
    return this.out;
  }

  get running(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  /** The first JSON log line whose msg is `msg` (pino), waiting up to `ms`; rejects with the output if the process exits first. */
  waitForLog(msg: string, ms = 10_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (const line of this.out.split('\n')) {
          if (!line.startsWith('{')) continue;
          try {
            const entry = JSON.parse(line) as Record<string, unknown>;
            if (entry.msg === msg) { done(); resolve(entry); return; }
          } catch { /* a partial line */ }
        }
        if (!this.running) { done(); reject(new Error(`exited before logging "${msg}"; output:\n${this.out}`)); }
      };
      const timer = setTimeout(() => { done(); reject(new Error(`no "${msg}" log line within ${ms} ms; output:\n${this.out}`)); }, ms);
      const done = () => { clearTimeout(timer); this.waiters.delete(check); };
      this.waiters.add(check);
      check();
    });
  }

  /** SIGTERM by PID, then SIGKILL after `ms`; resolves with how it exited. */
  async stop(ms = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) {
      process.kill(this.pid, 'SIGTERM');
      const timer = setTimeout(() => { if (this.running) process.kill(this.pid, 'SIGKILL'); }, ms);
      const result = await this.exit;
      clearTimeout(timer);
      return result;
    }
    return this.exit;
  }
}
