/**
 * Rollouts, their batches, per-machine gate state and rollout events: loading and saving only.
 * What a transaction writes — finishing a batch, pausing, failing and reverting, ending — is
 * decided by the pure functions in ../rollouts/decisions.ts over the rows loaded here, and the
 * event texts come from ../rollouts/texts.ts. Mutations run inside the caller's transaction; on
 * PostgreSQL they first lock the rollout's row, so two replicas never interleave on one rollout.
 * The executor's writes (startBatch, recordGate, finishBatch) carry the leader's epoch and are
 * refused first thing when another replica has led since (store/lease.ts); operator writes are not.
 */

import { sql } from "kysely";
import {
  gateChanges,
  type PlannedEvent,
  planEndRollout,
  planFinishBatch,
  planPause,
  planResume,
  type RolloutPlan,
  type TouchedMachine,
} from "../rollouts/decisions.js";
import * as text from "../rollouts/texts.js";
import { audit, type Ctx, cachedQuery, jsonList, jsonRows, nextRevisions, nextSeq } from "./context.js";
import { ConflictError, NotFoundError } from "./errors.js";
import { assertEpoch } from "./lease.js";
import { writeDesired } from "./machines.js";
import type { DesiredChange, RolloutEventRecord, RolloutRecord } from "./records.js";
import type { EndRolloutOptions, MachineGateUpdate, NewRollout, RolloutChange } from "./repository.js";
import {
  batchRow,
  type EventRow,
  getRollout,
  requireRollout,
  rolloutFields,
  rolloutRow,
  toEvent,
} from "./rollout-reads.js";
import type { RolloutsTable } from "./tables.js";

async function addEvents(ctx: Ctx, rolloutId: string, events: readonly PlannedEvent[], now: number) {
  if (events.length === 0) return [];
  // One statement for any number (a batch's machines turning healthy together): the rows as one
  // JSON parameter. Ids follow insertion order, so sorting by id keeps the planned order.
  const from = jsonRows(
    ctx,
    events.map((e) => [e.type, e.batchIndex, e.machineId, e.message, e.actor]),
    [
      { name: "type", type: "text" },
      { name: "batch_index", type: "integer" },
      { name: "machine_id", type: "text" },
      { name: "message", type: "text" },
      { name: "actor", type: "text" },
    ],
    "j",
  );
  const { rows } =
    await sql<EventRow>`INSERT INTO rollout_events (rollout_id, type, batch_index, machine_id, message, actor, created_at)
    SELECT CAST(${rolloutId} AS TEXT), j.type, j.batch_index, j.machine_id, j.message, j.actor, CAST(${now} AS BIGINT)
    FROM ${from}
    RETURNING *`.execute(ctx.q);
  return rows.map((r) => toEvent({ ...r, id: Number(r.id) })).sort((a, b) => a.id - b.id);
}

async function touchedMachines(ctx: Ctx, rolloutId: string): Promise<TouchedMachine[]> {
  const rows = await ctx.q
    .selectFrom("rollout_machines")
    .select([
      "machine_id",
      "previous_recorded",
      "previous_generation",
      "previous_cache_url",
      "previous_rollout_id",
    ])
    .where("rollout_id", "=", rolloutId)
    .where("previous_recorded", "=", 1)
    .orderBy("batch_index")
    .orderBy("position")
    .execute();
  return rows.map((r) => ({
    machineId: r.machine_id,
    previousRecorded: r.previous_recorded === 1,
    previousGeneration: r.previous_generation,
    previousCacheUrl: r.previous_cache_url,
    previousRolloutId: r.previous_rollout_id,
  }));
}

/** Saves a plan decided by ../rollouts/decisions.ts (callers hold the transaction). */
async function applyPlan(
  ctx: Ctx,
  rolloutId: string,
  plan: RolloutPlan,
  now: number,
): Promise<RolloutChange> {
  if (plan.batch) {
    await ctx.q
      .updateTable("rollout_batches")
      .set({ status: plan.batch.status, completed_at: now })
      .where("rollout_id", "=", rolloutId)
      .where("batch_index", "=", plan.batch.index)
      .execute();
  }
  const changes: DesiredChange[] = [];
  for (const r of plan.revert) {
    if (r.previous === null) {
      await ctx.q.deleteFrom("desired_generations").where("machine_id", "=", r.machineId).execute();
      changes.push({ machineId: r.machineId, desired: null });
    } else {
      const { storePath, cacheUrl, rolloutId: previousRollout } = r.previous;
      const desired = await writeDesired(
        ctx,
        r.machineId,
        storePath,
        cacheUrl,
        previousRollout,
        "executor",
        now,
      );
      changes.push({ machineId: r.machineId, desired });
    }
  }
  if (plan.cancelUnfinished) {
    await ctx.q
      .updateTable("rollout_batches")
      .set({ status: "cancelled", completed_at: now })
      .where("rollout_id", "=", rolloutId)
      .where("status", "in", ["pending", "deploying"])
      .execute();
  }
  await ctx.q
    .updateTable("rollouts")
    .set(
      plan.status
        ? { status: plan.status.status, status_reason: plan.status.reason, updated_at: now }
        : { updated_at: now },
    )
    .where("id", "=", rolloutId)
    .execute();
  if (plan.releaseMachines) {
    await ctx.q
      .updateTable("rollout_machines")
      .set({ active: 0 })
      .where("rollout_id", "=", rolloutId)
      .where("active", "=", 1)
      .execute();
  }
  const events = await addEvents(ctx, rolloutId, plan.events, now);
  for (const a of plan.audits) await audit(ctx, now, a.actor, a.action, rolloutId, a.detail);
  return { rollout: (await getRollout(ctx, rolloutId))!, events, changes };
}

export async function createRollout(
  ctx: Ctx,
  input: NewRollout,
  actor: string,
  now: number,
): Promise<RolloutChange> {
  const release = await ctx.q
    .selectFrom("releases")
    .select("id")
    .where("id", "=", input.releaseId)
    .executeTakeFirst();
  if (!release) throw new NotFoundError(`release ${input.releaseId} does not exist`);
  const ids = input.batches.flat().map((m) => m.machineId);
  // Set-based: one statement each whatever the number of machines (the ids and rows travel as
  // one JSON parameter), and the record returned is built from what was written, not re-read.
  const busy =
    ids.length === 0
      ? undefined
      : await ctx.q
          .selectFrom("rollout_machines as rm")
          .innerJoin("rollouts as r", "r.id", "rm.rollout_id")
          .select(["rm.machine_id", "rm.rollout_id", "r.status"])
          .where("rm.active", "=", 1)
          .where("rm.machine_id", "in", jsonList(ctx, ids))
          .orderBy("rm.machine_id")
          .limit(1)
          .executeTakeFirst();
  if (busy) {
    throw new ConflictError(
      `machine ${busy.machine_id} is already in active rollout ${busy.rollout_id} (${busy.status}); finish, pause and cancel, or wait for it first`,
    );
  }
  const row = {
    id: input.id,
    release_id: input.releaseId,
    status: "running" as const,
    status_reason: "",
    target_tags: JSON.stringify(input.targetTags),
    target_hosts: JSON.stringify(input.targetHosts),
    strategy: input.strategy,
    batch_sizes: JSON.stringify(input.batchSizes),
    failure_threshold: input.failureThreshold,
    on_failure: input.onFailure,
    health_timeout_seconds: input.healthTimeoutSeconds,
    soak_seconds: input.soakSeconds,
    cache_url: input.cacheUrl,
    current_batch: 0,
    created_at: now,
    updated_at: now,
    created_by: actor,
  };
  await ctx.q.insertInto("rollouts").values(row).execute();
  if (input.batches.length) {
    await ctx.q
      .insertInto("rollout_batches")
      .values(
        input.batches.map((_, index) => ({
          rollout_id: input.id,
          batch_index: index,
          status: "pending" as const,
        })),
      )
      .execute();
  }
  const rows = input.batches.flatMap((batch, index) =>
    batch.map((m, position) => [m.machineId, index, position, m.targetGeneration] as const),
  );
  try {
    if (rows.length > 0) {
      const from = jsonRows(
        ctx,
        rows,
        [
          { name: "machine_id", type: "text" },
          { name: "batch_index", type: "integer" },
          { name: "position", type: "integer" },
          { name: "target_generation", type: "text" },
        ],
        "j",
      );
      await sql`INSERT INTO rollout_machines (rollout_id, machine_id, batch_index, position, target_generation, active)
        SELECT CAST(${input.id} AS TEXT), j.machine_id, j.batch_index, j.position, j.target_generation, 1
        FROM ${from}`.execute(ctx.q);
    }
  } catch (err) {
    // Another replica's rollout claimed one of these machines since the check above.
    if (isUniqueViolation(err))
      throw new ConflictError("one of the machines was just claimed by another active rollout; retry");
    throw err;
  }
  const message = text.created(input);
  const events = await addEvents(
    ctx,
    input.id,
    [{ type: "created", batchIndex: null, machineId: "", message, actor }],
    now,
  );
  await audit(ctx, now, actor, "rollout.create", input.id, text.createdAudit(input.releaseId, message));
  return { rollout: newRolloutRecord(row, input), events, changes: [] };
}

/** What getRollout returns for a rollout just created (every batch pending, nothing recorded). */
function newRolloutRecord(row: RolloutsTable, input: NewRollout): RolloutRecord {
  return {
    ...rolloutFields(row),
    batches: input.batches.map((batch, index) => ({
      index,
      status: "pending",
      startedAt: null,
      startedSeq: null,
      completedAt: null,
      machines: batch.map((m) => ({
        machineId: m.machineId,
        batchIndex: index,
        targetGeneration: m.targetGeneration,
        previousRecorded: false,
        previousGeneration: null,
        gateState: "pending",
        gateReason: "",
      })),
    })),
  };
}

function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === "23505" || code === "SQLITE_CONSTRAINT_UNIQUE";
}

export async function startBatch(
  ctx: Ctx,
  rolloutId: string,
  index: number,
  now: number,
  epoch: number | null = null,
): Promise<RolloutChange | null> {
  await assertEpoch(ctx, epoch);
  const rollout = await rolloutRow(ctx, rolloutId, true);
  if (rollout?.status !== "running") return null;
  const batch = await batchRow(ctx, rolloutId, index);
  if (!batch || batch.status === "deploying" || batch.status === "succeeded") return null;
  const machines = await ctx.q
    .selectFrom("rollout_machines")
    .select(["machine_id", "target_generation", "position"])
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .orderBy("position")
    .execute();
  // Set-based, a few statements whatever the batch size. First each machine's previous desired
  // generation, recorded once: a resumed batch keeps it, so a revert restores what was there
  // before this rollout.
  await ctx.q
    .updateTable("rollout_machines")
    .set((eb) => {
      const previous = (column: "store_path" | "cache_url" | "rollout_id") =>
        eb
          .selectFrom("desired_generations as d")
          .select(`d.${column}`)
          .whereRef("d.machine_id", "=", "rollout_machines.machine_id");
      return {
        previous_recorded: 1,
        previous_generation: previous("store_path"),
        previous_cache_url: previous("cache_url"),
        previous_rollout_id: previous("rollout_id"),
      };
    })
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .where("previous_recorded", "=", 0)
    .execute();
  // Then the targets, each with a fresh revision: one block of revisions, one per position.
  const count = machines.length === 0 ? 0 : machines[machines.length - 1]!.position + 1;
  const first = count === 0 ? 0 : await nextRevisions(ctx, now, count);
  if (count > 0) {
    await ctx.q
      .insertInto("desired_generations")
      .columns(["machine_id", "store_path", "cache_url", "revision", "rollout_id", "set_by", "set_at"])
      .expression(
        ctx.q
          .selectFrom("rollout_machines as rm")
          .select([
            "rm.machine_id",
            "rm.target_generation",
            sql<string>`CAST(${rollout.cache_url} AS TEXT)`.as("cache_url"),
            sql<number>`CAST(${first} AS BIGINT) + rm.position`.as("revision"),
            sql<string>`CAST(${rolloutId} AS TEXT)`.as("rollout_id"),
            sql<string>`CAST('executor' AS TEXT)`.as("set_by"),
            sql<number>`CAST(${now} AS BIGINT)`.as("set_at"),
          ])
          .where("rm.rollout_id", "=", rolloutId)
          .where("rm.batch_index", "=", index),
      )
      .onConflict((oc) =>
        oc.column("machine_id").doUpdateSet((eb) => ({
          store_path: eb.ref("excluded.store_path"),
          cache_url: eb.ref("excluded.cache_url"),
          revision: eb.ref("excluded.revision"),
          rollout_id: eb.ref("excluded.rollout_id"),
          set_by: eb.ref("excluded.set_by"),
          set_at: eb.ref("excluded.set_at"),
        })),
      )
      .execute();
  }
  const changes: DesiredChange[] = machines.map((m) => ({
    machineId: m.machine_id,
    desired: {
      storePath: m.target_generation,
      cacheUrl: rollout.cache_url,
      revision: first + m.position,
      rolloutId,
      setBy: "executor",
      setAt: now,
    },
  }));
  await ctx.q
    .updateTable("rollout_machines")
    .set({ gate_state: "pending", gate_reason: "" })
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .execute();
  await ctx.q
    .updateTable("rollouts")
    .set({ current_batch: index, status_reason: "", updated_at: now })
    .where("id", "=", rolloutId)
    .execute();
  const total = await ctx.q
    .selectFrom("rollout_batches")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("rollout_id", "=", rolloutId)
    .executeTakeFirstOrThrow();
  const again = !(batch.status === "pending" && batch.started_at === null);
  const message = text.batchStarted(
    index,
    Number(total.n),
    again,
    machines.map((m) => m.machine_id),
  );
  const events = await addEvents(
    ctx,
    rolloutId,
    [{ type: "batch_started", batchIndex: index, machineId: "", message, actor: "executor" }],
    now,
  );
  await audit(ctx, now, "executor", "rollout.batch_start", rolloutId, message);
  // The start's place in the evidence sequence last: only evidence committed after this
  // transaction counts for the batch.
  await ctx.q
    .updateTable("rollout_batches")
    .set({ status: "deploying", started_at: now, started_seq: await nextSeq(ctx), completed_at: null })
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .execute();
  return { rollout: (await getRollout(ctx, rolloutId))!, events, changes };
}

export async function recordGate(
  ctx: Ctx,
  rolloutId: string,
  index: number,
  startedSeq: number,
  gates: readonly MachineGateUpdate[],
  now: number,
  epoch: number | null = null,
): Promise<RolloutEventRecord[]> {
  await assertEpoch(ctx, epoch);
  await rolloutRow(ctx, rolloutId, true);
  const batch = await batchRow(ctx, rolloutId, index);
  if (batch?.status !== "deploying" || batch.started_seq !== startedSeq) return [];
  const stored = await ctx.q
    .selectFrom("rollout_machines")
    .select(["machine_id", "gate_state", "gate_reason"])
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .execute();
  const { writes, events } = gateChanges(
    new Map(stored.map((s) => [s.machine_id, { state: s.gate_state, reason: s.gate_reason }])),
    gates,
    index,
  );
  if (writes.length > 0 && ctx.kind === "postgres") {
    // One statement for all of them (a hash join with the new states, one JSON parameter).
    const from = jsonRows(
      ctx,
      writes.map((g) => [g.machineId, g.state, g.reason]),
      [
        { name: "machine_id", type: "text" },
        { name: "gate_state", type: "text" },
        { name: "gate_reason", type: "text" },
      ],
      "j",
    );
    await sql`UPDATE rollout_machines SET gate_state = j.gate_state, gate_reason = j.gate_reason
      FROM ${from}
      WHERE rollout_machines.rollout_id = ${rolloutId} AND rollout_machines.machine_id = j.machine_id`.execute(
      ctx.q,
    );
  } else {
    // SQLite joins a JSON table by scanning it per row (quadratic); one prepared statement per
    // machine, in process, costs microseconds instead.
    for (const g of writes) {
      await cachedQuery(
        ctx,
        "gate-write",
        (p) =>
          ctx.q
            .updateTable("rollout_machines")
            .set({ gate_state: p[0], gate_reason: p[1] })
            .where("rollout_id", "=", p[2])
            .where("machine_id", "=", p[3]),
        [g.state, g.reason, rolloutId, g.machineId],
      );
    }
  }
  if (events.length)
    await ctx.q.updateTable("rollouts").set({ updated_at: now }).where("id", "=", rolloutId).execute();
  return addEvents(ctx, rolloutId, events, now);
}

export async function finishBatch(
  ctx: Ctx,
  rolloutId: string,
  index: number,
  startedSeq: number,
  result: { passed: boolean; message: string },
  now: number,
  epoch: number | null = null,
): Promise<RolloutChange | null> {
  await assertEpoch(ctx, epoch);
  const rollout = await rolloutRow(ctx, rolloutId, true);
  if (!rollout) return null;
  const batch = await batchRow(ctx, rolloutId, index);
  const count = await ctx.q
    .selectFrom("rollout_batches")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("rollout_id", "=", rolloutId)
    .executeTakeFirstOrThrow();
  const plan = planFinishBatch({
    rollout: { status: rollout.status, onFailure: rollout.on_failure, batchCount: Number(count.n) },
    batch: batch && { index: batch.batch_index, status: batch.status, startedSeq: batch.started_seq },
    startedSeq,
    passed: result.passed,
    message: result.message,
    touched: result.passed ? [] : await touchedMachines(ctx, rolloutId),
  });
  return plan ? applyPlan(ctx, rolloutId, plan, now) : null;
}

export async function pauseRollout(
  ctx: Ctx,
  id: string,
  reason: string,
  actor: string,
  now: number,
): Promise<RolloutChange> {
  const row = await requireRollout(ctx, id);
  const decided = planPause(id, row.status, row.current_batch, reason, actor);
  if ("problem" in decided) throw new ConflictError(decided.problem);
  return applyPlan(ctx, id, decided.plan, now);
}

export async function resumeRollout(
  ctx: Ctx,
  id: string,
  actor: string,
  now: number,
): Promise<RolloutChange> {
  const row = await requireRollout(ctx, id);
  const batch = await batchRow(ctx, id, row.current_batch);
  const decided = planResume(id, row.status, row.current_batch, batch?.status, actor);
  if ("problem" in decided) throw new ConflictError(decided.problem);
  if (decided.resetBatch !== null) {
    await ctx.q
      .updateTable("rollout_batches")
      .set({ status: "pending", completed_at: null })
      .where("rollout_id", "=", id)
      .where("batch_index", "=", decided.resetBatch)
      .execute();
  }
  return applyPlan(ctx, id, decided.plan, now);
}

export async function endRollout(
  ctx: Ctx,
  id: string,
  options: EndRolloutOptions,
  now: number,
): Promise<RolloutChange> {
  const row = await requireRollout(ctx, id);
  const decided = planEndRollout({
    id,
    status: row.status,
    options,
    touched: options.revert ? await touchedMachines(ctx, id) : [],
  });
  if ("problem" in decided) throw new ConflictError(decided.problem);
  return applyPlan(ctx, id, decided.plan, now);
}
