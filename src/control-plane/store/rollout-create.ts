/**
 * Creating a rollout: set-based, one statement per table whatever the number of machines (the
 * ids and rows travel as one JSON parameter), and the record returned is built from what was
 * written, not re-read. Claiming a machine already in an active rollout is refused.
 */
import { sql } from "kysely";
import * as text from "../rollouts/texts.js";
import { audit, type Ctx, jsonList, jsonRows } from "./context.js";
import { ConflictError, NotFoundError } from "./errors.js";
import type { RolloutRecord } from "./records.js";
import type { NewRollout, RolloutChange } from "./repository.js";
import { addEvents } from "./rollout-event-rows.js";
import { rolloutFields } from "./rollout-reads.js";
import type { RolloutsTable } from "./tables.js";

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
