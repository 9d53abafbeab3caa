/**
 * Summarizes the V8 CPU profiles (`node --cpu-prof`) the beacon processes
 * wrote: the functions with the most self time, as shares of the time the
 * process was busy (idle excluded), across all profiles.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
}

export function topFunctions(files: readonly string[], limit = 20): { name: string; share: number }[] {
  const self = new Map<string, number>();
  let total = 0;
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
    for (const node of profile.nodes) {
      const hits = node.hitCount ?? 0;
      // Idle time is the process waiting for load: not a cost.
      if (!hits || node.callFrame.functionName === '(idle)') continue;
      const { functionName, url, lineNumber } = node.callFrame;
      const where = url ? `${url.replace(/^.*\/(node_modules|dist)\//, '$1/').replace(/^node:/, '')}:${lineNumber + 1}` : '';
      const key = `${functionName || '(anonymous)'} ${where}`.trim();
      self.set(key, (self.get(key) ?? 0) + hits);
      total += hits;
    }
  }
  return [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, limit).map(([name, hits]) => ({ name, share: hits / total }));
}

export function summarizeProfiles(dir: string): void {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(dir, f));
  if (files.length === 0) return void console.log(`no CPU profiles in ${dir}`);
  console.log(`\n== beacon CPU profile: top self time (share of busy time) over ${files.length} profile(s) in ${dir} ==`);
  for (const { name, share } of topFunctions(files)) console.log(`${(share * 100).toFixed(1).padStart(5)}%  ${name}`);
}

if (require.main === module) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node dist/test/bench/profile-summary.js DIR');
    process.exit(2);
  }
  summarizeProfiles(dir);
}
