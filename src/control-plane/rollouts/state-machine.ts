/**
 * Rollout and batch transitions, as pure functions.
 *
 *   running ──batch fails, on_failure PAUSE / operator pause──► paused ──resume──► running
 *   running ──last batch passes──► completed
 *   running ──batch fails, on_failure REVERT──► failed (every touched machine reverted)
 *   running | paused ──cancel──► cancelled (optionally reverted)
 *
 * Batches: pending ──start──► deploying ──gate──► succeeded | failed; a failed (or, after an
 * operator pause, deploying) batch is deployed again on resume; batches that never finished
 * become cancelled when the rollout ends early.
 */
import type { BatchStatus, OnFailure, RolloutStatus } from "../store/records.js";
import { type BatchVerdict, batchVerdict, type MachineGate } from "./gate.js";
import type { FailureThreshold } from "./threshold.js";

export const ACTIVE_STATUSES: readonly RolloutStatus[] = ["running", "paused"];

export function isActiveStatus(status: RolloutStatus): boolean {
  return status === "running" || status === "paused";
}

export type OperatorAction = "pause" | "resume" | "cancel";

/** Why an operator cannot apply `action` to a rollout in `status`, or undefined. */
export function operatorActionProblem(status: RolloutStatus, action: OperatorAction): string | undefined {
  switch (action) {
    case "pause":
      return status === "running" ? undefined : `it is ${status}; only a RUNNING rollout can be paused`;
    case "resume":
      return status === "paused" ? undefined : `it is ${status}; only a PAUSED rollout can be resumed`;
    case "cancel":
      return isActiveStatus(status)
        ? undefined
        : `it is already ${status}; only a RUNNING or PAUSED rollout can be cancelled`;
  }
}

export interface RolloutView {
  status: RolloutStatus;
  currentBatch: number;
  onFailure: OnFailure;
  batches: readonly { status: BatchStatus }[];
}

/** What the executor should do next with a rollout. */
export type Step =
  | { kind: "none" }
  | { kind: "start-batch"; index: number }
  | { kind: "wait"; index: number; verdict: BatchVerdict }
  | { kind: "batch-passed"; index: number; verdict: BatchVerdict; next: number | null }
  | { kind: "batch-failed"; index: number; verdict: BatchVerdict; onFailure: OnFailure }
  | { kind: "complete" };

/**
 * Decides the next step. `gates` is the classification of the current batch's machines and is
 * only consulted while that batch is deploying.
 */
export function nextStep(
  rollout: RolloutView,
  gates: readonly MachineGate[] | undefined,
  threshold: FailureThreshold,
): Step {
  if (rollout.status !== "running") return { kind: "none" };
  const index = rollout.currentBatch;
  const batch = rollout.batches[index];
  if (!batch) return { kind: "complete" };
  switch (batch.status) {
    case "pending":
    case "failed":
    case "cancelled":
      // A failed batch of a running rollout means it was resumed: deploy it again.
      return { kind: "start-batch", index };
    case "succeeded": {
      const next = index + 1 < rollout.batches.length ? index + 1 : null;
      return next === null ? { kind: "complete" } : { kind: "start-batch", index: next };
    }
    case "deploying": {
      if (!gates) return { kind: "none" };
      const verdict = batchVerdict(gates, threshold);
      if (verdict.kind === "pending") return { kind: "wait", index, verdict };
      if (verdict.kind === "failed")
        return { kind: "batch-failed", index, verdict, onFailure: rollout.onFailure };
      const next = index + 1 < rollout.batches.length ? index + 1 : null;
      return { kind: "batch-passed", index, verdict, next };
    }
  }
}
