/**
 * Batch planning: how a rollout's target machines are split into successive batches.
 *
 * - ALL_AT_ONCE: one batch with every machine.
 * - CANARY: the first machine alone, then everybody else.
 * - STAGED: `batch_sizes`, each a count ("2") or a percentage of the machines not yet in a
 *   batch ("25%", rounded up, at least 1); the last size takes whatever is left, and sizes that
 *   find nobody left are dropped.
 *
 * Machines keep the order they are given in (explicit hosts in the operator's order, tag
 * targets sorted by id), so the canary is predictable.
 */
import type { Strategy } from "../store/records.js";

export type BatchSize = { kind: "count"; count: number } | { kind: "percent"; percent: number };

export const MAX_BATCH_SIZES = 100;
const COUNT_RE = /^[1-9][0-9]{0,6}$/;
const PERCENT_RE = /^([1-9][0-9]{0,2})%$/;

/** Parses "3" or "25%"; returns the reason when the spec is not one of those. */
export function parseBatchSize(spec: string): BatchSize | string {
  if (COUNT_RE.test(spec)) return { kind: "count", count: Number(spec) };
  const m = PERCENT_RE.exec(spec);
  if (m) {
    const percent = Number(m[1]);
    if (percent > 100) return `${JSON.stringify(spec)} is more than 100%`;
    return { kind: "percent", percent };
  }
  return `${JSON.stringify(spec.slice(0, 40))} is neither a machine count (a whole number ≥ 1, e.g. "2") nor a percentage (1–100, e.g. "25%")`;
}

/** Validates a STAGED rollout's batch_sizes; returns the offending index and reason. */
export function batchSizesProblem(
  specs: readonly string[],
): { index: number | null; reason: string } | undefined {
  if (specs.length === 0) return { index: null, reason: "a STAGED rollout needs at least one batch size" };
  if (specs.length > MAX_BATCH_SIZES)
    return { index: null, reason: `at most ${MAX_BATCH_SIZES} batch sizes allowed, got ${specs.length}` };
  for (const [index, spec] of specs.entries()) {
    const parsed = parseBatchSize(spec);
    if (typeof parsed === "string") return { index, reason: parsed };
  }
  return undefined;
}

/** The sizes a strategy stands for, as shown in Rollout.batch_sizes. */
export function effectiveBatchSizes(strategy: Strategy, requested: readonly string[]): string[] {
  switch (strategy) {
    case "all_at_once":
      return ["100%"];
    case "canary":
      return ["1", "100%"];
    case "staged":
      return [...requested];
  }
}

/** Splits `machines` into batches following `sizes` (already validated). */
export function planBatches<T>(machines: readonly T[], sizes: readonly string[]): T[][] {
  const batches: T[][] = [];
  let next = 0;
  for (const [i, spec] of sizes.entries()) {
    const remaining = machines.length - next;
    if (remaining <= 0) break;
    const size = parseBatchSize(spec);
    if (typeof size === "string") throw new Error(`invalid batch size: ${size}`);
    const isLast = i === sizes.length - 1;
    let take: number;
    if (isLast) take = remaining;
    else if (size.kind === "count") take = Math.min(size.count, remaining);
    else take = Math.max(1, Math.min(remaining, Math.ceil((remaining * size.percent) / 100)));
    batches.push(machines.slice(next, next + take));
    next += take;
  }
  return batches;
}
