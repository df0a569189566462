/**
 * Validation of what agents send, turning protobuf requests (and the v0.1 REST body, which maps
 * onto the same records) into store records. Every rejection names the field.
 */
import { type Timestamp, timestampMs } from "@bufbuild/protobuf/wkt";
import { machineIdProblem, tagsProblem } from "../../common/ids.js";
import { storePathProblem } from "../../common/store-path.js";
import { check, ValidationError } from "../../common/validation.js";
import type {
  Hello,
  ReportHealthRequest,
  ReportRequest,
  WatchRequest,
} from "../../gen/nixfleet/v1/agent_pb.js";
import {
  deploymentIdProblem,
  lineProblem,
  MAX_AGENT_VERSION_LENGTH,
  MAX_CHECK_NAME_LENGTH,
  MAX_HEALTH_RESULTS,
  MAX_MESSAGE_BYTES,
  textProblem,
} from "../input-rules.js";
import type { HealthInput, HealthResultRecord, HelloInput, ReportInput } from "../store/records.js";

function optionalStorePath(field: string, value: string): void {
  if (value !== "") check(field, storePathProblem(value));
}

function tags(field: string, values: readonly string[]): void {
  const bad = tagsProblem(values);
  if (bad) throw new ValidationError(`${field}[${bad.index}]`, bad.reason);
}

function safeNumber(value: bigint): number {
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

// google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_TIMESTAMP_SECONDS = -62_135_596_800n;
const MAX_TIMESTAMP_SECONDS = 253_402_300_799n;

/** The agent's clock reading, in whole milliseconds; outside Timestamp's range is bad input. */
function agentTime(ts: Timestamp | undefined): number | null {
  if (!ts) return null;
  if (ts.seconds < MIN_TIMESTAMP_SECONDS || ts.seconds > MAX_TIMESTAMP_SECONDS)
    throw new ValidationError(
      "timestamp",
      `seconds ${ts.seconds} is outside google.protobuf.Timestamp's range (years 1 to 9999)`,
    );
  if (ts.nanos < 0 || ts.nanos > 999_999_999)
    throw new ValidationError("timestamp", `nanos ${ts.nanos} must be from 0 to 999999999`);
  return Math.floor(timestampMs(ts));
}

export function checkMachineId(value: string): void {
  check("machine_id", machineIdProblem(value));
}

/** Checks a report record (from gRPC, Connect, the Session stream or the REST route). */
export function checkReport(input: ReportInput): ReportInput {
  checkMachineId(input.machineId);
  optionalStorePath("current_generation", input.currentGeneration);
  optionalStorePath("desired_generation", input.desiredGeneration);
  check("message", textProblem(input.message, MAX_MESSAGE_BYTES));
  // An outcome this control plane does not know (a newer agent) is stored as its number; the
  // gate counts it as not healthy. See enum-names.ts.
  check("deployment_id", deploymentIdProblem(input.deploymentId));
  if (input.tags) tags("tags", input.tags);
  check("agent_version", lineProblem(input.agentVersion, MAX_AGENT_VERSION_LENGTH));
  return input;
}

export function reportFromProto(req: ReportRequest): ReportInput {
  return checkReport({
    machineId: req.machineId,
    currentGeneration: req.currentGeneration,
    desiredGeneration: req.desiredGeneration,
    desiredRevision: safeNumber(req.desiredRevision),
    outcome: req.outcome,
    success: req.success,
    message: req.message,
    deploymentId: req.deploymentId,
    tags: [...req.tags],
    agentVersion: req.agentVersion,
    uptimeSeconds: safeNumber(req.uptimeSeconds),
    agentTime: agentTime(req.timestamp),
  });
}

export function checkHealth(input: HealthInput): HealthInput {
  checkMachineId(input.machineId);
  if (input.generation === "")
    throw new ValidationError(
      "current_generation",
      "must be the store path the checks observed (a health report is bound to it)",
    );
  check("current_generation", storePathProblem(input.generation));
  if (input.results.length > MAX_HEALTH_RESULTS)
    throw new ValidationError(
      "results",
      `at most ${MAX_HEALTH_RESULTS} results allowed, got ${input.results.length}`,
    );
  for (const [i, r] of input.results.entries()) {
    if (r.name === "") throw new ValidationError(`results[${i}].name`, "must not be empty");
    check(`results[${i}].name`, lineProblem(r.name, MAX_CHECK_NAME_LENGTH));
    check(`results[${i}].message`, textProblem(r.message, MAX_MESSAGE_BYTES));
    // A kind this control plane does not know (a newer agent's check) is stored as its number
    // and counts by its pass/fail like any other.
  }
  check("deployment_id", deploymentIdProblem(input.deploymentId));
  return input;
}

export function healthFromProto(req: ReportHealthRequest): HealthInput {
  const results: HealthResultRecord[] = req.results.map((r) => ({
    name: r.name,
    kind: r.kind,
    passed: r.passed,
    durationMs: r.durationMs,
    message: r.message,
  }));
  return checkHealth({
    machineId: req.machineId,
    generation: req.currentGeneration,
    allPassed: req.allPassed,
    results,
    postApply: req.postApply,
    deploymentId: req.deploymentId,
    agentTime: agentTime(req.timestamp),
  });
}

export function helloFromProto(req: Hello | WatchRequest): HelloInput {
  checkMachineId(req.machineId);
  const current = "currentGeneration" in req ? req.currentGeneration : "";
  optionalStorePath("current_generation", current);
  tags("tags", req.tags);
  check("agent_version", lineProblem(req.agentVersion, MAX_AGENT_VERSION_LENGTH));
  return {
    machineId: req.machineId,
    currentGeneration: current,
    tags: [...req.tags],
    agentVersion: req.agentVersion,
  };
}
