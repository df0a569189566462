/**
 * Rollouts, their batches and per-machine gate state, rollout events — and the transactions the
 * executor and operators move them with. Each exported mutation is one transaction that also
 * writes its rollout events and audit events.
 */
import { operatorActionProblem } from "../rollouts/state-machine.js";
import { ConflictError, NotFoundError } from "./errors.js";
import type {
  BatchRecord,
  BatchStatus,
  DesiredChange,
  GateState,
  OnFailure,
  RolloutEventRecord,
  RolloutEventType,
  RolloutMachineRecord,
  RolloutRecord,
  RolloutStatus,
  Strategy,
} from "./records.js";
import type {
  EndRolloutOptions,
  GateEvidence,
  MachineGateUpdate,
  NewRollout,
  RolloutChange,
  RolloutFilter,
} from "./repository.js";
import { jsonList, nextSeq, type Sql } from "./sql.js";
import { writeDesired } from "./sqlite-machines.js";

interface RolloutRow {
  id: string;
  release_id: string;
  status: RolloutStatus;
  status_reason: string;
  target_tags: string;
  target_hosts: string;
  strategy: Strategy;
  batch_sizes: string;
  failure_threshold: string;
  on_failure: OnFailure;
  health_timeout_seconds: number;
  soak_seconds: number;
  cache_url: string;
  current_batch: number;
  created_at: number;
  updated_at: number;
  created_by: string;
}

interface BatchRow {
  batch_index: number;
  status: BatchStatus;
  started_at: number | null;
  started_seq: number | null;
  completed_at: number | null;
}

interface MachineRow {
  machine_id: string;
  batch_index: number;
  target_generation: string;
  previous_recorded: number;
  previous_generation: string | null;
  previous_cache_url: string | null;
  previous_rollout_id: string | null;
  gate_state: GateState;
  gate_reason: string;
}

interface EventRow {
  id: number;
  rollout_id: string;
  type: RolloutEventType;
  batch_index: number | null;
  machine_id: string;
  message: string;
  actor: string;
  created_at: number;
}

function toEvent(row: EventRow): RolloutEventRecord {
  return {
    id: row.id,
    rolloutId: row.rollout_id,
    type: row.type,
    batchIndex: row.batch_index,
    machineId: row.machine_id,
    message: row.message,
    actor: row.actor,
    createdAt: row.created_at,
  };
}

function toRollout(sql: Sql, row: RolloutRow): RolloutRecord {
  const machines = sql.all<MachineRow>(
    "SELECT * FROM rollout_machines WHERE rollout_id = ? ORDER BY batch_index, position",
    row.id,
  );
  const byBatch = new Map<number, RolloutMachineRecord[]>();
  for (const m of machines) {
    const list = byBatch.get(m.batch_index) ?? [];
    list.push({
      machineId: m.machine_id,
      batchIndex: m.batch_index,
      targetGeneration: m.target_generation,
      previousRecorded: m.previous_recorded === 1,
      previousGeneration: m.previous_generation,
      gateState: m.gate_state,
      gateReason: m.gate_reason,
    });
    byBatch.set(m.batch_index, list);
  }
  const batches: BatchRecord[] = sql
    .all<BatchRow>("SELECT * FROM rollout_batches WHERE rollout_id = ? ORDER BY batch_index", row.id)
    .map((b) => ({
      index: b.batch_index,
      status: b.status,
      startedAt: b.started_at,
      startedSeq: b.started_seq,
      completedAt: b.completed_at,
      machines: byBatch.get(b.batch_index) ?? [],
    }));
  return {
    id: row.id,
    releaseId: row.release_id,
    status: row.status,
    statusReason: row.status_reason,
    targetTags: JSON.parse(row.target_tags),
    targetHosts: JSON.parse(row.target_hosts),
    strategy: row.strategy,
    batchSizes: JSON.parse(row.batch_sizes),
    failureThreshold: row.failure_threshold,
    onFailure: row.on_failure,
    healthTimeoutSeconds: row.health_timeout_seconds,
    soakSeconds: row.soak_seconds,
    cacheUrl: row.cache_url,
    currentBatch: row.current_batch,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    createdBy: row.created_by,
    batches,
  };
}

function rolloutRow(sql: Sql, id: string): RolloutRow | undefined {
  return sql.get<RolloutRow>("SELECT * FROM rollouts WHERE id = ?", id);
}

export function getRollout(sql: Sql, id: string): RolloutRecord | undefined {
  const row = rolloutRow(sql, id);
  return row ? toRollout(sql, row) : undefined;
}

function addEvent(
  sql: Sql,
  rolloutId: string,
  type: RolloutEventType,
  batchIndex: number | null,
  machineId: string,
  message: string,
  actor: string,
  now: number,
): RolloutEventRecord {
  const row = sql.get<EventRow>(
    `INSERT INTO rollout_events (rollout_id, type, batch_index, machine_id, message, actor, created_at)
     VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *`,
    rolloutId,
    type,
    batchIndex,
    machineId,
    message,
    actor,
    now,
  )!;
  return toEvent(row);
}

function setStatus(sql: Sql, id: string, status: RolloutStatus, reason: string, now: number): void {
  sql.run(
    "UPDATE rollouts SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
    status,
    reason,
    now,
    id,
  );
}

/** Ends a rollout's claim on its machines (the one-active-rollout index). */
function releaseMachines(sql: Sql, id: string): void {
  sql.run("UPDATE rollout_machines SET active = 0 WHERE rollout_id = ? AND active = 1", id);
}

function summarize(ids: readonly string[], max = 10): string {
  return ids.length <= max ? ids.join(", ") : `${ids.slice(0, max).join(", ")} and ${ids.length - max} more`;
}

export function createRollout(sql: Sql, input: NewRollout, actor: string, now: number): RolloutChange {
  return sql.tx(() => {
    if (!sql.get("SELECT 1 AS x FROM releases WHERE id = ?", input.releaseId))
      throw new NotFoundError(`release ${input.releaseId} does not exist`);
    const ids = input.batches.flat().map((m) => m.machineId);
    const busy = sql.get<{ machine_id: string; rollout_id: string; status: string }>(
      `SELECT rm.machine_id, rm.rollout_id, r.status FROM rollout_machines rm JOIN rollouts r ON r.id = rm.rollout_id
       WHERE rm.active = 1 AND rm.machine_id IN (SELECT value FROM json_each(?)) ORDER BY rm.machine_id LIMIT 1`,
      jsonList(ids),
    );
    if (busy) {
      throw new ConflictError(
        `machine ${busy.machine_id} is already in active rollout ${busy.rollout_id} (${busy.status}); finish, pause and cancel, or wait for it first`,
      );
    }
    sql.run(
      `INSERT INTO rollouts (id, release_id, status, status_reason, target_tags, target_hosts, strategy, batch_sizes,
         failure_threshold, on_failure, health_timeout_seconds, soak_seconds, cache_url, current_batch,
         created_at, updated_at, created_by)
       VALUES (?, ?, 'running', '', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)`,
      input.id,
      input.releaseId,
      JSON.stringify(input.targetTags),
      JSON.stringify(input.targetHosts),
      input.strategy,
      JSON.stringify(input.batchSizes),
      input.failureThreshold,
      input.onFailure,
      input.healthTimeoutSeconds,
      input.soakSeconds,
      input.cacheUrl,
      now,
      now,
      actor,
    );
    for (const [index, batch] of input.batches.entries()) {
      sql.run(
        "INSERT INTO rollout_batches (rollout_id, batch_index, status) VALUES (?, ?, 'pending')",
        input.id,
        index,
      );
      for (const [position, m] of batch.entries()) {
        sql.run(
          `INSERT INTO rollout_machines (rollout_id, machine_id, batch_index, position, target_generation, active)
           VALUES (?, ?, ?, ?, ?, 1)`,
          input.id,
          m.machineId,
          index,
          position,
          m.targetGeneration,
        );
      }
    }
    const sizes = input.batches.map((b) => b.length).join("+");
    const message =
      `${ids.length} machine${ids.length === 1 ? "" : "s"} in ${input.batches.length} batch${input.batches.length === 1 ? "" : "es"} (${sizes}), ` +
      `strategy ${input.strategy}, failure threshold ${input.failureThreshold}, on failure ${input.onFailure}` +
      (input.note ? `; ${input.note}` : "");
    const event = addEvent(sql, input.id, "created", null, "", message, actor, now);
    sql.audit(now, actor, "rollout.create", input.id, `release ${input.releaseId}: ${message}`);
    return { rollout: getRollout(sql, input.id)!, events: [event], changes: [] };
  });
}

export function listRollouts(sql: Sql, filter: RolloutFilter): RolloutRecord[] {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.status !== null) {
    where.push("status = ?");
    params.push(filter.status);
  }
  if (filter.releaseId !== null) {
    where.push("release_id = ?");
    params.push(filter.releaseId);
  }
  if (filter.before) {
    where.push("(created_at < ? OR (created_at = ? AND id < ?))");
    params.push(filter.before.createdAt, filter.before.createdAt, filter.before.id);
  }
  params.push(filter.limit);
  const clause = where.length ? ` WHERE ${where.join(" AND ")}` : "";
  return sql
    .all<RolloutRow>(`SELECT * FROM rollouts${clause} ORDER BY created_at DESC, id DESC LIMIT ?`, ...params)
    .map((r) => toRollout(sql, r));
}

export function rolloutEvents(sql: Sql, id: string, afterId: number, limit: number): RolloutEventRecord[] {
  return sql
    .all<EventRow>(
      "SELECT * FROM rollout_events WHERE rollout_id = ? AND id > ? ORDER BY id LIMIT ?",
      id,
      afterId,
      limit,
    )
    .map(toEvent);
}

export function runningRolloutIds(sql: Sql): string[] {
  return sql
    .all<{ id: string }>("SELECT id FROM rollouts WHERE status = 'running' ORDER BY created_at, id")
    .map((r) => r.id);
}

export function gateEvidence(sql: Sql, rolloutId: string, batchIndex: number): GateEvidence[] {
  const batch = sql.get<BatchRow>(
    "SELECT * FROM rollout_batches WHERE rollout_id = ? AND batch_index = ?",
    rolloutId,
    batchIndex,
  );
  if (!batch || batch.started_seq === null) return [];
  const startedSeq = batch.started_seq;
  const machines = sql.all<{ machine_id: string; target_generation: string; current_generation: string }>(
    `SELECT rm.machine_id, rm.target_generation, m.current_generation FROM rollout_machines rm
     JOIN machines m ON m.id = rm.machine_id
     WHERE rm.rollout_id = ? AND rm.batch_index = ? ORDER BY rm.position`,
    rolloutId,
    batchIndex,
  );
  return machines.map((m) => {
    // Only outcomes about this assignment count: a report the agent produced for an older
    // revision can still arrive after the batch (re)started — e.g. a QUARANTINED decided just
    // before a resume — and must not fail it. Revision 0 means "not said" (v0.1 agents).
    const assigned =
      sql.get<{ revision: number }>(
        "SELECT revision FROM desired_generations WHERE machine_id = ?",
        m.machine_id,
      )?.revision ?? 0;
    // "After the start" is by sequence (commit order), never by time: see gate.ts.
    const outcome = sql.get<{
      outcome: number;
      message: string;
      desired_generation: string;
      received_at: number;
      seq: number;
    }>(
      `SELECT outcome, message, desired_generation, received_at, seq FROM reports
       WHERE machine_id = ? AND seq > ? AND outcome != 0 AND (desired_revision = 0 OR desired_revision >= ?)
       ORDER BY seq DESC LIMIT 1`,
      m.machine_id,
      startedSeq,
      assigned,
    );
    const health = sql.get<{ all_passed: number; received_at: number; seq: number; results: string }>(
      `SELECT all_passed, received_at, seq, results FROM health_reports
       WHERE machine_id = ? AND generation = ? AND seq > ? ORDER BY seq DESC LIMIT 1`,
      m.machine_id,
      m.target_generation,
      startedSeq,
    );
    let passingSince: number | null = null;
    if (health && health.all_passed === 1) {
      const lastFail = sql.get<{ s: number | null }>(
        `SELECT max(seq) AS s FROM health_reports
         WHERE machine_id = ? AND generation = ? AND seq > ? AND all_passed = 0`,
        m.machine_id,
        m.target_generation,
        startedSeq,
      )!.s;
      // The streak's first report is the first passing one after the last failure (or the start).
      passingSince =
        sql.get<{ t: number | null }>(
          `SELECT received_at AS t FROM health_reports
           WHERE machine_id = ? AND generation = ? AND seq > ? AND all_passed = 1 ORDER BY seq LIMIT 1`,
          m.machine_id,
          m.target_generation,
          Math.max(lastFail ?? startedSeq, startedSeq),
        )?.t ?? null;
    }
    const failing = health
      ? (JSON.parse(health.results) as { name: string; passed: boolean }[])
          .filter((r) => !r.passed)
          .map((r) => r.name)
      : [];
    return {
      machineId: m.machine_id,
      targetGeneration: m.target_generation,
      currentGeneration: m.current_generation,
      latestOutcome: outcome
        ? {
            outcome: outcome.outcome,
            message: outcome.message,
            desiredGeneration: outcome.desired_generation,
            receivedAt: outcome.received_at,
            seq: outcome.seq,
          }
        : null,
      latestHealth: health
        ? { allPassed: health.all_passed === 1, receivedAt: health.received_at, seq: health.seq, failing }
        : null,
      passingSince,
    };
  });
}

export function startBatch(sql: Sql, rolloutId: string, index: number, now: number): RolloutChange | null {
  return sql.tx(() => {
    const rollout = rolloutRow(sql, rolloutId);
    if (rollout?.status !== "running") return null;
    const batch = sql.get<BatchRow>(
      "SELECT * FROM rollout_batches WHERE rollout_id = ? AND batch_index = ?",
      rolloutId,
      index,
    );
    if (!batch || batch.status === "deploying" || batch.status === "succeeded") return null;
    const machines = sql.all<MachineRow>(
      "SELECT * FROM rollout_machines WHERE rollout_id = ? AND batch_index = ? ORDER BY position",
      rolloutId,
      index,
    );
    const changes: DesiredChange[] = [];
    for (const m of machines) {
      if (m.previous_recorded === 0) {
        const previous = sql.get<{ store_path: string; cache_url: string; rollout_id: string }>(
          "SELECT store_path, cache_url, rollout_id FROM desired_generations WHERE machine_id = ?",
          m.machine_id,
        );
        sql.run(
          `UPDATE rollout_machines SET previous_recorded = 1, previous_generation = ?, previous_cache_url = ?, previous_rollout_id = ?
           WHERE rollout_id = ? AND machine_id = ?`,
          previous?.store_path ?? null,
          previous?.cache_url ?? null,
          previous?.rollout_id ?? null,
          rolloutId,
          m.machine_id,
        );
      }
      const desired = writeDesired(
        sql,
        m.machine_id,
        m.target_generation,
        rollout.cache_url,
        rolloutId,
        "executor",
        now,
      );
      changes.push({ machineId: m.machine_id, desired });
    }
    sql.run(
      "UPDATE rollout_machines SET gate_state = 'pending', gate_reason = '' WHERE rollout_id = ? AND batch_index = ?",
      rolloutId,
      index,
    );
    sql.run(
      "UPDATE rollout_batches SET status = 'deploying', started_at = ?, started_seq = ?, completed_at = NULL WHERE rollout_id = ? AND batch_index = ?",
      now,
      nextSeq(sql),
      rolloutId,
      index,
    );
    sql.run(
      "UPDATE rollouts SET current_batch = ?, status_reason = '', updated_at = ? WHERE id = ?",
      index,
      now,
      rolloutId,
    );
    const total = sql.get<{ n: number }>(
      "SELECT count(*) AS n FROM rollout_batches WHERE rollout_id = ?",
      rolloutId,
    )!.n;
    const again = batch.status === "pending" && batch.started_at === null ? "started" : "started again";
    const message = `batch ${index + 1} of ${total} ${again}: ${summarize(machines.map((m) => m.machine_id))}`;
    const event = addEvent(sql, rolloutId, "batch_started", index, "", message, "executor", now);
    sql.audit(now, "executor", "rollout.batch_start", rolloutId, message);
    return { rollout: getRollout(sql, rolloutId)!, events: [event], changes };
  });
}

export function recordGate(
  sql: Sql,
  rolloutId: string,
  index: number,
  startedSeq: number,
  gates: readonly MachineGateUpdate[],
  now: number,
): RolloutEventRecord[] {
  return sql.tx(() => {
    const batch = sql.get<BatchRow>(
      "SELECT * FROM rollout_batches WHERE rollout_id = ? AND batch_index = ?",
      rolloutId,
      index,
    );
    if (batch?.status !== "deploying" || batch.started_seq !== startedSeq) return [];
    const events: RolloutEventRecord[] = [];
    for (const g of gates) {
      const row = sql.get<{ gate_state: GateState; gate_reason: string }>(
        "SELECT gate_state, gate_reason FROM rollout_machines WHERE rollout_id = ? AND machine_id = ?",
        rolloutId,
        g.machineId,
      );
      if (!row || (row.gate_state === g.state && row.gate_reason === g.reason)) continue;
      sql.run(
        "UPDATE rollout_machines SET gate_state = ?, gate_reason = ? WHERE rollout_id = ? AND machine_id = ?",
        g.state,
        g.reason,
        rolloutId,
        g.machineId,
      );
      if (row.gate_state !== g.state && g.state !== "pending") {
        const type = g.state === "healthy" ? "machine_healthy" : "machine_unhealthy";
        events.push(addEvent(sql, rolloutId, type, index, g.machineId, g.reason, "executor", now));
      }
    }
    if (events.length) sql.run("UPDATE rollouts SET updated_at = ? WHERE id = ?", now, rolloutId);
    return events;
  });
}

/**
 * Gives every machine the rollout touched (its batch started at least once, the failed batch
 * included) its previous desired generation back, with a new revision, or clears it when it had
 * none. Callers hold the transaction.
 */
function revertTouched(
  sql: Sql,
  rolloutId: string,
  now: number,
): { changes: DesiredChange[]; cleared: number } {
  const touched = sql.all<MachineRow>(
    "SELECT * FROM rollout_machines WHERE rollout_id = ? AND previous_recorded = 1 ORDER BY batch_index, position",
    rolloutId,
  );
  const changes: DesiredChange[] = [];
  let cleared = 0;
  for (const m of touched) {
    if (m.previous_generation === null) {
      sql.run("DELETE FROM desired_generations WHERE machine_id = ?", m.machine_id);
      changes.push({ machineId: m.machine_id, desired: null });
      cleared++;
    } else {
      const desired = writeDesired(
        sql,
        m.machine_id,
        m.previous_generation,
        m.previous_cache_url ?? "",
        m.previous_rollout_id ?? "",
        "executor",
        now,
      );
      changes.push({ machineId: m.machine_id, desired });
    }
  }
  return { changes, cleared };
}

function cancelUnfinishedBatches(sql: Sql, rolloutId: string, now: number): void {
  sql.run(
    "UPDATE rollout_batches SET status = 'cancelled', completed_at = ? WHERE rollout_id = ? AND status IN ('pending', 'deploying')",
    now,
    rolloutId,
  );
}

/** Ends a rollout (callers hold the transaction and checked the status). */
function endWithin(
  sql: Sql,
  rolloutId: string,
  options: { status: "failed" | "cancelled" | "completed"; revert: boolean; reason: string; actor: string },
  now: number,
): { events: RolloutEventRecord[]; changes: DesiredChange[] } {
  const events: RolloutEventRecord[] = [];
  let changes: DesiredChange[] = [];
  if (options.revert) {
    const reverted = revertTouched(sql, rolloutId, now);
    changes = reverted.changes;
    const restored = reverted.changes.length - reverted.cleared;
    const message =
      `restored the previous desired generation of ${restored} machine${restored === 1 ? "" : "s"}` +
      (reverted.cleared ? `, cleared ${reverted.cleared} that had none` : "") +
      (changes.length ? `: ${summarize(changes.map((c) => c.machineId))}` : "");
    events.push(addEvent(sql, rolloutId, "reverted", null, "", message, options.actor, now));
    sql.audit(now, options.actor, "rollout.revert", rolloutId, message);
  }
  if (options.status !== "completed") cancelUnfinishedBatches(sql, rolloutId, now);
  setStatus(sql, rolloutId, options.status, options.reason, now);
  releaseMachines(sql, rolloutId);
  events.push(addEvent(sql, rolloutId, options.status, null, "", options.reason, options.actor, now));
  const action = { failed: "rollout.fail", cancelled: "rollout.cancel", completed: "rollout.complete" }[
    options.status
  ];
  sql.audit(now, options.actor, action, rolloutId, options.reason);
  return { events, changes };
}

export function finishBatch(
  sql: Sql,
  rolloutId: string,
  index: number,
  startedSeq: number,
  result: { passed: boolean; message: string; last: boolean; pause: boolean },
  now: number,
): RolloutChange | null {
  return sql.tx(() => {
    const rollout = rolloutRow(sql, rolloutId);
    if (rollout?.status !== "running") return null;
    const batch = sql.get<BatchRow>(
      "SELECT * FROM rollout_batches WHERE rollout_id = ? AND batch_index = ?",
      rolloutId,
      index,
    );
    if (batch?.status !== "deploying" || batch.started_seq !== startedSeq) return null;
    const status: BatchStatus = result.passed ? "succeeded" : "failed";
    sql.run(
      "UPDATE rollout_batches SET status = ?, completed_at = ? WHERE rollout_id = ? AND batch_index = ?",
      status,
      now,
      rolloutId,
      index,
    );
    const events = [
      addEvent(
        sql,
        rolloutId,
        result.passed ? "batch_succeeded" : "batch_failed",
        index,
        "",
        result.message,
        "executor",
        now,
      ),
    ];
    sql.audit(
      now,
      "executor",
      result.passed ? "rollout.batch_succeed" : "rollout.batch_fail",
      rolloutId,
      result.message,
    );
    let changes: DesiredChange[] = [];
    if (result.passed && result.last) {
      events.push(
        ...endWithin(
          sql,
          rolloutId,
          {
            status: "completed",
            revert: false,
            reason: "every batch passed its health gate",
            actor: "executor",
          },
          now,
        ).events,
      );
    } else if (!result.passed && result.pause) {
      const reason = `batch ${index + 1} failed its health gate: ${result.message}`;
      setStatus(sql, rolloutId, "paused", reason, now);
      events.push(addEvent(sql, rolloutId, "paused", index, "", reason, "executor", now));
      sql.audit(now, "executor", "rollout.pause", rolloutId, reason);
    } else if (!result.passed) {
      const ended = endWithin(
        sql,
        rolloutId,
        {
          status: "failed",
          revert: true,
          reason: `batch ${index + 1} failed its health gate: ${result.message}`,
          actor: "executor",
        },
        now,
      );
      events.push(...ended.events);
      changes = ended.changes;
    } else {
      sql.run("UPDATE rollouts SET updated_at = ? WHERE id = ?", now, rolloutId);
    }
    return { rollout: getRollout(sql, rolloutId)!, events, changes };
  });
}

function requireRollout(sql: Sql, id: string): RolloutRow {
  const row = rolloutRow(sql, id);
  if (!row) throw new NotFoundError(`rollout ${id} does not exist`);
  return row;
}

export function pauseRollout(
  sql: Sql,
  id: string,
  reason: string,
  actor: string,
  now: number,
): RolloutChange {
  return sql.tx(() => {
    const row = requireRollout(sql, id);
    const problem = operatorActionProblem(row.status, "pause");
    if (problem) throw new ConflictError(`rollout ${id} cannot be paused: ${problem}`);
    const why = reason || `paused by ${actor}`;
    setStatus(sql, id, "paused", why, now);
    const event = addEvent(sql, id, "paused", row.current_batch, "", why, actor, now);
    sql.audit(now, actor, "rollout.pause", id, why);
    return { rollout: getRollout(sql, id)!, events: [event], changes: [] };
  });
}

export function resumeRollout(sql: Sql, id: string, actor: string, now: number): RolloutChange {
  return sql.tx(() => {
    const row = requireRollout(sql, id);
    const problem = operatorActionProblem(row.status, "resume");
    if (problem) throw new ConflictError(`rollout ${id} cannot be resumed: ${problem}`);
    // The batch that stopped (failed, or still deploying when an operator paused) is deployed
    // again by the executor with a fresh start time and new revisions.
    sql.run(
      "UPDATE rollout_batches SET status = 'pending', completed_at = NULL WHERE rollout_id = ? AND batch_index = ? AND status IN ('failed', 'deploying')",
      id,
      row.current_batch,
    );
    setStatus(sql, id, "running", "", now);
    const event = addEvent(sql, id, "resumed", row.current_batch, "", `resumed by ${actor}`, actor, now);
    sql.audit(now, actor, "rollout.resume", id, `batch ${row.current_batch + 1} will be deployed again`);
    return { rollout: getRollout(sql, id)!, events: [event], changes: [] };
  });
}

export function endRollout(sql: Sql, id: string, options: EndRolloutOptions, now: number): RolloutChange {
  return sql.tx(() => {
    const row = requireRollout(sql, id);
    if (!options.from.includes(row.status)) {
      const problem = operatorActionProblem(row.status, "cancel") ?? `it is ${row.status}`;
      throw new ConflictError(`rollout ${id} cannot be ${options.status}: ${problem}`);
    }
    const ended = endWithin(sql, id, options, now);
    return { rollout: getRollout(sql, id)!, ...ended };
  });
}

export function activeRolloutCount(sql: Sql): number {
  return sql.get<{ n: number }>("SELECT count(*) AS n FROM rollouts WHERE status IN ('running', 'paused')")!
    .n;
}

/** The oldest start of a deploying batch: reports after it are gate evidence and must be kept. */
export function oldestDeployingStart(sql: Sql): { at: number; seq: number } | null {
  const row = sql.get<{ at: number | null; seq: number | null }>(
    "SELECT min(started_at) AS at, min(started_seq) AS seq FROM rollout_batches WHERE status = 'deploying'",
  )!;
  return row.at === null || row.seq === null ? null : { at: row.at, seq: row.seq };
}
