/**
 * Turning reports into outbox rows (pure), and the agent's own check of what it sends. The rows
 * are written by the journal inside the transaction of the state change they describe, so an
 * outcome and its report commit together.
 */
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { machineIdProblem, tagsProblem } from "../../common/ids.js";
import { storePathProblem } from "../../common/store-path.js";
import {
  type ReportHealthRequest,
  ReportHealthRequestSchema,
  type ReportRequest,
  ReportRequestSchema,
} from "../../gen/nixfleet/v1/agent_pb.js";
import { Outcome } from "../../gen/nixfleet/v1/types_pb.js";
import type { OutboxItem, OutboxRow } from "../journal/journal.js";
import { MAX_REPORT_MESSAGE_BYTES } from "../text.js";

export type ReportInit = MessageInitShape<typeof ReportRequestSchema>;
export type HealthInit = MessageInitShape<typeof ReportHealthRequestSchema>;

/** The name an outcome is queued and logged under; a value this build does not know stays visible. */
export function outcomeName(outcome: Outcome): string {
  return Outcome[outcome] ?? `UNKNOWN(${outcome})`;
}

/**
 * A report as an outbox row. `status: true` marks a steady-state report (UP_TO_DATE,
 * QUARANTINED, a repeated alarm): the newest per outcome and generation replaces older ones.
 * Everything else belongs to a deployment and is kept until delivered.
 */
export function reportRow(init: ReportInit, options: { status?: boolean } = {}): OutboxRow {
  const message = create(ReportRequestSchema, init);
  const outcome = outcomeName(message.outcome);
  return {
    kind: "report",
    outcome,
    deploymentId: message.deploymentId,
    payload: toBinary(ReportRequestSchema, message),
    ...(options.status
      ? { class: "status" as const, coalesceKey: `${outcome}|${message.desiredGeneration}` }
      : { class: "outcome" as const }),
  };
}

/** A health report as an outbox row: post-apply results are kept, periodic ones coalesce. */
export function healthRow(init: HealthInit): OutboxRow {
  const message = create(ReportHealthRequestSchema, init);
  return {
    kind: "health",
    outcome: message.postApply ? "post_apply" : "periodic",
    deploymentId: message.deploymentId,
    payload: toBinary(ReportHealthRequestSchema, message),
    ...(message.postApply
      ? { class: "outcome" as const }
      : { class: "health" as const, coalesceKey: `periodic|${message.currentGeneration}` }),
  };
}

export function decodeRow(item: Pick<OutboxItem, "kind" | "payload">): ReportRequest | ReportHealthRequest {
  return item.kind === "report"
    ? fromBinary(ReportRequestSchema, item.payload)
    : fromBinary(ReportHealthRequestSchema, item.payload);
}

function optionalStorePath(field: string, value: string): string | undefined {
  const problem = value === "" ? undefined : storePathProblem(value);
  return problem ? `${field}: ${problem}` : undefined;
}

/**
 * What is wrong with a queued row by the agent's own rules, or undefined. Enum values are not
 * checked on purpose: a value this control plane does not know yet is not malformed — an older
 * control plane refusing it is a version skew to retry through, not a reason to drop an outcome.
 */
export function rowProblem(item: Pick<OutboxItem, "kind" | "payload">): string | undefined {
  let message: ReportRequest | ReportHealthRequest;
  try {
    message = decodeRow(item);
  } catch (err) {
    return `payload: not a ${item.kind} message (${(err as Error).message})`;
  }
  const id = machineIdProblem(message.machineId);
  if (id) return `machine_id: ${id}`;
  if (message.$typeName === "nixfleet.v1.ReportRequest") {
    const tags = tagsProblem(message.tags);
    if (tags) return `tags[${tags.index}]: ${tags.reason}`;
    if (Buffer.byteLength(message.message, "utf8") > MAX_REPORT_MESSAGE_BYTES)
      return `message: longer than ${MAX_REPORT_MESSAGE_BYTES} bytes`;
    return (
      optionalStorePath("current_generation", message.currentGeneration) ??
      optionalStorePath("desired_generation", message.desiredGeneration)
    );
  }
  if (message.currentGeneration === "") return "current_generation: empty (a health report is bound to it)";
  const gen = optionalStorePath("current_generation", message.currentGeneration);
  if (gen) return gen;
  const unnamed = message.results.findIndex((r) => r.name === "");
  return unnamed >= 0 ? `results[${unnamed}].name: empty` : undefined;
}
