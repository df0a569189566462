/**
 * failure_threshold: how many unhealthy machines a batch tolerates. A count ("0", "2") or a
 * percentage of the batch ("10%"): a batch of 10 with "30%" tolerates 3 unhealthy machines and
 * fails at 4. Percentages round down, so "10%" of a batch of 5 tolerates none — the batch may be
 * at most that share unhealthy, never more.
 */

export type FailureThreshold = { kind: "count"; count: number } | { kind: "percent"; percent: number };

const COUNT_RE = /^(0|[1-9][0-9]{0,6})$/;
const PERCENT_RE = /^(0|[1-9][0-9]{0,2})%$/;

/** Parses a threshold ("" means "0"); returns the reason when it is garbage. */
export function parseFailureThreshold(spec: string): FailureThreshold | string {
  if (spec === "") return { kind: "count", count: 0 };
  if (COUNT_RE.test(spec)) return { kind: "count", count: Number(spec) };
  const m = PERCENT_RE.exec(spec);
  if (m) {
    const percent = Number(m[1]);
    if (percent > 100) return `${JSON.stringify(spec)} is more than 100%`;
    return { kind: "percent", percent };
  }
  return `${JSON.stringify(spec.slice(0, 40))} is neither a count of machines (e.g. "0", "2") nor a percentage of the batch (0–100, e.g. "10%")`;
}

/** The number of unhealthy machines a batch of `batchSize` tolerates. */
export function allowedUnhealthy(threshold: FailureThreshold, batchSize: number): number {
  if (threshold.kind === "count") return threshold.count;
  return Math.floor((batchSize * threshold.percent) / 100);
}
