/**
 * Rollouts, their batches, per-machine gate state and rollout events: loading and saving only.
 * What a transaction writes — finishing a batch, pausing, failing and reverting, ending — is
 * decided by the pure functions in ../rollouts/decisions.ts over the rows loaded here, and the
 * event texts come from ../rollouts/texts.ts. Mutations run inside the caller's transaction; on
 * PostgreSQL they first lock the rollout's row, so two replicas never interleave on one rollout.
 * The executor's writes (rollout-batches.ts: startBatch, recordGate, finishBatch) carry the
 * leader's epoch and are refused first thing when another replica has led since (store/lease.ts);
 * operator writes (here) are not. Creating one: rollout-create.ts.
 */
import { planEndRollout, planPause, planResume } from "../rollouts/decisions.js";
import type { Ctx } from "./context.js";
import { ConflictError } from "./errors.js";
import type { EndRolloutOptions, RolloutChange } from "./repository.js";
import { applyPlan, touchedMachines } from "./rollout-plans.js";
import { batchRow, requireRollout } from "./rollout-reads.js";

export { finishBatch, recordGate, startBatch } from "./rollout-batches.js";
export { createRollout } from "./rollout-create.js";

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
