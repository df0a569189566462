/**
 * Saving a plan decided by ../rollouts/decisions.ts (finishing a batch, pausing, resuming,
 * ending, reverting) inside the caller's transaction, and loading the machines a revert touches.
 */
import type { RolloutPlan, TouchedMachine } from "../rollouts/decisions.js";
import { audit, type Ctx } from "./context.js";
import { writeDesired } from "./machines.js";
import type { DesiredChange } from "./records.js";
import type { RolloutChange } from "./repository.js";
import { addEvents } from "./rollout-event-rows.js";
import { getRollout } from "./rollout-reads.js";

export async function touchedMachines(ctx: Ctx, rolloutId: string): Promise<TouchedMachine[]> {
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
export async function applyPlan(
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
