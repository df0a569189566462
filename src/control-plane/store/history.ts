/**
 * A machine's stored reports and health reports, newest first (GetMachineHistory): what the
 * dashboard's host page shows. Reads only; the rows are written by machines.ts.
 */
import type { Ctx } from "./context.js";
import type { HealthReportRecord, HealthResultRecord, ReportRecord } from "./records.js";

export async function machineReports(ctx: Ctx, machineId: string, limit: number): Promise<ReportRecord[]> {
  const rows = await ctx.q
    .selectFrom("reports")
    .select([
      "received_at",
      "outcome",
      "success",
      "message",
      "current_generation",
      "desired_generation",
      "desired_revision",
      "deployment_id",
    ])
    .where("machine_id", "=", machineId)
    .orderBy("received_at", "desc")
    .orderBy("id", "desc")
    .limit(limit)
    .execute();
  return rows.map((r) => ({
    receivedAt: r.received_at,
    outcome: r.outcome,
    success: r.success === 1,
    message: r.message,
    currentGeneration: r.current_generation,
    desiredGeneration: r.desired_generation,
    desiredRevision: r.desired_revision,
    deploymentId: r.deployment_id,
  }));
}

export async function latestHealthReport(ctx: Ctx, machineId: string): Promise<HealthReportRecord | null> {
  const row = await ctx.q
    .selectFrom("health_reports")
    .select(["received_at", "generation", "all_passed", "results", "post_apply", "deployment_id"])
    .where("machine_id", "=", machineId)
    .orderBy("received_at", "desc")
    .orderBy("id", "desc")
    .limit(1)
    .executeTakeFirst();
  if (!row) return null;
  return {
    receivedAt: row.received_at,
    generation: row.generation,
    allPassed: row.all_passed === 1,
    results: JSON.parse(row.results) as HealthResultRecord[],
    postApply: row.post_apply === 1,
    deploymentId: row.deployment_id,
  };
}
