/**
 * The executor's writes: starting a batch, recording the gate's per-machine states, finishing a
 * batch. Each runs in the caller's transaction, first refusing a stale leader's epoch
 * (assertEpoch, store/lease.ts) and, on PostgreSQL, locking the rollout's row.
 */
import { sql } from "kysely";
import { gateChanges, planFinishBatch } from "../rollouts/decisions.js";
import * as text from "../rollouts/texts.js";
import { audit, type Ctx, cachedQuery, jsonRows, nextRevisions, nextSeq } from "./context.js";
import { assertEpoch } from "./lease.js";
import type { DesiredChange, RolloutEventRecord } from "./records.js";
import type { MachineGateUpdate, RolloutChange } from "./repository.js";
import { addEvents } from "./rollout-event-rows.js";
import { applyPlan, touchedMachines } from "./rollout-plans.js";
import {
  assembleBatches,
  batchRow,
  batchRows,
  rolloutFields,
  rolloutMachineRows,
  rolloutRow,
  toMachineRecord,
} from "./rollout-reads.js";

/**
 * Starts (or re-starts) a batch. Set-based, a few statements whatever the batch size, and the
 * rollout's machines read once (after the batch's own rows are written, so no join is needed to
 * know what "previous" recorded): the record returned is that read, not a re-read after every
 * write — so the pushes can go out the moment this transaction commits.
 */
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
  const batches = await batchRows(ctx, rolloutId);
  const batch = batches.find((b) => b.batch_index === index);
  if (!batch || batch.status === "deploying" || batch.status === "succeeded") return null;
  // Each machine's previous desired generation, recorded once (a resumed batch keeps it, so a
  // revert restores what was there before this rollout), and its gate state reset: one statement,
  // one lookup of the current assignment per machine (a row value: three correlated scalar
  // subqueries cost three lookups, most of this statement at 10,000 machines). The subquery's
  // first branch is the assignment (none: NULLs) when nothing is recorded yet; the second keeps
  // what is recorded. Every SET expression sees the row as it was.
  const kept = (column: string) => sql.ref(`rollout_machines.${column}`);
  const { numAffectedRows } = await sql`UPDATE rollout_machines SET
      (previous_generation, previous_cache_url, previous_rollout_id) = (
        SELECT d.store_path, d.cache_url, d.rollout_id FROM desired_generations d
          WHERE d.machine_id = rollout_machines.machine_id AND rollout_machines.previous_recorded = 0
        UNION ALL
        SELECT ${kept("previous_generation")}, ${kept("previous_cache_url")}, ${kept("previous_rollout_id")}
          WHERE rollout_machines.previous_recorded = 1),
      previous_recorded = 1, gate_state = 'pending', gate_reason = ''
    WHERE rollout_id = ${rolloutId} AND batch_index = ${index}`.execute(ctx.q);
  // Then the targets, each with a fresh revision: one block of revisions, one per position
  // (positions in a batch are 0 … count-1).
  const count = Number(numAffectedRows ?? 0);
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
  // Every machine of the rollout as it now stands (the batch's rows written above).
  const rows = await rolloutMachineRows(ctx, rolloutId);
  const inBatch = rows.filter((r) => r[1] === index);
  const changes: DesiredChange[] = inBatch.map((m) => ({
    machineId: m[0],
    desired: {
      storePath: m[2],
      cacheUrl: rollout.cache_url,
      revision: first + m[7],
      rolloutId,
      setBy: "executor",
      setAt: now,
    },
  }));
  await ctx.q
    .updateTable("rollouts")
    .set({ current_batch: index, status_reason: "", updated_at: now })
    .where("id", "=", rolloutId)
    .execute();
  const again = !(batch.status === "pending" && batch.started_at === null);
  const message = text.batchStarted(
    index,
    batches.length,
    again,
    inBatch.map((m) => m[0]),
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
  const startedSeq = await nextSeq(ctx);
  await ctx.q
    .updateTable("rollout_batches")
    .set({ status: "deploying", started_at: now, started_seq: startedSeq, completed_at: null })
    .where("rollout_id", "=", rolloutId)
    .where("batch_index", "=", index)
    .execute();
  // The record as getRollout would now read it, from the rows in hand and the writes above.
  const started = batches.map((b) =>
    b.batch_index === index
      ? { ...b, status: "deploying" as const, started_at: now, started_seq: startedSeq, completed_at: null }
      : b,
  );
  const record = {
    ...rolloutFields({ ...rollout, current_batch: index, status_reason: "", updated_at: now }),
    batches: assembleBatches(started, rows.map(toMachineRecord)),
  };
  return { rollout: record, events, changes };
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
