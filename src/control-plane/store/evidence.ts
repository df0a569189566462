/**
 * Storing agent evidence rows (reports, health reports) a group at a time: what a group commit's
 * writes left for its end (group-commit.ts). One sequence bump and one INSERT per table for the
 * whole group, the rows as one JSON parameter, so a report in a group of sixteen costs its own
 * machine-row UPDATE and an eighth of two statements.
 */
import { sql } from "kysely";
import { type Ctx, cachedQuery, jsonRowsOf, nextSeqs } from "./context.js";
import type { HealthInput, ReportInput } from "./records.js";

/** One evidence row, without its sequence position (given at the group's end). */
export type EvidenceRow =
  | { kind: "report"; input: ReportInput; receivedAt: number }
  | { kind: "health"; input: HealthInput; receivedAt: number; allPassed: number };

type Column = { name: string; type: "text" | "integer" };

const REPORT_COLUMNS: readonly Column[] = [
  { name: "machine_id", type: "text" },
  { name: "received_at", type: "integer" },
  { name: "seq", type: "integer" },
  { name: "current_generation", type: "text" },
  { name: "desired_generation", type: "text" },
  { name: "desired_revision", type: "integer" },
  { name: "outcome", type: "integer" },
  { name: "success", type: "integer" },
  { name: "message", type: "text" },
  { name: "deployment_id", type: "text" },
  { name: "agent_time", type: "integer" },
];

const HEALTH_COLUMNS: readonly Column[] = [
  { name: "machine_id", type: "text" },
  { name: "received_at", type: "integer" },
  { name: "seq", type: "integer" },
  { name: "generation", type: "text" },
  { name: "all_passed", type: "integer" },
  { name: "results", type: "text" },
  { name: "post_apply", type: "integer" },
  { name: "deployment_id", type: "text" },
  { name: "agent_time", type: "integer" },
];

/** INSERT INTO `table` the rows of one JSON parameter (compiled once per table and backend). */
function insertRows(
  ctx: Ctx,
  table: "reports" | "health_reports",
  columns: readonly Column[],
  rows: unknown[][],
) {
  return cachedQuery(
    ctx,
    `${table}-insert-rows`,
    (p) => {
      const names = sql.join(columns.map((c) => sql.id(c.name)));
      const insert = sql`INSERT INTO ${sql.id(table)} (${names}) SELECT ${names} FROM ${jsonRowsOf(ctx, p[0], columns, "j")}`;
      return { compile: () => insert.compile(ctx.q) };
    },
    [JSON.stringify(rows)],
  );
}

/** Stores the rows in their order, each with the next position in the evidence sequence. */
export async function insertEvidence(ctx: Ctx, rows: readonly EvidenceRow[]): Promise<void> {
  if (rows.length === 0) return;
  // The sequence last: its lock is held until commit, so as briefly as possible.
  let seq = await nextSeqs(ctx, rows.length);
  const reports: unknown[][] = [];
  const health: unknown[][] = [];
  for (const row of rows) {
    const at = seq++;
    if (row.kind === "report") {
      const r = row.input;
      reports.push([
        r.machineId,
        row.receivedAt,
        at,
        r.currentGeneration,
        r.desiredGeneration,
        r.desiredRevision,
        r.outcome,
        r.success ? 1 : 0,
        r.message,
        r.deploymentId,
        r.agentTime,
      ]);
    } else {
      const h = row.input;
      health.push([
        h.machineId,
        row.receivedAt,
        at,
        h.generation,
        row.allPassed,
        JSON.stringify(h.results),
        h.postApply ? 1 : 0,
        h.deploymentId,
        h.agentTime,
      ]);
    }
  }
  if (reports.length > 0) await insertRows(ctx, "reports", REPORT_COLUMNS, reports);
  if (health.length > 0) await insertRows(ctx, "health_reports", HEALTH_COLUMNS, health);
}
