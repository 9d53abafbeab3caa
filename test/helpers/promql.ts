/**
 * Reading the shipped observability files without a YAML or PromQL library:
 * the alert rules' expressions (alerts.yml keeps one style for this: each
 * `expr: |` followed by an indented block), the Grafana dashboard's queries,
 * and the metric names a PromQL expression selects.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './deploy';

export const ALERTS_PATH = join(REPO_ROOT, 'deploy', 'prometheus', 'alerts.yml');
export const PROMETHEUS_CONFIG_PATH = join(REPO_ROOT, 'deploy', 'prometheus', 'prometheus.yml');
export const DASHBOARD_PATH = join(REPO_ROOT, 'deploy', 'grafana', 'beacon.json');

export interface AlertRule {
  alert: string;
  expr: string;
}

/** The alert rules of alerts.yml, in order; throws if an expression is not in the `expr: |` style. */
export function readAlertRules(text = readFileSync(ALERTS_PATH, 'utf8')): AlertRule[] {
  const lines = text.split('\n');
  const rules: AlertRule[] = [];
  let current: string | undefined;
  for (let i = 0; i < lines.length; i++) {
    const alert = /^\s*-\s*alert:\s*(\S+)\s*$/.exec(lines[i]!);
    if (alert) { current = alert[1]; continue; }
    const expr = /^(\s*)(?:-\s*)?expr:\s*(.*)$/.exec(lines[i]!);
    if (!expr) continue;
    if (!current) throw new Error(`alerts.yml:${i + 1}: expr outside an alert rule (recording rules are not expected)`);
    if (expr[2] !== '|') throw new Error(`alerts.yml:${i + 1}: write the expression as "expr: |" and an indented block`);
    const indent = expr[1]!.length;
    const body: string[] = [];
    while (i + 1 < lines.length && (lines[i + 1]!.trim() === '' || /^\s*/.exec(lines[i + 1]!)![0].length > indent)) {
      body.push(lines[++i]!.trim());
    }
    rules.push({ alert: current, expr: body.join('\n').trim() });
    current = undefined;
  }
  return rules;
}

/** Every PromQL query of the dashboard: panel targets (rows included), annotations, variables. */
export function dashboardQueries(dashboard: unknown): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  const d = dashboard as {
    panels?: Panel[];
    annotations?: { list?: { name?: string; expr?: string }[] };
    templating?: { list?: { name: string; type: string; query?: unknown; definition?: string }[] };
  };
  interface Panel { title?: string; targets?: { expr?: string }[]; panels?: Panel[] }
  const visit = (panels: Panel[] | undefined) => {
    for (const panel of panels ?? []) {
      for (const target of panel.targets ?? []) {
        if (target.expr) out.push({ where: `panel "${panel.title}"`, expr: target.expr });
      }
      visit(panel.panels);
    }
  };
  visit(d.panels);
  for (const a of d.annotations?.list ?? []) if (a.expr) out.push({ where: `annotation "${a.name}"`, expr: a.expr });
  for (const v of d.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const query = typeof v.query === 'string' ? v.query : (v.query as { query?: string } | undefined)?.query ?? v.definition ?? '';
    // Grafana's label_values(series, label) is not PromQL: its series (a metric, or a selector) is the first argument.
    const labelValues = /^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/.exec(query);
    out.push({ where: `variable "${v.name}"`, expr: labelValues ? labelValues[1]! : query });
  }
  return out;
}

const KEYWORDS = new Set([
  'and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset',
  'inf', 'nan', 'Inf', 'NaN', 'start', 'end',
]);

/**
 * The metric names an expression selects: identifiers that are not
 * functions, keywords, label names (inside {} or a by/on/... list),
 * strings, durations or numbers.
 */
export function metricNamesIn(expr: string): Set<string> {
  let s = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ');
  s = s.replace(/\{[^}]*\}/g, ' ');
  s = s.replace(/\[[^\]]*\]/g, ' ');
  s = s.replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = new Set<string>();
  for (const m of s.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const before = s[m.index! - 1];
    if (before !== undefined && /[0-9.]/.test(before)) continue; // 5m, 1e3
    if (/^\s*\(/.test(s.slice(m.index! + m[0].length))) continue; // a function
    if (KEYWORDS.has(m[0])) continue;
    names.add(m[0]);
  }
  return names;
}
