/**
 * A machine's stored reports and health reports, newest first (GetMachineHistory): what the
 * dashboard's host page shows. Reads only; the rows are written by sqlite-machines.ts.
 */
import type { HealthReportRecord, HealthResultRecord, ReportRecord } from "./records.js";
import type { Sql } from "./sql.js";

export function machineReports(sql: Sql, machineId: string, limit: number): ReportRecord[] {
  return sql
    .all<{
      received_at: number;
      outcome: number;
      success: number;
      message: string;
      current_generation: string;
      desired_generation: string;
      desired_revision: number;
      deployment_id: string;
    }>(
      `SELECT received_at, outcome, success, message, current_generation, desired_generation,
         desired_revision, deployment_id
       FROM reports WHERE machine_id = ? ORDER BY received_at DESC, id DESC LIMIT ?`,
      machineId,
      limit,
    )
    .map((r) => ({
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

export function latestHealthReport(sql: Sql, machineId: string): HealthReportRecord | null {
  const row = sql.get<{
    received_at: number;
    generation: string;
    all_passed: number;
    results: string;
    post_apply: number;
    deployment_id: string;
  }>(
    `SELECT received_at, generation, all_passed, results, post_apply, deployment_id
     FROM health_reports WHERE machine_id = ? ORDER BY received_at DESC, id DESC LIMIT 1`,
    machineId,
  );
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
