/** Prints result rows as a fixed-width table: median [min-max] per server, and the ratio. */
import type { Spread } from './common/stats';
import type { Row } from './scenarios/context';

export function num(n: number): string {
  if (!Number.isFinite(n)) return '-';
  const a = Math.abs(n);
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  if (a >= 100) return n.toFixed(0);
  if (a >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

export function cell(s: Spread): string {
  return s.runs.length > 1 ? `${num(s.median)} [${num(s.min)}-${num(s.max)}]` : num(s.median);
}

export function ratioCell(s: Spread): string {
  if (!Number.isFinite(s.median)) return '-';
  const f = (x: number) => `${x.toFixed(2)}x`;
  return s.runs.length > 1 ? `${f(s.median)} [${f(s.min)}-${f(s.max)}]` : f(s.median);
}

export function printRows(rows: readonly Row[]): void {
  if (rows.length === 0) return;
  const table = rows.map((r) => [
    r.scenario, `${r.metric} (${r.unit}, ${r.better} is better)`, cell(r.beacon), cell(r.baseline), ratioCell(r.ratio),
    r.goal ? `${r.goal.met ? 'MET' : 'NOT MET'}: ${r.goal.text}` : '',
  ]);
  const head = ['scenario', 'figure', 'beacon', 'baseline', 'beacon/baseline', 'goal'];
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  console.log(line(head));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const row of table) console.log(line(row));
}

/** The rows as a Markdown table (for docs/bench.md). */
export function markdownTable(rows: readonly Row[]): string {
  const out = [
    '| scenario | figure | beacon | baseline | beacon/baseline | goal |',
    '|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const goal = r.goal ? `${r.goal.met ? '**met**' : '**not met**'}: ${r.goal.text}` : '';
    out.push(`| ${r.scenario} | ${r.metric} (${r.unit}, ${r.better} is better) | ${cell(r.beacon)} | ${cell(r.baseline)} | ${ratioCell(r.ratio)} | ${goal} |`);
  }
  return `${out.join('\n')}\n`;
}
