/**
 * Turning the machine's report data (ReportSpec) into protobuf reports and outbox rows: the
 * agent's identity, what current-system points at and the time are added here.
 */
import { uptime } from "node:os";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { isStorePath } from "../../common/store-path.js";
import type { ReportHealthRequestSchema, ReportRequestSchema } from "../../gen/nixfleet/v1/agent_pb.js";
import { HealthCheckKind, Outcome } from "../../gen/nixfleet/v1/types_pb.js";
import type { CheckResult } from "../health/checks.js";
import type { HealthRecord, OutboxRow } from "../journal/journal.js";
import { MAX_REPORT_MESSAGE_BYTES, truncateUtf8 } from "../text.js";
import { healthRow, reportRow } from "../transport/outbox-row.js";
import type { ReportOutcome, ReportSpec } from "./types.js";

/** What current-system points at, for a report: a store path or nothing (never garbage). */
export function reportableGeneration(current: string | null): string {
  return current !== null && isStorePath(current) ? current : "";
}

const OUTCOME: Record<ReportOutcome, Outcome> = {
  UP_TO_DATE: Outcome.UP_TO_DATE,
  APPLYING: Outcome.APPLYING,
  DEPLOYED: Outcome.DEPLOYED,
  ROLLED_BACK: Outcome.ROLLED_BACK,
  ROLLED_BACK_BY_REBOOT: Outcome.ROLLED_BACK_BY_REBOOT,
  ROLLBACK_FAILED: Outcome.ROLLBACK_FAILED,
  FETCH_FAILED: Outcome.FETCH_FAILED,
  APPLY_FAILED: Outcome.APPLY_FAILED,
  QUARANTINED: Outcome.QUARANTINED,
  DRY_RUN: Outcome.DRY_RUN,
  SWITCH_LOCKED: Outcome.SWITCH_LOCKED,
  FOREIGN_GENERATION: Outcome.FOREIGN_GENERATION,
};

const KIND: Record<CheckResult["kind"], HealthCheckKind> = {
  systemd: HealthCheckKind.SYSTEMD,
  http: HealthCheckKind.HTTP,
  command: HealthCheckKind.COMMAND,
};

export interface Identity {
  machineId: string;
  tags: string[];
  agentVersion: string;
}

export type ReportInit = MessageInitShape<typeof ReportRequestSchema>;
export type HealthInit = MessageInitShape<typeof ReportHealthRequestSchema>;

export function reportInit(
  spec: Extract<ReportSpec, { kind: "report" }>,
  who: Identity,
  current: string | null,
  at: number,
): ReportInit {
  return {
    machineId: who.machineId,
    currentGeneration: reportableGeneration(current),
    tags: who.tags,
    agentVersion: who.agentVersion,
    uptimeSeconds: BigInt(Math.floor(uptime())),
    timestamp: timestampFromMs(at),
    outcome: OUTCOME[spec.outcome],
    success: spec.success,
    message: truncateUtf8(spec.message, MAX_REPORT_MESSAGE_BYTES),
    deploymentId: spec.deploymentId,
    desiredGeneration: spec.desired?.path ?? "",
    desiredRevision: spec.desired?.revision ?? 0n,
  };
}

export function healthInit(
  spec: Extract<ReportSpec, { kind: "health" }>,
  who: Identity,
  at: number,
): HealthInit {
  return {
    machineId: who.machineId,
    currentGeneration: spec.generation,
    results: spec.snapshot.results.map((r) => ({
      name: r.name,
      kind: KIND[r.kind],
      passed: r.passed,
      durationMs: Math.min(r.durationMs, 2 ** 32 - 1),
      message: truncateUtf8(r.message, 1024),
    })),
    allPassed: spec.snapshot.allPassed,
    timestamp: timestampFromMs(at),
    postApply: spec.postApply,
    deploymentId: spec.deploymentId,
  };
}

export function healthRecord(spec: Extract<ReportSpec, { kind: "health" }>, at: number): HealthRecord {
  return {
    generation: spec.generation,
    allPassed: spec.snapshot.allPassed,
    postApply: spec.postApply,
    deploymentId: spec.deploymentId,
    results: spec.snapshot.results,
    at,
  };
}

/** Outbox rows (and health history) for the reports written with one journal transaction. */
export function rowsOf(
  specs: readonly ReportSpec[],
  who: Identity,
  current: string | null,
  at: number,
): { rows: OutboxRow[]; health?: HealthRecord } {
  const rows: OutboxRow[] = [];
  let health: HealthRecord | undefined;
  for (const spec of specs) {
    if (spec.kind === "report") rows.push(reportRow(reportInit(spec, who, current, at)));
    else {
      rows.push(healthRow(healthInit(spec, who, at)));
      health = healthRecord(spec, at);
    }
  }
  return health ? { rows, health } : { rows };
}
