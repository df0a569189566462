/**
 * What a rollout transaction writes, decided by pure functions over the rows the store loaded:
 * finishing a batch (pass, pause, fail and revert, complete), ending a rollout, the revert set,
 * gate-state changes and the evidence the gate classifies. The store opens the transaction,
 * loads plain records, calls these, and saves the plan they return; so both backends (SQLite,
 * PostgreSQL) share one set of rules, and the rules are table-tested without a database.
 */
import type { BatchStatus, GateState, OnFailure, RolloutEventType, RolloutStatus } from "../store/records.js";
import type { GateEvidence, MachineGateUpdate } from "../store/repository.js";
import type { HealthEvidence, OutcomeEvidence } from "./gate.js";
import { operatorActionProblem } from "./state-machine.js";
import * as text from "./texts.js";

export interface PlannedEvent {
  type: RolloutEventType;
  batchIndex: number | null;
  machineId: string;
  message: string;
  actor: string;
}

export interface PlannedAudit {
  actor: string;
  action: string;
  detail: string;
}

/** A machine's desired generation to restore: `previous` null means clear it. */
export interface RevertAssignment {
  machineId: string;
  previous: { storePath: string; cacheUrl: string; rolloutId: string } | null;
}

/** Everything one rollout transaction writes, in order. */
export interface RolloutPlan {
  /** The finished batch's new status. */
  batch: { index: number; status: BatchStatus } | null;
  /** The rollout's new status; null keeps it (only updated_at moves). */
  status: { status: RolloutStatus; reason: string } | null;
  revert: RevertAssignment[];
  /** Pending and deploying batches become cancelled (the rollout ends early). */
  cancelUnfinished: boolean;
  /** The rollout gives up its machines (the one-active-rollout rule). */
  releaseMachines: boolean;
  events: PlannedEvent[];
  audits: PlannedAudit[];
}

/** A rollout machine as loaded for a revert: what it had before its batch first started. */
export interface TouchedMachine {
  machineId: string;
  previousRecorded: boolean;
  previousGeneration: string | null;
  previousCacheUrl: string | null;
  previousRolloutId: string | null;
}

/**
 * The machines a revert gives back their previous desired generation: every machine whose batch
 * started at least once (the failed batch included), in the order given; machines of batches
 * that never started were never assigned anything by this rollout.
 */
export function revertSet(machines: readonly TouchedMachine[]): RevertAssignment[] {
  return machines
    .filter((m) => m.previousRecorded)
    .map((m) => ({
      machineId: m.machineId,
      previous:
        m.previousGeneration === null
          ? null
          : {
              storePath: m.previousGeneration,
              cacheUrl: m.previousCacheUrl ?? "",
              rolloutId: m.previousRolloutId ?? "",
            },
    }));
}

function emptyPlan(): RolloutPlan {
  return {
    batch: null,
    status: null,
    revert: [],
    cancelUnfinished: false,
    releaseMachines: false,
    events: [],
    audits: [],
  };
}

const END_ACTIONS = { failed: "rollout.fail", cancelled: "rollout.cancel", completed: "rollout.complete" };

/** Adds ending the rollout (optionally reverting) to `plan`. */
function addEnd(
  plan: RolloutPlan,
  options: { status: "failed" | "cancelled" | "completed"; revert: boolean; reason: string; actor: string },
  touched: readonly TouchedMachine[],
): RolloutPlan {
  if (options.revert) {
    plan.revert = revertSet(touched);
    const message = text.reverted(plan.revert);
    plan.events.push({ type: "reverted", batchIndex: null, machineId: "", message, actor: options.actor });
    plan.audits.push({ actor: options.actor, action: "rollout.revert", detail: message });
  }
  plan.cancelUnfinished = options.status !== "completed";
  plan.status = { status: options.status, reason: options.reason };
  plan.releaseMachines = true;
  plan.events.push({
    type: options.status,
    batchIndex: null,
    machineId: "",
    message: options.reason,
    actor: options.actor,
  });
  plan.audits.push({ actor: options.actor, action: END_ACTIONS[options.status], detail: options.reason });
  return plan;
}

export interface FinishBatchInput {
  rollout: { status: RolloutStatus; onFailure: OnFailure; batchCount: number };
  batch: { index: number; status: BatchStatus; startedSeq: number | null } | undefined;
  /** The start the executor's verdict is about; a decision about an older start is refused. */
  startedSeq: number;
  passed: boolean;
  /** The verdict's summary (healthy / unhealthy counts, which machines failed and why). */
  message: string;
  touched: readonly TouchedMachine[];
}

/**
 * Ends a deploying batch. Passing the last batch completes the rollout; failing pauses it
 * (on_failure PAUSE) or fails it and reverts every touched machine (REVERT). Null when the state
 * moved on meanwhile (not running, the batch not deploying, or re-started since the verdict).
 */
export function planFinishBatch(input: FinishBatchInput): RolloutPlan | null {
  const { rollout, batch } = input;
  if (rollout.status !== "running") return null;
  if (batch?.status !== "deploying" || batch.startedSeq !== input.startedSeq) return null;
  const plan = emptyPlan();
  const index = batch.index;
  plan.batch = { index, status: input.passed ? "succeeded" : "failed" };
  plan.events.push({
    type: input.passed ? "batch_succeeded" : "batch_failed",
    batchIndex: index,
    machineId: "",
    message: input.message,
    actor: "executor",
  });
  plan.audits.push({
    actor: "executor",
    action: input.passed ? "rollout.batch_succeed" : "rollout.batch_fail",
    detail: input.message,
  });
  if (input.passed) {
    if (index + 1 < rollout.batchCount) return plan;
    return addEnd(
      plan,
      { status: "completed", revert: false, reason: text.completedReason(), actor: "executor" },
      [],
    );
  }
  const reason = text.batchFailedReason(index, input.message);
  if (rollout.onFailure === "pause") {
    plan.status = { status: "paused", reason };
    plan.events.push({
      type: "paused",
      batchIndex: index,
      machineId: "",
      message: reason,
      actor: "executor",
    });
    plan.audits.push({ actor: "executor", action: "rollout.pause", detail: reason });
    return plan;
  }
  return addEnd(plan, { status: "failed", revert: true, reason, actor: "executor" }, input.touched);
}

export interface EndRolloutInput {
  id: string;
  status: RolloutStatus;
  options: {
    status: "failed" | "cancelled";
    revert: boolean;
    reason: string;
    actor: string;
    from: readonly RolloutStatus[];
  };
  touched: readonly TouchedMachine[];
}

/** An operator (or the API) ends a rollout; `problem` says why it may not. */
export function planEndRollout(input: EndRolloutInput): { plan: RolloutPlan } | { problem: string } {
  if (!input.options.from.includes(input.status)) {
    const problem = operatorActionProblem(input.status, "cancel") ?? `it is ${input.status}`;
    return { problem: `rollout ${input.id} cannot be ${input.options.status}: ${problem}` };
  }
  return { plan: addEnd(emptyPlan(), input.options, input.touched) };
}

/** An operator pauses a running rollout. */
export function planPause(
  id: string,
  status: RolloutStatus,
  currentBatch: number,
  reason: string,
  actor: string,
): { plan: RolloutPlan } | { problem: string } {
  const problem = operatorActionProblem(status, "pause");
  if (problem) return { problem: `rollout ${id} cannot be paused: ${problem}` };
  const why = reason || `paused by ${actor}`;
  const plan = emptyPlan();
  plan.status = { status: "paused", reason: why };
  plan.events.push({ type: "paused", batchIndex: currentBatch, machineId: "", message: why, actor });
  plan.audits.push({ actor, action: "rollout.pause", detail: why });
  return { plan };
}

/**
 * An operator resumes a paused rollout. The batch that stopped (failed, or still deploying when
 * an operator paused) goes back to pending: the executor deploys it again with a fresh start and
 * new revisions. `batch` carries that reset.
 */
export function planResume(
  id: string,
  status: RolloutStatus,
  currentBatch: number,
  batchStatus: BatchStatus | undefined,
  actor: string,
): { plan: RolloutPlan; resetBatch: number | null } | { problem: string } {
  const problem = operatorActionProblem(status, "resume");
  if (problem) return { problem: `rollout ${id} cannot be resumed: ${problem}` };
  const plan = emptyPlan();
  plan.status = { status: "running", reason: "" };
  plan.events.push({
    type: "resumed",
    batchIndex: currentBatch,
    machineId: "",
    message: `resumed by ${actor}`,
    actor,
  });
  plan.audits.push({ actor, action: "rollout.resume", detail: text.resumeDetail(currentBatch) });
  const reset = batchStatus === "failed" || batchStatus === "deploying";
  return { plan, resetBatch: reset ? currentBatch : null };
}

/** A stored gate state and what the gate says now: which to write, which become events. */
export function gateChanges(
  stored: ReadonlyMap<string, { state: GateState; reason: string }>,
  updates: readonly MachineGateUpdate[],
  index: number,
): { writes: MachineGateUpdate[]; events: PlannedEvent[] } {
  const writes: MachineGateUpdate[] = [];
  const events: PlannedEvent[] = [];
  for (const g of updates) {
    const row = stored.get(g.machineId);
    if (!row || (row.state === g.state && row.reason === g.reason)) continue;
    writes.push(g);
    if (row.state !== g.state && g.state !== "pending") {
      events.push({
        type: g.state === "healthy" ? "machine_healthy" : "machine_unhealthy",
        batchIndex: index,
        machineId: g.machineId,
        message: g.reason,
        actor: "executor",
      });
    }
  }
  return { writes, events };
}

/** A stored report with an outcome, received after the batch start (seq > started_seq). */
export interface OutcomeRow {
  machineId: string;
  outcome: number;
  message: string;
  desiredGeneration: string;
  desiredRevision: number;
  receivedAt: number;
  seq: number;
}

/** A stored health report on the machine's target generation, after the batch start. */
export interface HealthRow {
  machineId: string;
  allPassed: boolean;
  receivedAt: number;
  seq: number;
  /** Names of the failing checks. */
  failing: string[];
}

export interface BatchMachineRow {
  machineId: string;
  targetGeneration: string;
  currentGeneration: string;
  /** The revision of the machine's current assignment (0 when it has none). */
  assignedRevision: number;
}

function latest<T extends { seq: number }>(rows: readonly T[]): T | null {
  let best: T | null = null;
  for (const r of rows) if (!best || r.seq > best.seq) best = r;
  return best;
}

/**
 * The soak streak: when the current unbroken run of passing health reports began — the first
 * passing report after the last failing one (or after the start). Null unless the latest passes.
 */
export function passingSince(health: readonly HealthRow[]): number | null {
  const sorted = [...health].sort((a, b) => a.seq - b.seq);
  const last = sorted[sorted.length - 1];
  if (!last?.allPassed) return null;
  let since = last.receivedAt;
  for (let i = sorted.length - 1; i >= 0 && sorted[i]!.allPassed; i--) since = sorted[i]!.receivedAt;
  return since;
}

/**
 * The gate's evidence for each machine of a batch, from the evidence stored after the batch
 * start (rows of any order, for any of the batch's machines):
 * - the latest outcome about this assignment — a report the agent produced for an older
 *   revision can still arrive after the batch (re)started (a QUARANTINED decided just before a
 *   resume) and must not fail it; revision 0 means "not said" (v0.1 agents);
 * - the latest health report on the target and the passing streak it ends.
 */
export function gateEvidenceFor(
  machines: readonly BatchMachineRow[],
  outcomes: readonly OutcomeRow[],
  health: readonly HealthRow[],
): GateEvidence[] {
  const outcomesBy = groupBy(outcomes);
  const healthBy = groupBy(health);
  return machines.map((m) => {
    const relevant = (outcomesBy.get(m.machineId) ?? []).filter(
      (o) => o.outcome !== 0 && (o.desiredRevision === 0 || o.desiredRevision >= m.assignedRevision),
    );
    const o = latest(relevant);
    const hs = healthBy.get(m.machineId) ?? [];
    const h = latest(hs);
    const latestOutcome: OutcomeEvidence | null = o
      ? {
          outcome: o.outcome,
          message: o.message,
          desiredGeneration: o.desiredGeneration,
          receivedAt: o.receivedAt,
          seq: o.seq,
        }
      : null;
    const latestHealth: HealthEvidence | null = h
      ? { allPassed: h.allPassed, receivedAt: h.receivedAt, seq: h.seq, failing: h.failing }
      : null;
    return {
      machineId: m.machineId,
      targetGeneration: m.targetGeneration,
      currentGeneration: m.currentGeneration,
      latestOutcome,
      latestHealth,
      passingSince: passingSince(hs),
    };
  });
}

function groupBy<T extends { machineId: string }>(rows: readonly T[]): Map<string, T[]> {
  const map = new Map<string, T[]>();
  for (const r of rows) {
    const list = map.get(r.machineId);
    if (list) list.push(r);
    else map.set(r.machineId, [r]);
  }
  return map;
}
